//! Helpers of `tests/cross_process.rs`: independently built caches, raw Redis
//! access (also usable in child processes, which only know the URL), and
//! child processes running this test binary in a helper role.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig};

/// Long enough never to expire during a test.
pub const TTL: Duration = Duration::from_secs(300);
/// Set in a child process: its helper test runs instead of returning.
pub const ROLE_VAR: &str = "TG_XPROC_CHILD";
/// The Redis URL a child process uses.
pub const URL_VAR: &str = "TG_XPROC_URL";

/// A cache of its own on `url`: its own pool and its own in-process flights.
pub fn build(url: &str) -> Cache {
    CacheConfig::redis(url).build().unwrap()
}

/// Two independently built caches on one Redis (two `build()` calls), so
/// only the Redis-side guard can coordinate them.
pub fn two_caches(server: &RedisServer) -> (Cache, Cache) {
    (build(&server.url()), build(&server.url()))
}

/// Raw Redis access by URL, bypassing tg-cache (a "foreign writer"). Keeps
/// its idle connections for reuse.
#[derive(Clone)]
pub struct Raw(pub String, Arc<Mutex<Vec<redis::Connection>>>);

impl Raw {
    pub fn new(url: String) -> Self {
        Raw(url, Arc::default())
    }

    pub fn of(server: &RedisServer) -> Self {
        Raw::new(server.url())
    }

    /// The application's own data (the "database" a cached body reads), in
    /// another Redis database of the server at `url` (db 9): `clear()` on
    /// a cache empties the cache's database, never this one.
    pub fn data(url: &str) -> Self {
        let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
        Raw::new(format!("{base}/9"))
    }

    /// Runs `f` on an idle (or new) connection.
    pub fn with<T>(&self, f: impl FnOnce(&mut redis::Connection) -> T) -> T {
        let idle = self.1.lock().unwrap().pop();
        let mut con = idle.unwrap_or_else(|| {
            redis::Client::open(self.0.as_str())
                .and_then(|c| c.get_connection())
                .expect("raw redis connection")
        });
        let out = f(&mut con);
        self.1.lock().unwrap().push(con);
        out
    }

    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        self.with(|con| cmd.query(con))
            .unwrap_or_else(|e| panic!("redis {args:?} failed: {e}"))
    }

    pub fn set_bytes(&self, key: &str, value: &[u8]) {
        let () = self
            .with(|con| redis::cmd("SET").arg(key).arg(value).query(con))
            .unwrap();
    }

    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.cmd(&["GET", key])
    }

    pub fn incr(&self, key: &str) -> u64 {
        self.cmd(&["INCR", key])
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.cmd::<Option<String>>(&["GET", key])
            .map(|s| s.parse().expect("an integer"))
    }

    pub fn exists(&self, key: &str) -> bool {
        self.cmd::<i64>(&["EXISTS", key]) == 1
    }

    /// Every key matching the glob `pattern` (SCAN, not KEYS).
    pub fn scan(&self, pattern: &str) -> Vec<String> {
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .with(|con| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query(con)
                })
                .unwrap();
            out.extend(keys);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }

    /// Deletes every key matching `pattern`; returns them.
    pub fn del_matching(&self, pattern: &str) -> Vec<String> {
        let keys = self.scan(pattern);
        for k in &keys {
            let _: i64 = self.cmd(&["DEL", k]);
        }
        keys
    }

    /// Waits (async) until `key` exists; panics after `limit`.
    pub async fn wait_for(&self, key: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.exists(key) {
            assert!(
                Instant::now() < deadline,
                "{key} did not appear within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

/// The URL a helper test works on, if this process is a child; `None` in a
/// normal test run (the helper then returns at once).
pub fn child_url() -> Option<String> {
    std::env::var_os(ROLE_VAR)?;
    std::env::var(URL_VAR).ok()
}

/// Starts this test binary running only the `#[ignore]` helper test `helper`.
pub fn spawn_child(helper: &str, url: &str, env: &[(&str, &str)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([helper, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(ROLE_VAR, "1")
        .env(URL_VAR, url)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot re-run the test binary")
}

/// Waits for `child` (killing it after `limit`); returns whether it
/// succeeded and its stdout and stderr.
pub fn finish(mut child: Child, limit: Duration) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status.is_some_and(|s| s.success()), out, err)
}

/// The value a child reported with a line `XP <name>=<value>`.
pub fn reported(stdout: &str, name: &str) -> Option<String> {
    let prefix = format!("XP {name}=");
    // libtest prints `test <name> ... ` before the output, on the same line.
    stdout.lines().find_map(|l| {
        let at = l.find(&prefix)? + prefix.len();
        l[at..].split_whitespace().next().map(str::to_owned)
    })
}

/// A random duration in `0..max_ms` milliseconds.
pub fn jitter(max_ms: u64) -> Duration {
    Duration::from_micros(rand::random_range(0..max_ms * 1000))
}

/// Aborts the whole test binary (with a message) if the test holding the
/// guard runs longer than 30 s: a hung fill protocol must not hang the run.
pub fn watchdog(test: &'static str) -> tg_cache::testing::Watchdog {
    tg_cache::testing::watchdog(test, Duration::from_secs(30))
}
