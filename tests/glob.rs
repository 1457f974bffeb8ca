//! tg-cache's glob matcher (used by the local store's pattern deletes)
//! against a real `redis-server`'s `SCAN MATCH`, on generated patterns and
//! keys over an alphabet of every glob metacharacter: both stores delete
//! exactly the same keys, hand-written odd patterns included (`[]`, an
//! unclosed `[`, `[a-]`, ranges from an escaped character).

#[path = "cross_process/helpers.rs"]
mod helpers;

use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::{LazyLock, Mutex};
use tg_cache::key::glob_match;
use tg_cache::testing::RedisServer;

static SERVER: LazyLock<Mutex<(RedisServer, redis::Connection)>> = LazyLock::new(|| {
    let server = RedisServer::start();
    let con = server.connection();
    Mutex::new((server, con))
});

/// The keys among `keys` that Redis' `SCAN MATCH pattern` returns.
fn redis_matches(keys: &BTreeSet<String>, pattern: &str) -> BTreeSet<String> {
    let mut guard = SERVER.lock().unwrap();
    let con = &mut guard.1;
    let () = redis::cmd("FLUSHDB").query(con).unwrap();
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("SET").arg(k).arg(1).ignore();
    }
    let () = pipe.query(con).unwrap();
    helpers::scan(con, pattern).into_iter().collect()
}

fn ours(keys: &BTreeSet<String>, pattern: &str) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| glob_match(pattern, k))
        .cloned()
        .collect()
}

fn text(alphabet: &'static [char], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), 0..=max)
        .prop_map(|cs| cs.into_iter().collect())
}

// Non-ASCII characters are bytes from 0x80 up, which Redis' ranges
// compare as signed C chars.
const PATTERN_CHARS: &[char] = &[
    'a', 'b', 'c', '-', '[', ']', '^', '\\', '*', '?', ':', 'é', '€',
];
const KEY_CHARS: &[char] = &[
    'a', 'b', 'c', '-', '[', ']', '^', '\\', '*', '?', ':', 'z', 'é', '€',
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_matcher_agrees_with_redis(
        pattern in text(PATTERN_CHARS, 7),
        keys in prop::collection::btree_set(text(KEY_CHARS, 5).prop_filter("keys are not empty", |k| !k.is_empty()), 1..40),
    ) {
        prop_assert_eq!(ours(&keys, &pattern), redis_matches(&keys, &pattern), "pattern {:?}", pattern);
    }
}

#[test]
fn odd_hand_written_patterns_agree_with_redis() {
    let keys: BTreeSet<String> = [
        "a", "b", "ab", "a]", "]", "^", "-", "\\", "a-", "a\\", "ab]", "x", "a*", "[", "a[b",
        "abc", "é", "aé", "€", "\u{7f}", "ÿ",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for pattern in [
        "[]",
        "a[]",
        "[^]",
        "[",
        "a[",
        "a[b",
        "[a-]",
        "[a-]]",
        "[\\a-c]",
        "[a-\\c]",
        "[]a]",
        "[^a-]",
        "a\\",
        "\\",
        "[\\]]",
        "[c-a]",
        "*[",
        "**",
        "?",
        "[!a]",
        "a[^]b",
        "[a-é]*",
        "[é-a]*",
        "[\u{7f}-é]*",
        "[^a-é]*",
        "?[\u{80}-\u{bf}]",
        "[é]*",
    ] {
        assert_eq!(
            ours(&keys, pattern),
            redis_matches(&keys, pattern),
            "pattern {pattern:?}"
        );
    }
}
