//! Test support: a real `redis-server` on a free loopback port.
//!
//! ```no_run
//! let server = tg_cache_runtime::testing::RedisServer::start();
//! let cache = tg_cache_runtime::CacheConfig::redis(&server.url()).build().unwrap();
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
}

const INSTALL_HINT: &str = "redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install -y redis-server`), or run the README's test command, which installs it.";

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
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
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

    fn start_with(tls: bool) -> Self {
        for _ in 0..5 {
            if let Some(s) = Self::try_start(free_port(), tls) {
                return s;
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }

    fn try_start(port: u16, tls: bool) -> Option<Self> {
        let dir =
            std::env::temp_dir().join(format!("tg-cache-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create a temp dir for redis-server");
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
        let child = match cmd
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
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; kill {server} 2>/dev/null",
                parent = std::process::id(),
                server = child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut server = Self {
            watchdog,
            child: Some(child),
            port,
            dir,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = if tls {
                server.log().contains("Ready to accept connections")
            } else {
                ping(port)
            };
            if ready {
                return Some(server);
            }
            if let Some(c) = server.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                // Most likely the port was taken between probe and bind.
                server.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer within 10 s; log:\n{}",
            server.log()
        );
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0` (`rediss://...#insecure` for a TLS server).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}/0#insecure", self.port)
        } else {
            format!("redis://127.0.0.1:{}/0", self.port)
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
