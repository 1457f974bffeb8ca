use tg_cache::{Invalidate, cache_function};

#[cache_function(key_prefix = "char_scenes")]
fn get_character_scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

#[derive(Invalidate)]
#[invalidate(function = get_character_scenes(name))]
struct Character {
    id: i64,
    name: String,
}

fn main() {}
