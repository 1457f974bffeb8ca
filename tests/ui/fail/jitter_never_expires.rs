use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes", timeout = 0, jitter = 0.1)]
fn scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

#[cache_function(key_prefix = "scenes2", timeout = tg_cache::Timeout::Never, jitter = 0.1)]
fn scenes2(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

fn main() {}
