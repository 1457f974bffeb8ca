//! `#[cache_function]` on every supported fn shape, run against whichever
//! store the including test binary configured as the default cache.
//! Each test uses its own functions, so tests can run in parallel.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tg_cache::{KeyPart, cache_function};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub id: i64,
    pub title: String,
}

fn scenes_for(character_id: i64) -> Vec<Scene> {
    vec![Scene {
        id: character_id * 10,
        title: format!("Scene of {character_id}"),
    }]
}

// ---- free functions, sync and async, Result / Option / plain ----

pub static SCENE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The seed's example.
#[cache_function(timeout = MEDIUM, key_prefix = "char_scenes")]
pub async fn get_character_scenes(character_id: i64) -> Result<Vec<Scene>, String> {
    SCENE_RUNS.fetch_add(1, SeqCst);
    if character_id < 0 {
        return Err("no such character".into());
    }
    Ok(scenes_for(character_id))
}

pub static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "square", timeout = 60)]
pub fn square(x: i64) -> i64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    x * x
}

pub static FIND_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "find")]
pub fn find(id: i64) -> Option<String> {
    FIND_RUNS.fetch_add(1, SeqCst);
    (id > 0).then(|| format!("#{id}"))
}

pub static FIND_NONE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "find_none", cache_none = true)]
pub async fn find_caching_none(id: i64) -> Option<String> {
    FIND_NONE_RUNS.fetch_add(1, SeqCst);
    (id > 0).then(|| format!("#{id}"))
}

pub static FALLIBLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "fallible")]
pub fn fallible(fail: bool) -> Result<u32, std::io::Error> {
    FALLIBLE_RUNS.fetch_add(1, SeqCst);
    if fail {
        Err(std::io::Error::other("boom"))?;
    }
    Ok(7)
}

// ---- associated fns and methods ----

pub struct CharacterDetailView {
    pub chronicle_id: i64,
}

pub static VIEW_RUNS: AtomicUsize = AtomicUsize::new(0);
pub static METHOD_RUNS: AtomicUsize = AtomicUsize::new(0);
pub static TEMPLATE_RUNS: AtomicUsize = AtomicUsize::new(0);

impl CharacterDetailView {
    /// The seed's `@staticmethod` inside a view class.
    #[cache_function(timeout = MEDIUM, key_prefix = "view_scenes")]
    pub fn get_character_scenes(character_id: i64) -> Vec<Scene> {
        VIEW_RUNS.fetch_add(1, SeqCst);
        scenes_for(character_id)
    }

    /// `self` is left out of the key with `skip(self)`.
    #[cache_function(key_prefix = "method_scenes", skip(self))]
    pub async fn scenes(&self, character_id: i64) -> Vec<Scene> {
        METHOD_RUNS.fetch_add(1, SeqCst);
        let _ = self.chronicle_id;
        scenes_for(character_id)
    }

    /// A template naming a field of `self`.
    #[cache_function(
        key_prefix = "chronicle_page",
        key = "chronicle={self.chronicle_id}:page={page}"
    )]
    pub fn page(&self, page: u32) -> String {
        TEMPLATE_RUNS.fetch_add(1, SeqCst);
        format!("chronicle {} page {page}", self.chronicle_id)
    }
}

// ---- reference parameters, skip, templates, Arc ----

#[derive(Debug)]
pub struct Filter {
    pub clan: String,
    pub min_generation: u8,
}

impl KeyPart for Filter {
    fn write_key_part(&self, out: &mut String) {
        (&self.clan, self.min_generation).write_key_part(out)
    }
}

pub static REF_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "refs")]
pub fn by_refs(name: &str, ids: &[i64], filter: &Filter) -> String {
    REF_RUNS.fetch_add(1, SeqCst);
    format!("{name}{ids:?}{}{}", filter.clan, filter.min_generation)
}

pub struct Pool {
    pub queries: AtomicUsize,
}

#[cache_function(key_prefix = "with_pool", skip(pool))]
pub async fn with_pool(pool: &Pool, id: i64) -> i64 {
    pool.queries.fetch_add(1, SeqCst);
    id + 1
}

pub static PAGE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "scene_page", key = "{character_id}:{page}")]
pub fn scene_page(character_id: i64, page: u32) -> Vec<Scene> {
    PAGE_RUNS.fetch_add(1, SeqCst);
    scenes_for(character_id + i64::from(page))
}

