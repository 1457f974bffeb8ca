//! Value encoding for byte stores (Redis): serde_json, optionally zlib-compressed.
//!
//! Plain values are JSON text, readable with `redis-cli GET`. A compressed
//! value is a zlib stream, recognised by its header: zlib streams start with
//! `0x78` (`x`), which no JSON text can start with, so values written with
//! compression on or off are both read correctly, whatever the current setting.

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
#[cfg(test)]
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Serializes `value` as JSON and compresses it when it is at least
/// `compress_min` bytes long.
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    compress_min: Option<usize>,
) -> Result<Vec<u8>, serde_json::Error> {
    Ok(compress(serde_json::to_vec(value)?, compress_min))
}

/// Compresses JSON text when it is at least `compress_min` bytes long and
/// compression saves space.
pub(crate) fn compress(json: Vec<u8>, compress_min: Option<usize>) -> Vec<u8> {
    match compress_min {
        Some(min) if json.len() >= min => {
            let mut enc = ZlibEncoder::new(Vec::with_capacity(json.len() / 2), Compression::fast());
            // Writing into a Vec cannot fail.
            if enc.write_all(&json).is_err() {
                return json;
            }
            match enc.finish() {
                Ok(compressed) if compressed.len() < json.len() => compressed,
                _ => json,
            }
        }
        _ => json,
    }
}

/// Why stored bytes could not be turned back into a value.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("{0} bytes, over the configured cap")]
    TooLarge(usize),
    #[error("this compressed value failed to decode a moment ago (not inflated again)")]
    KnownBad,
    /// Not the value's fault: other reads of the process kept the
    /// inflation budget in use for as long as a read waits.
    #[error("the process's inflation budget stayed in use by other reads")]
    Busy,
    #[error("not a zlib stream: {0}")]
    Zlib(String),
    #[error("not the expected JSON shape: {0}")]
    Json(String),
    /// Python's pickle (protocol 2 or later), as Django's `RedisCache` and
    /// django-redis' default `PickleSerializer` write it: never unpickled.
    #[error(
        "written by Python pickle: set django-redis' SERIALIZER to JSONSerializer (django_redis.serializers.json.JSONSerializer); the value is a miss, never unpickled"
    )]
    Pickle,
}

/// Whether `bytes` start as a pickle of protocol 2 or later does
/// (`PROTO` opcode `0x80`, then the protocol number): what Django's
/// serializers write for anything but an integer. No JSON text starts
/// with `0x80`.
pub(crate) fn is_pickle(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1])
}

/// Whether `bytes` start with a zlib header (CMF 0x78, FCHECK valid).
fn is_zlib(bytes: &[u8]) -> bool {
    bytes.len() >= 2
        && bytes[0] == 0x78
        && (u16::from(bytes[0]) << 8 | u16::from(bytes[1])) % 31 == 0
}

