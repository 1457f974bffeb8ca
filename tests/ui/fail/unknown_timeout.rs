use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes", timeout = MEDUIM)]
fn scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

fn main() {}
