//! One behaviour on every store (`tg_cache::parity`): each test runs on the
//! local store and on a real Redis, and asserts the same outcome on both.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::Shared;
use tg_cache::timeout::MEDIUM;
use tg_cache::{Cache, CacheConfig, Error};

for_each_store!(
    incr_accepts_any_integer_type,
    reads_across_types_follow_json,
    incr_is_exact_over_the_whole_i64_range,
    incr_on_a_family_key_is_exact,
    decr_by_i64_min_is_exact,
    unencodable_values_are_refused_at_set,
    unencodable_values_are_returned_not_stored,
    non_finite_floats_are_refused,
    option_nesting_rule,
    just_set_key_is_readable_when_full,
);

async fn incr_accepts_any_integer_type(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("i32", &41i32, MEDIUM).await.unwrap();
    assert_eq!(cache.incr("i32", 1).await.unwrap(), 42);
    assert_eq!(cache.get::<i32>("i32").await.unwrap(), Some(42));
    assert_eq!(cache.get::<i64>("i32").await.unwrap(), Some(42));
    cache.set("u8", &7u8, MEDIUM).await.unwrap();
    assert_eq!(cache.decr("u8", 10).await.unwrap(), -3);
    cache.set("opt", &Some(5u16), MEDIUM).await.unwrap();
    assert_eq!(cache.incr("opt", 1).await.unwrap(), 6);
    cache.set("big", &u64::MAX, MEDIUM).await.unwrap();
    assert!(matches!(
        cache.incr("big", 0).await,
        Err(Error::NotAnInteger(_))
    ));
    for (k, v) in [
        ("f", serde_json::json!(41.0)),
        ("s", serde_json::json!("41")),
    ] {
        cache.set(k, &v, MEDIUM).await.unwrap();
        assert!(
            matches!(cache.incr(k, 1).await, Err(Error::NotAnInteger(_))),
            "{k}"
        );
    }
    assert_eq!(cache.stats().errors, 0);
}

async fn reads_across_types_follow_json(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("n", &7i64, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<i32>("n").await.unwrap(), Some(7));
    assert_eq!(cache.get::<f64>("n").await.unwrap(), Some(7.0));
    assert_eq!(cache.get::<Option<u8>>("n").await.unwrap(), Some(Some(7)));
    assert_eq!(cache.get::<String>("n").await.unwrap(), None);
    cache.set("big", &300i64, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<u8>("big").await.unwrap(), None);
    cache.set("v", &vec![1u8, 2], MEDIUM).await.unwrap();
    assert_eq!(
        cache.get::<Vec<i64>>("v").await.unwrap(),
        Some(vec![1i64, 2])
    );
    assert_eq!(cache.get::<(u8, u8)>("v").await.unwrap(), Some((1, 2)));
    assert_eq!(cache.stats().decode_errors, 2);
    // get_many and get_or_set read the same way
    let m = cache.get_many::<i32, _>(&["n", "v"]).await.unwrap();
    assert_eq!(m.get("n"), Some(&7));
    assert_eq!(m.len(), 1);
    assert_eq!(cache.get_or_set("n", MEDIUM, || async { 0u32 }).await, 7u32);
}

async fn incr_is_exact_over_the_whole_i64_range(cache: &Cache, _: Option<&Shared<'_>>) {
    let two53 = 1i64 << 53;
    cache.set("n", &two53, MEDIUM).await.unwrap();
    assert_eq!(cache.incr("n", 1).await.unwrap(), two53 + 1);
    assert_eq!(cache.get::<i64>("n").await.unwrap(), Some(two53 + 1));
    cache.set("n", &(i64::MAX - 2), MEDIUM).await.unwrap();
    assert_eq!(cache.incr("n", 2).await.unwrap(), i64::MAX);
    assert!(matches!(
        cache.incr("n", 1).await,
        Err(Error::NotAnInteger(_))
    ));
    assert_eq!(cache.get::<i64>("n").await.unwrap(), Some(i64::MAX));
    assert_eq!(cache.incr("n", i64::MIN).await.unwrap(), -1);
    cache.set("m", &(i64::MIN + 1), MEDIUM).await.unwrap();
    assert_eq!(cache.decr("m", 1).await.unwrap(), i64::MIN);
    assert!(matches!(
        cache.decr("m", 1).await,
        Err(Error::NotAnInteger(_))
    ));
    assert_eq!(cache.incr("m", i64::MAX).await.unwrap(), -1);
}