/// How long a read waits for the inflations ahead of it when the process's
/// inflation budget is in use, before it gives up ([`DecodeError::Busy`]).
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Decodes bytes written by [`compress`], compressed or not, reading at
/// most `max_bytes` of JSON.
///
/// A compressed value is inflated **once**, however many read it at once:
/// concurrent readers of one payload wait for the first one's inflated
/// bytes ([`INFLIGHT`]), and a payload that failed is remembered, so a bomb
/// read by many callers is inflated once. Inflation goes into one buffer
/// bounded by the cap, then the JSON is parsed from it. Inflations of
/// different payloads run in parallel within the process's budget
/// ([`INFLATING`]), so concurrent decompression bombs cost about the cap in
/// memory; no lock is held while inflating or parsing.
pub(crate) async fn decode<T: DeserializeOwned>(
    bytes: Vec<u8>,
    max_bytes: usize,
) -> Result<T, DecodeError> {
    if !is_zlib(&bytes) {
        if bytes.len() > max_bytes {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if is_pickle(&bytes) {
            return Err(DecodeError::Pickle);
        }
        return crate::exec::heavy(bytes.len(), || serde_json::from_slice(&bytes))
            .map_err(|e| DecodeError::Json(e.to_string()));
    }
    let typed = digest(&bytes, std::any::type_name::<T>(), max_bytes);
    if known_bad(typed) {
        return Err(DecodeError::KnownBad);
    }
    let json = inflate(bytes, max_bytes).await?;
    if is_pickle(&json) {
        return Err(DecodeError::Pickle);
    }
    crate::exec::heavy(json.len(), || serde_json::from_slice(&json)).map_err(|e| {
        remember_bad(typed);
        DecodeError::Json(e.to_string())
    })
}

/// What an inflation gave: the JSON text, or why not.
type Inflated = Result<std::sync::Arc<Vec<u8>>, DecodeError>;

/// One inflation in progress, shared by every reader of its payload.
#[derive(Default)]
struct Shared {
    done: std::sync::OnceLock<Inflated>,
    notify: tokio::sync::Notify,
}

/// Inflations in progress, by payload digest. The lock is held to join or
/// leave one, never while inflating.
static INFLIGHT: std::sync::Mutex<std::collections::BTreeMap<u64, std::sync::Arc<Shared>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The JSON text of a zlib payload, inflated once for every concurrent
/// reader of it. A reader that waits for another's inflation drops its own
/// copy of the payload first: many readers of one big payload hold one
/// copy, not one each.
async fn inflate(bytes: Vec<u8>, max_bytes: usize) -> Inflated {
    let key = digest(&bytes, "", max_bytes);
    if known_bad(key) {
        return Err(DecodeError::KnownBad);
    }
    let until = tokio::time::Instant::now() + BUSY_WAIT;
    let mut bytes = Some(bytes);
    loop {
        let (shared, leads) = {
            let mut map = INFLIGHT.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(s) => (s.clone(), false),
                // Without its copy, a reader can only wait.
                None if bytes.is_none() => return Err(DecodeError::Busy),
                None => {
                    let s = std::sync::Arc::new(Shared::default());
                    map.insert(key, s.clone());
                    (s, true)
                }
            }
        };
        let r = if leads {
            let payload = bytes.as_deref().unwrap_or_default();
            // A payload a quarter of the threshold may well inflate past it.
            let r = crate::exec::heavy(payload.len().saturating_mul(4), || {
                inflate_now(payload, max_bytes)
            });
            if matches!(r, Err(DecodeError::TooLarge(_) | DecodeError::Zlib(_))) {
                remember_bad(key);
            }
            let _ = shared.done.set(r.clone());
            INFLIGHT
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            shared.notify.notify_waiters();
            if let Err(DecodeError::Busy) = r {
                // Wait for an inflation ahead to end, then try again.
                let ended = inflation_ended();
                if INFLATING.load(Ordering::Relaxed) >= max_bytes {
                    wait_until(until, ended).await;
                }
            }
            r
        } else {
            let notified = shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if shared.done.get().is_none() {
                // The leader's result will do; it retries only if the
                // inflation could not run (the budget).
                bytes = None;
            }
            match shared.done.get() {
                Some(r) => r.clone(),
                None => {
                    wait_until(until, notified).await;
                    shared.done.get().cloned().unwrap_or(Err(DecodeError::Busy))
                }
            }
        };
        match r {
            Err(DecodeError::Busy) if tokio::time::Instant::now() < until => continue,
            r => return r,
        }
    }
}

/// Waits for `f`, at most until `until` (on tg-cache's runtime, whose
/// timers work under any executor).
async fn wait_until<F: std::future::Future>(until: tokio::time::Instant, f: F) {
    let _ = crate::exec::timeout_at(until, f).await;
}

/// Inflations started, by payload digest, for tests.
#[cfg(test)]
static INFLATIONS: std::sync::Mutex<std::collections::BTreeMap<u64, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

#[cfg(test)]
fn inflations(bytes: &[u8]) -> usize {
    let map = INFLATIONS.lock().unwrap();
    map.get(&digest(bytes, "", 0)).copied().unwrap_or(0)
}

