//! Fuzz-style property tests of what tg-cache reads back and what it writes
//! into keys.
//!
//! * Stored values: arbitrary bytes planted in a real Redis (raw, behind a
//!   zlib header, as a valid zlib stream of junk, with and without a key
//!   family's epoch header) are read through `get::<T>` for several `T` and
//!   through `get_or_set`: never a panic or an error, a value only when the
//!   bytes really decode to it, each read within [`READ_BOUND`].
//! * Keys: [`KeyPart`], [`KeyBuilder`] and [`KeyPattern`] never panic, never
//!   put whitespace, control or glob characters (or separators) into an
//!   escaped value, and stay injective.
//!
//! Run: `cargo test --all-features --test fuzz` (a few seconds).

use proptest::prelude::*;
use std::io::Write;
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tg_cache::key::{KeyPart, glob_match};
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig, KeyBuilder, KeyPattern};

/// The longest one read of a small planted value may take.
const READ_BOUND: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(300);
/// A key of the family `tg:fn:fuzz`, whose values carry the epoch header.
const FAMILY_KEY: &str = "tg:fn:fuzz:case=1";
/// A key outside any family: stored raw.
const PLAIN_KEY: &str = "fuzz:plain";

struct Fixture {
    server: RedisServer,
    cache: Cache,
    epoch: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url())
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    // Creates the family's epoch.
    cache.blocking().set("tg:fn:fuzz:seed", &1, TTL).unwrap();
    let epoch: String = server.cmd(&["GET", "#epoch:tg:fn:fuzz"]);
    Fixture {
        server,
        cache,
        epoch,
    }
});

fn plant(key: &str, value: &[u8]) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut FIXTURE.server.connection())
        .unwrap();
}

/// How planted bytes are wrapped.
#[derive(Debug, Clone, Copy)]
enum Wrap {
    Raw,
    /// `0x78 0x9c` then the bytes: a zlib header over junk.
    ZlibHeader,
    /// A valid zlib stream whose content is the bytes.
    ZlibStream,
}

fn wrap(bytes: &[u8], how: Wrap) -> Vec<u8> {
    match how {
        Wrap::Raw => bytes.to_vec(),
        Wrap::ZlibHeader => [&[0x78, 0x9c][..], bytes].concat(),
        Wrap::ZlibStream => {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap()
        }
    }
}

/// The value plain JSON `bytes` decode to, as a reference.
fn expected<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    serde_json::from_slice(json).ok()
}

/// Plants `stored` at `key`, reads it as `T`, then through `get_or_set`.
/// `json` is what the value decodes from (`None`: do not compare, the
/// wrapping may or may not be taken as zlib).
fn read_back<T>(key: &str, stored: &[u8], json: Option<&[u8]>, fallback: T)
where
    T: tg_cache::CacheValue + PartialEq + std::fmt::Debug,
{
    let cache = FIXTURE.cache.blocking();
    plant(key, stored);
    let t = Instant::now();
    let got = cache.get::<T>(key);
    let took = t.elapsed();
    assert!(took < READ_BOUND, "get took {took:?}");
    let got = got.unwrap_or_else(|e| panic!("get::<{}> failed: {e}", std::any::type_name::<T>()));
    if let Some(json) = json {
        assert_eq!(
            got,
            expected::<T>(json),
            "get::<{}>",
            std::any::type_name::<T>()
        );
    }
    let t = Instant::now();
    let fb = fallback.clone();
    let v = cache.get_or_set(key, TTL, move || fb);
    let took = t.elapsed();
    assert!(took < READ_BOUND, "get_or_set took {took:?}");
    match got {
        Some(g) => assert_eq!(v, g, "get_or_set disagrees with get"),
        None => assert_eq!(v, fallback, "get_or_set of an unreadable value"),
    }
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // JSON-looking text, often almost valid.
        "[\\[\\]{}\",:0-9a-z.eE+-]{0,64}".prop_map(String::into_bytes),
        any::<String>().prop_map(|s| serde_json::to_vec(&s).unwrap()),
        proptest::collection::vec(any::<i64>(), 0..8).prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

fn check_all(bytes: &[u8], how: Wrap, family: bool) {
    let stored = wrap(bytes, how);
    // Raw bytes starting with a zlib header are read as zlib: no reference.
    let json = match how {
        Wrap::Raw if !(bytes.len() >= 2 && bytes[0] == 0x78) => Some(bytes),
        Wrap::ZlibStream => Some(bytes),
        _ => None,
    };
    let (key, stored) = if family {
        let mut v = format!("#{}:", FIXTURE.epoch).into_bytes();
        v.extend_from_slice(&stored);
        (FAMILY_KEY, v)
    } else {
        (PLAIN_KEY, stored)
    };
    read_back::<u64>(key, &stored, json, 7);
    read_back::<String>(key, &stored, json, "fallback".to_owned());
    read_back::<Vec<i64>>(key, &stored, json, vec![1, 2]);
    read_back::<Option<bool>>(key, &stored, json, Some(true));
    read_back::<serde_json::Value>(key, &stored, json, serde_json::json!({"f": 1}));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn stored_bytes_never_panic(bytes in bytes(), how in 0..3usize, family in any::<bool>()) {
        let how = [Wrap::Raw, Wrap::ZlibHeader, Wrap::ZlibStream][how];
        check_all(&bytes, how, family);
    }

    /// Bytes without the family's epoch header (or with a stale one) are
    /// never live: a miss, then the fallback.
    #[test]
    fn family_values_without_the_epoch_header_are_misses(bytes in bytes(), stale in any::<bool>()) {
        let stored = if stale {
            [&b"#0123456789abcdef0123456789abcdef:"[..], &bytes].concat()
        } else {
            bytes
        };
        plant(FAMILY_KEY, &stored);
        let got = FIXTURE.cache.blocking().get::<serde_json::Value>(FAMILY_KEY).unwrap();
        prop_assert_eq!(got, None);
    }
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Characters an escaped value must never contain: glob metacharacters and
/// key separators.
const FORBIDDEN: &[char] = &['*', '?', '[', ']', '\\', ':', '='];
/// Written by composite values (lists, tuples) around and between their
/// items; never inside an escaped scalar.
const STRUCTURAL: &[char] = &[',', '(', ')'];

fn clean(part: &str, composite: bool) -> bool {
    part.chars().all(|c| {
        c.is_ascii()
            && !c.is_whitespace()
            && !c.is_control()
            && !FORBIDDEN.contains(&c)
            && (composite || !STRUCTURAL.contains(&c))
    })
}

/// A value of one of several key-part types.
#[derive(Debug, Clone, PartialEq)]
enum V {
    S(String),
    I(i64),
    U(u128),
    F(f64),
    B(bool),
    C(char),
    N(Option<String>),
    L(Vec<String>),
    T((String, i32)),
}

impl KeyPart for V {
    fn write_key_part(&self, out: &mut String) {
        match self {
            V::S(s) => s.write_key_part(out),
            V::I(i) => i.write_key_part(out),
            V::U(u) => u.write_key_part(out),
            V::F(f) => f.write_key_part(out),
            V::B(b) => b.write_key_part(out),
            V::C(c) => c.write_key_part(out),
            V::N(n) => n.write_key_part(out),
            V::L(l) => l.write_key_part(out),
            V::T(t) => t.write_key_part(out),
        }
    }
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9:=*?%\\[\\]\\\\' ~,()\t\n\r\0'-]{0,10}",
        "[0-9]{1,4}(\\.[0-9]{1,2})?",
        Just("None".to_owned()),
        Just("true".to_owned()),
        Just("NaN".to_owned()),
        Just(String::new()),
    ]
}

