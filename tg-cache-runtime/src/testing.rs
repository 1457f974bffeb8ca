//! Test support: a real `redis-server` on a free loopback port, which tests
//! can also freeze ([`RedisServer::pause`]), kill and restart on the same
//! port ([`RedisServer::restart`]), or start late on a chosen port
//! ([`RedisServer::start_on_port`]). `DEBUG` is enabled for local clients.
//! [`RedisCluster`] starts six of them joined into a Redis Cluster.
//!
//! ```no_run
//! let server = tg_cache_runtime::testing::RedisServer::start();
//! let cache = tg_cache_runtime::CacheConfig::redis(&server.url()).build().unwrap();
//! ```

mod cluster;

pub use cluster::{ClusterNode, NODE_TIMEOUT, RedisCluster};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// A near cache built while this variable is set keeps every reply, even
/// one that an invalidation overtook: its pending-ticket guard broken on
/// purpose, for the tests that show the guard is needed.
pub const BREAK_NEAR_GUARD_VAR: &str = "TG_CACHE_TESTING_BREAK_NEAR_GUARD";

/// How many Redis reads in this process found a family epoch their
/// connection knew invalidated while they were in flight, and read it again
/// (`store/epochs.rs`): race tests check that they hit the race.
pub fn epochs_raced() -> u64 {
    crate::store::epochs::RACED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The hash tag that a Redis Cluster store puts on the internal keys of
/// `key` (its family's epoch in `key`'s slot: `#{<tag>}:#epoch:<family>`).
pub fn slot_tag(key: &str) -> &'static str {
    crate::store::slots::tag_for(crate::store::slots::slot_of(key.as_bytes()))
}

/// The hash slots of a Redis Cluster.
pub const SLOTS: u16 = crate::store::slots::SLOTS;

/// A hash tag of `slot`: `{<tag>}` in a key puts the key in that slot.
pub fn tag_of_slot(slot: u16) -> &'static str {
    crate::store::slots::tag_for(slot)
}

/// A `redis-server` process started for a test (`--save ""`, no persistence),
/// killed when dropped. Its log is printed if the test panics.
pub struct RedisServer {
    child: Option<Child>,
    /// Kills the server if this process dies without dropping it (a
    /// `static` server, an abort): servers never outlive their test run.
    watchdog: Option<Child>,
    port: u16,
    dir: PathBuf,
    tls: bool,
    /// Extra `redis-server` arguments (`--requirepass`, ...).
    args: Vec<String>,
}

const INSTALL_HINT: &str = "redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install -y redis-server`), or run the README's test command, which installs it.";