pub static ARC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "arc_scenes")]
pub fn arc_scenes(character_id: i64) -> Arc<Vec<Scene>> {
    ARC_RUNS.fetch_add(1, SeqCst);
    Arc::new(scenes_for(character_id))
}

pub static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "slow_async")]
pub async fn slow_async(id: i64) -> i64 {
    SLOW_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    id
}

pub static SLOW_SYNC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "slow_sync")]
pub fn slow_sync(id: i64) -> i64 {
    SLOW_SYNC_RUNS.fetch_add(1, SeqCst);
    std::thread::sleep(Duration::from_millis(150));
    id
}

pub static PANIC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "panics_first")]
pub fn panics_first(id: i64) -> i64 {
    if PANIC_RUNS.fetch_add(1, SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(150));
        panic!("first run fails");
    }
    id
}

#[cache_function(key_prefix = "blocked_forever")]
pub async fn blocked(id: i64) -> i64 {
    tokio::time::sleep(Duration::from_secs(30)).await;
    id
}

#[cache_function(key_prefix = "quick")]
pub async fn quick(id: i64) -> i64 {
    id
}

pub static ESC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "escaped")]
pub fn escaped(a: &str, b: &str) -> String {
    ESC_RUNS.fetch_add(1, SeqCst);
    format!("{a}|{b}")
}

pub static OUTER_RUNS: AtomicUsize = AtomicUsize::new(0);
pub static INNER_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "inner")]
pub fn inner(id: i64) -> i64 {
    INNER_RUNS.fetch_add(1, SeqCst);
    id
}

#[cache_function(key_prefix = "outer")]
pub fn outer(id: i64) -> i64 {
    OUTER_RUNS.fetch_add(1, SeqCst);
    inner(id) + 1
}

pub static ASYNC_SCOPE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "async_scope")]
pub async fn async_scope(id: i64) -> i64 {
    ASYNC_SCOPE_RUNS.fetch_add(1, SeqCst);
    id
}

// ---- the tests, run by each including binary ----

pub async fn seed_example() {
    let a = get_character_scenes(5).await.unwrap();
    let b = get_character_scenes(5).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(SCENE_RUNS.load(SeqCst), 1);
    assert_eq!(
        get_character_scenes_cache_key(&5),
        "tg:fn:char_scenes:character_id=5"
    );
    // errors are not cached
    assert!(get_character_scenes(-1).await.is_err());
    assert!(get_character_scenes(-1).await.is_err());
    assert_eq!(SCENE_RUNS.load(SeqCst), 3);
    // invalidate drops exactly that entry
    assert!(get_character_scenes_invalidate(&5).await.unwrap());
    assert!(!get_character_scenes_invalidate(&5).await.unwrap());
    get_character_scenes(5).await.unwrap();
    assert_eq!(SCENE_RUNS.load(SeqCst), 4);
    get_character_scenes(6).await.unwrap();
    get_character_scenes_invalidate_all().await.unwrap();
    get_character_scenes(5).await.unwrap();
    assert_eq!(
        SCENE_RUNS.load(SeqCst),
        6,
        "invalidate_all dropped the entry of 5"
    );
    get_character_scenes(6).await.unwrap();
    assert_eq!(SCENE_RUNS.load(SeqCst), 7, "and the entry of 6");
    get_character_scenes(6).await.unwrap();
    assert_eq!(SCENE_RUNS.load(SeqCst), 7, "new entries are cached again");
}

pub fn sync_free_fn() {
    assert_eq!(square(3), 9);
    assert_eq!(square(3), 9);
    assert_eq!(square(4), 16);
    assert_eq!(SQUARE_RUNS.load(SeqCst), 2);
    assert_eq!(square_cache_key(&3), "tg:fn:square:x=3");
    assert_eq!(square_cache_key(&-3), "tg:fn:square:x=-3");
    assert!(square_invalidate(&3).unwrap());
    assert_eq!(square(3), 9);
    assert_eq!(SQUARE_RUNS.load(SeqCst), 3);
}

