//! Redis-only behaviour: stored bytes, compression, prefixes, corrupt values,
//! an unreachable server, and the blocking API with and without a runtime.

mod support;

use std::time::{Duration, Instant};
use support::{RedisServer, redis, redis_config};
use tg_cache::timeout::MEDIUM;
use tg_cache::{CacheConfig, Error};

#[tokio::test]
async fn corrupt_and_foreign_values_are_counted_misses() {
    let server = RedisServer::start();
    let cache = redis(&server);
    let () = server.cmd(&["SET", "k1", "{not json"]);
    let () = server.cmd(&["SET", "k2", "x\u{9c}garbage"]); // looks like zlib, is not
    let () = server.cmd(&["SET", "k3", "\"a string\""]);
    assert_eq!(cache.get::<Vec<i32>>("k1").await.unwrap(), None);
    assert_eq!(cache.get::<Vec<i32>>("k2").await.unwrap(), None);
    assert_eq!(cache.get::<Vec<i32>>("k3").await.unwrap(), None);
    assert_eq!(cache.stats().decode_errors, 3);
    assert_eq!(cache.stats().misses, 3);
    // get_or_set overwrites the bad value
    assert_eq!(
        cache.get_or_set("k1", MEDIUM, || async { vec![1] }).await,
        vec![1]
    );
    let raw: String = server.cmd(&["GET", "k1"]);
    assert_eq!(raw, "[1]");
}

#[tokio::test]
async fn compression_is_transparent_both_ways() {
    let server = RedisServer::start();
    let plain = redis(&server);
    let packed = redis_config(&server)
        .compress_min_bytes(Some(64))
        .build()
        .unwrap();
    let big: Vec<String> = (0..200).map(|i| format!("scene number {i}")).collect();

    packed.set("big", &big, MEDIUM).await.unwrap();
    let raw: Vec<u8> = server.cmd(&["GET", "big"]);
    assert_eq!(raw[0], 0x78, "stored as zlib");
    assert!(raw.len() < serde_json::to_vec(&big).unwrap().len());
    // a reader with compression off still reads it
    assert_eq!(
        plain.get::<Vec<String>>("big").await.unwrap().as_ref(),
        Some(&big)
    );

    plain.set("old", &big, MEDIUM).await.unwrap();
    let raw: Vec<u8> = server.cmd(&["GET", "old"]);
    assert_eq!(raw[0], b'[');
    // a reader with compression on reads values written before it was enabled
    assert_eq!(
        packed.get::<Vec<String>>("old").await.unwrap().as_ref(),
        Some(&big)
    );
    // small values stay readable
    packed.set("small", &5, MEDIUM).await.unwrap();
    let raw: String = server.cmd(&["GET", "small"]);
    assert_eq!(raw, "5");
}

#[tokio::test]
async fn key_prefix_and_version_like_django() {
    let server = RedisServer::start();
    let cache = redis_config(&server)
        .key_prefix("wod")
        .version(2)
        .build()
        .unwrap();
    cache.set("tg:view:home:", &1, MEDIUM).await.unwrap();
    let mut keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    keys.sort();
    // The value, and its family's epoch (namespaced too).
    assert_eq!(
        keys,
        vec!["wod:2:#epoch:tg:view:home", "wod:2:tg:view:home:"]
    );
    assert_eq!(cache.get::<i32>("tg:view:home:").await.unwrap(), Some(1));
    assert_eq!(cache.delete_pattern("tg:view:*").await.unwrap(), 1);
    // clear() removes the prefix's keys, including keys outside tg: and
    // the family epochs, and nothing else.
    cache.set("manual", &1, MEDIUM).await.unwrap();
    let () = server.cmd(&["SET", "wod:1:manual", "older version"]);
    let () = server.cmd(&["SET", "unrelated", "x"]);
    cache.clear().await.unwrap();
    let mut keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    keys.sort();
    assert_eq!(keys, vec!["unrelated", "wod:1:manual"]);
}

