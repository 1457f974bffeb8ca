//! One Redis shared by tg-cache and a real Django application: Django and
//! django-redis from PyPI (`contrib/django/requirements.txt`, installed by
//! `scripts/test`), driven as a separate Python process
//! (`contrib/django/tests/driver.py`), against the same real redis-server
//! as the Rust caches here. The Rust side uses `KeyFunction::Django`.
// Each test holds its turn and the Django process across its awaits, on
// its own runtime: the tests run one after another by design.
#![allow(clippy::await_holding_lock)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::timeout::MEDIUM;
use tg_cache::{Cache, CacheConfig, Caches, Invalidate, KeyFunction, cache_function};

/// The Django process: one JSON request per line, one reply per line.
struct Django {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Django {
    fn start(url: &str) -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let python = std::env::var("TG_CACHE_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(format!("{root}/contrib/django/tests/driver.py"))
            .arg(url)
            .env("PYTHONPATH", format!("{root}/contrib/django"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python} could not be started ({e}): the Django interop tests need Python 3 with `pip install -r contrib/django/requirements.txt` (scripts/test installs it)"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut d = Django {
            child,
            stdin,
            stdout,
        };
        assert_eq!(
            d.try_call(json!({"op": "ping"})),
            Ok(json!("pong")),
            "the Django driver did not start: install its packages with `pip install -r contrib/django/requirements.txt` (scripts/test does)"
        );
        d
    }

    fn try_call(&mut self, req: Value) -> Result<Value, String> {
        self.try_call_text(&req.to_string())
    }

    fn try_call_text(&mut self, req: &str) -> Result<Value, String> {
        writeln!(self.stdin, "{req}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("the Django driver exited".into());
        }
        let reply: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match reply.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(reply["ok"].clone()),
        }
    }

    /// A request written as text (for integers beyond what `Value` holds).
    fn call_text(&mut self, req: &str) -> Value {
        self.try_call_text(req)
            .unwrap_or_else(|e| panic!("Django failed {req}: {e}"))
    }

    fn call(&mut self, req: Value) -> Value {
        let shown = req.to_string();
        self.try_call(req)
            .unwrap_or_else(|e| panic!("Django failed {shown}: {e}"))
    }

    /// Django's `cache.get`: `Some(value)` when found.
    fn get(&mut self, cache: &str, key: &str) -> Option<Value> {
        let r = self.call(json!({"op": "get", "cache": cache, "key": key}));
        r["found"].as_bool().unwrap().then(|| r["value"].clone())
    }

    fn set(&mut self, cache: &str, key: &str, value: Value) {
        self.call(json!({"op": "set", "cache": cache, "key": key, "value": value}));
    }

    /// The raw bytes at a stored key, if any.
    fn raw(&mut self, stored_key: &str) -> Option<Vec<u8>> {
        let hex = self.call(json!({"op": "raw_get", "key": stored_key}));
        hex.as_str().map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
    }
}

impl Drop for Django {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct World {
    server: RedisServer,
    django: Mutex<Django>,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let server = RedisServer::start();
    // The default cache (cached functions, models): shared with Django.
    tg_cache::configure(Caches::new(shared(&server))).unwrap();
    let django = Mutex::new(Django::start(&server.url()));
    World { server, django }
});

type Guard<T> = std::sync::MutexGuard<'static, T>;

/// Django and the Redis, one test at a time (they share keys and the
/// default cache): the test's turn, Django, and the server.
fn world() -> (Guard<()>, Guard<Django>, &'static RedisServer) {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    (turn, django(), &WORLD.server)
}

