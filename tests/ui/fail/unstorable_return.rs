use tg_cache::cache_function;

#[derive(Clone)]
struct Scene;

#[cache_function(key_prefix = "scenes")]
fn scenes(character_id: i64) -> Result<Vec<Scene>, String> {
    let _ = character_id;
    Ok(vec![Scene])
}

fn main() {}
