use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes", timeout = 60, jitter = "10%")]
fn scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

fn main() {}
