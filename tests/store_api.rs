//! Every cache API method on the local store and on a real Redis.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::Shared;
use tg_cache::timeout::{MEDIUM, SHORT};
use tg_cache::{Cache, Error, KeyBuilder, KeyPattern, Timeout, Ttl};

for_each_store!(
    get_set_roundtrip,
    cached_none_is_not_a_miss,
    add_only_if_absent,
    get_many_set_many,
    delete_and_delete_many,
    has_key_and_touch,
    incr_decr,
    ttl_reports_remaining_life,
    entries_expire,
    no_cache_timeout_stores_nothing,
    delete_pattern_counts_and_is_not_widened,
    clear_empties_the_cache_the_same_on_every_store,
    get_or_set_computes_once_concurrently,
    get_or_set_survives_a_panicking_leader,
    get_or_set_survives_a_cancelled_leader,
    different_keys_do_not_wait,
    try_get_or_set_caches_only_ok,
    wrong_type_is_a_counted_miss,
    invalid_keys_are_errors,
    long_keys_are_stored_whole,
    health_answers,
    delete_during_fill_prevents_stale_store,
    set_during_fill_wins,
    invalidate_family_hides_every_entry,
    family_invalidation_during_fill_prevents_stale_store,
    epochs_expire_with_their_familys_values,
    keys_are_listed_and_counted_over_many_batches,
    a_raw_connection_reaches_the_same_redis,
);