/// Inflates into one buffer, bounded by the cap and by the budget.
fn inflate_now(bytes: &[u8], max_bytes: usize) -> Inflated {
    #[cfg(test)]
    {
        *INFLATIONS
            .lock()
            .unwrap()
            .entry(digest(bytes, "", 0))
            .or_default() += 1;
    }
    // One more byte than the cap, to tell "at the cap" from "over it".
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut inflater = Budgeted::new(ZlibDecoder::new(bytes).take(limit), max_bytes);
    let mut json = Vec::with_capacity(bytes.len().saturating_mul(4).min(max_bytes));
    match inflater.read_to_end(&mut json) {
        // Only `Budgeted` reports this kind: not the value's fault.
        Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => Err(DecodeError::Busy),
        Err(e) => Err(DecodeError::Zlib(e.to_string())),
        Ok(_) if json.len() > max_bytes => Err(DecodeError::TooLarge(json.len())),
        Ok(_) => Ok(std::sync::Arc::new(json)),
    }
}

/// Payloads (compressed bytes, and with the type asked) that failed to
/// decode lately. The lock is held to look and to note, never while
/// inflating.
static KNOWN_BAD: std::sync::Mutex<std::collections::VecDeque<u64>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const KNOWN_BAD_LEN: usize = 16;

fn known_bad(digest: u64) -> bool {
    KNOWN_BAD
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&digest)
}

fn remember_bad(digest: u64) {
    let mut bad = KNOWN_BAD.lock().unwrap_or_else(|p| p.into_inner());
    if bad.len() == KNOWN_BAD_LEN {
        bad.pop_front();
    }
    bad.push_back(digest);
}

/// Bytes being inflated right now by every read of the process together.
/// An inflation whose bytes would take the total over its cap stops
/// ([`DecodeError::Busy`], then it waits and tries again), unless it is the
/// oldest one running, which always goes on to its verdict: concurrent
/// decompression bombs cost about the cap in memory, while ordinary
/// compressed values inflate in parallel.
static INFLATING: AtomicUsize = AtomicUsize::new(0);

/// The inflations running, by age (the lock is taken to start and end one,
/// and by an inflation over budget to learn whether it is the oldest).
static RUNNING: std::sync::Mutex<std::collections::BTreeSet<u64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
static TICKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn running() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u64>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Told whenever an inflation ends.
static INFLATED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A future that completes when the next inflation of the process ends.
fn inflation_ended() -> std::pin::Pin<Box<tokio::sync::futures::Notified<'static>>> {
    let mut n = Box::pin(INFLATED.notified());
    n.as_mut().enable();
    n
}

/// Inflated bytes, counted against [`INFLATING`] until dropped.
struct Budgeted<R> {
    inner: R,
    reserved: usize,
    limit: usize,
    ticket: u64,
}

impl<R> Budgeted<R> {
    fn new(inner: R, limit: usize) -> Self {
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        running().insert(ticket);
        Self {
            inner,
            reserved: 0,
            limit,
            ticket,
        }
    }
}

/// The io error that says the budget ran out.
#[derive(Debug)]
struct BudgetSpent;

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inflation budget in use")
    }
}

impl std::error::Error for BudgetSpent {}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = INFLATING.fetch_add(n, Ordering::Relaxed);
        self.reserved += n;
        if before + n > self.limit && running().first() != Some(&self.ticket) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                BudgetSpent,
            ));
        }
        Ok(n)
    }
}

impl<R> Drop for Budgeted<R> {
    fn drop(&mut self) {
        INFLATING.fetch_sub(self.reserved, Ordering::Relaxed);
        running().remove(&self.ticket);
        INFLATED.notify_waiters();
    }
}

