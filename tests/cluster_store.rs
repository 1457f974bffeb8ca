//! The Redis Cluster store (`CacheConfig::redis_cluster`, issue 14) on a
//! real cluster of six `redis-server`s (`testing::RedisCluster`): the cache
//! API, key families and fills across independently built caches, keys kept
//! exactly as given, internal keys in their key's slot, and keys spread
//! over every primary.
//!
//! Run: `cargo test --all-features --test cluster_store`.

use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tg_cache::testing::{RedisCluster, watchdog};
use tg_cache::{Cache, CacheConfig, key::cluster_slot};

/// One cluster at a time: six servers each are enough for a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cache(cluster: &RedisCluster) -> Cache {
    CacheConfig::redis_cluster(cluster.urls())
        .response_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// [`cache`] with a near cache.
fn near_cache(cluster: &RedisCluster) -> Cache {
    CacheConfig::redis_cluster(cluster.urls())
        .response_timeout(Duration::from_secs(2))
        .near_cache(10_000)
        .build()
        .unwrap()
}

/// A raw cluster client: the keys as Redis holds them.
async fn raw(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

/// Every key of every primary, by primary port.
fn keys_by_primary(cluster: &RedisCluster) -> BTreeMap<u16, Vec<String>> {
    cluster
        .primaries()
        .into_iter()
        .map(|p| {
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) =
                    cluster
                        .server(p.port)
                        .cmd(&["SCAN", &cursor.to_string(), "COUNT", "1000"]);
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            (p.port, keys)
        })
        .collect()
}

fn all_keys(cluster: &RedisCluster) -> Vec<String> {
    keys_by_primary(cluster).into_values().flatten().collect()
}

/// Keys whose slots cover every primary, with tags and braces of their own.
fn spread_keys(n: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..n).map(|i| format!("api:{i}")).collect();
    keys.extend(
        [
            "api:{user1}:a",
            "api:{user1}:b",
            "api:a{b",
            "api:a{}b{c}",
            "api:}{",
        ]
        .map(String::from),
    );
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_api_works_on_a_cluster_with_keys_as_given() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster api", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    let cache = cache(&cluster);
    let mut raw = raw(&cluster).await;
    let keys = spread_keys(300);

    // set / get, one key at a time, and each key exactly as given in Redis.
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, &(i as u64), None).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cache.get::<u64>(k).await.unwrap(), Some(i as u64), "{k}");
        let stored: Option<String> = raw.get(k).await.unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(&*i.to_string()),
            "{k} as Redis holds it"
        );
    }
    let ports: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| cluster.primary_of_slot(cluster_slot(k)).unwrap().port)
        .collect();
    assert_eq!(ports.len(), 3, "the keys reach every primary");

    // get_many / set_many / delete_many span slots.
    let items: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), 7)).collect();
    cache.set_many(&items, None).await.unwrap();
    let got = cache.get_many::<u64, _>(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    assert!(got.values().all(|v| *v == 7));
    let gone = &keys[..100];
    assert_eq!(cache.delete_many(gone).await.unwrap(), 100);
    let got = cache.get_many::<u64, _>(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len() - 100);
    assert!(gone.iter().all(|k| !got.contains_key(k)));

    // add, incr / decr, touch, ttl, delete, has_key.
    assert!(cache.add("api:added", &1u64, None).await.unwrap());
    assert!(!cache.add("api:added", &2u64, None).await.unwrap());
    assert_eq!(cache.incr("api:added", 41).await.unwrap(), 42);
    assert_eq!(cache.decr("api:added", 2).await.unwrap(), 40);
    assert!(cache.touch("api:added", 60u64).await.unwrap());
    let ttl = cache.ttl("api:added").await.unwrap();
    assert!(
        matches!(ttl, Some(tg_cache::timeout::Ttl::Remaining(d)) if d > Duration::from_secs(50)),
        "{ttl:?}"
    );
    assert!(cache.has_key("api:added").await.unwrap());
    assert!(cache.delete("api:added").await.unwrap());
    assert!(!cache.has_key("api:added").await.unwrap());

    // delete_pattern visits every primary, and widens to nothing else.
    let many: Vec<(String, u64)> = (0..3000).map(|i| (format!("pat:{i}"), i)).collect();
    cache.set_many(&many, None).await.unwrap();
    cache.set("patx", &1u64, None).await.unwrap();
    assert_eq!(cache.delete_pattern("pat:*").await.unwrap(), 3000);
    let left = all_keys(&cluster);
    assert!(
        !left.iter().any(|k| k.starts_with("pat:")),
        "left: {left:?}"
    );
    assert!(left.iter().any(|k| k == "patx"));

    // clear empties every primary.
    cache.clear().await.unwrap();
    let left = all_keys(&cluster);
    assert!(left.is_empty(), "left after clear: {left:?}");
    assert!(cache.get::<u64>("patx").await.unwrap().is_none());
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());

    // Two namespaces: one's `clear` removes its values and epochs (in
    // every slot), and none of the other's.
    let ns = |p: &str| {
        CacheConfig::redis_cluster(cluster.urls())
            .key_prefix(p)
            .build()
            .unwrap()
    };
    let (a, b) = (ns("a"), ns("b"));
    for i in 0..40 {
        a.get_or_set(&family_key(i), None, || async move { i as u64 })
            .await;
        b.get_or_set(&family_key(i), None, || async move { i as u64 })
            .await;
    }
    let epochs_of = |p: &str| {
        all_keys(&cluster)
            .into_iter()
            .filter(|k| k.contains(&format!("}}:{p}:1:#epoch:")))
            .count()
    };
    let slots = (0..40)
        .map(|i| cluster_slot(&format!("a:1:{}", family_key(i))))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(epochs_of("a"), slots);
    a.clear().await.unwrap();
    let left = all_keys(&cluster);
    assert!(
        !left.iter().any(|k| k.contains("a:1:")),
        "a's keys left: {left:?}"
    );
    assert_eq!(
        epochs_of("b"),
        (0..40)
            .map(|i| cluster_slot(&format!("b:1:{}", family_key(i))))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    for i in 0..40 {
        assert_eq!(
            b.get::<u64>(&family_key(i)).await.unwrap(),
            Some(i as u64),
            "b's key {i}"
        );
    }
}

const FAMILY: &str = "tg:fn:cluster_scenes";

