use tg_cache::cache_function;

#[cache_function(key_prefix = "scenes", key = "{character_id}")]
fn scenes(character_id: i64, page: u32) -> Vec<String> {
    vec![format!("{character_id}{page}")]
}

fn main() {}
