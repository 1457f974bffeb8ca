//! Django's cache test-suite semantics (`tests/cache/tests.py`,
//! `BaseCacheTests`), test for test where they apply, on the local store and
//! on a real Redis. Django's per-call `version=` is a per-cache version here.

mod support;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use support::Shared;
use tg_cache::timeout::MEDIUM;
use tg_cache::{Cache, CacheConfig, Error, Timeout, Ttl};

for_each_store!(
    test_simple,
    test_add,
    test_non_existent,
    test_get_many,
    test_delete,
    test_has_key,
    test_incr,
    test_decr,
    test_data_types,
    test_expiration,
    test_touch,
    test_unicode,
    test_binary_string,
    test_set_many,
    test_delete_many,
    test_forever_timeout,
    test_zero_timeout,
    test_float_timeout,
    test_incr_decr_timeout,
    test_cull,
    test_cull_with_max_entries_one,
    test_lru_get,
    test_lru_set,
    test_lru_incr,
    test_set_fail_on_encode_error,
    test_add_fail_on_encode_error,
    test_get_or_set,
    test_get_or_set_version,
    test_cache_versioning_get_set,
    test_cache_versioning_add,
    test_cache_versioning_has_key,
    test_cache_versioning_delete,
    test_cache_versioning_incr_decr,
    test_cache_versioning_get_set_many,
    test_cache_versioning_namespaces_never_collide,
);

fn s(v: &str) -> String {
    v.to_owned()
}

/// Another cache on the same store kind as `cache` (the same Redis), built
/// from a configuration tweaked by `f`. Local stores are per cache.
fn sibling(server: Option<&Shared<'_>>, f: impl Fn(CacheConfig) -> CacheConfig) -> Cache {
    let cfg = match server {
        Some(s) => s.config(),
        None => CacheConfig::local(),
    };
    f(cfg).build().unwrap()
}

async fn test_simple(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("key", &s("value"), MEDIUM).await.unwrap();
    assert_eq!(
        cache.get::<String>("key").await.unwrap().as_deref(),
        Some("value")
    );
}

async fn test_add(cache: &Cache, _: Option<&Shared<'_>>) {
    assert!(cache.add("addkey1", &s("value"), MEDIUM).await.unwrap());
    assert!(!cache.add("addkey1", &s("newvalue"), MEDIUM).await.unwrap());
    assert_eq!(
        cache.get::<String>("addkey1").await.unwrap().as_deref(),
        Some("value")
    );
}

async fn test_non_existent(cache: &Cache, _: Option<&Shared<'_>>) {
    assert_eq!(cache.get::<String>("does_not_exist").await.unwrap(), None);
}

async fn test_get_many(cache: &Cache, _: Option<&Shared<'_>>) {
    for k in ["a", "b", "c", "d"] {
        cache.set(k, &s(k), MEDIUM).await.unwrap();
    }
    let m = cache
        .get_many::<String, _>(&["a", "c", "d", "nope"])
        .await
        .unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m["a"], "a");
    assert_eq!(m["d"], "d");
}

async fn test_delete(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("key1", &s("spam"), MEDIUM).await.unwrap();
    cache.set("key2", &s("eggs"), MEDIUM).await.unwrap();
    assert!(cache.delete("key1").await.unwrap());
    assert_eq!(cache.get::<String>("key1").await.unwrap(), None);
    assert!(cache.get::<String>("key2").await.unwrap().is_some());
    assert!(!cache.delete("key1").await.unwrap());
}

async fn test_has_key(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("hello1", &s("goodbye1"), MEDIUM).await.unwrap();
    assert!(cache.has_key("hello1").await.unwrap());
    assert!(!cache.has_key("goodbye1").await.unwrap());
    cache
        .set("no_expiry", &s("here"), Timeout::Never)
        .await
        .unwrap();
    assert!(cache.has_key("no_expiry").await.unwrap());
    cache.set("null", &None::<i32>, MEDIUM).await.unwrap();
    assert!(cache.has_key("null").await.unwrap());
}

async fn test_incr(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("answer", &41, MEDIUM).await.unwrap();
    assert_eq!(cache.incr("answer", 1).await.unwrap(), 42);
    assert_eq!(cache.get::<i32>("answer").await.unwrap(), Some(42));
    assert_eq!(cache.incr("answer", 10).await.unwrap(), 52);
    assert_eq!(cache.incr("answer", -10).await.unwrap(), 42);
    assert!(matches!(
        cache.incr("does_not_exist", 1).await,
        Err(Error::MissingKey(_))
    ));
    assert!(matches!(
        cache.incr("does_not_exist", -1).await,
        Err(Error::MissingKey(_))
    ));
    cache.set("null", &None::<i32>, MEDIUM).await.unwrap();
    assert!(matches!(
        cache.incr("null", 1).await,
        Err(Error::NotAnInteger(_))
    ));
}