async fn incr_on_a_family_key_is_exact(cache: &Cache, server: Option<&Shared<'_>>) {
    let k = "tg:fn:counter:x=1";
    let big = i64::MAX - 5;
    cache.set(k, &big, MEDIUM).await.unwrap();
    assert_eq!(cache.incr(k, 3).await.unwrap(), big + 3);
    assert_eq!(cache.incr(k, 2).await.unwrap(), i64::MAX);
    assert!(matches!(
        cache.incr(k, 1).await,
        Err(Error::NotAnInteger(_))
    ));
    assert_eq!(cache.get::<i64>(k).await.unwrap(), Some(i64::MAX));
    cache.set(k, &((1i64 << 53) + 1), MEDIUM).await.unwrap();
    assert_eq!(cache.incr(k, 2).await.unwrap(), (1i64 << 53) + 3);
    assert_eq!(
        cache.decr(k, i64::MAX).await.unwrap(),
        (1i64 << 53) + 3 - i64::MAX
    );
    cache.set(k, &-10i64, MEDIUM).await.unwrap();
    assert_eq!(cache.incr(k, 10).await.unwrap(), 0);
    assert_eq!(cache.decr(k, 1).await.unwrap(), -1);
    if let Some(server) = server {
        let raw: String = server.cmd(&["GET", &server.stored(k)]);
        if server.bare() {
            assert_eq!(raw, "-1", "a Django-shared value has no header");
        } else {
            assert_eq!(support::payload(&raw), "-1");
        }
    }
    cache.invalidate_family("tg:fn:counter").await.unwrap();
    assert!(matches!(cache.incr(k, 1).await, Err(Error::MissingKey(_))));
}

async fn decr_by_i64_min_is_exact(cache: &Cache, _: Option<&Shared<'_>>) {
    for k in ["plain", "tg:fn:d:x=1"] {
        cache.set(k, &-1i64, MEDIUM).await.unwrap();
        assert_eq!(cache.decr(k, i64::MIN).await.unwrap(), i64::MAX, "{k}");
        cache.set(k, &i64::MIN, MEDIUM).await.unwrap();
        assert_eq!(cache.decr(k, i64::MIN).await.unwrap(), 0, "{k}");
        cache.set(k, &0i64, MEDIUM).await.unwrap();
        assert!(
            matches!(cache.decr(k, i64::MIN).await, Err(Error::NotAnInteger(_))),
            "{k}"
        );
        assert_eq!(cache.get::<i64>(k).await.unwrap(), Some(0), "{k}");
        assert_eq!(cache.decr(k, i64::MAX).await.unwrap(), -i64::MAX, "{k}");
        assert_eq!(cache.decr(k, 1).await.unwrap(), i64::MIN, "{k}");
    }
}

fn tuple_keyed() -> HashMap<(i32, i32), i32> {
    HashMap::from([((1, 2), 3)])
}