async fn get_set_roundtrip(cache: &Cache, server: Option<&Shared<'_>>) {
    assert_eq!(
        cache
            .get::<Vec<String>>("tg:queryset:Character:id=5")
            .await
            .unwrap(),
        None
    );
    let mut scenes = vec!["Elysium".to_string(), "The Rack".to_string()];
    cache
        .set("tg:queryset:Character:id=5", &scenes, MEDIUM)
        .await
        .unwrap();
    scenes.push("mutated after set".into());
    let got: Vec<String> = cache
        .get("tg:queryset:Character:id=5")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        vec!["Elysium", "The Rack"],
        "the cache must hold a copy"
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.sets), (1, 1, 1));
    if let Some(server) = server {
        // The Redis key is exactly the given key (Django's `:1:<key>` on a
        // cache shared with Django), and the value is readable JSON after
        // its family's epoch header (none when shared with Django).
        let stored = server.stored("tg:queryset:Character:id=5");
        let raw: String = server.cmd(&["GET", &stored]);
        if server.bare() {
            assert_eq!(raw, r#"["Elysium","The Rack"]"#);
        } else {
            assert_eq!(support::payload(&raw), r#"["Elysium","The Rack"]"#);
        }
        let keys: Vec<String> = server.cmd(&["KEYS", &server.stored("tg:*")]);
        assert_eq!(keys, vec![stored]);
    }
}

async fn cached_none_is_not_a_miss(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("k", &None::<i32>, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<Option<i32>>("k").await.unwrap(), Some(None));
    cache.set("unit", &(), MEDIUM).await.unwrap();
    assert_eq!(cache.get::<()>("unit").await.unwrap(), Some(()));
    assert_eq!(cache.get::<Option<i32>>("missing").await.unwrap(), None);
}

async fn add_only_if_absent(cache: &Cache, _: Option<&Shared<'_>>) {
    assert!(cache.add("a", &1, MEDIUM).await.unwrap());
    assert!(!cache.add("a", &2, MEDIUM).await.unwrap());
    assert_eq!(cache.get::<i32>("a").await.unwrap(), Some(1));
    // an expired entry counts as absent
    cache
        .set("b", &1, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(cache.add("b", &2, MEDIUM).await.unwrap());
    assert_eq!(cache.get::<i32>("b").await.unwrap(), Some(2));
}

async fn get_many_set_many(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set_many(
            &[("m:1", "one".to_string()), ("m:2", "two".to_string())],
            MEDIUM,
        )
        .await
        .unwrap();
    let got = cache
        .get_many::<String, _>(&["m:1", "m:2", "m:3"])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got["m:1"], "one");
    assert_eq!(got["m:2"], "two");
    assert!(
        cache
            .get_many::<String, &str>(&[])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn delete_and_delete_many(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("d:1", &1, MEDIUM).await.unwrap();
    cache.set("d:2", &2, MEDIUM).await.unwrap();
    cache.set("d:3", &3, MEDIUM).await.unwrap();
    assert!(cache.delete("d:1").await.unwrap());
    assert!(!cache.delete("d:1").await.unwrap());
    assert_eq!(
        cache
            .delete_many(&["d:1", "d:2", "d:3", "d:4"])
            .await
            .unwrap(),
        2
    );
    assert_eq!(cache.get::<i32>("d:2").await.unwrap(), None);
}

async fn has_key_and_touch(cache: &Cache, _: Option<&Shared<'_>>) {
    assert!(!cache.has_key("h").await.unwrap());
    cache
        .set("h", &1, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(cache.has_key("h").await.unwrap());
    assert!(cache.touch("h", MEDIUM).await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        cache.has_key("h").await.unwrap(),
        "touch must extend the life"
    );
    assert!(cache.touch("h", Timeout::Never).await.unwrap());
    assert_eq!(cache.ttl("h").await.unwrap(), Some(Ttl::Forever));
    assert!(!cache.touch("nope", MEDIUM).await.unwrap());
    assert!(cache.touch("h", Timeout::NoCache).await.unwrap());
    assert!(!cache.has_key("h").await.unwrap());
}

async fn incr_decr(cache: &Cache, _: Option<&Shared<'_>>) {
    assert!(matches!(
        cache.incr("n", 1).await,
        Err(Error::MissingKey(_))
    ));
    cache.set("n", &10i64, MEDIUM).await.unwrap();
    assert_eq!(cache.incr("n", 5).await.unwrap(), 15);
    assert_eq!(cache.decr("n", 20).await.unwrap(), -5);
    assert_eq!(cache.get::<i64>("n").await.unwrap(), Some(-5));
    let ttl = cache.ttl("n").await.unwrap();
    assert!(
        matches!(ttl, Some(Ttl::Remaining(d)) if d > Duration::from_secs(250)),
        "incr keeps the timeout: {ttl:?}"
    );
    cache.set("s", &"text".to_string(), MEDIUM).await.unwrap();
    assert!(matches!(
        cache.incr("s", 1).await,
        Err(Error::NotAnInteger(_))
    ));
    cache.set("max", &i64::MAX, MEDIUM).await.unwrap();
    assert!(matches!(
        cache.incr("max", 1).await,
        Err(Error::NotAnInteger(_))
    ));
    // atomic under concurrency
    cache.set("c", &0i64, MEDIUM).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                cache.incr("c", 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cache.get::<i64>("c").await.unwrap(), Some(400));
}

async fn ttl_reports_remaining_life(cache: &Cache, _: Option<&Shared<'_>>) {
    assert_eq!(cache.ttl("t").await.unwrap(), None);
    cache.set("t", &1, SHORT).await.unwrap();
    match cache.ttl("t").await.unwrap() {
        Some(Ttl::Remaining(d)) => assert!(d <= SHORT && d > Duration::from_secs(55), "{d:?}"),
        other => panic!("expected a remaining ttl, got {other:?}"),
    }
    cache.set("f", &1, Timeout::Never).await.unwrap();
    assert_eq!(cache.ttl("f").await.unwrap(), Some(Ttl::Forever));
    cache.set("d", &1, Timeout::Default).await.unwrap();
    assert!(
        matches!(cache.ttl("d").await.unwrap(), Some(Ttl::Remaining(d)) if d > SHORT && d <= MEDIUM)
    );
}

async fn entries_expire(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set("e", &1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(cache.get::<i32>("e").await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cache.get::<i32>("e").await.unwrap(), None);
    assert!(!cache.has_key("e").await.unwrap());
}

async fn no_cache_timeout_stores_nothing(cache: &Cache, _: Option<&Shared<'_>>) {
    cache.set("z", &1, MEDIUM).await.unwrap();
    cache.set("z", &2, Timeout::NoCache).await.unwrap();
    assert_eq!(cache.get::<i32>("z").await.unwrap(), None);
    cache.set("z", &3, Duration::ZERO).await.unwrap();
    assert_eq!(cache.get::<i32>("z").await.unwrap(), None);
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        cache
            .get_or_set("z", Timeout::NoCache, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                1
            })
            .await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

async fn delete_pattern_counts_and_is_not_widened(cache: &Cache, _: Option<&Shared<'_>>) {
    use tg_cache::{CacheKeyGenerator as G, KeyPattern};
    for id in 0..30 {
        let key = G::make_model_key("Character", &[("id", &id)]);
        cache.set(&key, &id, MEDIUM).await.unwrap();
    }
    cache
        .set(&G::make_model_key("Scene", &[("id", &1)]), &1, MEDIUM)
        .await
        .unwrap();
    // A user-supplied value of "*" must match only a literal "*" name.
    let evil = G::make_model_key("Character", &[("name", &"*")]);
    cache.set(&evil, &0, MEDIUM).await.unwrap();
    let pat = KeyPattern::prefix("tg:queryset:Character").param("name", &"*");
    assert_eq!(cache.delete_pattern(pat.as_str()).await.unwrap(), 1);
    assert_eq!(
        cache
            .delete_pattern("tg:queryset:Character:*")
            .await
            .unwrap(),
        30
    );
    assert!(cache.has_key("tg:queryset:Scene:id=1").await.unwrap());
    assert_eq!(
        cache
            .delete_pattern("tg:queryset:Character:*")
            .await
            .unwrap(),
        0
    );
}

async fn clear_empties_the_cache_the_same_on_every_store(
    cache: &Cache,
    server: Option<&Shared<'_>>,
) {
    // A cache without key prefix or version owns its whole database:
    // clear() removes every key that set() can have written, `tg:` or not.
    cache.set("tg:view:home:", &1, MEDIUM).await.unwrap();
    cache.set("my_key", &1, MEDIUM).await.unwrap();
    cache.clear().await.unwrap();
    assert!(!cache.has_key("tg:view:home:").await.unwrap());
    assert!(!cache.has_key("my_key").await.unwrap());
    let Some(server) = server else { return };
    let n: i64 = server.cmd(&["DBSIZE"]);
    assert_eq!(n, 0, "a bare cache's clear() empties its database");
    // A cache with a key prefix removes its namespace only: another
    // application's key in the same database survives.
    let app = server.config().key_prefix("app").build().unwrap();
    app.set("tg:view:home:", &1, MEDIUM).await.unwrap();
    app.set("my_key", &1, MEDIUM).await.unwrap();
    let () = server.cmd(&["SET", "other_app:session", "x"]);
    app.clear().await.unwrap();
    let other: Option<String> = server.cmd(&["GET", "other_app:session"]);
    assert_eq!(other.as_deref(), Some("x"));
    assert!(!app.has_key("tg:view:home:").await.unwrap());
    assert!(!app.has_key("my_key").await.unwrap());
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_eq!(keys, vec!["other_app:session".to_owned()]);
    // The explicitly named call does flush the database.
    cache.flush_database().await.unwrap();
    let n: i64 = server.cmd(&["DBSIZE"]);
    assert_eq!(n, 0);
}

async fn get_or_set_computes_once_concurrently(cache: &Cache, _: Option<&Shared<'_>>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (cache, runs) = (cache.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_set("tg:fn:slow:x=1", MEDIUM, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    vec![1u8, 2, 3]
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), vec![1, 2, 3]);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Same from blocking threads.
    let runs = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            std::thread::spawn(move || {
                cache.blocking().get_or_set("tg:fn:slow:x=2", MEDIUM, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    7u32
                })
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 7);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn get_or_set_survives_a_panicking_leader(cache: &Cache, _: Option<&Shared<'_>>) {
    let leader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.blocking().get_or_set("p", MEDIUM, || -> u32 {
                std::thread::sleep(Duration::from_millis(150));
                panic!("body failed")
            })
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let v = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_or_set("p", MEDIUM, || async { 9u32 }),
    )
    .await
    .expect("a follower must not stay stuck after the leader panicked");
    assert_eq!(v, 9);
    assert!(leader.join().is_err());
}

async fn get_or_set_survives_a_cancelled_leader(cache: &Cache, _: Option<&Shared<'_>>) {
    let c = cache.clone();
    let leader = tokio::spawn(async move {
        c.get_or_set("q", MEDIUM, || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            1u32
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = cache.clone();
    let follower = tokio::spawn(async move { c.get_or_set("q", MEDIUM, || async { 2u32 }).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let v = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("follower stuck after the leader was dropped")
        .unwrap();
    assert_eq!(v, 2);
}

async fn different_keys_do_not_wait(cache: &Cache, _: Option<&Shared<'_>>) {
    let c = cache.clone();
    let slow = tokio::spawn(async move {
        c.get_or_set("slow", MEDIUM, || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            1u32
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = tokio::time::timeout(
        Duration::from_secs(1),
        cache.get_or_set("fast", MEDIUM, || async { 2u32 }),
    )
    .await
    .expect("an unrelated key waited for another key's computation");
    assert_eq!(fast, 2);
    slow.abort();
}

async fn try_get_or_set_caches_only_ok(cache: &Cache, _: Option<&Shared<'_>>) {
    let runs = AtomicUsize::new(0);
    let r: Result<u32, String> = cache
        .try_get_or_set("r", MEDIUM, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err("db down".to_string())
        })
        .await;
    assert!(r.is_err());
    let r: Result<u32, String> = cache
        .try_get_or_set("r", MEDIUM, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(5)
        })
        .await;
    assert_eq!(r, Ok(5));
    let r: Result<u32, String> = cache
        .try_get_or_set("r", MEDIUM, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(6)
        })
        .await;
    assert_eq!(r, Ok(5));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn wrong_type_is_a_counted_miss(cache: &Cache, _: Option<&Shared<'_>>) {
    cache
        .set("w", &"a string".to_string(), MEDIUM)
        .await
        .unwrap();
    assert_eq!(cache.get::<u64>("w").await.unwrap(), None);
    assert_eq!(cache.stats().decode_errors, 1);
    // get_or_set recomputes and overwrites the foreign value
    assert_eq!(cache.get_or_set("w", MEDIUM, || async { 3u64 }).await, 3);
    assert_eq!(cache.get::<u64>("w").await.unwrap(), Some(3));
}

async fn invalid_keys_are_errors(cache: &Cache, server: Option<&Shared<'_>>) {
    // Django keeps whitespace and control characters (with a warning): so
    // does a cache shared with it.
    let django = server.is_some_and(Shared::bare);
    for bad in ["", "has space", "tab\there", "nl\n", "nul\0"] {
        match cache.set(bad, &1, MEDIUM).await {
            Err(Error::InvalidKey { .. }) => {}
            Ok(()) if django && !bad.is_empty() => {
                assert_eq!(cache.get::<i32>(bad).await.unwrap(), Some(1), "{bad:?}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    for reserved in ["#epoch:tg:fn:x", "a:#!lease:b"] {
        assert!(
            matches!(
                cache.set(reserved, &1, MEDIUM).await,
                Err(Error::InvalidKey { .. })
            ),
            "{reserved}"
        );
    }
    // ...but a cached function with such a key still gets its value.
    assert_eq!(
        cache.get_or_set("has space", MEDIUM, || async { 1 }).await,
        1
    );
}

async fn long_keys_are_stored_whole(cache: &Cache, server: Option<&Shared<'_>>) {
    // Redis has no key length limit, and Django does not shorten keys: a
    // long key is stored as given, so a pattern over its parts matches it.
    let value = "a".repeat(500);
    let long = KeyBuilder::new("tg:fn:x").param("q", &value).finish();
    cache.set(&long, &1, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<i32>(&long).await.unwrap(), Some(1));
    let other = format!("{long}b");
    assert_eq!(cache.get::<i32>(&other).await.unwrap(), None);
    if let Some(server) = server {
        let keys: Vec<String> = server.cmd(&["KEYS", &server.stored("tg:*")]);
        assert_eq!(keys, vec![server.stored(&long)]);
    }
    let pattern = KeyPattern::prefix("tg:fn:x").param("q", &value).any();
    cache
        .set(&format!("{long}:page=2"), &2, MEDIUM)
        .await
        .unwrap();
    assert_eq!(cache.delete_pattern(pattern.as_str()).await.unwrap(), 1);
    assert_eq!(
        cache.get::<i32>(&format!("{long}:page=2")).await.unwrap(),
        None
    );
    // A key over 64 KiB is refused, with the reason.
    let huge = format!("tg:fn:x:q={}", "a".repeat(70_000));
    let err = cache.set(&huge, &1, MEDIUM).await.unwrap_err();
    assert!(err.to_string().contains("64 KiB"), "{err}");
    assert_eq!(cache.get_or_set(&huge, MEDIUM, || async { 3 }).await, 3);
}

async fn health_answers(cache: &Cache, _: Option<&Shared<'_>>) {
    assert!(cache.health().await.is_ok());
    assert!(cache.blocking().health().is_ok());
}

async fn delete_during_fill_prevents_stale_store(cache: &Cache, _: Option<&Shared<'_>>) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let c = cache.clone();
    let fill = tokio::spawn(async move {
        c.get_or_set("stale", MEDIUM, || async move {
            started_tx.send(()).unwrap();
            resume_rx.await.unwrap();
            "old".to_string()
        })
        .await
    });
    started_rx.await.unwrap();
    cache.delete("stale").await.unwrap();
    resume_tx.send(()).unwrap();
    assert_eq!(fill.await.unwrap(), "old");
    assert_eq!(
        cache.get::<String>("stale").await.unwrap(),
        None,
        "a fill that began before the delete must not be stored"
    );
}

async fn set_during_fill_wins(cache: &Cache, _: Option<&Shared<'_>>) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let c = cache.clone();
    let fill = tokio::spawn(async move {
        c.get_or_set("raced", MEDIUM, || async move {
            started_tx.send(()).unwrap();
            resume_rx.await.unwrap();
            "computed before the write".to_string()
        })
        .await
    });
    started_rx.await.unwrap();
    cache
        .set("raced", &"written".to_string(), MEDIUM)
        .await
        .unwrap();
    resume_tx.send(()).unwrap();
    fill.await.unwrap();
    assert_eq!(
        cache.get::<String>("raced").await.unwrap().as_deref(),
        Some("written")
    );
}

async fn invalidate_family_hides_every_entry(cache: &Cache, server: Option<&Shared<'_>>) {
    use tg_cache::CacheKeyGenerator as G;
    for id in 0..50 {
        cache
            .set(&G::make_model_key("Character", &[("id", &id)]), &id, MEDIUM)
            .await
            .unwrap();
    }
    cache
        .set(&G::make_model_key("Scene", &[("id", &1)]), &1, MEDIUM)
        .await
        .unwrap();
    cache
        .set("tg:queryset:Character:counter", &10i64, MEDIUM)
        .await
        .unwrap();
    assert_eq!(
        cache
            .incr("tg:queryset:Character:counter", 1)
            .await
            .unwrap(),
        11
    );

    cache
        .invalidate_family("tg:queryset:Character")
        .await
        .unwrap();
    for id in 0..50 {
        let key = G::make_model_key("Character", &[("id", &id)]);
        assert_eq!(cache.get::<i32>(&key).await.unwrap(), None, "{key}");
        assert!(!cache.has_key(&key).await.unwrap());
        assert_eq!(cache.ttl(&key).await.unwrap(), None);
        assert!(!cache.touch(&key, MEDIUM).await.unwrap());
    }
    assert!(matches!(
        cache.incr("tg:queryset:Character:counter", 1).await,
        Err(Error::MissingKey(_))
    ));
    let many = cache
        .get_many::<i32, _>(&["tg:queryset:Character:id=1", "tg:queryset:Scene:id=1"])
        .await
        .unwrap();
    assert_eq!(many.len(), 1, "other families are untouched: {many:?}");
    assert_eq!(
        cache.get::<i32>("tg:queryset:Scene:id=1").await.unwrap(),
        Some(1)
    );

    // New entries of the family are visible again, and behave normally.
    assert!(
        cache
            .add("tg:queryset:Character:id=1", &100, MEDIUM)
            .await
            .unwrap()
    );
    assert_eq!(
        cache
            .get::<i32>("tg:queryset:Character:id=1")
            .await
            .unwrap(),
        Some(100)
    );
    cache
        .set("tg:queryset:Character:counter", &1i64, MEDIUM)
        .await
        .unwrap();
    assert_eq!(
        cache
            .incr("tg:queryset:Character:counter", 41)
            .await
            .unwrap(),
        42
    );
    assert_eq!(
        cache
            .get::<i64>("tg:queryset:Character:counter")
            .await
            .unwrap(),
        Some(42)
    );
    assert!(matches!(
        cache.ttl("tg:queryset:Character:counter").await.unwrap(),
        Some(Ttl::Remaining(_))
    ));
    let r = cache
        .get_or_set("tg:queryset:Character:id=2", MEDIUM, || async { 7 })
        .await;
    assert_eq!(r, 7);
    assert_eq!(
        cache
            .get::<i32>("tg:queryset:Character:id=2")
            .await
            .unwrap(),
        Some(7)
    );

    if let Some(server) = server {
        // Keys keep their seed-style names; only the value says its epoch
        // (on a cache shared with Django, nothing does: the invalidation
        // removed the family's keys).
        let keys: Vec<String> = server.cmd(&["KEYS", &server.stored("tg:queryset:Character:*")]);
        let stored = server.stored("tg:queryset:Character:id=1");
        assert!(keys.contains(&stored), "{keys:?}");
        let raw: String = server.cmd(&["GET", &stored]);
        let epoch_key = server.epoch_key("tg:queryset:Character", "tg:queryset:Character:id=1");
        let epoch: String = server.cmd(&["GET", &epoch_key]);
        if server.bare() {
            assert_eq!(raw, "100");
            assert_eq!(epoch.len(), 32, "the epoch is there, for fills");
        } else {
            assert_eq!(raw, format!("#{epoch}:100"));
        }
    }
    assert!(matches!(
        cache.invalidate_family("tg:queryset").await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        cache.invalidate_family("my_key").await,
        Err(Error::InvalidKey { .. })
    ));
}

async fn family_invalidation_during_fill_prevents_stale_store(
    cache: &Cache,
    _: Option<&Shared<'_>>,
) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let c = cache.clone();
    let fill = tokio::spawn(async move {
        c.get_or_set("tg:queryset:Character:id=9", MEDIUM, || async move {
            started_tx.send(()).unwrap();
            resume_rx.await.unwrap();
            "old".to_string()
        })
        .await
    });
    started_rx.await.unwrap();
    cache
        .invalidate_family("tg:queryset:Character")
        .await
        .unwrap();
    resume_tx.send(()).unwrap();
    assert_eq!(fill.await.unwrap(), "old");
    assert_eq!(
        cache
            .get::<String>("tg:queryset:Character:id=9")
            .await
            .unwrap(),
        None
    );
}

fn pttl(server: &Shared<'_>, key: &str) -> i64 {
    server.cmd(&["PTTL", key])
}

/// A family's epoch lives as long as its longest-lived value, and no
/// longer: manual families (`tg:session:<sid>`) leave no permanent key.
/// (The keys share a hash slot, `{s}`: on a cluster, one epoch per slot.)
async fn epochs_expire_with_their_familys_values(cache: &Cache, server: Option<&Shared<'_>>) {
    let Some(server) = server else { return };
    let epoch = &server.epoch_key("tg:session:abc", "tg:session:abc:{s}cart");
    cache
        .set("tg:session:abc:{s}cart", &1, Duration::from_secs(2))
        .await
        .unwrap();
    // An epoch lives up to twice its longest value's lifetime: extended
    // only when it has less than that lifetime left, so that writes do not
    // change it (and invalidate it on every tracking connection) each time.
    let t = pttl(server, epoch);
    assert!(
        (3500..=4000).contains(&t),
        "epoch PTTL {t} after a 2 s value"
    );
    cache
        .set("tg:session:abc:{s}user", &2, Duration::from_secs(10))
        .await
        .unwrap();
    let t = pttl(server, epoch);
    assert!(
        (19_000..=20_000).contains(&t),
        "epoch PTTL {t} after a 10 s value"
    );
    // Another write of that lifetime leaves it alone.
    tokio::time::sleep(Duration::from_millis(20)).await;
    cache
        .set("tg:session:abc:{s}user", &3, Duration::from_secs(10))
        .await
        .unwrap();
    let again = pttl(server, epoch);
    assert!(again < t, "epoch PTTL {again} extended again (was {t})");
    // A shorter value never shortens it; a fill extends it like a set.
    cache
        .set("tg:session:abc:{s}x", &3, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(pttl(server, epoch) > 19_000);
    assert_eq!(
        cache
            .get_or_set("tg:session:abc:{s}y", Duration::from_secs(30), || async {
                4
            })
            .await,
        4
    );
    assert!(pttl(server, epoch) > 59_000);
    // A bump keeps the epoch's lifetime.
    cache.invalidate_family("tg:session:abc").await.unwrap();
    assert!(pttl(server, epoch) > 59_000);
    // A value that never expires keeps its epoch forever.
    cache
        .set("tg:session:abc:{s}z", &5, tg_cache::Timeout::Never)
        .await
        .unwrap();
    assert_eq!(pttl(server, epoch), -1);

    // Invalidating a family that has no epoch writes none.
    cache.invalidate_family("tg:session:none").await.unwrap();
    let none: Vec<String> = server.cmd(&["KEYS", "*#epoch:tg:session:none"]);
    assert!(none.is_empty(), "{none:?}");

    // Gone with its values.
    cache
        .set("tg:session:short:k", &1, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(750)).await;
    let keys: Vec<String> = server.cmd(&["KEYS", "*short*"]);
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

async fn keys_are_listed_and_counted_over_many_batches(cache: &Cache, server: Option<&Shared<'_>>) {
    use futures_util::TryStreamExt;
    // Three SCAN batches' worth of one family, a few of another and plain
    // keys; a family write also leaves the family's epoch behind.
    // (The local store keeps 1,000 entries.)
    let n = if server.is_some() { 3000 } else { 500 };
    let items: Vec<(String, u64)> = (0..n)
        .map(|i| (format!("tg:fn:listed:id={i}"), i))
        .collect();
    cache.set_many(&items, MEDIUM).await.unwrap();
    for i in 0..5u64 {
        cache
            .set(&format!("tg:fn:other:id={i}"), &i, MEDIUM)
            .await
            .unwrap();
        cache.set(&format!("plain:{i}"), &i, MEDIUM).await.unwrap();
    }
    assert_eq!(cache.count_keys("tg:fn:listed:*").await.unwrap(), n);
    let pattern = KeyPattern::prefix("tg:fn:listed").any();
    let mut listed: Vec<String> = cache.iter_keys(pattern).try_collect().await.unwrap();
    listed.sort();
    let mut expected: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected, "every key once, as given to the cache");
    let all: Vec<String> = cache.iter_keys("*").try_collect().await.unwrap();
    assert_eq!(all.len() as u64, n + 10, "no internal key among them");
    assert!(
        all.iter().all(|k| !k.contains('#')),
        "{:?}",
        all.iter().find(|k| k.contains('#'))
    );
    if server.is_some() {
        let with: Vec<String> = cache
            .iter_keys_including_internal("*")
            .try_collect()
            .await
            .unwrap();
        assert!(
            with.iter().any(|k| k.contains("#epoch:tg:fn:listed")),
            "the family's epoch is listed when asked for"
        );
        assert!(with.len() as u64 > n + 10);
    }
    cache.delete_pattern("tg:fn:listed:*").await.unwrap();
    assert_eq!(cache.count_keys("tg:fn:listed:*").await.unwrap(), 0);
    assert_eq!(cache.count_keys("plain:*").await.unwrap(), 5);
}

async fn a_raw_connection_reaches_the_same_redis(cache: &Cache, server: Option<&Shared<'_>>) {
    let Some(server) = server else {
        let err = cache.redis_connection().await.unwrap_err();
        assert!(err.to_string().contains("redis_connection"), "{err}");
        return;
    };
    cache.set("raw:seen", &41u64, MEDIUM).await.unwrap();
    let mut con = cache.redis_connection().await.unwrap();
    let stored = server.stored("raw:seen");
    let raw: String = redis::cmd("GET")
        .arg(&stored)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(raw, "41");
    // A write through it is what the cache reads (it bypasses the guards:
    // no family epoch, plain JSON).
    let () = redis::cmd("SET")
        .arg(&stored)
        .arg("42")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(cache.get::<u64>("raw:seen").await.unwrap(), Some(42));
}
