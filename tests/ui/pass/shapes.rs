//! Every supported shape compiles.
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tg_cache::{Timeout, cache_function};

#[derive(Clone, Serialize, Deserialize)]
pub struct Scene {
    pub id: i64,
}

pub struct Pool;

#[cache_function(timeout = MEDIUM, key_prefix = "char_scenes")]
pub async fn get_character_scenes(character_id: i64) -> Result<Vec<Scene>, std::io::Error> {
    Ok(vec![Scene { id: character_id }])
}

#[cache_function(key_prefix = "t1", timeout = 300)]
fn seconds(x: u8) -> u8 {
    x
}

#[cache_function(key_prefix = "t2", timeout = Duration::from_millis(1500))]
fn duration(x: u8) -> u8 {
    x
}

#[cache_function(key_prefix = "t3", timeout = Timeout::Never, cache = "default")]
fn never(x: u8) -> u8 {
    x
}

#[cache_function(key_prefix = "t4", timeout = DAY, cache_none = true)]
fn maybe(x: u8) -> Option<u8> {
    Some(x)
}

#[cache_function(key_prefix = "refs.v2")]
fn refs<'a>(name: &'a str, ids: &[i64], cow: std::borrow::Cow<'a, str>) -> String {
    format!("{name}{ids:?}{cow}")
}

#[cache_function(key_prefix = "pooled", skip(pool, executor))]
async fn pooled(pool: &Pool, executor: impl Sized + Send, mut id: i64) -> Arc<Vec<Scene>> {
    let _ = (pool, executor);
    id += 1;
    Arc::new(vec![Scene { id }])
}

#[cache_function(key_prefix = "generic_skipped", skip(pool))]
fn generic_skipped<P: Sync>(pool: &P, id: i64) -> i64 {
    let _ = pool;
    id
}

#[cache_function(key_prefix = "unit")]
fn unit(r#type: i64) {
    let _ = r#type;
}

pub struct CharacterDetailView {
    pub chronicle_id: i64,
}

impl CharacterDetailView {
    #[cache_function(timeout = MEDIUM, key_prefix = "view_scenes")]
    pub fn get_character_scenes(character_id: i64) -> Vec<Scene> {
        vec![Scene { id: character_id }]
    }

    #[cache_function(key_prefix = "view_page", key = "c={self.chronicle_id}:p={page}")]
    pub async fn page(&self, page: u32) -> Result<String, String> {
        if page == 0 {
            return Err("no page 0".into());
        }
        Ok(format!("{}:{page}", self.chronicle_id))
    }

    #[cache_function(key_prefix = "view_mut", key = "c={self.chronicle_id}:by={by}")]
    pub fn bump(&mut self, by: i64) -> i64 {
        self.chronicle_id += by;
        self.chronicle_id
    }
}

fn main() {
    let _: String = get_character_scenes_cache_key(&5);
    let _ = seconds_cache_key(&1);
    let _ = refs_cache_key("a", &[1], &std::borrow::Cow::Borrowed("x"));
    let _ = pooled_cache_key(&1);
    let _ = generic_skipped_cache_key(&1);
    let _ = unit_cache_key(&1);
    let _ = CharacterDetailView::get_character_scenes_cache_key(&5);
    let v = CharacterDetailView { chronicle_id: 1 };
    let _ = v.page_cache_key(&2);
    let _ = (duration(1), never(1), maybe(1), seconds(1), unit(1), generic_skipped(&(), 1));
    let _ = v.bump_invalidate(&1);
    let _ = CharacterDetailView::get_character_scenes_invalidate_all();
}
