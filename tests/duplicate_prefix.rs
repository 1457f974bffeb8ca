//! Two cached functions sharing a key_prefix are detected, both are named,
//! and they run uncached (correct results) instead of mixing entries.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use tg_cache::cache_function;

static A_RUNS: AtomicUsize = AtomicUsize::new(0);
static B_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "clan_list")]
fn clans(id: i64) -> String {
    A_RUNS.fetch_add(1, SeqCst);
    format!("clans {id}")
}

mod other {
    use super::*;

    #[cache_function(key_prefix = "clan_list")]
    pub fn disciplines(id: i64) -> String {
        B_RUNS.fetch_add(1, SeqCst);
        format!("disciplines {id}")
    }
}

#[cache_function(key_prefix = "unique")]
fn unique(id: i64) -> i64 {
    id
}

#[test]
fn the_check_names_both_functions() {
    let err = tg_cache::check_cache_functions().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("key_prefix \"clan_list\""), "{msg}");
    assert!(
        msg.contains("duplicate_prefix::clans (tests/duplicate_prefix.rs:10)"),
        "{msg}"
    );
    assert!(
        msg.contains("duplicate_prefix::other::disciplines (tests/duplicate_prefix.rs:19)"),
        "{msg}"
    );
    assert!(!msg.contains("unique"), "{msg}");
    assert_eq!(err.0.len(), 1);
}

#[test]
fn colliding_functions_run_uncached_and_stay_correct() {
    assert_eq!(clans(1), "clans 1");
    assert_eq!(other::disciplines(1), "disciplines 1");
    assert_eq!(clans(1), "clans 1");
    assert_eq!(other::disciplines(1), "disciplines 1");
    assert_eq!((A_RUNS.load(SeqCst), B_RUNS.load(SeqCst)), (2, 2));
    // an unrelated function is still cached
    assert_eq!(unique(1), 1);
    assert!(
        tg_cache::cache()
            .blocking()
            .has_key("tg:fn:unique:id=1")
            .unwrap()
    );
    assert!(
        !tg_cache::cache()
            .blocking()
            .has_key("tg:fn:clan_list:id=1")
            .unwrap()
    );
}