#[tokio::test]
async fn delete_pattern_scans_in_batches() {
    let server = RedisServer::start();
    let cache = redis(&server);
    let items: Vec<(String, u32)> = (0..5000)
        .map(|i| (format!("tg:queryset:Scene:id={i}"), i))
        .collect();
    cache.set_many(&items, MEDIUM).await.unwrap();
    assert_eq!(
        cache.delete_pattern("tg:queryset:Scene:*").await.unwrap(),
        5000
    );
    // Only the family's epoch is left.
    let n: i64 = server.cmd(&["DBSIZE"]);
    assert_eq!(n, 1);
    let epochs: i64 = server.cmd(&["EXISTS", "#epoch:tg:queryset:Scene"]);
    assert_eq!(epochs, 1);
    // the implementation never calls KEYS
    let stats: String = server.cmd(&["INFO", "commandstats"]);
    assert!(!stats.contains("cmdstat_keys:"), "{stats}");
    assert!(stats.contains("cmdstat_scan:"), "{stats}");
}

#[tokio::test]
async fn unreachable_redis_fails_fast_and_fails_open() {
    let mut server = RedisServer::start();
    let cache = redis_config(&server)
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    cache.set("k", &1, MEDIUM).await.unwrap();
    server.stop();

    let start = Instant::now();
    let err = cache.get::<i32>("k").await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );

    // The breaker is open now: calls fail immediately without a round trip.
    let start = Instant::now();
    for _ in 0..100 {
        assert!(matches!(
            cache.get::<i32>("k").await,
            Err(Error::Unavailable { .. })
        ));
    }
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "took {:?}",
        start.elapsed()
    );

    // A computation still returns its value; the failures are counted.
    let before = cache.stats().errors;
    assert_eq!(cache.get_or_set("k", MEDIUM, || async { 42 }).await, 42);
    assert_eq!(cache.blocking().get_or_set("k", MEDIUM, || 43), 43);
    assert!(cache.stats().errors >= before + 2);
}

#[tokio::test]
async fn redis_that_never_existed_times_out() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = CacheConfig::redis(&format!("redis://127.0.0.1:{port}/0"))
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let start = Instant::now();
    assert!(cache.set("k", &1, MEDIUM).await.is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(cache.get_or_set("k", MEDIUM, || async { 1 }).await, 1);
}

#[tokio::test]
async fn redis_recovers_after_restart_on_same_port() {
    let mut server = RedisServer::start();
    let cache = redis_config(&server)
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .unwrap();
    cache.set("k", &1, MEDIUM).await.unwrap();
    let port = server.port();
    server.stop();
    assert!(cache.get::<i32>("k").await.is_err());
    // Start a new server on the same port and wait for the cache to reconnect.
    let _again = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if cache.set("k", &2, MEDIUM).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "cache never reconnected");
    }
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2));
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn blocking_api_without_any_runtime() {
    let server = RedisServer::start();
    let cache = redis(&server);
    let b = cache.blocking();
    b.set("k", &vec![1, 2], MEDIUM).unwrap();
    assert_eq!(b.get::<Vec<i32>>("k").unwrap(), Some(vec![1, 2]));
    assert!(b.add("a", &1, MEDIUM).unwrap());
    b.set("n", &1i64, MEDIUM).unwrap();
    assert_eq!(b.incr("n", 2).unwrap(), 3);
    assert!(b.touch("k", MEDIUM).unwrap());
    assert!(b.has_key("k").unwrap());
    assert_eq!(b.delete_pattern("*").unwrap(), 3);
    assert_eq!(b.get_or_set("g", MEDIUM, || 5), 5);
    assert_eq!(b.get::<i32>("g").unwrap(), Some(5));
}

#[test]
fn blocking_api_inside_a_current_thread_runtime_does_not_panic() {
    let server = RedisServer::start();
    let cache = redis(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Called from async code by mistake: blocks, but works.
        cache.blocking().set("k", &1, MEDIUM).unwrap();
        assert_eq!(cache.blocking().get::<i32>("k").unwrap(), Some(1));
        // and the async API works on the same cache afterwards
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_api_inside_a_multi_thread_runtime_does_not_panic() {
    let server = RedisServer::start();
    let cache = redis(&server);
    cache.blocking().set("k", &1, MEDIUM).unwrap();
    assert_eq!(cache.blocking().get::<i32>("k").unwrap(), Some(1));
}

#[test]
fn connection_outlives_the_runtime_that_first_used_it() {
    let server = RedisServer::start();
    let cache = redis(&server);
    for i in 0..3 {
        // each iteration is a fresh runtime, as each #[tokio::test] is
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            cache.set("k", &i, MEDIUM).await.unwrap();
            assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(i));
        });
    }
}

