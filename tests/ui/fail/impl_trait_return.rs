use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes")]
fn scenes(character_id: i64) -> impl Iterator<Item = i64> {
    std::iter::once(character_id)
}

fn main() {}
