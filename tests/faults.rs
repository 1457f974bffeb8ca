//! Fault injection on a real Redis: the server killed and restarted, frozen
//! (`SIGSTOP`, `DEBUG SLEEP`), absent at start; corrupt, oversized and
//! compressed-bomb values; junk epoch keys; one poisoned key among healthy
//! ones.
//!
//! Every scenario runs in a child process of this test binary (an `#[ignore]`
//! helper selected by `TG_FAULTS_CHILD`, which returns at once in a normal
//! run), one at a time: each child configures its own default cache on its
//! own `redis-server`, latency is measured without other scenarios competing
//! for the CPU, and the parent reads the child's memory (`VmHWM`) and kills
//! it past [`RSS_GUARD`] or [`CHILD_LIMIT`], so a decoder that inflates a bomb
//! fails the test instead of the machine. A child prints its measurements as
//! `FAULTS <name>=<value>` lines (shown with `--nocapture`, and on failure)
//! and lists every broken bound before failing.
//!
//! Outcomes asserted: cached functions always return their body's value;
//! every call ends within `response_timeout × 1.1 +` [`SLACK`]; caching
//! resumes within [`RECOVERY`] of Redis answering again; a corrupt value is
//! recomputed once per flight, replaced, and counted; memory stays bounded.
//!
//! Run: `scripts/faults` (or `cargo test --all-features --test faults --
//! --nocapture`).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;
use tg_cache::{CacheConfig, Caches, cache_function};

// ---------------------------------------------------------------------------
// Bounds and settings
// ---------------------------------------------------------------------------

const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const BREAKER_COOLDOWN: Duration = Duration::from_millis(50);
/// Slack on top of `response_timeout × 1.1`: none, the issue's bound.
const SLACK: Duration = Duration::ZERO;
/// Redis answers again → the first cache write or hit.
const RECOVERY: Duration = Duration::from_millis(100);
/// A server started late on the configured port → caching begins.
const LATE_START: Duration = Duration::from_millis(100);
/// Concurrent callers of the load scenarios.
const TASKS: usize = 64;
/// Keys the load scenarios spread over (small, so hits dominate).
const KEYS: u64 = 32;
/// Callers of one corrupt key at once (one flight).
const FLIGHT: usize = 8;
/// A corrupt value must be dealt with (recomputed, replaced) within this.
/// Generous: one flight on the zlib bomb took 1.0-1.5 s in a debug build on
/// a slow 2-core machine; unbounded inflation would take far longer (and
/// trip the RSS guard).
const CORRUPT_BOUND: Duration = Duration::from_secs(3);
/// Peak RSS above the baseline allowed with 64 callers on the zlib bomb.
const BOMB_RSS: u64 = 64 << 20;
/// The parent kills a child whose RSS passes this.
const RSS_GUARD: u64 = 3 << 30;
/// The parent kills a child that runs longer than this.
const CHILD_LIMIT: Duration = Duration::from_secs(15);
/// What a child that starts a Redis Cluster is allowed on top of
/// [`CHILD_LIMIT`].
const CLUSTER_START: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(300);

/// The longest a call may take.
fn call_bound() -> Duration {
    RESPONSE_TIMEOUT.mul_f64(1.1) + SLACK
}

const ROLE_VAR: &str = "TG_FAULTS_CHILD";

// ---------------------------------------------------------------------------
// Parent side: one child per scenario, one at a time
// ---------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