#[test]
fn async_api_outside_tokio_works() {
    let server = RedisServer::start();
    let cache = redis(&server);
    // A non-tokio executor: a plain poll loop.
    let v = futures_lite_block_on(async {
        cache.set("k", &7, MEDIUM).await.unwrap();
        cache.get::<i32>("k").await.unwrap()
    });
    assert_eq!(v, Some(7));
}

fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct W(std::thread::Thread);
    impl Wake for W {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = Waker::from(Arc::new(W(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[tokio::test]
async fn database_number_is_honoured() {
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&format!("redis://127.0.0.1:{}/3", server.port()))
        .build()
        .unwrap();
    cache.set("k", &1, MEDIUM).await.unwrap();
    let n0: i64 = server.cmd(&["DBSIZE"]);
    assert_eq!(n0, 0);
    let mut con = server.connection();
    let () = redis::cmd("SELECT").arg(3).query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "1");
}

#[tokio::test]
async fn password_urls_work_and_are_never_shown() {
    let server = RedisServer::start();
    let () = server.cmd(&["CONFIG", "SET", "requirepass", "hunter2"]);
    let good = CacheConfig::redis(&format!("redis://:hunter2@127.0.0.1:{}/0", server.port()));
    assert!(!format!("{good:?}").contains("hunter2"));
    let cache = good.build().unwrap();
    assert!(!format!("{cache:?}").contains("hunter2"));
    cache.set("k", &1, MEDIUM).await.unwrap();
    let bad = CacheConfig::redis(&format!("redis://:wrong@127.0.0.1:{}/0", server.port()))
        .build()
        .unwrap();
    let err = bad.set("k", &1, MEDIUM).await.unwrap_err();
    assert!(!err.to_string().contains("wrong@"), "{err}");
}

#[tokio::test]
async fn rediss_urls_connect_over_tls() {
    let server = RedisServer::start_tls();
    assert!(server.url().starts_with("rediss://"));
    let cache = redis(&server);
    cache.set("tg:view:home:", &1, MEDIUM).await.unwrap();
    assert_eq!(cache.get::<i32>("tg:view:home:").await.unwrap(), Some(1));
    // a plain-text client cannot talk to this port: the value really went over TLS
    let plain = CacheConfig::redis(&format!("redis://127.0.0.1:{}/0", server.port()))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(plain.get::<i32>("tg:view:home:").await.is_err());
}

/// Commands the server ran since `CONFIG RESETSTAT`, by name.
fn commands(server: &RedisServer) -> Vec<(String, u64)> {
    server
        .command_calls()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

#[tokio::test]
async fn a_redis_hit_is_one_round_trip() {
    let server = RedisServer::start();
    // One connection, so that which connection knows the epoch is certain.
    let cache = CacheConfig::redis(&server.url())
        .pool_size(1)
        .build()
        .unwrap();
    let key = "tg:fn:one_trip:id=1";
    assert_eq!(cache.get_or_set(key, MEDIUM, || async { 5 }).await, 5);
    // The fill made the family's epoch: this first hit reads it again.
    assert_eq!(cache.get_or_set(key, MEDIUM, || async { 6 }).await, 5);
    let () = server.cmd(&["CONFIG", "RESETSTAT"]);
    for _ in 0..3 {
        assert_eq!(cache.get_or_set(key, MEDIUM, || async { 6 }).await, 5);
    }
    // No script, and one plain read per hit, bounded by the value cap
    // (GETRANGE): the family's epoch is known to the connection, which
    // tracks it (`store/epochs.rs`).
    let mut cmds = commands(&server);
    cmds.sort();
    assert_eq!(cmds, vec![("getrange".to_owned(), 3)]);
    // Once another client changes the epoch, the next read sees it.
    let other = redis(&server);
    other.invalidate_family("tg:fn:one_trip").await.unwrap();
    assert_eq!(cache.get_or_set(key, MEDIUM, || async { 7 }).await, 7);
    assert_eq!(cache.get_or_set(key, MEDIUM, || async { 8 }).await, 7);
}

/// Certificates are verified unless explicitly disabled: a self-signed
/// server is refused by a plain `rediss://` URL. (`#insecure` works in
/// these tests only because they enable the `tls-insecure` feature.)
#[tokio::test]
async fn rediss_verifies_certificates_by_default() {
    let server = RedisServer::start_tls();
    let verified = CacheConfig::redis(&format!("rediss://127.0.0.1:{}/0", server.port()))
        .build()
        .unwrap();
    let err = verified.set("k", &1, MEDIUM).await.unwrap_err();
    assert!(matches!(err, tg_cache::Error::Redis { .. }), "{err}");
    assert!(verified.health().await.is_err());
    // the same server, with verification explicitly disabled
    let insecure = redis(&server);
    insecure.set("k", &1, MEDIUM).await.unwrap();
}

/// A multi-thread runtime whose two workers drive their own connections.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Clients connected to `server`, besides the one asking.
fn connected_clients(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "clients"]);
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("connected_clients in INFO")
        - 1
}

/// A cache used from a multi-thread runtime's workers has a connection per
/// worker thread; dropping the cache closes them within the pinger's period
/// (1 s), even though those threads make no further call.
#[test]
fn a_dropped_cache_closes_its_connections() {
    let server = RedisServer::start();
    assert_eq!(connected_clients(&server), 0);
    two_workers().block_on(async {
        let cache = redis(&server);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let c = cache.clone();
            tasks.push(tokio::spawn(async move {
                c.set(&format!("drop:{i}"), &i, MEDIUM).await.unwrap();
                assert_eq!(c.get::<i32>(&format!("drop:{i}")).await.unwrap(), Some(i));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let open = connected_clients(&server);
        assert!(open >= 1, "no connection was open");
        drop(cache);
        let deadline = Instant::now() + Duration::from_secs(4);
        while connected_clients(&server) > 0 {
            assert!(
                Instant::now() < deadline,
                "{} of {open} connections still open 4 s after the cache was dropped",
                connected_clients(&server)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// On a multi-thread runtime (connections driven by its workers): Redis
/// drops every connection and then hangs (a proxy in front of a dead
/// server: new handshakes never finish). Calls still fail fast: the
/// breaker opens, and most calls are `Unavailable` at once instead of
/// each waiting out its deadline.
#[test]
fn dropped_connections_then_a_hanging_redis_open_the_breaker() {
    let server = RedisServer::start();
    two_workers().block_on(async {
        let cache = redis_config(&server)
            .response_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let warm: Vec<_> = (0..16)
            .map(|i| {
                let c = cache.clone();
                tokio::spawn(async move { c.set(&format!("b:{i}"), &i, MEDIUM).await.unwrap() })
            })
            .collect();
        for t in warm {
            t.await.unwrap();
        }
        let () = server.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
        server.pause();
        let start = Instant::now();
        let calls: Vec<_> = (0..8)
            .map(|t| {
                let c = cache.clone();
                tokio::spawn(async move {
                    let (mut unavailable, mut slow) = (0, 0);
                    for i in 0..25 {
                        let began = Instant::now();
                        let r = c.get::<i32>(&format!("b:{}", (t + i) % 16)).await;
                        assert!(r.is_err(), "a frozen Redis answered");
                        if matches!(r, Err(Error::Unavailable { .. })) {
                            unavailable += 1;
                        }
                        if began.elapsed() >= Duration::from_millis(250) {
                            slow += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (unavailable, slow)
                })
            })
            .collect();
        let (mut unavailable, mut slow) = (0, 0);
        for t in calls {
            let (u, s) = t.await.unwrap();
            unavailable += u;
            slow += s;
        }
        let took = start.elapsed();
        server.resume();
        eprintln!("200 calls against a hanging Redis: {unavailable} unavailable at once, {slow} waited out their deadline, in {took:?}");
        assert!(unavailable >= 100, "only {unavailable} of 200 calls failed fast");
        assert!(slow <= 60, "{slow} of 200 calls waited out their deadline");
    });
}