fn family_key(i: usize) -> String {
    format!("{FAMILY}:id={i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_is_invalidated_in_every_slot_and_fills_run_once_across_caches() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster family", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    let (a, b) = (cache(&cluster), cache(&cluster));
    let runs = Arc::new(AtomicUsize::new(0));
    let fill = |cache: Cache, i: usize, round: usize| {
        let runs = runs.clone();
        async move {
            cache
                .get_or_set(&family_key(i), None, || async move {
                    runs.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    round as u64
                })
                .await
        }
    };

    // 50 keys, each asked for by both caches at once: one body run per key.
    let mut tasks = Vec::new();
    for i in 0..50 {
        tasks.push(tokio::spawn(fill(a.clone(), i, 1)));
        tasks.push(tokio::spawn(fill(b.clone(), i, 1)));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(
        runs.load(SeqCst),
        50,
        "one body run per key across two caches"
    );

    // The family's epochs live in the slots of its keys, beside them.
    let epochs: Vec<String> = all_keys(&cluster)
        .into_iter()
        .filter(|k| k.contains("#epoch:"))
        .collect();
    let slots: std::collections::BTreeSet<u16> =
        (0..50).map(|i| cluster_slot(&family_key(i))).collect();
    assert_eq!(
        epochs.len(),
        slots.len(),
        "one epoch per slot in use: {epochs:?}"
    );
    for e in &epochs {
        assert!(slots.contains(&cluster_slot(e)), "{e} is in no key's slot");
    }

    // Invalidated through one cache: every key is a miss in the other.
    b.invalidate_family(FAMILY).await.unwrap();
    let mut stale = 0;
    for i in 0..50 {
        stale += usize::from(a.get::<u64>(&family_key(i)).await.unwrap().is_some());
    }
    assert_eq!(
        stale, 0,
        "{stale} of 50 keys still served after invalidate_family"
    );
    for i in 0..50 {
        assert_eq!(fill(a.clone(), i, 2).await, 2);
        assert_eq!(fill(b.clone(), i, 3).await, 2, "b reads a's fill");
    }
    assert_eq!(runs.load(SeqCst), 100);

    // No set after invalidate: a fill whose family is invalidated while
    // it computes does not store.
    let slow = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_set(&family_key(999), None, || async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                1u64
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.invalidate_family(FAMILY).await.unwrap();
    assert_eq!(slow.await.unwrap(), 1);
    assert_eq!(
        b.get::<u64>(&family_key(999)).await.unwrap(),
        None,
        "a value computed before the invalidation was stored"
    );
    assert_eq!(a.stats().errors + b.stats().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_of_one_family_spread_over_every_primary() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster spread", Duration::from_secs(180));
    let cluster = RedisCluster::start();
    let cache = cache(&cluster);
    let items: Vec<(String, u64)> = (0..10_000).map(|i| (family_key(i), i as u64)).collect();
    for chunk in items.chunks(500) {
        cache.set_many(chunk, None).await.unwrap();
    }
    let by_primary = keys_by_primary(&cluster);
    let values: BTreeMap<u16, usize> = by_primary
        .iter()
        .map(|(p, keys)| (*p, keys.iter().filter(|k| k.starts_with(FAMILY)).count()))
        .collect();
    eprintln!("values by primary: {values:?}");
    assert_eq!(values.values().sum::<usize>(), 10_000);
    assert_eq!(values.len(), 3);
    for (p, n) in &values {
        assert!(*n * 100 <= 45 * 10_000, "primary {p} holds {n} of 10,000");
    }

    // Read uniformly: no primary serves more than 1.5x its fair share.
    for p in cluster.primaries() {
        let () = cluster.server(p.port).cmd(&["CONFIG", "RESETSTAT"]);
    }
    for round in 0..2 {
        for chunk in items.chunks(100) {
            let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
            let got = cache.get_many::<u64, _>(&keys).await.unwrap();
            assert_eq!(got.len(), keys.len(), "round {round}");
        }
    }
    // Every command each primary ran (`INFO commandstats`): the reads, and
    // whatever else the cache sent it (topology reads, pings, epochs).
    let served: BTreeMap<u16, (u64, u64)> = cluster
        .primaries()
        .into_iter()
        .map(|p| {
            let calls = cluster.server(p.port).command_calls();
            let all: u64 = calls
                .iter()
                .filter(|(name, _)| name.as_str() != "config")
                .map(|(_, n)| n)
                .sum();
            (p.port, (all, calls.get("getrange").copied().unwrap_or(0)))
        })
        .collect();
    eprintln!("(commands, GETRANGEs) by primary: {served:?}");
    let reads: u64 = served.values().map(|(_, r)| r).sum();
    assert!(reads >= 20_000, "{served:?}");
    let total: u64 = served.values().map(|(all, _)| all).sum();
    for (p, (n, _)) in &served {
        assert!(
            (*n as f64) <= 1.5 * total as f64 / 3.0,
            "primary {p} served {n} of {total} commands"
        );
    }
}

#[test]
fn the_environment_selects_a_cluster_and_names_what_is_wrong() {
    let lookup = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let cfg = CacheConfig::from_lookup(lookup(&[
        ("TG_CACHE_BACKEND", "redis-cluster"),
        (
            "TG_CACHE_REDIS_NODES",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
        ),
    ]))
    .unwrap();
    assert_eq!(cfg.backend().to_string(), "redis-cluster");
    assert!(cfg.validate().is_ok());
    let e = CacheConfig::from_lookup(lookup(&[("TG_CACHE_BACKEND", "redis-cluster")])).unwrap_err();
    assert_eq!(e.setting, "TG_CACHE_REDIS_NODES");
    let e = CacheConfig::from_lookup(lookup(&[
        ("TG_CACHE_BACKEND", "redis-cluster"),
        ("TG_CACHE_REDIS_NODES", "redis://127.0.0.1:7000,http://x"),
    ]))
    .unwrap_err();
    assert_eq!(e.setting, "TG_CACHE_REDIS_NODES");
    let e = CacheConfig::redis_cluster(Vec::<String>::new())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("TG_CACHE_REDIS_NODES"), "{e}");
}

/// What the callers saw in one phase of the failover test.
#[derive(Default)]
struct Phase {
    calls: u64,
    /// Calls whose body ran (a miss, or Redis unreachable: fail-open).
    computed: u64,
    max_ms: f64,
    ms: Vec<f64>,
}

impl Phase {
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls, {} computed, p50 {:.2} ms, p99 {:.1} ms, max {:.0} ms",
            self.calls,
            self.computed,
            self.quantile(0.5),
            self.quantile(0.99),
            self.max_ms
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_no_call_and_the_other_shards_keep_hitting() {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster failover under load", Duration::from_secs(180));
    let mut cluster = RedisCluster::start();
    let cache = cache(&cluster);
    const KEYS: usize = 600;
    for i in 0..KEYS {
        cache
            .get_or_set(&family_key(i), None, || async move { i as u64 })
            .await;
    }
    let victim = cluster.primaries()[0].clone();
    let on_victim: Arc<Vec<bool>> = Arc::new(
        (0..KEYS)
            .map(|i| {
                let s = cluster_slot(&family_key(i));
                victim.slots.iter().any(|&(a, b)| (a..=b).contains(&s))
            })
            .collect(),
    );
    // Phases: 0 before the kill, 1 until the replica is promoted, 2 after.
    let phase = Arc::new(AtomicUsize::new(0));
    let stats: Arc<Mutex<[[Phase; 2]; 3]>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicUsize::new(0));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    // Per key on the victim: when it was first a hit again after the kill.
    let resumed: Arc<Mutex<Option<Duration>>> = Arc::default();
    let victim_down = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let victim_down = victim_down.clone();
        let (cache, phase, stats, stop, wrong, on_victim, killed_at, resumed) = (
            cache.clone(),
            phase.clone(),
            stats.clone(),
            stop.clone(),
            wrong.clone(),
            on_victim.clone(),
            killed_at.clone(),
            resumed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t * 7;
            while !stop.load(SeqCst) {
                i = (i + 1) % KEYS;
                let p = phase.load(SeqCst);
                let ran = Arc::new(AtomicBool::new(false));
                let r2 = ran.clone();
                let start = Instant::now();
                let v = cache
                    .get_or_set(&family_key(i), None, || async move {
                        r2.store(true, SeqCst);
                        i as u64
                    })
                    .await;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                if v != i as u64 {
                    wrong.fetch_add(1, SeqCst);
                }
                let ran = ran.load(SeqCst);
                let shard = usize::from(on_victim[i]);
                {
                    let mut s = stats.lock().unwrap();
                    let ph = &mut s[p][shard];
                    ph.calls += 1;
                    ph.computed += u64::from(ran);
                    ph.max_ms = ph.max_ms.max(ms);
                    ph.ms.push(ms);
                }
                // Down once a call on the victim computed after the kill;
                // resumed at its first hit after that.
                if shard == 1 && p >= 1 {
                    if ran {
                        victim_down.store(true, SeqCst);
                    } else if victim_down.load(SeqCst) {
                        let mut r = resumed.lock().unwrap();
                        if r.is_none() {
                            *r = killed_at.lock().unwrap().map(|k| k.elapsed());
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    *killed_at.lock().unwrap() = Some(Instant::now());
    phase.store(1, SeqCst);
    cluster.server_mut(victim.port).kill9();
    let killed = Instant::now();
    // Every primary must answer a health check: one is down.
    let health_while_down = cache.health().await;
    // An invalidation fails (the down primary's slots cannot be written),
    // in bounded time: every slot is tried, none waits in the queue.
    let started = Instant::now();
    let invalidated_while_down = cache.invalidate_family("tg:fn:cluster_other").await;
    let invalidation_took = started.elapsed();
    let cluster = tokio::task::spawn_blocking(move || {
        let slot = victim.slots[0].0;
        cluster.wait_until(
            tg_cache::testing::NODE_TIMEOUT * 6,
            "a replica takes over",
            |c| {
                c.primary_of_slot(slot)
                    .is_some_and(|n| n.port != victim.port)
            },
        );
        cluster.wait_until_ok(tg_cache::testing::NODE_TIMEOUT * 6);
        cluster
    })
    .await
    .unwrap();
    let promoted = killed.elapsed();
    phase.store(2, SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let health_after = cache.health().await;
    let invalidated_after = cache.invalidate_family("tg:fn:cluster_other").await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let s = stats.lock().unwrap();
    let resumed = *resumed.lock().unwrap();
    eprintln!(
        "failover: replica promoted {promoted:?} after the kill; hits on the victim's keys resumed {resumed:?} after it\n  before: other shards {:?}, victim {:?}\n  during: other shards {:?}, victim {:?}\n  after:  other shards {:?}, victim {:?}",
        s[0][0], s[0][1], s[1][0], s[1][1], s[2][0], s[2][1]
    );
    assert_eq!(wrong.load(SeqCst), 0, "calls returned a wrong value");
    eprintln!("health while down: {health_while_down:?}; after: {health_after:?}");
    assert!(health_while_down.is_err(), "a primary was down");
    eprintln!("invalidation while down: {invalidated_while_down:?} in {invalidation_took:?}");
    assert!(invalidated_while_down.is_err());
    assert!(
        invalidation_took < Duration::from_secs(5),
        "an invalidation took {invalidation_took:?} while a primary was down"
    );
    assert!(
        invalidated_after.is_ok(),
        "an invalidation after the failover: {invalidated_after:?}"
    );
    assert!(health_after.is_ok(), "{health_after:?}");
    for (p, phase) in s.iter().enumerate() {
        for shard in phase {
            assert!(shard.calls > 0, "phase {p}: no calls");
            // No call outlasts the response timeout (2 s here) by much.
            assert!(
                shard.max_ms < 3000.0,
                "phase {p}: a call took {} ms",
                shard.max_ms
            );
        }
    }
    // The other shards keep serving hits while the victim is down (a few
    // of their keys share a breaker's slot range with the victim's), about
    // as fast as before; the victim's keys fail fast but for the breakers'
    // probes, and compute (fail-open).
    let during = &s[1][0];
    assert!(
        during.computed * 20 <= during.calls,
        "other shards during the failover: {during:?}"
    );
    assert!(
        during.quantile(0.5) <= 50.0_f64.max(3.0 * s[0][0].quantile(0.5)),
        "other shards slowed down during the failover: {during:?}, before: {:?}",
        s[0][0]
    );
    assert!(
        s[1][1].quantile(0.5) < 50.0,
        "the failed shard's calls do not fail fast: {:?}",
        s[1][1]
    );
    // And the victim's keys hit again once its replica took over.
    let resumed = resumed.expect("hits on the failed shard never resumed");
    // Within two topology reads of the promotion.
    assert!(
        resumed <= promoted + Duration::from_secs(2),
        "hits on the failed shard resumed {resumed:?} after the kill, the replica was promoted after {promoted:?}"
    );
    let after = &s[2][1];
    assert!(
        after.computed * 2 <= after.calls,
        "victim's keys after the failover: {after:?}"
    );
    drop(cluster);
}

// ---- Two OS processes on one cluster ----

#[path = "cross_process/helpers.rs"]
mod helpers;

/// Raw access to the cluster, by key (a foreign client; also in a child,
/// which knows only the seed nodes, comma-separated).
fn raw_cluster(nodes: &str) -> helpers::Raw {
    helpers::Raw::new(format!("cluster:{nodes}"))
}

/// A child's cache: from the environment, as an application builds it.
fn child_cache() -> Option<(Cache, helpers::Raw)> {
    let nodes = helpers::child_url()?;
    let cfg = CacheConfig::from_lookup(|name| match name {
        "TG_CACHE_BACKEND" => Some("redis-cluster".into()),
        "TG_CACHE_REDIS_NODES" => Some(nodes.clone()),
        "TG_CACHE_NEAR_CACHE" => std::env::var(name).ok(),
        _ => None,
    })
    .unwrap();
    Some((cfg.build().unwrap(), raw_cluster(&nodes)))
}

fn spawn(helper: &str, cluster: &RedisCluster, env: &[(&str, &str)]) -> std::process::Child {
    helpers::spawn_child(helper, &cluster.urls().join(","), env)
}

/// The keys of the family race: given to a child in this variable.
const RACE_KEYS_VAR: &str = "TG_XP_RACE_KEYS";
/// Keys outside the family that a race's child also writes (and reads
/// back), invalidating the family now and then too.
const OWN_KEYS_VAR: &str = "TG_XP_OWN_KEYS";

/// Keys of the family on every primary.
fn spread_race_keys() -> Vec<String> {
    (0..16).map(family_key).collect()
}

/// How long after an invalidation returned a near cache in another process
/// may still serve the value it killed, in these tests (its push crosses
/// another connection: see `near_cache.rs`).
const NEAR_BOUND: Duration = Duration::from_millis(100);

/// What one process's readers saw in a race.
#[derive(Debug, Clone, Copy, Default)]
struct Reads {
    /// Killed values served.
    stale: u64,
    /// Of those, still served [`NEAR_BOUND`] later.
    beyond: u64,
    reads: u64,
    hits: u64,
    failed: u64,
    /// Near-cache hits.
    near: u64,
}

fn near_hits(cache: &Cache) -> u64 {
    cache
        .near_stats()
        .map_or(0, |s| s.iter().map(|(_, f)| f.hits).sum())
}

/// Reads `keys` from 8 tasks until `until`, and counts hits in Redis
/// (`hits_key`). A read is stale when it returns a round at or below
/// `xp:dead` read before it.
async fn read_race(
    cache: &Cache,
    raw: &Arc<helpers::Raw>,
    keys: Arc<Vec<String>>,
    hits_key: &'static str,
    until: impl Fn() -> bool + Clone + Send + 'static,
) -> Reads {
    use std::sync::atomic::AtomicU64;
    let counts = Arc::new([0; 5].map(AtomicU64::new));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (cache, raw, counts, until, keys) = (
            cache.clone(),
            raw.clone(),
            counts.clone(),
            until.clone(),
            keys.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !until() {
                i = (i + 1) % keys.len();
                let floor = raw.get_u64("xp:dead").unwrap_or(0);
                // A read may fail while its slot migrates (counted: the
                // manual API reports it; a cached function computes).
                let Ok(v) = cache.get::<u64>(&keys[i]).await else {
                    counts[3].fetch_add(1, SeqCst);
                    continue;
                };
                counts[1].fetch_add(1, SeqCst);
                if let Some(v) = v {
                    if (counts[2].fetch_add(1, SeqCst) + 1).is_multiple_of(100) {
                        let () = raw.cmd(&["INCRBY", hits_key, "100"]);
                    }
                    if v <= floor {
                        counts[0].fetch_add(1, SeqCst);
                        tokio::time::sleep(NEAR_BOUND).await;
                        if let Ok(Some(again)) = cache.get::<u64>(&keys[i]).await
                            && again <= floor
                        {
                            counts[4].fetch_add(1, SeqCst);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let [stale, reads, hits, failed, beyond] = [0, 1, 2, 3, 4].map(|i| counts[i].load(SeqCst));
    Reads {
        stale,
        beyond,
        reads,
        hits,
        failed,
        near: near_hits(cache),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs only as a child process"]
async fn helper_cluster_family_reader() {
    let Some((cache, raw)) = child_cache() else {
        return;
    };
    let keys: Vec<String> = std::env::var(RACE_KEYS_VAR)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let raw = Arc::new(raw);
    let writer = std::env::var(OWN_KEYS_VAR).ok().map(|own| {
        let own: Vec<String> = own.split(',').map(str::to_owned).collect();
        let (cache, raw) = (cache.clone(), raw.clone());
        tokio::spawn(async move { write_race(&cache, &raw, &own).await })
    });
    let () = raw.cmd(&["SET", "xp:reading", "1"]);
    let stop = raw.clone();
    let r = read_race(&cache, &raw, Arc::new(keys), "xp:hits:child", move || {
        stop.exists("xp:stop")
    })
    .await;
    if let Some(w) = writer {
        let w = w.await.unwrap();
        println!("XP own_writes={}", w.writes);
        println!("XP own_stale={}", w.stale);
        println!("XP own_failed={}", w.failed);
        println!("XP invalidations={}", w.invalidations);
    }
    println!("XP stale={}", r.stale);
    println!("XP beyond={}", r.beyond);
    println!("XP reads={}", r.reads);
    println!("XP hits={}", r.hits);
    println!("XP failed={}", r.failed);
    println!("XP near={}", r.near);
}

/// What a race's child wrote.
#[derive(Debug, Default, Clone, Copy)]
struct Writes {
    /// Writes of its own keys that returned.
    writes: u64,
    /// Reads right after one of them that did not see it.
    stale: u64,
    /// Writes, read-backs and invalidations that failed.
    failed: u64,
    /// Family invalidations that returned.
    invalidations: u64,
}

/// Until `xp:stop`: writes `own` keys in turn, each read back at once
/// (an own write is seen at once, near cache or not), and invalidates the
/// family every tenth write.
async fn write_race(cache: &Cache, raw: &helpers::Raw, own: &[String]) -> Writes {
    let mut w = Writes::default();
    let mut n = 0u64;
    while !raw.exists("xp:stop") {
        n += 1;
        let key = &own[n as usize % own.len()];
        if cache.set(key, &n, None).await.is_err() {
            w.failed += 1;
            continue;
        }
        w.writes += 1;
        match cache.get::<u64>(key).await {
            Ok(Some(v)) if v == n => {}
            Ok(_) => w.stale += 1,
            Err(_) => w.failed += 1,
        }
        if n.is_multiple_of(10) {
            match cache.invalidate_family(FAMILY).await {
                Ok(()) => w.invalidations += 1,
                Err(_) => w.failed += 1,
            }
        }
        tokio::time::sleep(helpers::jitter(3)).await;
    }
    w
}

/// What one family race saw.
struct Race {
    rounds: u64,
    /// Writes and invalidations that failed.
    write_errors: u64,
    /// Whether every cache had a near cache.
    near: bool,
    /// What the child and the parent's reader saw.
    child: Reads,
    parent: Reads,
    /// What the child wrote, if it wrote.
    child_writes: Option<Writes>,
}

/// Randomised across two processes: the parent writes round `r` of the
/// family's `keys`, invalidates the family through one of two caches and
/// publishes `xp:dead = r`, while a child process and a third cache in the
/// parent read, for at least 3 s and until both had 2,000 hits and 30
/// rounds passed; `meanwhile` runs alongside (on a thread of its own).
/// With `near`, every cache (the child's too) has a near cache.
async fn family_race(
    cluster: &RedisCluster,
    keys: Vec<String>,
    own: Option<Vec<String>>,
    near: bool,
    meanwhile: impl FnOnce() + Send + 'static,
) -> Race {
    use std::sync::atomic::AtomicBool;
    let raw = Arc::new(raw_cluster(&cluster.urls().join(",")));
    let joined = keys.join(",");
    let own_joined = own.as_ref().map(|o| o.join(","));
    let mut env = vec![(RACE_KEYS_VAR, joined.as_str())];
    if let Some(o) = &own_joined {
        env.push((OWN_KEYS_VAR, o.as_str()));
    }
    if near {
        env.push(("TG_CACHE_NEAR_CACHE", "10000"));
    }
    let child = spawn("helper_cluster_family_reader", cluster, &env);
    raw.wait_for("xp:reading", Duration::from_secs(30)).await;
    let keys = Arc::new(keys);
    let build = || {
        if near {
            near_cache(cluster)
        } else {
            cache(cluster)
        }
    };
    let (a, b, reader) = (build(), build(), build());
    let stopped = Arc::new(AtomicBool::new(false));
    let parent = {
        let (raw, stopped, keys) = (raw.clone(), stopped.clone(), keys.clone());
        tokio::spawn(async move {
            read_race(&reader, &raw, keys, "xp:hits:parent", move || {
                stopped.load(SeqCst)
            })
            .await
        })
    };
    let side = std::thread::spawn(meanwhile);
    let (min_stop, max_stop) = (
        std::time::Instant::now() + Duration::from_secs(3),
        std::time::Instant::now() + Duration::from_secs(40),
    );
    let enough = |raw: &helpers::Raw| {
        raw.get_u64("xp:hits:child").unwrap_or(0) >= 2000
            && raw.get_u64("xp:hits:parent").unwrap_or(0) >= 2000
    };
    let (mut rounds, mut write_errors) = (0u64, 0u64);
    while std::time::Instant::now() < min_stop
        || (std::time::Instant::now() < max_stop
            && (!enough(&raw) || rounds < 30 || !side.is_finished()))
    {
        rounds += 1;
        let items: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), rounds)).collect();
        // A write may fail while its slot migrates (counted); a round is
        // published dead only once an invalidation after it returned.
        if a.set_many(&items, None).await.is_err() {
            write_errors += 1;
        }
        tokio::time::sleep(helpers::jitter(3)).await;
        let by = if rounds.is_multiple_of(2) { &a } else { &b };
        if by.invalidate_family(FAMILY).await.is_err() {
            write_errors += 1;
            continue;
        }
        let () = raw.cmd(&["SET", "xp:dead", &rounds.to_string()]);
        tokio::time::sleep(helpers::jitter(2)).await;
    }
    stopped.store(true, SeqCst);
    side.join().expect("the side task failed");
    let parent = parent.await.unwrap();
    let () = raw.cmd(&["SET", "xp:stop", "1"]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || helpers::finish(child, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    let get = |name| {
        helpers::reported(&out, name)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    Race {
        rounds,
        write_errors,
        near,
        child: Reads {
            stale: get("stale"),
            beyond: get("beyond"),
            reads: get("reads"),
            hits: get("hits"),
            failed: get("failed"),
            near: get("near"),
        },
        parent,
        child_writes: own.map(|_| Writes {
            writes: get("own_writes"),
            stale: get("own_stale"),
            failed: get("own_failed"),
            invalidations: get("invalidations"),
        }),
    }
}

impl Race {
    fn check(&self, what: &str) {
        let (c, p) = (self.child, self.parent);
        eprintln!(
            "{what}: {} rounds ({} failed writes); child: {c:?}; parent: {p:?}; child's writes: {:?}",
            self.rounds, self.write_errors, self.child_writes
        );
        if let Some(w) = self.child_writes {
            assert!(
                w.writes >= 50 && w.invalidations >= 5,
                "the child hardly wrote: {w:?}"
            );
            assert_eq!(w.stale, 0, "the child's own writes not read back: {w:?}");
        }
        assert!(self.rounds >= 30, "only {} invalidations", self.rounds);
        assert!(
            c.hits >= 1000 && p.hits >= 1000,
            "too few hits to race: {}, {}",
            c.hits,
            p.hits
        );
        if self.near {
            // A near cache hears of an invalidation by a push on its own
            // connection, which may come just after the other process's
            // next read: never a bound later.
            assert!(
                c.near > 0 && p.near > 0,
                "no near hit: {} and {}",
                c.near,
                p.near
            );
            assert_eq!(
                (c.beyond, p.beyond),
                (0, 0),
                "dead values served {NEAR_BOUND:?} after their invalidation"
            );
        } else {
            assert_eq!((c.stale, p.stale), (0, 0), "dead values served");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_never_serve_a_family_value_killed_before_the_read() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster family race", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    family_race(&cluster, spread_race_keys(), None, false, || {})
        .await
        .check("cluster family race");
}

/// Moves `slot` from the primary that serves it to `to`, key by key (with
/// a pause after each), as `redis-cli --cluster reshard` does.
fn migrate_slot(nodes: &[tg_cache::testing::ClusterNode], ports: (u16, u16), slot: u16) {
    let conn = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let id = |port: u16| nodes.iter().find(|n| n.port == port).unwrap().id.clone();
    let (from, to) = ports;
    let (mut src, mut dst) = (conn(from), conn(to));
    let s = slot.to_string();
    let () = redis::cmd("CLUSTER")
        .arg(&["SETSLOT", &s, "IMPORTING", &id(from)][..])
        .query(&mut dst)
        .unwrap();
    let () = redis::cmd("CLUSTER")
        .arg(&["SETSLOT", &s, "MIGRATING", &id(to)][..])
        .query(&mut src)
        .unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg(&["GETKEYSINSLOT", &s, "1"][..])
            .query(&mut src)
            .unwrap();
        let Some(k) = keys.first() else { break };
        let () = redis::cmd("MIGRATE")
            .arg(&["127.0.0.1", &to.to_string(), "", "0", "5000", "KEYS", k][..])
            .query(&mut src)
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    for n in nodes.iter().filter(|n| n.primary) {
        let () = redis::cmd("CLUSTER")
            .arg(&["SETSLOT", &s, "NODE", &id(to)][..])
            .query(&mut conn(n.port))
            .unwrap();
    }
}

/// A slot that holds keys of the family (and their epoch) moves to another
/// primary, key by key, while two processes read and write the family: no
/// read serves a killed value, before, during or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_migration_under_reads_and_invalidations_serves_nothing_stale() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster slot migration", Duration::from_secs(150));
    migration_race(false).await;
}

/// A slot that holds keys of the family moves back and forth during a
/// [`family_race`] (with near caches if `near`).
async fn migration_race(near: bool) {
    let cluster = RedisCluster::start();
    let slot = cluster_slot(&family_key(0));
    // Eight keys of the family in that slot, and some elsewhere.
    let mut keys: Vec<String> = (0..200_000)
        .map(family_key)
        .filter(|k| cluster_slot(k) == slot)
        .take(8)
        .collect();
    assert_eq!(keys.len(), 8);
    keys.extend((1..9).map(family_key));
    // Keys of the child's own writes: four in that slot, four elsewhere.
    let mut own: Vec<String> = (0..200_000)
        .map(|i| format!("xp:own:{i}"))
        .filter(|k| cluster_slot(k) == slot)
        .take(4)
        .collect();
    own.extend((0..4).map(|i| format!("xp:own:elsewhere:{i}")));
    let nodes = cluster.nodes();
    let from = cluster.primary_of_slot(slot).unwrap().port;
    let to = cluster
        .primaries()
        .into_iter()
        .find(|p| p.port != from)
        .unwrap()
        .port;
    let race = family_race(&cluster, keys, Some(own), near, move || {
        std::thread::sleep(Duration::from_millis(500));
        // Each round writes the slot's keys again: move them a few times.
        for _ in 0..3 {
            migrate_slot(&nodes, (from, to), slot);
            migrate_slot(&nodes, (to, from), slot);
        }
    })
    .await;
    race.check("slot migration race");
    assert_eq!(cluster.primary_of_slot(slot).unwrap().port, from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs only as a child process"]
async fn helper_cluster_filler() {
    let Some((cache, raw)) = child_cache() else {
        return;
    };
    let raw = Arc::new(raw);
    let () = raw.cmd(&["SET", "xp:ready", "1"]);
    raw.wait_for("xp:go", Duration::from_secs(30)).await;
    fill_all(&cache, &raw).await;
}

/// Every cold key at once from 8 tasks; each body counts its run in Redis.
async fn fill_all(cache: &Cache, raw: &Arc<helpers::Raw>) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (cache, raw) = (cache.clone(), raw.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_set(&family_key(i), None, || async move {
                    let () = raw.cmd(&["INCR", &format!("xp:runs:{i}")]);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    i as u64
                })
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_fill_each_cold_key_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster single flight", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    let raw = Arc::new(raw_cluster(&cluster.urls().join(",")));
    let child = spawn("helper_cluster_filler", &cluster, &[]);
    raw.wait_for("xp:ready", Duration::from_secs(30)).await;
    let cache = cache(&cluster);
    let () = raw.cmd(&["SET", "xp:go", "1"]);
    fill_all(&cache, &raw).await;
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || helpers::finish(child, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(ok, "child failed:\n{out}\n{err}");
    let runs: Vec<u64> = (0..50)
        .map(|i| raw.get_u64(&format!("xp:runs:{i}")).unwrap_or(0))
        .collect();
    eprintln!("body runs per key across two processes: {runs:?}");
    assert!(runs.iter().all(|&n| n == 1), "{runs:?}");
}

// ---------------------------------------------------------------------------
// The near cache on a cluster: tracked connections to every primary
// ---------------------------------------------------------------------------

/// Commands that read or write keys, summed over every primary (not the
/// `PING`s, `CLUSTER SLOTS`, `INFO` and handshakes of pingers, topology
/// readers and reconnects).
fn key_commands(cluster: &RedisCluster) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for p in cluster.primaries() {
        for (name, n) in cluster.server(p.port).command_calls() {
            // Reads and writes of keys (not a reconnect's `hello`).
            let keyed = [
                "get", "getrange", "pttl", "strlen", "exists", "evalsha", "eval", "mget", "set",
                "del",
            ];
            if keyed.contains(&name.as_str()) {
                *calls.entry(name).or_default() += n;
            }
        }
    }
    calls
}

/// Reads every key until one whole pass is near hits; returns the values
/// served in that pass.
async fn until_all_near(cache: &Cache, keys: &[String], limit: Duration) -> Vec<Option<String>> {
    let start = std::time::Instant::now();
    loop {
        let before = near_hits(cache);
        let mut served = Vec::new();
        for k in keys {
            served.push(cache.get::<String>(k).await.unwrap());
        }
        if near_hits(cache) - before == keys.len() as u64 {
            return served;
        }
        assert!(
            start.elapsed() < limit,
            "no pass of near hits within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `cache` serves `want` at every key, at most [`NEAR_BOUND`]
/// after the change; returns how long it took.
async fn converges(cache: &Cache, keys: &[String], want: Option<&str>, what: &str) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let mut all = true;
        for k in keys {
            // A read may fail just after a failover: not a value served.
            if cache.get::<String>(k).await.ok().flatten().as_deref() != want {
                all = false;
            }
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < NEAR_BOUND,
            "{what}: old values still served after {NEAR_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// A near cache on a cluster: hits send no command to any node; a write by
/// another cache (independently built), a raw `SET` and `DEL`, a family
/// invalidation, a `FLUSHALL` of one primary, a slot migration and a
/// failover each reach it, on every primary, within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_on_a_cluster_hits_locally_and_hears_every_primary() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("near cache on a cluster", Duration::from_secs(150));
    let cluster = RedisCluster::start();
    let near = near_cache(&cluster);
    let other = cache(&cluster);
    let mut raw = raw(&cluster).await;
    // Keys of one family over every primary, and keys of no family.
    let fam: Vec<String> = (0..12).map(family_key).collect();
    let plain = spread_keys(12);
    let all: Vec<String> = fam.iter().chain(&plain).cloned().collect();
    let primaries: std::collections::BTreeSet<u16> = all
        .iter()
        .map(|k| cluster.primary_of_slot(cluster_slot(k)).unwrap().port)
        .collect();
    assert_eq!(primaries.len(), 3, "keys on every primary");
    for k in &all {
        other.set(k, &"v1".to_owned(), None).await.unwrap();
    }
    let served = until_all_near(&near, &all, Duration::from_secs(10)).await;
    assert!(served.iter().all(|v| v.as_deref() == Some("v1")));
    let before = key_commands(&cluster);
    for _ in 0..10 {
        for k in &all {
            assert_eq!(near.get::<String>(k).await.unwrap().as_deref(), Some("v1"));
        }
    }
    assert_eq!(key_commands(&cluster), before, "near hits sent commands");
    let mut took = Vec::new();

    for k in &all {
        other.set(k, &"v2".to_owned(), None).await.unwrap();
    }
    took.push((
        "set by another cache",
        converges(&near, &all, Some("v2"), "set").await,
    ));

    until_all_near(&near, &all, Duration::from_secs(5)).await;
    for k in &plain {
        let () = raw.set(k, "\"v3\"").await.unwrap();
    }
    took.push((
        "raw SET",
        converges(&near, &plain, Some("v3"), "raw SET").await,
    ));

    until_all_near(&near, &plain, Duration::from_secs(5)).await;
    for k in &plain {
        let _: i64 = raw.del(k).await.unwrap();
    }
    took.push(("raw DEL", converges(&near, &plain, None, "raw DEL").await));

    until_all_near(&near, &fam, Duration::from_secs(5)).await;
    other.invalidate_family(FAMILY).await.unwrap();
    took.push((
        "invalidate_family",
        converges(&near, &fam, None, "a family invalidation").await,
    ));

    // A FLUSHALL of one primary: a null invalidation on its connection.
    for k in &all {
        other.set(k, &"v4".to_owned(), None).await.unwrap();
    }
    until_all_near(&near, &all, Duration::from_secs(5)).await;
    let victim = cluster.primaries()[0].clone();
    let on_victim: Vec<String> = all
        .iter()
        .filter(|k| cluster.primary_of_slot(cluster_slot(k)).unwrap().port == victim.port)
        .cloned()
        .collect();
    assert!(!on_victim.is_empty());
    let () = cluster.server(victim.port).cmd(&["FLUSHALL"]);
    took.push((
        "FLUSHALL of one primary",
        converges(&near, &on_victim, None, "FLUSHALL").await,
    ));
    let flushes = |c: &Cache| {
        c.near_stats()
            .unwrap()
            .first()
            .map_or(0, |(_, s)| s.flushes)
    };

    // A key of a slot in migration, already moved: its primary answers
    // its reads with `ASK`, and the cluster connection that follows it
    // tracks nothing. Its value is served but not kept: a write after it
    // is seen at once.
    let half = &plain[3];
    other.set(half, &"v9".to_owned(), None).await.unwrap();
    let slot = cluster_slot(half);
    let (from, to) = {
        let from = cluster.primary_of_slot(slot).unwrap();
        let to = cluster
            .primaries()
            .into_iter()
            .find(|p| p.port != from.port)
            .unwrap();
        (from, to)
    };
    let (src, dst) = (cluster.server(from.port), cluster.server(to.port));
    let s = slot.to_string();
    let () = dst.cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]);
    let () = src.cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id]);
    let to_port = to.port.to_string();
    let () = src.cmd(&[
        "MIGRATE",
        "127.0.0.1",
        &to_port,
        "",
        "0",
        "5000",
        "KEYS",
        half,
    ]);
    for _ in 0..3 {
        assert_eq!(
            near.get::<String>(half).await.unwrap().as_deref(),
            Some("v9")
        );
    }
    let () = raw.set(half, "\"v10\"").await.unwrap();
    took.push((
        "a key in migration, then raw SET",
        converges(
            &near,
            std::slice::from_ref(half),
            Some("v10"),
            "a write to a key in migration",
        )
        .await,
    ));
    let nodes = cluster.nodes();
    let ports = (from.port, to.port);
    tokio::task::spawn_blocking(move || migrate_slot(&nodes, ports, slot))
        .await
        .unwrap();

    // A slot migration changes the topology: the near cache is dropped
    // once it is read (within a second).
    for k in &all {
        other.set(k, &"v5".to_owned(), None).await.unwrap();
    }
    until_all_near(&near, &all, Duration::from_secs(5)).await;
    // No drop pending from the migration before (the topology is read
    // once a second): the count stays put for 1.5 s first.
    let mut dropped = flushes(&near);
    let mut still = std::time::Instant::now();
    while still.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if flushes(&near) != dropped {
            dropped = flushes(&near);
            still = std::time::Instant::now();
        }
    }
    until_all_near(&near, &all, Duration::from_secs(5)).await;
    // Raw writes of a family's keys carry no epoch (a miss): plain keys.
    let moved = &plain[0];
    let slot = cluster_slot(moved);
    let from = cluster.primary_of_slot(slot).unwrap().port;
    let to = cluster
        .primaries()
        .into_iter()
        .find(|p| p.port != from)
        .unwrap()
        .port;
    let nodes = cluster.nodes();
    tokio::task::spawn_blocking(move || migrate_slot(&nodes, (from, to), slot))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while flushes(&near) == dropped {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a migration did not drop it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took.push(("slot migration (topology read)", start.elapsed()));
    let () = raw.set(moved, "\"v6\"").await.unwrap();
    converges(
        &near,
        std::slice::from_ref(moved),
        Some("v6"),
        "a write after a migration",
    )
    .await;

    // A manual failover (`CLUSTER FAILOVER` on a replica): the old
    // primary stays up as a replica, and so do the near cache's
    // connections to it; writes go to the promoted one.
    let handed = &plain[2];
    until_all_near(&near, std::slice::from_ref(handed), Duration::from_secs(5)).await;
    let slot = cluster_slot(handed);
    let old = cluster.primary_of_slot(slot).unwrap();
    let replica = cluster
        .nodes()
        .into_iter()
        .find(|n| n.replica_of.as_deref() == Some(old.id.as_str()))
        .unwrap();
    let () = cluster.server(replica.port).cmd(&["CLUSTER", "FAILOVER"]);
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until(Duration::from_secs(10), "a manual failover", |c| {
            c.primary_of_slot(slot)
                .is_some_and(|n| n.port == replica.port)
        });
        cluster
    })
    .await
    .unwrap();
    let mut raw = raw_retrying(&cluster).await;
    let () = raw.set(handed, "\"v8\"").await.unwrap();
    took.push((
        "manual failover, then raw SET",
        converges(
            &near,
            std::slice::from_ref(handed),
            Some("v8"),
            "a write after a manual failover",
        )
        .await,
    ));

    // A failover: the killed primary's connections are lost, the near
    // cache with them; the promoted replica's values are served.
    until_all_near(&near, &all, Duration::from_secs(5)).await;
    let failed = &plain[1];
    let victim = cluster.primary_of_slot(cluster_slot(failed)).unwrap();
    let dropped = flushes(&near);
    cluster.server_mut(victim.port).kill9();
    let killed = std::time::Instant::now();
    let slot = cluster_slot(failed);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until(
            tg_cache::testing::NODE_TIMEOUT * 6,
            "a replica takes over",
            |c| {
                c.primary_of_slot(slot)
                    .is_some_and(|n| n.port != victim.port)
            },
        );
        cluster.wait_until_ok(tg_cache::testing::NODE_TIMEOUT * 6);
        cluster
    })
    .await
    .unwrap();
    assert!(
        flushes(&near) > dropped,
        "the lost primary did not drop the near cache"
    );
    let mut raw = raw_retrying(&cluster).await;
    let start = std::time::Instant::now();
    while raw.set::<_, _, ()>(failed, "\"v7\"").await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no write after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = std::slice::from_ref(failed);
    converges(&near, failed, Some("v7"), "a write after a failover").await;
    until_all_near(&near, failed, Duration::from_secs(10)).await;
    eprintln!(
        "near cache on a cluster: {took:?}; failover handled {:?} after the kill; {} flushes",
        killed.elapsed(),
        flushes(&near)
    );
}

/// A raw cluster client made once the cluster answers again.
async fn raw_retrying(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(
        cluster
            .primaries()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{}", p.port))
            .collect::<Vec<_>>(),
    )
    .unwrap()
    .get_async_connection()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_with_near_caches_never_serve_a_killed_family_value_beyond_the_bound() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster near family race", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    family_race(&cluster, spread_race_keys(), None, true, || {})
        .await
        .check("cluster near family race");
}

/// The migration race, with near caches in both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_migration_under_near_caches_serves_nothing_stale_beyond_the_bound() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster near slot migration", Duration::from_secs(150));
    migration_race(true).await;
}

/// A lease waiter on a cluster is woken by its primary's push when the
/// holder (another, independently built cache) stores: it returns within
/// milliseconds of the holder, having polled the lease about twice, not
/// every few milliseconds (a waiter without tracking would poll 2–8 ms
/// apart, or sleep out its 250 ms safety net if its poll were untracked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_cluster_is_woken_by_its_primarys_push() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster waiter wake-up", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    let (holder, waiter) = (cache(&cluster), cache(&cluster));
    // Connections made and the topology read before timing anything.
    for c in [&holder, &waiter] {
        for k in spread_keys(6) {
            let _ = c.get::<u64>(&k).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scripts = |cluster: &RedisCluster| -> u64 {
        cluster
            .primaries()
            .iter()
            .map(|p| {
                cluster
                    .server(p.port)
                    .command_calls()
                    .get("evalsha")
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    const KEYS: usize = 12;
    let mut late = Vec::new();
    let before = scripts(&cluster);
    for i in 0..KEYS {
        let key = format!("wake:{i}");
        let held = {
            let (holder, key) = (holder.clone(), key.clone());
            tokio::spawn(async move {
                let v = holder
                    .get_or_set(&key, None, || async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        i as u64
                    })
                    .await;
                (v, std::time::Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let v = waiter.get_or_set(&key, None, || async { u64::MAX }).await;
        let got = std::time::Instant::now();
        let (held_v, stored) = held.await.unwrap();
        assert_eq!((v, held_v), (i as u64, i as u64), "the waiter computed");
        late.push(got.saturating_duration_since(stored));
    }
    let per_key = (scripts(&cluster) - before) as f64 / KEYS as f64;
    late.sort();
    eprintln!(
        "cluster waiter: returned after the holder by p50 {:?}, max {:?}; {per_key:.1} scripts per key",
        late[KEYS / 2],
        late[KEYS - 1]
    );
    assert!(late[KEYS / 2] < Duration::from_millis(100), "{late:?}");
    // The holder's lease and fill, and about two polls of the waiter.
    assert!(
        per_key < 12.0,
        "{per_key:.1} scripts per key: the waiter polled"
    );
}

/// Calls, of which computed, and the slowest.
type Tally = (u64, u64, Duration);

/// A primary frozen (`SIGSTOP`, 3 s: shorter than the node timeout, so no
/// failover) while 32 tasks call `get_or_set` on keys of every shard, with
/// a near cache and without: no call fails, none takes much longer than
/// the response timeout, the other shards keep hitting, and the frozen
/// shard's keys hit again once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_fails_no_call_and_hangs_none() {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = watchdog("cluster frozen primary", Duration::from_secs(120));
    let cluster = RedisCluster::start();
    const TIMEOUT: Duration = Duration::from_millis(500);
    const KEYS: usize = 300;
    let build = |near: bool| {
        let c = CacheConfig::redis_cluster(cluster.urls()).response_timeout(TIMEOUT);
        if near { c.near_cache(10_000) } else { c }.build().unwrap()
    };
    let victim = cluster.primaries()[1].clone();
    let on_victim: Arc<Vec<bool>> = Arc::new(
        (0..KEYS)
            .map(|i| {
                let s = cluster_slot(&family_key(i));
                victim.slots.iter().any(|&(a, b)| (a..=b).contains(&s))
            })
            .collect(),
    );
    for near in [false, true] {
        let cache = build(near);
        for i in 0..KEYS {
            cache
                .get_or_set(&family_key(i), None, || async move { i as u64 })
                .await;
        }
        // Phase 0 frozen, 1 thawed; per phase and shard (other, victim):
        // calls, computed, slowest.
        let phase = Arc::new(AtomicUsize::new(0));
        let stats: Arc<Mutex<[[Tally; 2]; 2]>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(AtomicUsize::new(0));
        cluster.server(victim.port).pause();
        let frozen = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..32 {
            let (cache, phase, stats, stop, wrong, on_victim) = (
                cache.clone(),
                phase.clone(),
                stats.clone(),
                stop.clone(),
                wrong.clone(),
                on_victim.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = t * 11;
                while !stop.load(SeqCst) {
                    i = (i + 1) % KEYS;
                    let p = phase.load(SeqCst);
                    let ran = Arc::new(AtomicBool::new(false));
                    let r2 = ran.clone();
                    let start = Instant::now();
                    let v = cache
                        .get_or_set(&family_key(i), None, || async move {
                            r2.store(true, SeqCst);
                            i as u64
                        })
                        .await;
                    let took = start.elapsed();
                    if v != i as u64 {
                        wrong.fetch_add(1, SeqCst);
                    }
                    {
                        let mut s = stats.lock().unwrap();
                        let e = &mut s[p][usize::from(on_victim[i])];
                        e.0 += 1;
                        e.1 += u64::from(ran.load(SeqCst));
                        e.2 = e.2.max(took);
                    }
                    // A near hit has no await point: let the others run.
                    tokio::task::yield_now().await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.server(victim.port).resume();
        let thawed = frozen.elapsed();
        phase.store(1, SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        let s = *stats.lock().unwrap();
        eprintln!(
            "frozen primary (near cache {near}): frozen {thawed:?}; (calls, computed, slowest) frozen: other shards {:?}, victim {:?}; thawed: other shards {:?}, victim {:?}",
            s[0][0], s[0][1], s[1][0], s[1][1]
        );
        assert_eq!(wrong.load(SeqCst), 0, "a call returned a wrong value");
        for (p, shards) in s.iter().enumerate() {
            for (k, shard) in shards.iter().enumerate() {
                assert!(shard.0 > 0, "phase {p} shard {k}: no calls");
                // One deadline, and a second read at most (1.5x), plus
                // a loaded machine's slack.
                assert!(
                    shard.2 < TIMEOUT * 3,
                    "phase {p} shard {k}: a call took {:?}",
                    shard.2
                );
            }
        }
        // The other shards served hits while the victim was frozen.
        let other = s[0][0];
        assert!(
            other.1 * 2 < other.0,
            "other shards mostly computed while one was frozen: {other:?}"
        );
        // The victim's keys hit again after the thaw.
        let victim_after = s[1][1];
        assert!(
            victim_after.1 * 2 < victim_after.0,
            "the thawed shard's keys mostly computed: {victim_after:?}"
        );
    }
}