fn memory_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Runs the `#[ignore]` helper `helper` in a child process and fails with
/// its output if it fails, runs too long or takes too much memory.
fn scenario(helper: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A cluster's six servers take seconds to start and join.
    let limit = if helper.ends_with("::on_cluster") {
        CHILD_LIMIT + CLUSTER_START
    } else {
        CHILD_LIMIT
    };
    let started = Instant::now();
    let mut child: Child = Command::new(std::env::current_exe().unwrap())
        .args([helper, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(ROLE_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot re-run the test binary");
    let pid = child.id();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let mut peak_kb = 0;
    let mut killed = None;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        peak_kb = peak_kb.max(memory_kb(pid, "VmHWM").unwrap_or(0));
        let rss = memory_kb(pid, "VmRSS").unwrap_or(0) << 10;
        if killed.is_none() && rss > RSS_GUARD {
            killed = Some(format!("RSS {} MiB > guard", rss >> 20));
            let _ = child.kill();
        }
        if killed.is_none() && started.elapsed() > limit {
            killed = Some(format!("still running after {limit:?}"));
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let numbers: Vec<&str> = out
        .lines()
        .filter_map(|l| l.find("FAULTS ").map(|i| &l[i..]))
        .collect();
    println!(
        "[{helper}] {:.1?}, child peak RSS {} MiB\n  {}",
        started.elapsed(),
        peak_kb >> 10,
        numbers.join("\n  ")
    );
    assert!(
        status.success() && killed.is_none(),
        "{helper} failed ({}; peak RSS {} MiB):\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
        killed.unwrap_or_else(|| status.to_string()),
        peak_kb >> 10
    );
}

// ---------------------------------------------------------------------------
// Child side: helpers
// ---------------------------------------------------------------------------

fn is_child() -> bool {
    std::env::var_os(ROLE_VAR).is_some()
}

fn config(url: &str) -> CacheConfig {
    with_bounds(CacheConfig::redis(url))
}

/// This file's timeouts and breaker cooldown, on `config`.
fn with_bounds(config: CacheConfig) -> CacheConfig {
    config
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .breaker_cooldown(BREAKER_COOLDOWN)
}

/// Makes this child's default cache point at `url`.
fn configure(url: &str) {
    tg_cache::configure(Caches::new(config(url))).unwrap();
}

/// Reports a measurement.
fn report(name: &str, value: impl std::fmt::Display) {
    println!("FAULTS {name}={value}");
}

/// Broken bounds, collected so that every one is reported.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            println!("FAULTS FAIL {w}");
            self.0.push(w);
        }
    }
    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} bound(s) broken:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// A raw connection that never blocks for long (the server may be frozen).
fn raw(url: &str) -> Option<redis::Connection> {
    let client = redis::Client::open(url).ok()?;
    let con = client
        .get_connection_with_timeout(Duration::from_millis(100))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    con.set_write_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    Some(con)
}

fn raw_cmd<T: redis::FromRedisValue>(server: &RedisServer, args: &[&[u8]]) -> T {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let mut con = server.connection();
    cmd.query(&mut con)
        .unwrap_or_else(|e| panic!("redis {:?} failed: {e}", String::from_utf8_lossy(args[0])))
}

/// Value keys (not leases) of the family `tg:fn:<prefix>` now in Redis.
fn stored_values(url: &str, prefix: &str) -> Option<usize> {
    let mut con = raw(url)?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("tg:fn:{prefix}:*"))
        .query(&mut con)
        .ok()?;
    Some(keys.iter().filter(|k| !k.ends_with(":#lease")).count())
}

