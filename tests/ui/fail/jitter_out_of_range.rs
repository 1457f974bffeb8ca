use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes", timeout = 60, jitter = 1.5)]
fn scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

#[cache_function(key_prefix = "scenes2", timeout = 60, jitter = 0)]
fn scenes2(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

fn main() {}