async fn test_decr(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("answer", &43, MEDIUM).await.unwrap();
    assert_eq!(cache.decr("answer", 1).await.unwrap(), 42);
    assert_eq!(cache.get::<i32>("answer").await.unwrap(), Some(42));
    assert_eq!(cache.decr("answer", 10).await.unwrap(), 32);
    assert_eq!(cache.decr("answer", -10).await.unwrap(), 42);
    assert!(matches!(
        cache.decr("does_not_exist", 1).await,
        Err(Error::MissingKey(_))
    ));
    // the edges: exact, and an overflow changes nothing
    cache.set("edge", &-1i64, MEDIUM).await.unwrap();
    assert_eq!(cache.decr("edge", i64::MIN).await.unwrap(), i64::MAX);
    assert!(matches!(
        cache.decr("edge", -1).await,
        Err(Error::NotAnInteger(_))
    ));
    assert_eq!(cache.get::<i64>("edge").await.unwrap(), Some(i64::MAX));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stuff {
    string: String,
    int: i64,
    big: u64,
    float: f64,
    list: Vec<i32>,
    tuple: (i32, String),
    map: BTreeMap<String, Vec<bool>>,
    int_keys: HashMap<u32, String>,
    nothing: Option<i32>,
    something: Option<Option<i32>>,
    bytes: Vec<u8>,
    unit: (),
    variant: Kind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Plain,
    Data { x: i32 },
}

async fn test_data_types(cache: &Cache, _: Option<&Shared<'_>>) {
    let stuff = Stuff {
        string: "this is a string".into(),
        int: 42,
        big: u64::MAX,
        float: 0.1,
        list: vec![1, 2, 3, 4],
        tuple: (1, "2".into()),
        map: BTreeMap::from([("A".into(), vec![true, false])]),
        int_keys: HashMap::from([(1, "one".into())]),
        nothing: None,
        something: Some(Some(3)),
        bytes: vec![0, 255],
        unit: (),
        variant: Kind::Data { x: 1 },
    };
    cache.set("stuff", &stuff, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<Stuff>("stuff").await.unwrap(), Some(stuff));
    cache.set("kind", &Kind::Plain, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<Kind>("kind").await.unwrap(), Some(Kind::Plain));
    cache.set("bool", &false, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<bool>("bool").await.unwrap(), Some(false));
}

async fn test_expiration(cache: &Cache, _: Option<&Shared<'_>>) {
    let short = Duration::from_millis(300);
    cache
        .set("expire1", &s("very quickly"), short)
        .await
        .unwrap();
    cache
        .set("expire2", &s("very quickly"), short)
        .await
        .unwrap();
    cache
        .set("expire3", &s("very quickly"), short)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(cache.get::<String>("expire1").await.unwrap(), None);
    assert!(cache.add("expire2", &s("newvalue"), MEDIUM).await.unwrap());
    assert_eq!(
        cache.get::<String>("expire2").await.unwrap().as_deref(),
        Some("newvalue")
    );
    assert!(!cache.has_key("expire3").await.unwrap());
}

async fn test_touch(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set("expire1", &s("very quickly"), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(cache.touch("expire1", MEDIUM).await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(cache.has_key("expire1").await.unwrap());
    cache
        .set("expire2", &s("very quickly"), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(cache.touch("expire2", Timeout::Never).await.unwrap());
    assert_eq!(cache.ttl("expire2").await.unwrap(), Some(Ttl::Forever));
    assert!(!cache.touch("nonexistent", MEDIUM).await.unwrap());
}

async fn test_unicode(cache: &Cache, _: Option<&Shared<'_>>) {
    let stuff: Vec<(&str, String)> = vec![
        ("ascii", s("ascii_value")),
        ("unicode_ascii", s("Iñtërnâtiônàlizætiøn1")),
        ("Iñtërnâtiônàlizætiøn", s("Iñtërnâtiônàlizætiøn2")),
    ];
    for (k, v) in &stuff {
        cache.delete(k).await.unwrap();
        cache.set(k, v, MEDIUM).await.unwrap();
        assert_eq!(cache.get::<String>(k).await.unwrap().as_ref(), Some(v));
        cache.delete(k).await.unwrap();
        assert!(cache.add(k, v, MEDIUM).await.unwrap());
        assert_eq!(cache.get::<String>(k).await.unwrap().as_ref(), Some(v));
    }
    cache.delete_many(&["ascii"]).await.unwrap();
    cache.set_many(&stuff, MEDIUM).await.unwrap();
    for (k, v) in &stuff {
        assert_eq!(cache.get::<String>(k).await.unwrap().as_ref(), Some(v));
    }
}

async fn test_binary_string(cache: &Cache, _: Option<&Shared<'_>>) {
    let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    cache.set("binary1", &value, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<Vec<u8>>("binary1").await.unwrap(), Some(value));
}

async fn test_set_many(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set_many(&[("key1", s("spam")), ("key2", s("eggs"))], MEDIUM)
        .await
        .unwrap();
    assert_eq!(
        cache.get::<String>("key1").await.unwrap().as_deref(),
        Some("spam")
    );
    assert_eq!(
        cache.get::<String>("key2").await.unwrap().as_deref(),
        Some("eggs")
    );
    // test_set_many_expiration
    cache
        .set_many(
            &[("key1", s("spam")), ("key2", s("eggs"))],
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(cache.get::<String>("key1").await.unwrap(), None);
}

async fn test_delete_many(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set_many(
            &[("key1", s("spam")), ("key2", s("eggs")), ("key3", s("ham"))],
            MEDIUM,
        )
        .await
        .unwrap();
    assert_eq!(cache.delete_many(&["key1", "key2"]).await.unwrap(), 2);
    assert_eq!(cache.get::<String>("key1").await.unwrap(), None);
    assert!(cache.has_key("key3").await.unwrap());
}

async fn test_forever_timeout(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("key1", &s("eggs"), Timeout::Never).await.unwrap();
    assert_eq!(cache.ttl("key1").await.unwrap(), Some(Ttl::Forever));
    assert!(cache.add("key2", &s("ham"), Timeout::Never).await.unwrap());
    assert!(
        !cache
            .add("key1", &s("new eggs"), Timeout::Never)
            .await
            .unwrap()
    );
    assert_eq!(
        cache.get::<String>("key1").await.unwrap().as_deref(),
        Some("eggs")
    );
    cache
        .set("key3", &s("sausage"), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(cache.touch("key3", Timeout::Never).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cache.has_key("key3").await.unwrap());
}

async fn test_zero_timeout(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("key1", &s("eggs"), 0u64).await.unwrap();
    assert_eq!(cache.get::<String>("key1").await.unwrap(), None);
    assert!(!cache.add("key2", &s("ham"), 0u64).await.unwrap());
    assert_eq!(cache.get::<String>("key2").await.unwrap(), None);
    cache
        .set_many(
            &[("key3", s("sausage")), ("key4", s("lobster bisque"))],
            0u64,
        )
        .await
        .unwrap();
    assert_eq!(cache.get::<String>("key3").await.unwrap(), None);
    cache
        .set("key5", &s("belgian fries"), MEDIUM)
        .await
        .unwrap();
    assert!(cache.touch("key5", 0u64).await.unwrap());
    assert_eq!(cache.get::<String>("key5").await.unwrap(), None);
    // get_or_set with a zero timeout computes and stores nothing
    assert_eq!(cache.get_or_set("key6", 0u64, || async { 6 }).await, 6);
    assert!(!cache.has_key("key6").await.unwrap());
}

async fn test_float_timeout(cache: &Cache, _: Option<&Shared<'_>>) {
    // Django accepts fractional seconds: `cache.set("key1", "spam", 100.2)`.
    cache
        .set("key1", &s("spam"), Duration::from_secs_f64(100.2))
        .await
        .unwrap();
    assert_eq!(
        cache.get::<String>("key1").await.unwrap().as_deref(),
        Some("spam")
    );
    match cache.ttl("key1").await.unwrap() {
        Some(Ttl::Remaining(d)) => assert!(
            d > Duration::from_secs(99) && d <= Duration::from_millis(100_200),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    cache
        .set("key2", &s("spam"), Duration::from_secs_f64(0.25))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get::<String>("key2").await.unwrap(), None);
}

async fn test_incr_decr_timeout(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set("key", &1, Duration::from_secs(100))
        .await
        .unwrap();
    cache.incr("key", 1).await.unwrap();
    cache.decr("key", 1).await.unwrap();
    match cache.ttl("key").await.unwrap() {
        Some(Ttl::Remaining(d)) => assert!(d > Duration::from_secs(98), "{d:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.get::<i32>("key").await.unwrap(), Some(1));
}

async fn test_cull(_: &Cache, server: Option<&Shared<'_>>) {
    // Django: a culled cache keeps at most `max_entries`, and a key just
    // set is readable. Django culls a third of the entries when full
    // (CULL_FREQUENCY = 3, so 29 of 49 remain at MAX_ENTRIES = 30);
    // tg-cache evicts the least recently used entry, one per insert, so a
    // full store stays full: 30 remain, the newest ones.
    let cache = sibling(server, |c| c.max_entries(30));
    for i in 1..50 {
        let k = format!("cull{i}");
        cache.set(&k, &s("value"), MEDIUM).await.unwrap();
        assert!(cache.has_key(&k).await.unwrap(), "{k}");
        if let Some(n) = cache.local_len() {
            // Never more than the bound once a write returned.
            assert!(n <= 30, "{n} entries after writing {k}");
        }
    }
    if cache.local_len().is_some() {
        assert_eq!(kept_count(&cache, 1..50).await, 30);
        assert_eq!(kept_count(&cache, 20..50).await, 30);
    }
}

/// Django's `limit_locmem_entries` (MAX_ENTRIES = 9), local store only.
fn nine(server: Option<&Shared<'_>>) -> Option<Cache> {
    server
        .is_none()
        .then(|| CacheConfig::local().max_entries(9).build().unwrap())
}

async fn test_lru_get(_: &Cache, server: Option<&Shared<'_>>) {
    // get() makes a key recent. (Django's cull then drops 6, 7 and 8;
    // tg-cache drops the one least recently used entry, 6.)
    let Some(cache) = nine(server) else { return };
    for key in 0..9 {
        cache
            .set(&key.to_string(), &key, Timeout::Never)
            .await
            .unwrap();
    }
    for key in 0..6 {
        assert_eq!(cache.get::<i32>(&key.to_string()).await.unwrap(), Some(key));
    }
    cache.set("9", &9, Timeout::Never).await.unwrap();
    for key in 0..6 {
        assert_eq!(
            cache.get::<i32>(&key.to_string()).await.unwrap(),
            Some(key),
            "{key}"
        );
    }
    assert_eq!(cache.get::<i32>("6").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("9").await.unwrap(), Some(9));
    assert_eq!(cache.local_len(), Some(9));
}

async fn test_lru_set(_: &Cache, server: Option<&Shared<'_>>) {
    // set() makes a key recent.
    let Some(cache) = nine(server) else { return };
    for key in 0..9 {
        cache
            .set(&key.to_string(), &key, Timeout::Never)
            .await
            .unwrap();
    }
    for key in 3..9 {
        cache
            .set(&key.to_string(), &key, Timeout::Never)
            .await
            .unwrap();
    }
    cache.set("9", &9, Timeout::Never).await.unwrap();
    for key in 3..10 {
        assert_eq!(
            cache.get::<i32>(&key.to_string()).await.unwrap(),
            Some(key),
            "{key}"
        );
    }
    assert_eq!(cache.get::<i32>("0").await.unwrap(), None);
    assert_eq!(cache.local_len(), Some(9));
}

async fn test_lru_incr(_: &Cache, server: Option<&Shared<'_>>) {
    // incr() makes a key recent.
    let Some(cache) = nine(server) else { return };
    for key in 0..9 {
        cache
            .set(&key.to_string(), &key, Timeout::Never)
            .await
            .unwrap();
    }
    for key in 0..6 {
        assert_eq!(
            cache.incr(&key.to_string(), 1).await.unwrap(),
            i64::from(key) + 1
        );
    }
    cache.set("9", &9, Timeout::Never).await.unwrap();
    for key in 0..6 {
        assert_eq!(
            cache.get::<i64>(&key.to_string()).await.unwrap(),
            Some(i64::from(key) + 1),
            "{key}"
        );
    }
    assert_eq!(cache.get::<i32>("6").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("9").await.unwrap(), Some(9));
}

async fn kept_count(cache: &Cache, range: std::ops::Range<i32>) -> usize {
    let mut n = 0;
    for i in range {
        if cache.has_key(&format!("cull{i}")).await.unwrap() {
            n += 1;
        }
    }
    n
}

async fn test_cull_with_max_entries_one(_: &Cache, server: Option<&Shared<'_>>) {
    // The smallest bound: each new key replaces the last one. (Django's
    // `test_zero_cull` is about `CULL_FREQUENCY = 0`, which tg-cache does
    // not have: moka evicts by LRU.)
    let cache = sibling(server, |c| c.max_entries(1));
    for i in 1..20 {
        let k = format!("cull{i}");
        cache.set(&k, &i, MEDIUM).await.unwrap();
        assert_eq!(cache.get::<i32>(&k).await.unwrap(), Some(i));
    }
    if let Some(n) = cache.local_len() {
        assert_eq!(n, 1);
    }
}

async fn test_set_fail_on_encode_error(cache: &Cache, _: Option<&Shared<'_>>) {
    // Django's test_set_fail_on_pickleerror: the error surfaces at set.
    let unencodable = HashMap::from([((1, 2), 3)]);
    assert!(matches!(
        cache.set("unencodable", &unencodable, MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        cache.set("inf", &f64::INFINITY, MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(!cache.has_key("unencodable").await.unwrap());
}

async fn test_add_fail_on_encode_error(cache: &Cache, _: Option<&Shared<'_>>) {
    let unencodable = HashMap::from([((1, 2), 3)]);
    assert!(matches!(
        cache.add("unencodable", &unencodable, MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(!cache.has_key("unencodable").await.unwrap());
}

async fn test_get_or_set(cache: &Cache, _: Option<&Shared<'_>>) {
    assert_eq!(cache.get::<String>("projector").await.unwrap(), None);
    assert_eq!(
        cache.get_or_set("projector", MEDIUM, || async { 42 }).await,
        42
    );
    assert_eq!(cache.get::<i32>("projector").await.unwrap(), Some(42));
    // test_get_or_set_callable_returning_none: a None is cached too
    assert_eq!(
        cache
            .get_or_set("null", MEDIUM, || async { None::<i32> })
            .await,
        None
    );
    assert_eq!(
        cache.get_or_set("null", MEDIUM, || async { Some(1) }).await,
        None
    );
}

async fn test_get_or_set_version(cache: &Cache, server: Option<&Shared<'_>>) {
    let v2 = sibling(server, |c| c.version(2));
    assert_eq!(cache.get_or_set("brian", MEDIUM, || async { 42 }).await, 42);
    assert_eq!(v2.get_or_set("brian", MEDIUM, || async { 43 }).await, 43);
    assert_eq!(cache.get::<i32>("brian").await.unwrap(), Some(42));
    assert_eq!(v2.get::<i32>("brian").await.unwrap(), Some(43));
}

async fn test_cache_versioning_get_set(_: &Cache, server: Option<&Shared<'_>>) {
    // A cache with no version is version 1, as in Django.
    let (v1, v1b, v2) = versions(server);
    v1.set("answer1", &42, MEDIUM).await.unwrap();
    assert_eq!(v1.get::<i32>("answer1").await.unwrap(), Some(42));
    assert_eq!(v2.get::<i32>("answer1").await.unwrap(), None);
    v2.set("answer1", &43, MEDIUM).await.unwrap();
    assert_eq!(v1.get::<i32>("answer1").await.unwrap(), Some(42));
    assert_eq!(v2.get::<i32>("answer1").await.unwrap(), Some(43));
    if server.is_some() {
        assert_eq!(v1b.get::<i32>("answer1").await.unwrap(), Some(42));
    }
}

/// A prefixed cache without version, the same with `version(1)`, and
/// with `version(2)`, all on the same store when it is shared.
fn versions(server: Option<&Shared<'_>>) -> (Cache, Cache, Cache) {
    (
        sibling(server, |c| c.key_prefix("site")),
        sibling(server, |c| c.key_prefix("site").version(1)),
        sibling(server, |c| c.key_prefix("site").version(2)),
    )
}

async fn test_cache_versioning_add(_: &Cache, server: Option<&Shared<'_>>) {
    let (v1, _, v2) = versions(server);
    assert!(v1.add("answer1", &42, MEDIUM).await.unwrap());
    assert!(!v1.add("answer1", &37, MEDIUM).await.unwrap());
    assert_eq!(v1.get::<i32>("answer1").await.unwrap(), Some(42));
    assert!(v2.add("answer1", &37, MEDIUM).await.unwrap());
    assert_eq!(v2.get::<i32>("answer1").await.unwrap(), Some(37));
    assert_eq!(v1.get::<i32>("answer1").await.unwrap(), Some(42));
}

async fn test_cache_versioning_has_key(_: &Cache, server: Option<&Shared<'_>>) {
    let (v1, _, v2) = versions(server);
    v1.set("answer1", &42, MEDIUM).await.unwrap();
    assert!(v1.has_key("answer1").await.unwrap());
    assert!(!v2.has_key("answer1").await.unwrap());
}

async fn test_cache_versioning_delete(_: &Cache, server: Option<&Shared<'_>>) {
    let (v1, _, v2) = versions(server);
    v1.set("answer1", &37, MEDIUM).await.unwrap();
    v2.set("answer1", &42, MEDIUM).await.unwrap();
    assert!(v1.delete("answer1").await.unwrap());
    assert_eq!(v1.get::<i32>("answer1").await.unwrap(), None);
    assert_eq!(v2.get::<i32>("answer1").await.unwrap(), Some(42));
}

async fn test_cache_versioning_incr_decr(_: &Cache, server: Option<&Shared<'_>>) {
    let (v1, _, v2) = versions(server);
    v1.set("answer1", &37, MEDIUM).await.unwrap();
    v2.set("answer1", &42, MEDIUM).await.unwrap();
    assert_eq!(v1.incr("answer1", 1).await.unwrap(), 38);
    assert_eq!(v2.get::<i32>("answer1").await.unwrap(), Some(42));
    assert_eq!(v2.decr("answer1", 1).await.unwrap(), 41);
    assert_eq!(v1.get::<i32>("answer1").await.unwrap(), Some(38));
}

async fn test_cache_versioning_get_set_many(_: &Cache, server: Option<&Shared<'_>>) {
    let (v1, _, v2) = versions(server);
    v1.set_many(&[("ford1", 37), ("arthur1", 42)], MEDIUM)
        .await
        .unwrap();
    assert_eq!(
        v1.get_many::<i32, _>(&["ford1", "arthur1"])
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        v2.get_many::<i32, _>(&["ford1", "arthur1"])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn test_cache_versioning_namespaces_never_collide(bare: &Cache, server: Option<&Shared<'_>>) {
    // `1:answer` in a cache without version or prefix, and `answer` in a
    // `version(1)` cache, are different keys.
    let v1 = sibling(server, |c| c.version(1));
    if server.is_some_and(Shared::bare) {
        // With Django's key function, as in Django, no version is version
        // 1: the two caches are one namespace.
        assert_eq!(bare.make_key("answer").unwrap(), ":1:answer");
        assert_eq!(bare.make_key("1:answer").unwrap(), ":1:1:answer");
        v1.set("answer", &s("v1"), MEDIUM).await.unwrap();
        assert_eq!(
            bare.get::<String>("answer").await.unwrap().as_deref(),
            Some("v1")
        );
        let p2 = sibling(server, |c| c.key_prefix("p").version(2));
        assert_eq!(p2.make_key("answer").unwrap(), "p:2:answer");
        assert_eq!(p2.get::<String>("answer").await.unwrap(), None);
        return;
    }
    bare.set("1:answer", &s("bare"), MEDIUM).await.unwrap();
    v1.set("answer", &s("v1"), MEDIUM).await.unwrap();
    assert_eq!(
        bare.get::<String>("1:answer").await.unwrap().as_deref(),
        Some("bare")
    );
    assert_eq!(
        v1.get::<String>("answer").await.unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(v1.make_key("answer").unwrap(), ":1:answer");
    assert_eq!(bare.make_key("1:answer").unwrap(), "1:answer");
    // Django's format, the version always written (1 by default).
    let p = sibling(server, |c| c.key_prefix("p"));
    assert_eq!(p.make_key("answer").unwrap(), "p:1:answer");
    let p2 = sibling(server, |c| c.key_prefix("p").version(2));
    assert_eq!(p2.make_key("answer").unwrap(), "p:2:answer");
    // The forms that could be confused are refused.
    assert!(matches!(
        bare.set(":1:answer", &1, MEDIUM).await,
        Err(Error::InvalidKey { .. })
    ));
    let bad = match server {
        Some(s) => s.config(),
        None => CacheConfig::local(),
    };
    assert!(bad.key_prefix("p:1").build().is_err());
    if let Some(server) = server {
        let mut keys: Vec<String> = server.cmd(&["KEYS", "*"]);
        keys.sort();
        assert_eq!(keys, vec!["1:answer", ":1:answer"]);
    }
}