pub async fn option_returns() {
    assert_eq!(find(1), Some("#1".into()));
    assert_eq!(find(1), Some("#1".into()));
    assert_eq!(find(0), None);
    assert_eq!(find(0), None);
    assert_eq!(
        FIND_RUNS.load(SeqCst),
        3,
        "None is recomputed, Some is cached"
    );
    assert_eq!(find_caching_none(0).await, None);
    assert_eq!(find_caching_none(0).await, None);
    assert_eq!(find_caching_none(2).await, Some("#2".into()));
    assert_eq!(find_caching_none(2).await, Some("#2".into()));
    assert_eq!(FIND_NONE_RUNS.load(SeqCst), 2, "cache_none caches None too");
}

pub fn result_with_question_mark() {
    assert!(fallible(true).is_err());
    assert!(fallible(true).is_err());
    assert_eq!(fallible(false).unwrap(), 7);
    assert_eq!(fallible(false).unwrap(), 7);
    assert_eq!(FALLIBLE_RUNS.load(SeqCst), 3);
}

pub async fn associated_fns_and_methods() {
    assert_eq!(CharacterDetailView::get_character_scenes(5), scenes_for(5));
    assert_eq!(CharacterDetailView::get_character_scenes(5), scenes_for(5));
    assert_eq!(VIEW_RUNS.load(SeqCst), 1);
    assert_eq!(
        CharacterDetailView::get_character_scenes_cache_key(&5),
        "tg:fn:view_scenes:character_id=5"
    );
    assert!(CharacterDetailView::get_character_scenes_invalidate(&5).unwrap());

    let v1 = CharacterDetailView { chronicle_id: 1 };
    let v2 = CharacterDetailView { chronicle_id: 2 };
    v1.scenes(5).await;
    v2.scenes(5).await; // self is not in the key: a hit
    assert_eq!(METHOD_RUNS.load(SeqCst), 1);
    // A method's key holds the type of `Self` (which tells the
    // instantiations of a generic impl apart).
    let self_type =
        tg_cache::key::escape(std::any::type_name::<CharacterDetailView>()).into_owned();
    assert_eq!(
        CharacterDetailView::scenes_cache_key(&5),
        format!("tg:fn:method_scenes:Self={self_type}:character_id=5")
    );

    assert_eq!(v1.page(1), "chronicle 1 page 1");
    assert_eq!(v2.page(1), "chronicle 2 page 1"); // self.chronicle_id is in the key
    assert_eq!(v1.page(1), "chronicle 1 page 1");
    assert_eq!(TEMPLATE_RUNS.load(SeqCst), 2);
    assert_eq!(
        v2.page_cache_key(&1),
        format!("tg:fn:chronicle_page:Self={self_type}:chronicle=2:page=1")
    );
    assert!(v2.page_invalidate(&1).unwrap());
}

pub fn reference_params() {
    let f = Filter {
        clan: "Brujah".into(),
        min_generation: 9,
    };
    assert_eq!(by_refs("a", &[1, 2], &f), "a[1, 2]Brujah9");
    let owned = String::from("a");
    let v = vec![1, 2];
    assert_eq!(by_refs(&owned, &v, &f), "a[1, 2]Brujah9");
    assert_eq!(REF_RUNS.load(SeqCst), 1);
    by_refs("a", &[1, 2, 3], &f);
    assert_eq!(REF_RUNS.load(SeqCst), 2);
    assert_eq!(
        by_refs_cache_key("a", &[1, 2], &f),
        "tg:fn:refs:name=a:ids=(1,2):filter=(Brujah,9)"
    );
    // deref coercions: &String -> &str, &Vec -> &[T]
    assert_eq!(
        by_refs_cache_key(&owned, &v, &f),
        by_refs_cache_key("a", &[1, 2], &f)
    );
}

pub async fn skipped_params_and_templates() {
    let pool = Pool {
        queries: AtomicUsize::new(0),
    };
    let other_pool = Pool {
        queries: AtomicUsize::new(0),
    };
    assert_eq!(with_pool(&pool, 1).await, 2);
    assert_eq!(with_pool(&other_pool, 1).await, 2);
    assert_eq!(
        pool.queries.load(SeqCst) + other_pool.queries.load(SeqCst),
        1
    );
    assert_eq!(with_pool_cache_key(&1), "tg:fn:with_pool:id=1");
    assert!(with_pool_invalidate(&1).await.unwrap());

    scene_page(5, 1);
    scene_page(5, 1);
    scene_page(5, 2);
    assert_eq!(PAGE_RUNS.load(SeqCst), 2);
    assert_eq!(scene_page_cache_key(&5, &2), "tg:fn:scene_page:5:2");
}

