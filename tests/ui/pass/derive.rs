//! Every target form of #[derive(Invalidate)] compiles.
use tg_cache::{Invalidate, cache_function};

#[cache_function(key_prefix = "char_scenes")]
fn get_character_scenes(character_id: i64) -> Vec<String> {
    vec![character_id.to_string()]
}

#[cache_function(key_prefix = "by_name")]
async fn by_name(name: &str, chronicle_id: i64) -> Vec<String> {
    vec![format!("{name}{chronicle_id}")]
}

mod views {
    pub struct CharacterView;
    impl CharacterView {
        #[tg_cache::cache_function(key_prefix = "view_scenes")]
        pub fn scenes(character_id: i64) -> Vec<String> {
            vec![character_id.to_string()]
        }
    }
}

#[derive(Clone, Invalidate)]
#[invalidate_on(save, delete)]
#[invalidate(model_key(id), model_key(chronicle = chronicle_id))]
#[invalidate(function = get_character_scenes(id), function = by_name(name, chronicle_id))]
#[invalidate(function = views::CharacterView::scenes(id))]
#[invalidate(key = "tg:view:character:id={id}", pattern = "tg:view:search:*:name={name}")]
#[invalidate(model = "Char", cache = "default")]
struct Character {
    id: i64,
    chronicle_id: i64,
    name: String,
}

#[derive(Invalidate)]
#[invalidate_on(delete)]
#[invalidate(function = get_character_scenes(..))]
struct Scene<T: Send + Sync + 'static> {
    id: i64,
    extra: T,
}

#[derive(Invalidate)]
struct Merit {
    id: u32,
}

fn main() {
    let c = Character { id: 1, chronicle_id: 2, name: "Ada".into() };
    let _ = c.targets();
    let _ = Character::all_targets();
    let _ = Scene { id: 1, extra: () }.deleted_blocking();
    let _ = Merit { id: 1 }.saved_blocking();
    assert_eq!(Character::MODEL, "Char");
}
