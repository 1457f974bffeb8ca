use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes", key = "{character_id}", skip(character_id))]
fn scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

fn main() {}