/// Whether this `redis-server` has `--enable-debug-command` (7.0 and later,
/// where `DEBUG` is otherwise refused).
static DEBUG_COMMAND_OPTION: LazyLock<bool> = LazyLock::new(|| {
    let Ok(out) = Command::new("redis-server").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 7)
});

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(100))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // `+PONG`, or `-NOAUTH ..` from a server that wants a password: it answers.
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).is_ok() && matches!(&buf, b"+" | b"-")
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    ///
    /// # Panics
    /// If `redis-server` is not installed (with instructions), or if it does
    /// not come up within ten seconds (with its log).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that only speaks TLS, with a fresh self-signed
    /// certificate (made with `openssl`). Connect with [`RedisServer::url`],
    /// which is then `rediss://127.0.0.1:<port>/0#insecure` (needs the
    /// `tls-insecure` feature; certificates are verified otherwise).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    /// Starts a server that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with_args(false, &["--requirepass", password])
    }

    fn start_with(tls: bool) -> Self {
        Self::start_with_args(tls, &[])
    }

    fn start_with_args(tls: bool, args: &[&str]) -> Self {
        for _ in 0..5 {
            if let Some(s) = Self::try_start(free_port(), tls, args) {
                return s;
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }

    fn try_start(port: u16, tls: bool, args: &[&str]) -> Option<Self> {
        let dir =
            std::env::temp_dir().join(format!("tg-cache-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create a temp dir for redis-server");
        let mut server = Self {
            watchdog: None,
            child: None,
            port,
            dir,
            tls,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.launch().then_some(server)
    }

    /// Runs `redis-server` on `self.port` (with its watchdog) and waits
    /// until it answers; `false` if it exited first (the port was taken).
    fn launch(&mut self) -> bool {
        let (port, tls, dir) = (self.port, self.tls, self.dir.clone());
        let log = std::fs::File::create(dir.join("redis.log")).expect("cannot create redis.log");
        let mut cmd = Command::new("redis-server");
        let port_s = port.to_string();
        if tls {
            let status = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.crt",
                ])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is needed for TLS tests (apt-get install -y openssl)");
            assert!(
                status.success(),
                "openssl could not make a test certificate"
            );
            cmd.args(["--port", "0", "--tls-port", &port_s])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args([
                    "--tls-ca-cert-file",
                    "server.crt",
                    "--tls-auth-clients",
                    "no",
                ]);
        } else {
            cmd.args(["--port", &port_s]);
        }
        if *DEBUG_COMMAND_OPTION {
            // Fault tests freeze the server with `DEBUG SLEEP`.
            cmd.args(["--enable-debug-command", "local"]);
        }
        let child = match cmd
            .args(&self.args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; kill -9 {server} 2>/dev/null",
                parent = std::process::id(),
                server = child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = if tls {
                self.log().contains("Ready to accept connections")
            } else {
                ping(port)
            };
            if ready {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                // Most likely the port was taken between probe and bind.
                self.stop();
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "redis-server did not answer within 10 s; log:\n{}",
            self.log()
        );
    }

    /// Starts a server on `port` (for a test that first had nothing
    /// listening there) and waits until it answers `PING`.
    ///
    /// # Panics
    /// If the port stays taken for five seconds, or as [`RedisServer::start`].
    pub fn start_on_port(port: u16) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = Self::try_start(port, false, &[]) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server could not bind port {port} within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the running server, `None` after [`RedisServer::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the redis-server is not running");
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid} failed");
    }

    /// Freezes the server with `SIGSTOP`: it keeps its port and connections
    /// but answers nothing until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`RedisServer::pause`]d server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server with `SIGKILL`, like [`RedisServer::stop`]; named
    /// for tests that then [`RedisServer::restart`] it.
    pub fn kill9(&mut self) {
        self.stop();
    }

    /// Starts a fresh, empty server on the same port (killing the current
    /// one if still running) and waits until it answers `PING`.
    ///
    /// # Panics
    /// If the port stays taken for five seconds, or as [`RedisServer::start`].
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not bind port {} again within 5 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0` (`rediss://...#insecure` for a TLS
    /// server; with `:<password>@` for a server that requires one).
    pub fn url(&self) -> String {
        let auth = match self.args.iter().position(|a| a == "--requirepass") {
            Some(i) => format!(":{}@", self.args[i + 1]),
            None => String::new(),
        };
        if self.tls {
            format!("rediss://{auth}127.0.0.1:{}/0#insecure", self.port)
        } else {
            format!("redis://{auth}127.0.0.1:{}/0", self.port)
        }
    }

    /// A plain synchronous connection, for reading real keys in assertions.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("cannot connect to the test redis-server")
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("redis {args:?} failed: {e}"))
    }

    /// Runs one command, within half a second to connect and a second to
    /// answer: for a server that may be down or frozen.
    pub fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// How many times the server ran each command (`INFO commandstats`,
    /// lowercase names, `client|tracking` for subcommands), since it started
    /// or since `CONFIG RESETSTAT`.
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.strip_prefix("calls=")?.split(',').next()?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (to test an unreachable Redis). Idempotent.
    pub fn stop(&mut self) {
        for mut c in [self.child.take(), self.watchdog.take()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server log (port {}) ---\n{}",
                self.port,
                self.log()
            );
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Aborts the whole test process, with a message naming `test`, if the
/// returned guard is still alive after `limit`: a hung (deadlocked) test
/// then fails the run instead of hanging it. Drop the guard when the test
/// ends.
///
/// ```
/// let _w = tg_cache_runtime::testing::watchdog("my_test", std::time::Duration::from_secs(30));
/// ```
pub fn watchdog(test: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("test {test} hung for {limit:?} (deadlock?); aborting the test binary");
            std::process::abort();
        }
    });
    Watchdog(Some(tx))
}

/// The guard of [`watchdog`]: dropping it disarms the watchdog.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The store operations of the fill protocol, one at a time, for benches
/// that measure what a lease poll or a fill costs Redis. Not a public API.
#[doc(hidden)]
pub mod protocol_ops {
    use crate::Cache;
    use crate::store::{LeaseMode, LeaseOutcome, Value};
    use std::time::Duration;

    /// What one lease request found.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Poll {
        /// The lease was granted.
        Granted,
        /// A live value is there.
        Found,
        /// Another holder has it.
        Busy,
    }

    /// A lease held by [`lease`], for [`fill`].
    pub struct Held(crate::store::Lease);

    /// Asks for `key`'s lease as `token`.
    pub async fn lease(cache: &Cache, key: &str, token: &str) -> (Poll, Option<Held>) {
        let core = cache.core();
        let slot = core.slot(key).expect("a valid key");
        match core
            .store
            .lease(
                &slot,
                token,
                LeaseMode::Fresh,
                Some(Duration::from_secs(60)),
            )
            .await
            .expect("lease")
        {
            LeaseOutcome::Granted(l) => (Poll::Granted, Some(Held(l))),
            LeaseOutcome::Found(_) => (Poll::Found, None),
            LeaseOutcome::Busy(_) => (Poll::Busy, None),
        }
    }

    /// Stores `value` at `key` under `held`; whether it was stored.
    pub async fn fill<T: crate::CacheValue>(
        cache: &Cache,
        key: &str,
        value: &T,
        held: &Held,
    ) -> bool {
        let core = cache.core();
        let slot = core.slot(key).expect("a valid key");
        let v: &dyn Value = value;
        matches!(
            core.store
                .fill(&slot, v, Some(Duration::from_secs(60)), &held.0)
                .await,
            Ok(crate::store::Filled::Stored)
        )
    }
}
