use tg_cache::Invalidate;

fn get_character_scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

#[derive(Invalidate)]
#[invalidate(function = get_character_scenes(id))]
struct Character {
    id: i64,
}

fn main() {
    let _ = get_character_scenes(1);
}
