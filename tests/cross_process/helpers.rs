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

/// The prefix of a cluster's address (see [`Backend::url`]).
const CLUSTER_URL: &str = "cluster:";
/// The prefix of a server shared with Django (see [`Backend::url`]).
const DJANGO_URL: &str = "django:";

/// Where a test's caches keep their entries: a Redis server of its own, or
/// the shared Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    Node,
    Cluster,
    /// A server of its own, the caches shared with Django
    /// (`KeyFunction::Django`: `:1:` keys, bare values, family
    /// invalidation by `SCAN`).
    Django,
}

/// The cluster the cluster runs of these tests share: one test at a time
/// (hold [`CLUSTER_TURN`]), on an emptied cluster.
pub static CLUSTER: std::sync::LazyLock<tg_cache::testing::RedisCluster> =
    std::sync::LazyLock::new(tg_cache::testing::RedisCluster::start);
pub static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's Redis: a server of its own; on a cluster, the emptied shared
/// cluster too (the server then keeps only the application's data, see
/// [`Raw::data`]).
pub struct Backend {
    pub server: RedisServer,
    cluster: bool,
    django: bool,
}

impl Backend {
    /// A fresh backend (on a cluster, hold [`CLUSTER_TURN`]).
    pub fn start(place: Where) -> Self {
        let server = RedisServer::start();
        if place == Where::Cluster {
            for p in CLUSTER.primaries() {
                let () = CLUSTER.server(p.port).cmd(&["FLUSHALL"]);
            }
        }
        Self {
            server,
            cluster: place == Where::Cluster,
            django: place == Where::Django,
        }
    }

    /// Whether this is the cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Redis' command counts (`INFO commandstats`), summed over the
    /// cluster's primaries on a cluster.
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        if !self.cluster {
            return self.server.command_calls();
        }
        let mut total = std::collections::BTreeMap::new();
        for p in CLUSTER.primaries() {
            for (cmd, n) in CLUSTER.server(p.port).command_calls() {
                *total.entry(cmd).or_insert(0) += n;
            }
        }
        total
    }

    /// Runs one command on the server, or on every primary of the cluster.
    pub fn on_every_node(&self, args: &[&str]) {
        if !self.cluster {
            let () = self.server.cmd(args);
            return;
        }
        for p in CLUSTER.primaries() {
            let () = CLUSTER.server(p.port).cmd(args);
        }
    }

    /// The name a cache key is stored under: Django's `:1:<key>` on a
    /// server shared with Django, else the key itself.
    pub fn stored(&self, key: &str) -> String {
        if self.django {
            format!(":1:{key}")
        } else {
            key.to_owned()
        }
    }

    /// What caches, [`Raw`] and child processes connect with: the server's
    /// URL, `django:<URL>` for caches shared with Django, or
    /// `cluster:<node URL>,...|<data server URL>`.
    pub fn url(&self) -> String {
        if self.django {
            format!("{DJANGO_URL}{}", self.server.url())
        } else if self.cluster {
            format!(
                "{CLUSTER_URL}{}|{}",
                CLUSTER.urls().join(","),
                self.server.url()
            )
        } else {
            self.server.url()
        }
    }
}

/// The configuration of a cache on `url` (a server's URL, or a cluster's,
/// [`Backend::url`]).
pub fn config(url: &str) -> CacheConfig {
    if let Some(url) = url.strip_prefix(DJANGO_URL) {
        return CacheConfig::redis(url).key_function(tg_cache::KeyFunction::Django);
    }
    match url.strip_prefix(CLUSTER_URL) {
        Some(rest) => {
            let nodes = rest.split('|').next().unwrap_or_default();
            CacheConfig::redis_cluster(nodes.split(','))
        }
        None => CacheConfig::redis(url),
    }
}

/// A cache of its own on `url`: its own pool and its own in-process flights.
pub fn build(url: &str) -> Cache {
    config(url).build().unwrap()
}

/// Two independently built caches on one Redis (two `build()` calls), so
/// only the Redis-side guard can coordinate them.
pub fn two_caches(url: &str) -> (Cache, Cache) {
    (build(url), build(url))
}

type Con = Box<dyn redis::ConnectionLike + Send>;

/// Raw Redis access by URL (a server's or a cluster's, [`Backend::url`]),
/// bypassing tg-cache (a "foreign writer"). Keeps its idle connections for
/// reuse.
#[derive(Clone)]
pub struct Raw(pub String, Arc<Mutex<Vec<Con>>>);

impl Raw {
    pub fn new(url: String) -> Self {
        // A server shared with Django is a server.
        let url = match url.strip_prefix(DJANGO_URL) {
            Some(server) => server.to_owned(),
            None => url,
        };
        Raw(url, Arc::default())
    }

    pub fn of(server: &RedisServer) -> Self {
        Raw::new(server.url())
    }

    /// The application's own data (the "database" a cached body reads):
    /// another Redis database of the server at `url` (db 9), or a
    /// cluster's data server: `clear()` on a cache empties the cache's
    /// database, never this one.
    pub fn data(url: &str) -> Self {
        let url = url.rsplit_once('|').map_or(url, |(_, data)| data);
        let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
        Raw::new(format!("{base}/9"))
    }