/// Names a payload read with a type and a cap: two reads share an
/// inflation, or a verdict, only if all three match. The hash keys are
/// drawn once per process, so a writer cannot craft two payloads that
/// share a digest.
fn digest(bytes: &[u8], type_name: &str, max_bytes: usize) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    KEYS.hash_one((bytes, type_name, max_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::block_on;

    #[test]
    fn roundtrip_plain_and_compressed() {
        let v: Vec<String> = (0..100).map(|i| format!("scene {i}")).collect();
        let plain = encode(&v, None).unwrap();
        assert_eq!(plain[0], b'[');
        let packed = encode(&v, Some(16)).unwrap();
        assert!(is_zlib(&packed) && packed.len() < plain.len());
        assert_eq!(
            block_on(decode::<Vec<String>>(plain.clone(), 1 << 20)).unwrap(),
            v
        );
        assert_eq!(
            block_on(decode::<Vec<String>>(packed.clone(), 1 << 20)).unwrap(),
            v
        );
        // small values stay readable even with compression on
        assert_eq!(encode(&5, Some(16)).unwrap(), b"5");
    }

    #[test]
    fn concurrent_readers_of_one_payload_inflate_it_once() {
        // 32 MiB of JSON: long enough to inflate that readers started
        // together all find it in flight.
        let packed = compress(serde_json::to_vec(&"z".repeat(32 << 20)).unwrap(), Some(1));
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    let v: String = block_on(decode(packed.clone(), 64 << 20)).unwrap();
                    assert_eq!(v.len(), 32 << 20);
                });
            }
        });
        let n = inflations(&packed);
        assert!(n <= 2, "8 concurrent readers inflated it {n} times");
        // One read, one inflation (the value is never inflated twice).
        let _: String = block_on(decode(packed.clone(), 64 << 20)).unwrap();
        assert_eq!(inflations(&packed), n + 1);
    }

    #[test]
    fn a_verdict_under_one_cap_is_not_reused_under_another() {
        let packed = compress(serde_json::to_vec(&"y".repeat(8192)).unwrap(), Some(1));
        for _ in 0..2 {
            let small = block_on(decode::<String>(packed.clone(), 1024));
            let refused = matches!(small, Err(DecodeError::TooLarge(_) | DecodeError::KnownBad));
            assert!(refused, "{small:?}");
        }
        let big: String = block_on(decode(packed, 1 << 20)).unwrap();
        assert_eq!(big.len(), 8192);
    }

    #[test]
    fn a_big_value_decodes_on_a_multi_thread_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let value = "z".repeat(1 << 20);
        let packed = compress(serde_json::to_vec(&value).unwrap(), Some(1));
        let plain = serde_json::to_vec(&value).unwrap();
        let (a, b): (String, String) = rt.block_on(async {
            let a = tokio::spawn(decode(packed, 4 << 20))
                .await
                .unwrap()
                .unwrap();
            let b = tokio::spawn(decode(plain, 4 << 20)).await.unwrap().unwrap();
            (a, b)
        });
        assert_eq!((a.len(), b.len()), (1 << 20, 1 << 20));
    }

    #[test]
    fn corrupt_is_an_error_not_a_panic() {
        for bad in [&b"\x78\x9cgarbage"[..], b"{", b"\"str\"", b""] {
            assert!(block_on(decode::<i32>(bad.to_vec(), 1 << 20)).is_err());
        }
    }
}

#[cfg(test)]
mod bomb {
    use super::*;
    use crate::exec::block_on;

    #[test]
    fn a_bomb_is_cut_at_the_cap() {
        // 64 MiB of `[0,0,0,...` compresses to a few hundred KiB.
        let mut json = Vec::with_capacity(64 << 20);
        json.push(b'[');
        while json.len() < 64 << 20 {
            json.extend_from_slice(b"0,");
        }
        let packed = compress(json, Some(1));
        assert!(packed.len() < 1 << 20, "{}", packed.len());
        let start = std::time::Instant::now();
        assert!(block_on(decode::<Vec<u8>>(packed.clone(), 1 << 20)).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // Plain bytes over the cap are refused without parsing.
        assert!(matches!(
            block_on(decode::<Vec<u8>>(vec![b' '; 2 << 20], 1 << 20)),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