fn django() -> Guard<Django> {
    WORLD.django.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the configuration guide gives for a Rust cache shared with Django.
fn shared(server: &RedisServer) -> CacheConfig {
    CacheConfig::redis(&server.url()).key_function(KeyFunction::Django)
}

fn rust(server: &RedisServer) -> Cache {
    shared(server).build().unwrap()
}

/// The same, compressing as django-redis' `ZlibCompressor` does (over 15
/// bytes).
fn rust_zlib(server: &RedisServer) -> Cache {
    shared(server).compress_min_bytes(Some(16)).build().unwrap()
}

/// Values of every type JSON carries, as Django and Rust both see them.
fn values() -> Vec<(&'static str, Value)> {
    vec![
        ("string", json!("Ada of the Ventrue")),
        ("unicode", json!("Ünïcødé ✓ 日本")),
        ("empty", json!("")),
        ("int", json!(42)),
        ("negative", json!(-7)),
        ("float", json!(2.5)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("null", json!(null)),
        ("list", json!([1, "two", 3.5, null, [4]])),
        (
            "map",
            json!({"id": 5, "name": "Ada", "tags": ["a", "b"], "clan": {"n": 1}}),
        ),
        ("large", json!("compressible ".repeat(2000))),
    ]
}

#[tokio::test]
async fn keys_are_djangos_make_key() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    assert_eq!(
        cache.make_key("tg:queryset:Character:id=5").unwrap(),
        ":1:tg:queryset:Character:id=5"
    );
    cache
        .set("tg:queryset:Character:id=5", &"row".to_string(), MEDIUM)
        .await
        .unwrap();
    assert_eq!(
        d.raw(":1:tg:queryset:Character:id=5").as_deref(),
        Some(&b"\"row\""[..]),
        "stored as Django's make_key names it, with no header"
    );
    assert_eq!(
        d.get("default", "tg:queryset:Character:id=5"),
        Some(json!("row"))
    );
    // A prefix and a version: Django's `app:2:<key>`.
    let app = shared(server).key_prefix("app").version(2).build().unwrap();
    app.set("greeting", &"hi".to_string(), MEDIUM)
        .await
        .unwrap();
    assert_eq!(d.raw("app:2:greeting").as_deref(), Some(&b"\"hi\""[..]));
    assert_eq!(d.get("app", "greeting"), Some(json!("hi")));
    assert_eq!(d.get("default", "greeting"), None);
    // Keys Django only warns about are used as given, never shortened.
    let long = format!("tg:view:search:q={}", "x".repeat(300));
    for key in ["a key with spaces", long.as_str()] {
        d.set("default", key, json!("from django"));
        assert_eq!(
            cache.get::<String>(key).await.unwrap().as_deref(),
            Some("from django"),
            "{key}"
        );
        cache
            .set(key, &"from rust".to_string(), MEDIUM)
            .await
            .unwrap();
        assert_eq!(d.get("default", key), Some(json!("from rust")));
        assert!(d.raw(&format!(":1:{key}")).is_some());
    }
}

async fn values_cross(cache: &Cache, d: &mut Django, alias: &str) {
    for (name, v) in values() {
        let key = format!("interop:{alias}:{name}");
        d.set(alias, &key, v.clone());
        assert_eq!(
            cache.get::<Value>(&key).await.unwrap(),
            Some(v.clone()),
            "written by Django ({alias}), read by Rust: {name}"
        );
        cache.delete(&key).await.unwrap();
        cache.set(&key, &v, MEDIUM).await.unwrap();
        assert_eq!(
            d.get(alias, &key),
            Some(v.clone()),
            "written by Rust, read by Django ({alias}): {name}"
        );
    }
    // Typed reads, and integers beyond i64 (Python's 2**70) as i128.
    let key = format!("interop:{alias}:typed");
    d.set(alias, &key, json!({"id": 5, "name": "Ada"}));
    #[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
    struct Row {
        id: i64,
        name: String,
    }
    assert_eq!(
        cache.get::<Row>(&key).await.unwrap(),
        Some(Row {
            id: 5,
            name: "Ada".into()
        })
    );
    let big: i128 = 1 << 70;
    let key = format!("interop:{alias}:bigint");
    d.call_text(&format!(
        r#"{{"op": "set", "cache": "{alias}", "key": "{key}", "value": {big}}}"#
    ));
    assert_eq!(cache.get::<i128>(&key).await.unwrap(), Some(big));
    assert_eq!(cache.get::<i64>(&key).await.unwrap(), None, "out of i64");
    cache.set(&key, &(big + 1), MEDIUM).await.unwrap();
    let read = d.call(json!({"op": "get_text", "cache": alias, "key": key}));
    assert_eq!(
        read,
        json!((big + 1).to_string()),
        "Django reads the exact integer"
    );
}

#[tokio::test]
async fn values_of_every_json_type_cross_both_ways() {
    let (_turn, mut d, server) = world();
    values_cross(&rust(server), &mut d, "default").await;
}

#[tokio::test]
async fn zlib_values_cross_both_ways() {
    let (_turn, mut d, server) = world();
    let cache = rust_zlib(server);
    values_cross(&cache, &mut d, "zlib").await;
    // Both sides really compressed the large value.
    cache
        .set("interop:zlib:check", &"compressible ".repeat(2000), MEDIUM)
        .await
        .unwrap();
    assert_eq!(d.raw(":1:interop:zlib:check").unwrap()[0], 0x78);
    d.set(
        "zlib",
        "interop:zlib:check",
        json!("compressible ".repeat(2000)),
    );
    assert_eq!(d.raw(":1:interop:zlib:check").unwrap()[0], 0x78);
    assert_eq!(
        cache
            .get::<String>("interop:zlib:check")
            .await
            .unwrap()
            .map(|s| s.len()),
        Some(26_000)
    );
}

#[tokio::test]
async fn incr_and_ttl_from_both_sides() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    d.set("default", "interop:counter", json!(10));
    assert_eq!(cache.incr("interop:counter", 5).await.unwrap(), 15);
    assert_eq!(
        d.call(json!({"op": "incr", "key": "interop:counter", "delta": 2})),
        json!(17)
    );
    assert_eq!(cache.get::<i64>("interop:counter").await.unwrap(), Some(17));
    cache.set("interop:counter2", &1, MEDIUM).await.unwrap();
    assert_eq!(
        d.call(json!({"op": "incr", "key": "interop:counter2", "delta": 41})),
        json!(42)
    );
    assert_eq!(cache.decr("interop:counter2", 2).await.unwrap(), 40);
    assert_eq!(d.get("default", "interop:counter2"), Some(json!(40)));

    cache
        .set("interop:ttl", &"x".to_string(), Duration::from_secs(100))
        .await
        .unwrap();
    let t = d.call(json!({"op": "ttl", "key": "interop:ttl"}));
    assert!((98..=100).contains(&t.as_i64().unwrap()), "{t}");
    d.call(json!({"op": "set", "key": "interop:ttl2", "value": "y", "timeout": 200}));
    match cache.ttl("interop:ttl2").await.unwrap() {
        Some(tg_cache::Ttl::Remaining(r)) => assert!((198..=200).contains(&r.as_secs()), "{r:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn delete_pattern_from_both_sides() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    for p in 1..=3 {
        cache
            .set(&format!("tg:view:home:page={p}"), &p, MEDIUM)
            .await
            .unwrap();
    }
    cache.set("tg:view:homepage", &0, MEDIUM).await.unwrap();
    assert_eq!(
        d.call(json!({"op": "delete_pattern", "pattern": "tg:view:home:*"})),
        json!(3)
    );
    for p in 1..=3 {
        assert_eq!(
            cache
                .get::<i64>(&format!("tg:view:home:page={p}"))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(cache.get::<i64>("tg:view:homepage").await.unwrap(), Some(0));
    for p in 1..=3 {
        d.set("default", &format!("tg:view:home:page={p}"), json!(p));
    }
    assert_eq!(cache.delete_pattern("tg:view:home:*").await.unwrap(), 3);
    for p in 1..=3 {
        assert_eq!(d.get("default", &format!("tg:view:home:page={p}")), None);
    }
    assert_eq!(d.get("default", "tg:view:homepage"), Some(json!(0)));
}

#[tokio::test]
async fn family_invalidation_from_each_side() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    let keys: Vec<String> = (0..50)
        .map(|i| format!("tg:queryset:Ghoul:id={i}"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, &json!({"id": i}), MEDIUM).await.unwrap();
    }
    cache
        .set("tg:queryset:Ghoulish:id=1", &1, MEDIUM)
        .await
        .unwrap();
    // No header: Django reads the family's values as they are.
    assert_eq!(d.raw(":1:tg:queryset:Ghoul:id=3").unwrap(), br#"{"id":3}"#);
    assert_eq!(d.get("default", &keys[3]), Some(json!({"id": 3})));

    cache.invalidate_family("tg:queryset:Ghoul").await.unwrap();
    let mut stale = 0;
    for k in &keys {
        stale += usize::from(d.get("default", k).is_some());
        stale += usize::from(cache.get::<Value>(k).await.unwrap().is_some());
    }
    assert_eq!(
        stale, 0,
        "old values read after Rust's invalidation (Django and Rust)"
    );
    assert_eq!(
        cache.get::<i64>("tg:queryset:Ghoulish:id=1").await.unwrap(),
        Some(1),
        "another family is untouched"
    );

    // Values Django writes afterwards are live for Rust.
    for (i, k) in keys.iter().enumerate() {
        d.set("default", k, json!({"id": i, "v": 2}));
    }
    assert_eq!(
        cache.get::<Value>(&keys[7]).await.unwrap(),
        Some(json!({"id": 7, "v": 2}))
    );
    // Django's helper names the epoch that Rust's fills are guarded by.
    let _: i64 = cache
        .get_or_set("tg:queryset:Ghoul:id=999", MEDIUM, || async { 1 })
        .await;
    let epoch_key = d.call(json!({"op": "epoch_key", "family": "tg:queryset:Ghoul"}));
    assert_eq!(epoch_key, json!(":1:#epoch:tg:queryset:Ghoul"));
    let before = d
        .raw(":1:#epoch:tg:queryset:Ghoul")
        .expect("the family's epoch");
    cache.delete("tg:queryset:Ghoul:id=999").await.unwrap();
    let deleted = d.call(json!({"op": "invalidate_family", "family": "tg:queryset:Ghoul"}));
    let after = d
        .raw(":1:#epoch:tg:queryset:Ghoul")
        .expect("the family's epoch");
    assert_ne!(before, after, "Django's invalidation replaced the epoch");
    assert_eq!(after.len(), 32);
    assert_eq!(deleted, json!(50));
    let mut stale = 0;
    for k in &keys {
        stale += usize::from(cache.get::<Value>(k).await.unwrap().is_some());
        stale += usize::from(d.get("default", k).is_some());
    }
    assert_eq!(
        stale, 0,
        "old values read after Django's invalidation (Rust and Django)"
    );
    assert_eq!(
        d.get("default", "tg:queryset:Ghoulish:id=1"),
        Some(json!(1))
    );
}

/// A Rust fill whose body runs `during` (the Django side acting while the
/// value is computed), then returns "old". Returns what Rust and Django
/// read afterwards.
async fn fill_with(
    cache: &Cache,
    d: &mut Django,
    key: &str,
    during: impl FnOnce(&mut Django),
) -> (Option<String>, Option<Value>) {
    let got: String = cache
        .get_or_set(key, MEDIUM, || async {
            during(d);
            "old".to_string()
        })
        .await;
    assert_eq!(got, "old", "the caller gets its computation");
    (
        cache.get::<String>(key).await.unwrap(),
        d.get("default", key),
    )
}

#[tokio::test]
async fn a_django_delete_during_a_rust_fill_defeats_it() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    let mut stale = 0;
    for i in 0..20 {
        let key = format!("tg:queryset:Character:id={}", 1000 + i);
        let (rust_read, django_read) = fill_with(&cache, &mut d, &key, |d| {
            // What Django reads while the fill computes: a miss, not the
            // placeholder (TgCacheClient).
            assert_eq!(d.get("default", &key), None);
            assert!(d.call(json!({"op": "delete", "key": key})).is_boolean());
        })
        .await;
        if rust_read.is_some() || django_read.is_some() {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "fills stored after Django deleted their key");
    assert!(cache.stats().fills_refused >= 20, "{:?}", cache.stats());

    // A Django family invalidation during a fill of one of its keys.
    let (rust_read, django_read) = fill_with(&cache, &mut d, "tg:fn:interop_fill:id=1", |d| {
        d.call(json!({"op": "invalidate_family", "family": "tg:fn:interop_fill"}));
    })
    .await;
    assert_eq!((rust_read, django_read), (None, None));

    // A Django `set` during the fill is kept (the fill stores nothing).
    let (rust_read, django_read) = fill_with(&cache, &mut d, "tg:queryset:Character:id=999", |d| {
        d.set("default", "tg:queryset:Character:id=999", json!("django's"));
    })
    .await;
    assert_eq!(rust_read.as_deref(), Some("django's"));
    assert_eq!(django_read, Some(json!("django's")));
}

#[tokio::test]
async fn plain_django_redis_reads_a_fill_in_progress_as_an_error() {
    // Why the configuration guide names TgCacheClient: without it, a key
    // being filled holds a placeholder that JSONSerializer cannot read.
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    let key = "tg:queryset:Character:id=777";
    let mut seen = None;
    let _: String = cache
        .get_or_set(key, MEDIUM, || async {
            seen = Some(d.try_call(json!({"op": "get", "cache": "plain", "key": key})));
            "v".to_string()
        })
        .await;
    let seen = seen.unwrap();
    assert!(seen.is_err(), "{seen:?}");
    assert_eq!(
        d.get("plain", key),
        Some(json!("v")),
        "the value itself reads"
    );
}

static SCENE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A cached function whose data lives in Django's database.
#[cache_function(timeout = MEDIUM, key_prefix = "interop_scenes")]
async fn character_name(character_id: i64) -> String {
    SCENE_RUNS.fetch_add(1, SeqCst);
    django()
        .call(json!({"op": "character_name", "id": character_id}))
        .as_str()
        .unwrap()
        .to_owned()
}

#[derive(Clone, Invalidate)]
#[invalidate_on(save, delete)]
#[invalidate(model_key(id))]
struct Character {
    id: i64,
}

#[tokio::test]
async fn django_saves_invalidate_rust_and_rust_saves_invalidate_django() {
    let (_turn, mut d, _server) = world();
    d.call(json!({"op": "character_create", "id": 5, "name": "Ada"}));
    drop(d);
    let runs = SCENE_RUNS.load(SeqCst);
    assert_eq!(character_name(5).await, "Ada");
    assert_eq!(character_name(5).await, "Ada");
    assert_eq!(SCENE_RUNS.load(SeqCst) - runs, 1);

    // Django's save: its post_save receiver (tg_cache_django.invalidate_on)
    // invalidates the Rust function's family.
    let mut d = django();
    d.call(json!({"op": "character_save", "id": 5, "name": "Bea"}));
    drop(d);
    assert_eq!(character_name(5).await, "Bea");
    assert_eq!(SCENE_RUNS.load(SeqCst) - runs, 2);

    // Django's cached queryset, invalidated by Rust's `saved()`.
    let mut d = django();
    assert_eq!(
        d.call(json!({"op": "character_cached", "id": 5})),
        json!("Bea")
    );
    d.call(json!({"op": "character_update_quietly", "id": 5, "name": "Cyd"}));
    assert_eq!(
        d.call(json!({"op": "character_cached", "id": 5})),
        json!("Bea"),
        "still cached"
    );
    drop(d);
    Character { id: 5 }.saved().await.unwrap();
    let mut d = django();
    assert_eq!(
        d.call(json!({"op": "character_cached", "id": 5})),
        json!("Cyd")
    );
}

#[tokio::test]
async fn pickle_is_a_diagnosed_miss() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    for (i, alias) in ["pickle", "pickle_zlib", "builtin"].iter().enumerate() {
        let key = format!("tg:queryset:Pickled:id={i}");
        d.set(
            alias,
            &key,
            json!({"name": "Ada", "padding": "p".repeat(100)}),
        );
        let raw = d.raw(&format!(":1:{key}")).unwrap();
        assert!(raw[0] == 0x80 || raw[0] == 0x78, "{alias}: {raw:?}");
        let before = cache.stats();
        assert_eq!(cache.get::<Value>(&key).await.unwrap(), None, "{alias}");
        let after = cache.stats();
        assert_eq!(after.pickled - before.pickled, 1, "{alias}");
        assert_eq!(after.decode_errors - before.decode_errors, 1, "{alias}");
        // Never overwritten either: a cached function computes without
        // storing, and Django still reads its own value.
        let v: Value = cache
            .get_or_set(&key, MEDIUM, || async { json!("computed") })
            .await;
        assert_eq!(v, json!("computed"));
        assert_eq!(
            d.get(alias, &key),
            Some(json!({"name": "Ada", "padding": "p".repeat(100)})),
            "{alias}: Django's pickled value was replaced"
        );
        // Integers are not pickled by Django: they cross.
        d.set(alias, "interop:pickle:int", json!(12));
        assert_eq!(
            cache.get::<i64>("interop:pickle:int").await.unwrap(),
            Some(12)
        );
    }
}

#[tokio::test]
async fn djangos_writes_reach_a_near_cache() {
    let (_turn, mut d, server) = world();
    let cache = shared(server).near_cache(100).build().unwrap();
    let key = "tg:queryset:Character:id=42";
    d.set("default", key, json!("one"));
    for _ in 0..3 {
        assert_eq!(
            cache.get::<String>(key).await.unwrap().as_deref(),
            Some("one")
        );
    }
    let near: u64 = cache
        .near_stats()
        .unwrap()
        .iter()
        .map(|(_, s)| s.hits)
        .sum();
    assert!(near >= 1, "served from the near cache");
    d.set("default", key, json!("two"));
    let until = Instant::now() + Duration::from_secs(2);
    while cache.get::<String>(key).await.unwrap().as_deref() != Some("two") {
        assert!(
            Instant::now() < until,
            "Django's write never reached the near cache"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    d.call(json!({"op": "delete", "key": key}));
    let until = Instant::now() + Duration::from_secs(2);
    while cache.get::<String>(key).await.unwrap().is_some() {
        assert!(
            Instant::now() < until,
            "Django's delete never reached the near cache"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn clear_scopes_and_surviving_djangos_clear() {
    let (_turn, mut d, server) = world();
    let cache = rust(server);
    cache.set("interop:clear:mine", &1, MEDIUM).await.unwrap();
    d.set("app", "interop:clear:other", json!(2));
    // tg-cache's clear(): its own version's keys (`:1:*`), nothing else.
    cache.clear().await.unwrap();
    assert_eq!(cache.get::<i64>("interop:clear:mine").await.unwrap(), None);
    assert_eq!(d.get("app", "interop:clear:other"), Some(json!(2)));

    // Django's clear() is FLUSHDB: everything goes, epochs included; no old
    // value comes back and caching resumes.
    let runs = AtomicUsize::new(0);
    let compute = |v: &'static str| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, SeqCst);
            v.to_string()
        }
    };
    let key = "tg:fn:interop_clear:id=1";
    assert_eq!(cache.get_or_set(key, MEDIUM, compute("old")).await, "old");
    d.call(json!({"op": "clear"}));
    assert_eq!(d.call(json!({"op": "raw_keys", "pattern": "*"})), json!([]));
    assert_eq!(cache.get::<String>(key).await.unwrap(), None);
    assert_eq!(cache.get_or_set(key, MEDIUM, compute("new")).await, "new");
    assert_eq!(cache.get_or_set(key, MEDIUM, compute("newer")).await, "new");
    assert_eq!(runs.load(SeqCst), 2);
    assert_eq!(d.get("default", key), Some(json!("new")));
}