    /// The cluster's node URLs, if this is a cluster.
    fn nodes(&self) -> Option<Vec<&str>> {
        let rest = self.0.strip_prefix(CLUSTER_URL)?;
        Some(rest.split('|').next()?.split(',').collect())
    }

    fn connect(&self) -> redis::RedisResult<Con> {
        Ok(match self.nodes() {
            Some(nodes) => Box::new(redis::cluster::ClusterClient::new(nodes)?.get_connection()?),
            None => Box::new(redis::Client::open(self.0.as_str())?.get_connection()?),
        })
    }

    /// Runs `f` on an idle (or new) connection (on a cluster, one that
    /// routes each command by its key).
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn redis::ConnectionLike) -> T) -> T {
        let idle = self.1.lock().unwrap().pop();
        let mut con = idle.unwrap_or_else(|| self.connect().expect("raw redis connection"));
        let out = f(&mut *con);
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

    /// [`Raw::cmd`] that reports a failure (Redis down, a connection
    /// broken by a restart) instead of panicking; a failed connection is
    /// dropped.
    pub fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let idle = self.1.lock().unwrap().pop();
        let mut con = match idle {
            Some(c) => c,
            None => self.connect()?,
        };
        let r = cmd.query(&mut *con);
        if r.is_ok() {
            self.1.lock().unwrap().push(con);
        }
        r
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

    /// Every key matching the glob `pattern` (SCAN, not KEYS; on a
    /// cluster, of every primary).
    pub fn scan(&self, pattern: &str) -> Vec<String> {
        let Some(nodes) = self.nodes() else {
            return self.with(|con| scan(con, pattern));
        };
        let mut out = Vec::new();
        for node in nodes {
            let mut con = redis::Client::open(node)
                .and_then(|c| c.get_connection())
                .expect("a connection to a cluster node");
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).unwrap();
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                out.extend(scan(&mut con, pattern));
            }
        }
        out
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

/// Every key of one server matching the glob `pattern`.
pub fn scan(con: &mut dyn redis::ConnectionLike, pattern: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(con)
            .unwrap();
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
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

/// A TCP proxy in front of a Redis server, for network faults and for
/// counting round trips: it forwards bytes both ways; it counts every time
/// a client sends after the server last answered it (one round trip); and
/// the first time a client sends bytes containing `cut_after`, it forwards
/// them to the server and then drops that connection before any reply
/// reaches the client (a lost reply). Later connections are forwarded
/// normally.
pub struct Proxy {
    pub port: u16,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
    turns: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16, cut_after: &'static [u8]) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(!cut_after.is_empty()));
        let cuts = Arc::new(AtomicUsize::new(0));
        let cuts2 = cuts.clone();
        let turns = Arc::new(AtomicUsize::new(0));
        let turns2 = turns.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepted2 = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                accepted2.fetch_add(1, SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    continue;
                };
                let (armed, cuts, turns) = (armed.clone(), cuts2.clone(), turns2.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let cut = Arc::new(tokio::sync::Notify::new());
                    let cut2 = cut.clone();
                    // Whether the server spoke last on this connection.
                    let answered = Arc::new(AtomicBool::new(true));
                    let answered2 = answered.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            // An idle connection's keep-alive `PING` (one a
                            // second) is not a round trip of the calls measured.
                            let ping = &buf[..n] == b"*1\r\n$4\r\nPING\r\n";
                            if !ping && answered.swap(false, SeqCst) {
                                turns.fetch_add(1, SeqCst);
                            }
                            let hit = !cut_after.is_empty()
                                && buf[..n].windows(cut_after.len()).any(|w| w == cut_after);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            if hit && armed.swap(false, SeqCst) {
                                cuts.fetch_add(1, SeqCst);
                                cut2.notify_one();
                                return;
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = tokio::select! {
                                r = sr.read(&mut buf) => match r {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                },
                                () = cut.notified() => return,
                            };
                            answered2.store(true, SeqCst);
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Whichever side ends first ends the connection.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cuts,
            turns,
            accepted,
            task,
        }
    }

    /// Round trips so far, over every connection: times a client sent
    /// after the server had answered it (keep-alive `PING`s aside).
    pub fn round_trips(&self) -> usize {
        self.turns.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections clients opened.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `redis://127.0.0.1:<proxy port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tests run twice: `<name>::on_redis`, on a server of its own, and
/// `<name>::on_cluster`, on the shared Redis Cluster (one at a time, the
/// watchdog started once it is the test's turn). `on_all!` adds
/// `<name>::on_django`: a server of its own, the caches shared with Django.
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_redis() {
                super::$name($crate::helpers::Where::Node).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_cluster() {
                let _turn = $crate::helpers::CLUSTER_TURN.lock().await;
                super::$name($crate::helpers::Where::Cluster).await
            }
        }
    )*};
}

/// [`on_both!`], and `<name>::on_django` beside them.
#[allow(unused_macros)]
macro_rules! on_all {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_redis() {
                super::$name($crate::helpers::Where::Node).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_django() {
                super::$name($crate::helpers::Where::Django).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_cluster() {
                let _turn = $crate::helpers::CLUSTER_TURN.lock().await;
                super::$name($crate::helpers::Where::Cluster).await
            }
        }
    )*};
}