pub fn arc_returns_share_the_value() {
    let a = arc_scenes(5);
    let b = arc_scenes(5);
    assert_eq!(a, b);
    assert_eq!(ARC_RUNS.load(SeqCst), 1);
}

pub async fn concurrent_async_callers_run_the_body_once() {
    let tasks: Vec<_> = (0..32).map(|_| tokio::spawn(slow_async(1))).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(SLOW_RUNS.load(SeqCst), 1);
}

pub fn concurrent_threads_run_the_body_once() {
    let threads: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(|| slow_sync(1)))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
    assert_eq!(SLOW_SYNC_RUNS.load(SeqCst), 1);
}

pub fn a_panicking_caller_does_not_block_the_others() {
    let first = std::thread::spawn(|| panics_first(1));
    std::thread::sleep(Duration::from_millis(30));
    let second = std::thread::spawn(|| panics_first(1));
    assert!(first.join().is_err());
    assert_eq!(second.join().unwrap(), 1);
}

pub async fn different_keys_never_wait() {
    let slow = tokio::spawn(blocked(1));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let fast = tokio::time::timeout(Duration::from_secs(2), quick(2)).await;
    assert_eq!(fast.unwrap(), 2);
    // the same function with another key does not wait either
    slow.abort();
}

pub fn escaped_values_do_not_collide() {
    assert_eq!(escaped("a:b", "c"), "a:b|c");
    assert_eq!(escaped("a", "b:c"), "a|b:c");
    assert_eq!(escaped("a", "b=c"), "a|b=c");
    assert_eq!(escaped("*", "x"), "*|x");
    assert_eq!(ESC_RUNS.load(SeqCst), 4);
    assert_eq!(escaped_cache_key("a:b", "c"), "tg:fn:escaped:a=a%3Ab:b=c");
}

pub async fn bypass_and_refresh_scopes() {
    assert_eq!(outer(1), 2);
    assert_eq!((OUTER_RUNS.load(SeqCst), INNER_RUNS.load(SeqCst)), (1, 1));
    // uncached: outer runs, inner (nested) is still served from the cache
    assert_eq!(tg_cache::uncached(|| outer(1)), 2);
    assert_eq!((OUTER_RUNS.load(SeqCst), INNER_RUNS.load(SeqCst)), (2, 1));
    assert_eq!(outer(1), 2);
    assert_eq!(
        OUTER_RUNS.load(SeqCst),
        2,
        "uncached did not touch the entry"
    );
    // refresh: recomputes and stores
    assert!(outer_invalidate(&1).unwrap());
    tg_cache::refresh(|| outer(1));
    assert_eq!(OUTER_RUNS.load(SeqCst), 3);
    assert_eq!(outer(1), 2);
    assert_eq!(OUTER_RUNS.load(SeqCst), 3, "refresh stored its result");

    async_scope(1).await;
    tg_cache::uncached_async(async_scope(1)).await;
    assert_eq!(ASYNC_SCOPE_RUNS.load(SeqCst), 2);
    tg_cache::refresh_async(async_scope(1)).await;
    async_scope(1).await;
    assert_eq!(ASYNC_SCOPE_RUNS.load(SeqCst), 3);
}

/// Declares one `#[tokio::test]` per shape test above.
#[macro_export]
macro_rules! shape_tests {
    ($setup:path) => {
        $crate::shape_tests!(@async $setup;
            seed_example, option_returns, associated_fns_and_methods,
            skipped_params_and_templates, concurrent_async_callers_run_the_body_once,
            different_keys_never_wait, bypass_and_refresh_scopes);
        $crate::shape_tests!(@sync $setup;
            sync_free_fn, result_with_question_mark, reference_params,
            arc_returns_share_the_value, concurrent_threads_run_the_body_once,
            a_panicking_caller_does_not_block_the_others, escaped_values_do_not_collide);
    };
    (@async $setup:path; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            $setup();
            shapes::$name().await
        }
    )*};
    (@sync $setup:path; $($name:ident),*) => {$(
        #[test]
        fn $name() {
            $setup();
            shapes::$name()
        }
    )*};
}