/// Waits (polling every millisecond, at most 3 s) until the first value of
/// `prefix` is stored or the default cache counts a hit beyond `hits0`;
/// returns (first write, first hit) measured from `ready`.
async fn recovery(
    ready: Instant,
    url: String,
    prefix: &'static str,
    hits0: u64,
    writes_count: bool,
) -> (Option<Duration>, Option<Duration>) {
    let writes = tokio::task::spawn_blocking(move || {
        if !writes_count {
            return None;
        }
        while ready.elapsed() < Duration::from_secs(3) {
            if stored_values(&url, prefix).unwrap_or(0) > 0 {
                return Some(ready.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    });
    let mut hit = None;
    while ready.elapsed() < Duration::from_secs(3) {
        if tg_cache::cache().stats().hits > hits0 {
            hit = Some(ready.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (writes.await.unwrap(), hit)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

// ---------------------------------------------------------------------------
// The load: 64 tasks calling a cached function in a loop
// ---------------------------------------------------------------------------

static LOAD_RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_function(key_prefix = "faults_load")]
async fn load(k: u64) -> u64 {
    LOAD_RUNS.fetch_add(1, SeqCst);
    k * 7 + 1
}

/// What the load saw.
#[derive(Default, Debug)]
struct Tally {
    calls: u64,
    wrong: u64,
    over: u64,
    max: Duration,
    /// Start (since the load began) and duration of the slowest calls.
    slow: Vec<(Duration, Duration)>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let tasks = (0..TASKS)
            .map(|i| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut t = Tally::default();
                    let mut n = i as u64;
                    while !stop.load(SeqCst) {
                        n = n
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let k = (n >> 33) % KEYS;
                        let start = Instant::now();
                        let v = load(k).await;
                        let took = start.elapsed();
                        t.calls += 1;
                        t.wrong += u64::from(v != k * 7 + 1);
                        t.max = t.max.max(took);
                        if took > call_bound() {
                            t.over += 1;
                            if t.slow.len() < 3 {
                                t.slow.push((start - t0, took));
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    t
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, SeqCst);
        let mut all = Tally::default();
        for t in self.tasks {
            let t = t.await.expect("a load task panicked");
            all.calls += t.calls;
            all.wrong += t.wrong;
            all.over += t.over;
            all.max = all.max.max(t.max);
            all.slow.extend(t.slow);
        }
        all.slow.sort_by_key(|s| std::cmp::Reverse(s.1));
        all.slow.truncate(5);
        all
    }
}

/// Reports and checks a load's tally.
fn check_load(f: &mut Failures, t: &Tally) {
    report("calls", t.calls);
    report("max_call_ms", format!("{:.1}", t.max.as_secs_f64() * 1e3));
    report("calls_over_bound", t.over);
    report("wrong_values", t.wrong);
    let slow: Vec<String> = t
        .slow
        .iter()
        .map(|(at, took)| {
            format!(
                "{:.0}ms@{:.0}ms",
                took.as_secs_f64() * 1e3,
                at.as_secs_f64() * 1e3
            )
        })
        .collect();
    report("slowest", slow.join(","));
    f.check(t.wrong == 0, || {
        format!("{} calls returned a wrong value", t.wrong)
    });
    f.check(t.over == 0, || {
        format!(
            "{} of {} calls took longer than {:?} (max {:?})",
            t.over,
            t.calls,
            call_bound(),
            t.max
        )
    });
}

fn check_recovery(f: &mut Failures, (write, hit): (Option<Duration>, Option<Duration>)) {
    if write.is_some() {
        report("recovery_first_write_ms", ms(write));
    }
    report("recovery_first_hit_ms", ms(hit));
    let first = [write, hit].into_iter().flatten().min();
    f.check(first.is_some_and(|d| d <= RECOVERY), || {
        format!(
            "caching resumed {} ms after Redis answered again (bound {RECOVERY:?})",
            ms(first)
        )
    });
}

// ---------------------------------------------------------------------------
// 1. SIGKILL and restart on the same port
// ---------------------------------------------------------------------------

#[test]
fn kill_and_restart_under_load() {
    scenario("child_kill_and_restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of kill_and_restart_under_load"]
async fn child_kill_and_restart() {
    if !is_child() {
        return;
    }
    let mut server = RedisServer::start();
    configure(&server.url());
    let mut f = Failures::default();
    let load = Load::start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let ready = Instant::now();
    let hits0 = tg_cache::cache().stats().hits;
    let rec = recovery(ready, server.url(), "faults_load", hits0, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    report("stats", format!("{:?}", tg_cache::cache().stats()));
    check_load(&mut f, &tally);
    check_recovery(&mut f, rec);
    f.finish();
}

// ---------------------------------------------------------------------------
// 2. SIGSTOP / SIGCONT for one second
// ---------------------------------------------------------------------------

#[test]
fn sigstop_for_one_second_under_load() {
    scenario("child_sigstop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of sigstop_for_one_second_under_load"]
async fn child_sigstop() {
    if !is_child() {
        return;
    }
    let server = RedisServer::start();
    configure(&server.url());
    let mut f = Failures::default();
    let load = Load::start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.resume();
    let ready = Instant::now();
    let hits0 = tg_cache::cache().stats().hits;
    let rec = recovery(ready, server.url(), "faults_load", hits0, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    report("stats", format!("{:?}", tg_cache::cache().stats()));
    check_load(&mut f, &tally);
    check_recovery(&mut f, rec);
    f.finish();
}

// ---------------------------------------------------------------------------
// 3. DEBUG SLEEP 1
// ---------------------------------------------------------------------------

#[test]
fn debug_sleep_under_load() {
    scenario("child_debug_sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of debug_sleep_under_load"]
async fn child_debug_sleep() {
    if !is_child() {
        return;
    }
    let server = RedisServer::start();
    configure(&server.url());
    let mut f = Failures::default();
    let load = Load::start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = server.url();
    let slept = tokio::task::spawn_blocking(move || {
        let mut con = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .unwrap();
        let t = Instant::now();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .query::<()>(&mut con)
            .expect("DEBUG SLEEP (needs --enable-debug-command)");
        t.elapsed()
    })
    .await
    .unwrap();
    let ready = Instant::now();
    report(
        "debug_sleep_ms",
        format!("{:.0}", slept.as_secs_f64() * 1e3),
    );
    let hits0 = tg_cache::cache().stats().hits;
    let rec = recovery(ready, server.url(), "faults_load", hits0, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    report("stats", format!("{:?}", tg_cache::cache().stats()));
    check_load(&mut f, &tally);
    check_recovery(&mut f, rec);
    f.finish();
}

// ---------------------------------------------------------------------------
// 4. Redis absent at start, then started on the configured port
// ---------------------------------------------------------------------------

#[test]
fn redis_absent_at_start() {
    scenario("child_absent_at_start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of redis_absent_at_start"]
async fn child_absent_at_start() {
    if !is_child() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    configure(&url);
    let mut f = Failures::default();
    let load = Load::start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    report("runs_while_absent", LOAD_RUNS.load(SeqCst));
    let server = tokio::task::spawn_blocking(move || RedisServer::start_on_port(port))
        .await
        .unwrap();
    let ready = Instant::now();
    let hits0 = tg_cache::cache().stats().hits;
    let (write, hit) = recovery(ready, server.url(), "faults_load", hits0, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = load.finish().await;
    report("stats", format!("{:?}", tg_cache::cache().stats()));
    check_load(&mut f, &tally);
    report("late_start_first_write_ms", ms(write));
    report("late_start_first_hit_ms", ms(hit));
    let first = [write, hit].into_iter().flatten().min();
    f.check(first.is_some_and(|d| d <= LATE_START), || {
        format!(
            "caching began {} ms after the server came up (bound {LATE_START:?})",
            ms(first)
        )
    });
    f.finish();
}

// ---------------------------------------------------------------------------
// 5. Corrupt values of every kind, at a cached function's key and at a
//    plain get_or_set key
// ---------------------------------------------------------------------------

/// 1 GiB of zeros as one zlib stream (about 1 MiB). Built from one
/// compressed MiB repeated: a raw deflate chunk ended by a sync flush is
/// byte-aligned and refers to nothing before it, so copies concatenate;
/// the Adler-32 of `n` zeros is `(n mod 65521) << 16 | 1`.
fn zlib_bomb() -> Vec<u8> {
    let mut bomb = bomb_chunks(&[0u8; 0], 0);
    // A final, empty stored block, then the checksum.
    bomb.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    let adler = ((1u32 << 30) % 65521) << 16 | 1;
    bomb.extend_from_slice(&adler.to_be_bytes());
    bomb
}

/// A zlib stream of 1 GiB that is valid JSON as far as it goes: a string
/// `"xxxx…` that never ends, so a decoder that does not stop at the cap
/// keeps it all in memory. (Its checksum is not computed: no decoder that
/// stops at the cap gets that far.)
fn json_zlib_bomb() -> Vec<u8> {
    let mut bomb = bomb_chunks(b"\"", b'x');
    bomb.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0]);
    bomb
}

/// The zlib header and 1024 independently compressed MiB: `first` then
/// `fill` bytes in the first MiB, `fill` bytes in the others.
fn bomb_chunks(first: &[u8], fill: u8) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const MIB: usize = 1 << 20;
    let chunk_of = |data: &[u8]| {
        let mut raw = Compress::new(Compression::best(), false);
        let mut chunk = Vec::with_capacity(64 << 10);
        raw.compress_vec(data, &mut chunk, FlushCompress::Sync)
            .unwrap();
        assert_eq!(
            raw.total_in(),
            MIB as u64,
            "one call compresses the whole MiB"
        );
        chunk
    };
    let mut head = first.to_vec();
    head.resize(MIB, fill);
    let rest = chunk_of(&vec![fill; MIB]);
    let mut bomb = vec![0x78, 0x9c];
    bomb.extend_from_slice(&chunk_of(&head));
    for _ in 1..1024 {
        bomb.extend_from_slice(&rest);
    }
    bomb
}

#[test]
fn the_zlib_bomb_inflates_to_one_gib_of_zeros() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bomb = zlib_bomb();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let mut dec = flate2::read::ZlibDecoder::new(&bomb[..]);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = dec.read(&mut buf).expect("a valid zlib stream");
        if n == 0 {
            break;
        }
        if total == 0 {
            assert!(buf[..n].iter().all(|&b| b == 0));
        }
        total += n as u64;
    }
    assert_eq!(total, 1 << 30);
}

/// A valid JSON string of `len` bytes (a well-formed but oversized value).
fn huge_json_string(len: usize) -> Vec<u8> {
    let mut v = vec![b'x'; len];
    v[0] = b'"';
    v[len - 1] = b'"';
    v
}

fn corrupt_value(kind: &str) -> Vec<u8> {
    match kind {
        "random_bytes" => loop {
            let v: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
            if serde_json::from_slice::<String>(&v).is_err() && v[0] != 0x78 {
                break v;
            }
        },
        "truncated_json" => b"\"body-".to_vec(),
        "wrong_type_json" => br#"{"body":[1,2,3]}"#.to_vec(),
        "bad_zlib" => {
            let mut v = vec![0x78, 0x9c];
            v.extend((0..64).map(|i| (i * 37 % 251) as u8));
            v
        }
        "zlib_bomb" => zlib_bomb(),
        "100mib" => huge_json_string(100 << 20),
        _ => unreachable!(),
    }
}

static CORRUPT_RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_function(key_prefix = "faults_corrupt")]
async fn corrupt_fn(case: u64) -> String {
    CORRUPT_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    format!("body-{case}")
}

/// Plants `bad` at the function's key (after its epoch header), then checks
/// one flight of callers, the replacement and the counters.
async fn corrupt_at_function(f: &mut Failures, server: &Planted, bad: &[u8]) {
    let cache = tg_cache::cache();
    assert_eq!(corrupt_fn(1).await, "body-1");
    let epoch_key = server.epoch_key("tg:fn:faults_corrupt");
    let epoch: Vec<u8> = server.cmd(&[b"GET", epoch_key.as_bytes()]);
    let mut value = format!("#{}:", String::from_utf8_lossy(&epoch)).into_bytes();
    value.extend_from_slice(bad);
    let () = server.cmd(&[b"SET", b"tg:fn:faults_corrupt:case=1", &value]);
    drop(value);
    let before = (CORRUPT_RUNS.load(SeqCst), cache.stats());
    let t = Instant::now();
    let calls: Vec<_> = (0..FLIGHT)
        .map(|_| tokio::spawn(async { corrupt_fn(1).await }))
        .collect();
    let mut wrong = 0;
    for c in calls {
        let v = c.await.unwrap();
        if v != "body-1" {
            wrong += 1;
            report("fn_wrong_value_len", v.len());
        }
    }
    let flight = t.elapsed();
    let runs = CORRUPT_RUNS.load(SeqCst) - before.0;
    let t2 = Instant::now();
    let again = corrupt_fn(1).await;
    let next = t2.elapsed();
    let after = (CORRUPT_RUNS.load(SeqCst) - before.0, cache.stats());
    let counted = (after.1.decode_errors + after.1.errors)
        .saturating_sub(before.1.decode_errors + before.1.errors);
    report("fn_flight_ms", format!("{:.1}", flight.as_secs_f64() * 1e3));
    report("fn_body_runs", runs);
    report(
        "fn_next_call_ms",
        format!("{:.1}", next.as_secs_f64() * 1e3),
    );
    report("fn_errors_counted", counted);
    report("fn_stats", format!("{:?}", after.1));
    f.check(wrong == 0, || {
        format!("fn: {wrong} of {FLIGHT} callers got something else than the body's value")
    });
    f.check(runs == 1, || {
        format!("fn: the body ran {runs} times for one flight of {FLIGHT}")
    });
    f.check(again == "body-1" && after.0 == 1, || {
        format!("fn: the next call was not a hit (body runs {})", after.0)
    });
    f.check(after.1.hits > before.1.hits, || "fn: no hit counted".into());
    let stored: Option<Vec<u8>> = server.cmd(&[b"GET", b"tg:fn:faults_corrupt:case=1"]);
    f.check(
        stored
            .as_deref()
            .is_some_and(|s| s.ends_with(b":\"body-1\"") && s.len() < 64),
        || {
            format!(
                "fn: the bad value was not replaced ({} bytes stored)",
                stored.as_ref().map_or(0, Vec::len)
            )
        },
    );
    f.check(counted >= 1, || "fn: the bad value was not counted".into());
    f.check(flight <= CORRUPT_BOUND && next <= CORRUPT_BOUND, || {
        format!("fn: flight took {flight:?}, next call {next:?} (bound {CORRUPT_BOUND:?})")
    });
}

/// The same at a plain key outside `tg:`, stored raw, read by get_or_set.
async fn corrupt_at_plain_key(f: &mut Failures, server: &Planted, bad: &[u8]) {
    let cache = tg_cache::cache();
    let runs = Arc::new(AtomicU64::new(0));
    let () = server.cmd(&[b"SET", b"faults:plain", bad]);
    let before = cache.stats();
    let call = |runs: Arc<AtomicU64>| async move {
        cache
            .get_or_set("faults:plain", TTL, || async move {
                runs.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                "plain-body".to_owned()
            })
            .await
    };
    let t = Instant::now();
    let calls: Vec<_> = (0..FLIGHT)
        .map(|_| tokio::spawn(call(runs.clone())))
        .collect();
    let mut wrong = 0;
    for c in calls {
        let v = c.await.unwrap();
        if v != "plain-body" {
            wrong += 1;
            report("plain_wrong_value_len", v.len());
        }
    }
    let flight = t.elapsed();
    let flight_runs = runs.load(SeqCst);
    let t2 = Instant::now();
    let again = call(runs.clone()).await;
    let next = t2.elapsed();
    let after = cache.stats();
    let counted =
        (after.decode_errors + after.errors).saturating_sub(before.decode_errors + before.errors);
    let stored: Option<Vec<u8>> = server.cmd(&[b"GET", b"faults:plain"]);
    report(
        "plain_flight_ms",
        format!("{:.1}", flight.as_secs_f64() * 1e3),
    );
    report("plain_body_runs", flight_runs);
    report(
        "plain_next_call_ms",
        format!("{:.1}", next.as_secs_f64() * 1e3),
    );
    report("plain_errors_counted", counted);
    f.check(wrong == 0, || {
        format!("plain: {wrong} of {FLIGHT} callers got something else than the body's value")
    });
    f.check(flight_runs == 1, || {
        format!("plain: the body ran {flight_runs} times for one flight of {FLIGHT}")
    });
    f.check(
        again == "plain-body" && runs.load(SeqCst) == 1 && after.hits > before.hits,
        || {
            format!(
                "plain: the next call was not a hit (body runs {})",
                runs.load(SeqCst)
            )
        },
    );
    f.check(stored.as_deref() == Some(&b"\"plain-body\""[..]), || {
        format!(
            "plain: the bad value was not replaced ({} bytes stored)",
            stored.map_or(0, |s| s.len())
        )
    });
    f.check(counted >= 1, || {
        "plain: the bad value was not counted".into()
    });
    f.check(flight <= CORRUPT_BOUND && next <= CORRUPT_BOUND, || {
        format!("plain: flight took {flight:?}, next call {next:?} (bound {CORRUPT_BOUND:?})")
    });
}

/// Where the corrupt values are planted: a server, or a Redis Cluster
/// (each key on its slot's primary).
enum Planted {
    Server(RedisServer),
    /// The cluster and a connection that routes by key.
    Cluster(
        Box<(
            tg_cache::testing::RedisCluster,
            Mutex<redis::cluster::ClusterConnection>,
        )>,
    ),
}

impl Planted {
    /// Starts it, and makes this child's default cache point at it.
    fn start(cluster: bool) -> Self {
        if !cluster {
            let server = RedisServer::start();
            configure(&server.url());
            return Planted::Server(server);
        }
        let cluster = tg_cache::testing::RedisCluster::start();
        tg_cache::configure(Caches::new(with_bounds(CacheConfig::redis_cluster(
            cluster.urls(),
        ))))
        .unwrap();
        let con = redis::cluster::ClusterClient::new(cluster.urls())
            .and_then(|c| c.get_connection())
            .unwrap();
        Planted::Cluster(Box::new((cluster, Mutex::new(con))))
    }

    /// A command by key (routed to the key's primary on a cluster).
    fn cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        match self {
            Planted::Server(server) => raw_cmd(server, args),
            Planted::Cluster(c) => {
                let con = &c.1;
                let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
                for a in &args[1..] {
                    cmd.arg(*a);
                }
                cmd.query(&mut *con.lock().unwrap()).unwrap_or_else(|e| {
                    panic!("redis {:?} failed: {e}", String::from_utf8_lossy(args[0]))
                })
            }
        }
    }

    /// The epoch key of `family` (on a cluster: of its one slot with keys).
    fn epoch_key(&self, family: &str) -> String {
        let name = format!("#epoch:{family}");
        let Planted::Cluster(c) = self else {
            return name;
        };
        let cluster = &c.0;
        let found: Vec<String> = cluster
            .primaries()
            .iter()
            .flat_map(|p| {
                let mut con = cluster.server(p.port).connection();
                redis::cmd("KEYS")
                    .arg(format!("#{{*}}:{name}"))
                    .query::<Vec<String>>(&mut con)
                    .unwrap()
            })
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    }
}

async fn corrupt_scenario(cluster: bool, kind: &str) {
    let server = Planted::start(cluster);
    let bad = corrupt_value(kind);
    report("planted_bytes", bad.len());
    let mut f = Failures::default();
    corrupt_at_function(&mut f, &server, &bad).await;
    corrupt_at_plain_key(&mut f, &server, &bad).await;
    f.finish();
}

/// Each kind on a server (`<name>::on_redis`) and on a Redis Cluster
/// (`<name>::on_cluster`).
macro_rules! corrupt_tests {
    ($($kind:literal: $parent:ident, $child:ident;)*) => {$(
        mod $parent {
            #[test]
            fn on_redis() {
                super::scenario(concat!(stringify!($child), "::on_redis"));
            }

            #[test]
            fn on_cluster() {
                super::scenario(concat!(stringify!($child), "::on_cluster"));
            }
        }

        mod $child {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "helper: runs only as a child process of the corrupt_* tests"]
            async fn on_redis() {
                if super::is_child() {
                    super::corrupt_scenario(false, $kind).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "helper: runs only as a child process of the corrupt_* tests"]
            async fn on_cluster() {
                if super::is_child() {
                    super::corrupt_scenario(true, $kind).await;
                }
            }
        }
    )*};
}

corrupt_tests! {
    "random_bytes": corrupt_random_bytes, child_corrupt_random_bytes;
    "truncated_json": corrupt_truncated_json, child_corrupt_truncated_json;
    "wrong_type_json": corrupt_wrong_type_json, child_corrupt_wrong_type_json;
    "bad_zlib": corrupt_bad_zlib, child_corrupt_bad_zlib;
    "zlib_bomb": corrupt_zlib_bomb, child_corrupt_zlib_bomb;
    "100mib": corrupt_100mib_value, child_corrupt_100mib_value;
}

// ---------------------------------------------------------------------------
// 6. Memory: 64 callers on the zlib bomb
// ---------------------------------------------------------------------------

fn own_memory_kb(field: &str) -> u64 {
    memory_kb(std::process::id(), field).expect("/proc/self/status")
}

#[test]
fn zlib_bomb_memory_bound() {
    scenario("child_zlib_bomb_memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of zlib_bomb_memory_bound"]
async fn child_zlib_bomb_memory() {
    if !is_child() {
        return;
    }
    bomb_memory(zlib_bomb(), None).await;
}

#[test]
fn json_zlib_bomb_memory_bound() {
    scenario("child_json_zlib_bomb_memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of json_zlib_bomb_memory_bound"]
async fn child_json_zlib_bomb_memory() {
    if !is_child() {
        return;
    }
    // A bomb that is valid JSON as far as it goes (an endless string): the
    // decoder checks the JSON without keeping it before decoding, so
    // rejecting it at the cap costs no memory either.
    bomb_memory(json_zlib_bomb(), None).await;
}

/// 64 callers of one key holding `bomb`: peak RSS above the baseline.
async fn bomb_memory(bomb: Vec<u8>, max_value_bytes: Option<usize>) {
    let server = RedisServer::start();
    let mut cfg = config(&server.url());
    if let Some(cap) = max_value_bytes {
        cfg = cfg.max_value_bytes(cap);
    }
    tg_cache::configure(Caches::new(cfg)).unwrap();
    let mut f = Failures::default();
    assert_eq!(corrupt_fn(2).await, "body-2");
    let epoch: Vec<u8> = raw_cmd(&server, &[b"GET", b"#epoch:tg:fn:faults_corrupt"]);
    let mut value = format!("#{}:", String::from_utf8_lossy(&epoch)).into_bytes();
    value.extend_from_slice(&bomb);
    let payload_len = bomb.len();
    drop(bomb);
    let () = raw_cmd(&server, &[b"SET", b"tg:fn:faults_corrupt:case=2", &value]);
    let () = raw_cmd(
        &server,
        &[b"SET", b"faults:plain", &value[epoch.len() + 2..]],
    );
    drop(value);
    let runs0 = CORRUPT_RUNS.load(SeqCst);
    let baseline = own_memory_kb("VmRSS") << 10;
    let hwm_before = own_memory_kb("VmHWM") << 10;
    report("baseline_rss_mib", baseline >> 20);
    let t = Instant::now();
    let calls: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(async { corrupt_fn(2).await == "body-2" }))
        .collect();
    let mut wrong = 0;
    for c in calls {
        wrong += usize::from(!c.await.unwrap());
    }
    let took = t.elapsed();
    let peak = (own_memory_kb("VmHWM") << 10).max(hwm_before);
    let above = peak.saturating_sub(baseline);
    report("peak_above_baseline_mib", above >> 20);
    report("storm_ms", format!("{:.0}", took.as_secs_f64() * 1e3));
    report("fn_body_runs", CORRUPT_RUNS.load(SeqCst) - runs0);
    report("stats", format!("{:?}", tg_cache::cache().stats()));
    f.check(wrong == 0, || format!("{wrong} callers got a wrong value"));
    // The one reader that inflates the bomb to its verdict may hold what
    // the largest legal value would cost (the cap, with the decoder's
    // buffer growth); the other readers stop when the process's inflation
    // budget (the cap) is spent; every reader holds its compressed copy.
    let cap = max_value_bytes.unwrap_or(BOMB_RSS as usize) as u64;
    let bound = 2 * cap + (TASKS as u64) * (payload_len as u64);
    report("bound_mib", bound >> 20);
    f.check(above < bound, || {
        format!(
            "peak RSS {} MiB above baseline (bound {} MiB)",
            above >> 20,
            bound >> 20
        )
    });
    f.finish();
}

// ---------------------------------------------------------------------------
// 7. Junk at the generation (epoch) key
// ---------------------------------------------------------------------------

static JUNK_RUNS: AtomicU64 = AtomicU64::new(0);

/// Returns a new value each time the body runs, so an old value is visible.
#[cache_function(key_prefix = "faults_junk")]
async fn junk_fn(k: u64) -> u64 {
    k * 1000 + JUNK_RUNS.fetch_add(1, SeqCst) + 1
}

#[test]
fn junk_epoch_key() {
    scenario("child_junk_epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of junk_epoch_key"]
async fn child_junk_epoch() {
    if !is_child() {
        return;
    }
    let server = RedisServer::start();
    configure(&server.url());
    let mut f = Failures::default();
    let first = junk_fn(1).await;
    f.check(junk_fn(1).await == first, || {
        "no hit before any junk".into()
    });
    let mut seen = vec![first];
    let junks: [(&str, &[&[u8]]); 4] = [
        (
            "alnum_token",
            &[b"SET", b"#epoch:tg:fn:faults_junk", b"junk"],
        ),
        (
            "malformed",
            &[b"SET", b"#epoch:tg:fn:faults_junk", b"not a token!\r\n*"],
        ),
        (
            "binary",
            &[b"SET", b"#epoch:tg:fn:faults_junk", b"\xff\x00\x78\x9c"],
        ),
        ("list", &[b"LPUSH", b"#epoch:tg:fn:faults_junk", b"junk"]),
    ];
    for (name, cmd) in junks {
        let _: redis::Value = raw_cmd(&server, &[b"DEL", b"#epoch:tg:fn:faults_junk"]);
        let _: redis::Value = raw_cmd(&server, cmd);
        let t = Instant::now();
        let a = junk_fn(1).await;
        let runs = JUNK_RUNS.load(SeqCst);
        let b = junk_fn(1).await;
        let took = t.elapsed();
        report(
            name,
            format!("values {a},{b}, {:.1} ms", took.as_secs_f64() * 1e3),
        );
        f.check(!seen.contains(&a), || {
            format!("{name}: an old value ({a}) came back after junk at the epoch key")
        });
        f.check(b == a && JUNK_RUNS.load(SeqCst) == runs, || {
            format!("{name}: the second call was not a hit ({a} then {b})")
        });
        f.check(took <= 2 * call_bound(), || {
            format!("{name}: took {took:?}")
        });
        seen.push(a);
    }
    report("stats", format!("{:?}", tg_cache::cache().stats()));
    f.finish();
}

// ---------------------------------------------------------------------------
// 8. One oversized value must not open the breaker for other keys
// ---------------------------------------------------------------------------

/// Size of the poisoned value: far more than can be read in the response
/// timeout, and above the decoding cap.
const POISON: usize = 256 << 20;

static POISON_RUNS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

#[cache_function(key_prefix = "faults_poison")]
async fn poison_fn(k: u64) -> String {
    POISON_RUNS[k as usize].fetch_add(1, SeqCst);
    format!("v{k}")
}

fn poison_runs() -> u64 {
    POISON_RUNS.iter().map(|r| r.load(SeqCst)).sum()
}

#[test]
fn oversized_value_does_not_open_the_breaker() {
    scenario("child_oversized_value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "helper: runs only as a child process of oversized_value_does_not_open_the_breaker"]
async fn child_oversized_value() {
    if !is_child() {
        return;
    }
    let server = RedisServer::start();
    configure(&server.url());
    let mut f = Failures::default();
    for k in 0..16 {
        assert_eq!(poison_fn(k).await, format!("v{k}"));
    }
    // A plain key read with `get`: the first read finds it over the cap,
    // counts it and removes it (a value that can never be read is no use).
    let () = raw_cmd(
        &server,
        &[b"SET", b"faults:poison", &huge_json_string(POISON)],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poisoned = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut calls, mut returned, mut errors, mut max) = (0u64, 0u64, 0u64, Duration::ZERO);
            while !stop.load(SeqCst) {
                let t = Instant::now();
                match tg_cache::cache().get::<String>("faults:poison").await {
                    Ok(Some(_)) => returned += 1,
                    Ok(None) => {}
                    Err(_) => errors += 1,
                }
                max = max.max(t.elapsed());
                calls += 1;
            }
            (calls, returned, errors, max)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let runs0 = poison_runs();
    let others: Vec<_> = (0..8)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut calls, mut wrong, mut max) = (0u64, 0u64, Duration::ZERO);
                let mut k = 1 + i;
                while !stop.load(SeqCst) {
                    let t = Instant::now();
                    wrong += u64::from(poison_fn(k).await != format!("v{k}"));
                    max = max.max(t.elapsed());
                    calls += 1;
                    k = 1 + (k + 7) % 15;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (calls, wrong, max)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, SeqCst);
    let (mut calls, mut wrong, mut max) = (0, 0, Duration::ZERO);
    for o in others {
        let (c, w, m) = o.await.unwrap();
        (calls, wrong, max) = (calls + c, wrong + w, max.max(m));
    }
    let recomputes = poison_runs() - runs0;
    let (p_calls, p_returned, p_errors, p_max) = poisoned.await.unwrap();
    let stats = tg_cache::cache().stats();
    report("other_calls", calls);
    report("other_recomputes", recomputes);
    report("other_hits", calls.saturating_sub(recomputes));
    report(
        "other_max_call_ms",
        format!("{:.1}", max.as_secs_f64() * 1e3),
    );
    report("poisoned_reads", p_calls);
    report("poisoned_reads_returning_the_value", p_returned);
    report("poisoned_reads_failing", p_errors);
    report(
        "poisoned_max_read_ms",
        format!("{:.1}", p_max.as_secs_f64() * 1e3),
    );
    report("stats", format!("{stats:?}"));
    f.check(wrong == 0, || {
        format!("{wrong} wrong values on the other keys")
    });
    f.check(calls > 0 && recomputes == 0, || {
        format!("other keys recomputed {recomputes} of {calls} calls (breaker opened?)")
    });
    f.check(max <= call_bound(), || {
        format!(
            "other keys: slowest call {max:?} (bound {:?})",
            call_bound()
        )
    });
    let left: i64 = raw_cmd(&server, &[b"EXISTS", b"faults:poison"]);
    f.check(left == 0, || {
        "the oversized value was not removed".to_owned()
    });
    f.check(stats.decode_errors >= 1, || {
        format!("the oversized value was not counted: {stats:?}")
    });
    f.check(p_returned == 0, || {
        format!("{p_returned} reads returned the {} MiB value", POISON >> 20)
    });
    f.check(p_max <= call_bound(), || {
        format!(
            "poisoned key: slowest read {p_max:?} (bound {:?})",
            call_bound()
        )
    });
    f.finish();
}
