use tg_cache::cache_function;

struct Pool;

#[cache_function(key_prefix = "scenes", skip(pol))]
fn scenes(pool: &Pool, character_id: i64) -> Vec<String> {
    let _ = pool;
    vec![character_id.to_string()]
}

fn main() {}