fn value() -> impl Strategy<Value = V> {
    prop_oneof![
        string().prop_map(V::S),
        any::<i64>().prop_map(V::I),
        any::<u128>().prop_map(V::U),
        any::<f64>().prop_map(V::F),
        any::<bool>().prop_map(V::B),
        any::<char>().prop_map(V::C),
        proptest::option::of(string()).prop_map(V::N),
        proptest::collection::vec(string(), 0..4).prop_map(V::L),
        (string(), any::<i32>()).prop_map(V::T),
    ]
}

fn composite(v: &V) -> bool {
    matches!(v, V::L(_) | V::T(_))
}

/// Whether the escaping promises that `a` and `b` render differently when
/// they differ: values of one type, and a string against an integer, float,
/// bool or `None` (see the rules in `tg_cache::key`).
fn comparable(a: &V, b: &V) -> bool {
    let scalar = |v: &V| matches!(v, V::I(_) | V::U(_) | V::F(_) | V::B(_) | V::N(None));
    std::mem::discriminant(a) == std::mem::discriminant(b)
        || matches!(a, V::S(_)) && scalar(b)
        || matches!(b, V::S(_)) && scalar(a)
}

/// Two equal values. (Floats by bits, all NaNs equal.)
fn same(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::F(x), V::F(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn escaped_values_are_clean(v in value()) {
        let part = v.to_key_part();
        prop_assert!(clean(&part, composite(&v)), "{v:?} -> {part:?}");
    }

    #[test]
    fn escaping_is_injective(a in value(), b in value()) {
        if comparable(&a, &b) && !same(&a, &b) {
            prop_assert_ne!(a.to_key_part(), b.to_key_part(), "{:?} vs {:?}", a, b);
        }
    }

    #[test]
    fn builder_keys_are_injective_and_clean(
        n1 in string(), v1 in value(), n2 in string(), v2 in value(), p1 in value(), p2 in value(),
    ) {
        let k1 = KeyBuilder::new("tg:fn:fuzz").param(&n1, &v1).part(&p1).finish();
        let k2 = KeyBuilder::new("tg:fn:fuzz").param(&n2, &v2).part(&p2).finish();
        let tail = &k1["tg:fn:fuzz".len()..];
        prop_assert!(
            tail.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"*?[]\\".contains(c)),
            "{k1:?}"
        );
        let differ = |a: &V, b: &V| comparable(a, b) && !same(a, b);
        if n1 != n2 && comparable(&v1, &v2) && comparable(&p1, &p2)
            || n1 == n2 && (differ(&v1, &v2) && comparable(&p1, &p2) || same(&v1, &v2) && differ(&p1, &p2))
        {
            prop_assert_ne!(k1, k2);
        }
    }

    #[test]
    fn patterns_match_exactly_their_keys(
        prefix in string(), name in string(), v in value(), other in value(), rest in value(),
    ) {
        let pattern = KeyPattern::prefix(&prefix).param(&name, &v).any();
        let key = KeyBuilder::new(&prefix).param(&name, &v).part(&rest).finish();
        let other_key = KeyBuilder::new(&prefix).param(&name, &other).part(&rest).finish();
        // Keys are never shortened: every key matches, whatever its length.
        prop_assert!(glob_match(pattern.as_str(), &key), "{pattern} vs {key}");
        if comparable(&v, &other) && !same(&v, &other) {
            prop_assert!(!glob_match(pattern.as_str(), &other_key), "{pattern} vs {other_key}");
        }
    }
}