async fn unencodable_values_are_refused_at_set(cache: &Cache, _: Option<&Shared<'_>>) {
    let m = tuple_keyed();
    assert!(matches!(
        cache.set("m", &m, MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        cache.add("m", &m, MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        cache.set_many(&[("a", m.clone()), ("b", m)], MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    for k in ["m", "a", "b"] {
        assert!(!cache.has_key(k).await.unwrap(), "{k}");
    }
    assert_eq!(cache.stats().sets, 0);
}

async fn unencodable_values_are_returned_not_stored(cache: &Cache, _: Option<&Shared<'_>>) {
    let errors = cache.stats().errors;
    let v = cache
        .get_or_set("m", MEDIUM, || async { tuple_keyed() })
        .await;
    assert_eq!(v, tuple_keyed());
    assert!(!cache.has_key("m").await.unwrap());
    assert_eq!(cache.stats().sets, 0);
    assert_eq!(cache.stats().errors, errors + 1);
    // the lease was released: the next call computes again, no wait
    let v = tokio::time::timeout(
        Duration::from_secs(2),
        cache.get_or_set("m", MEDIUM, || async { tuple_keyed() }),
    )
    .await
    .unwrap();
    assert_eq!(v, tuple_keyed());
    // and a cached function with such a result
    let r: Result<f64, String> = cache
        .try_get_or_set("tg:fn:inf:", MEDIUM, || async { Ok(f64::INFINITY) })
        .await;
    assert_eq!(r, Ok(f64::INFINITY));
    assert!(!cache.has_key("tg:fn:inf:").await.unwrap());
}

async fn non_finite_floats_are_refused(cache: &Cache, _: Option<&Shared<'_>>) {
    for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
        let r = cache.set("f", &v, MEDIUM).await;
        match r {
            Err(Error::Encode { source, .. }) => {
                assert!(source.to_string().contains("non-finite"), "{source}")
            }
            other => panic!("{v}: {other:?}"),
        }
        assert!(!cache.has_key("f").await.unwrap());
    }
    assert!(matches!(
        cache.set("v", &vec![1.0, f64::NAN], MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        cache.set("o", &Some(f32::INFINITY), MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    // finite extremes round-trip
    for v in [f64::MAX, f64::MIN_POSITIVE, -0.0, 1e-300] {
        cache.set("f", &v, MEDIUM).await.unwrap();
        assert_eq!(cache.get::<f64>("f").await.unwrap(), Some(v));
    }
}

async fn option_nesting_rule(cache: &Cache, _: Option<&Shared<'_>>) {
    // None is stored, and is a hit (Some(None)), not a miss.
    cache
        .set("none", &None::<Option<i32>>, MEDIUM)
        .await
        .unwrap();
    assert!(cache.has_key("none").await.unwrap());
    assert_eq!(
        cache.get::<Option<Option<i32>>>("none").await.unwrap(),
        Some(None)
    );
    cache.set("ss", &Some(Some(3)), MEDIUM).await.unwrap();
    assert_eq!(
        cache.get::<Option<Option<i32>>>("ss").await.unwrap(),
        Some(Some(Some(3)))
    );
    // Some(None) is JSON null, like None: refused on every store.
    assert!(matches!(
        cache.set("sn", &Some(None::<i32>), MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        cache.set("su", &vec![Some(())], MEDIUM).await,
        Err(Error::Encode { .. })
    ));
    assert!(!cache.has_key("sn").await.unwrap());
    // get_or_set of an Option<Option<T>>: Some(None) is returned, not stored
    let v = cache
        .get_or_set("g", MEDIUM, || async { Some(None::<i32>) })
        .await;
    assert_eq!(v, Some(None));
    assert!(!cache.has_key("g").await.unwrap());
}

async fn just_set_key_is_readable_when_full(_: &Cache, server: Option<&Shared<'_>>) {
    let cache = small(server, 3);
    for i in 0..50 {
        let k = format!("k{i}");
        cache.set(&k, &i, MEDIUM).await.unwrap();
        assert_eq!(cache.get::<i32>(&k).await.unwrap(), Some(i), "{k}");
    }
    if let Some(n) = cache.local_len() {
        assert!(n <= 3, "{n}");
    }
}

fn small(server: Option<&Shared<'_>>, max: u64) -> Cache {
    match server {
        Some(s) => s.config().max_entries(max).build().unwrap(),
        None => CacheConfig::local().max_entries(max).build().unwrap(),
    }
}

// ---- local store only: the size bound and the clock ----

#[tokio::test]
async fn expired_entries_do_not_count_against_the_bound() {
    let cache = CacheConfig::local().max_entries(10).build().unwrap();
    for i in 0..10 {
        cache
            .set(&format!("short{i}"), &i, Duration::from_millis(50))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.local_len(), Some(0));
    // A full store whose oldest half expired: new entries take the expired
    // ones' room, and no live entry is evicted.
    for i in 0..5 {
        cache.set(&format!("live{i}"), &i, MEDIUM).await.unwrap();
    }
    for i in 0..5 {
        cache
            .set(&format!("short{i}"), &i, Duration::from_millis(50))
            .await
            .unwrap();
    }
    assert_eq!(cache.local_len(), Some(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 5..10 {
        cache.set(&format!("live{i}"), &i, MEDIUM).await.unwrap();
    }
    assert_eq!(cache.local_len(), Some(10));
    for i in 0..10 {
        assert_eq!(
            cache.get::<i32>(&format!("live{i}")).await.unwrap(),
            Some(i),
            "live{i}"
        );
    }
}

#[tokio::test]
async fn outdated_entries_do_not_count_against_the_bound() {
    let cache = CacheConfig::local().max_entries(100).build().unwrap();
    for i in 0..20 {
        cache
            .set(&format!("tg:fn:f:x={i}"), &i, MEDIUM)
            .await
            .unwrap();
    }
    cache.set("other", &1, MEDIUM).await.unwrap();
    assert_eq!(cache.local_len(), Some(21));
    cache.invalidate_family("tg:fn:f").await.unwrap();
    assert_eq!(cache.local_len(), Some(1));
    assert_eq!(cache.get::<i32>("other").await.unwrap(), Some(1));
    // the family works as before
    cache.set("tg:fn:f:x=1", &5, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<i32>("tg:fn:f:x=1").await.unwrap(), Some(5));
}

#[tokio::test]
async fn expiry_survives_another_crates_clock_upkeep() {
    let cache = CacheConfig::local().build().unwrap();
    // Another crate owns quanta's global upkeep thread and drops it.
    if let Ok(handle) = quanta::Upkeep::new(Duration::from_millis(1)).start() {
        drop(handle);
    }
    cache.set("k", &1, Duration::from_millis(50)).await.unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    assert!(!cache.has_key("k").await.unwrap());
}
