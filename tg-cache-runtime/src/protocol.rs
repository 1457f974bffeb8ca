//! The miss path, start to end: lookup → in-process flight → cross-process
//! lease → compute → guarded store → the result handed to the waiters.
//! Every computed value that tg-cache stores goes through here:
//! `get_or_set` and its variants, `#[cache_function]` (and its refresh
//! scopes), `cache_page` and template fragments.
//!
//! # The guarantees, and their bounds
//!
//! * **Single flight across processes.** In one process, concurrent callers
//!   of a cold key join one flight ([`crate::flight`]); its leader asks the
//!   store for the key's **lease** (Redis: `SET <key>:#lease <token> NX PX`).
//!   Only the holder computes. A leader that finds the lease taken by
//!   another process polls (one round trip each, backoff 2 ms doubling to
//!   50 ms) until the holder's value appears or the lease is free. The
//!   holder renews its lease every third of the lease timeout while it
//!   computes (default timeout 3 s, `CacheConfig::lease_timeout`), for at
//!   most 60 s; if it dies (or hangs past that), its lease expires within
//!   that timeout and one waiter takes over. A holder that is cancelled or
//!   panics releases its lease at once.
//! * **No set-after-invalidate.** Every invalidation that covers a key
//!   (`set`, `add`, `delete`, `delete_many`, `delete_pattern`,
//!   `invalidate_family`, `clear`) removes the key's lease or changes its
//!   family's epoch, atomically in the store. The holder's value is stored
//!   only if its lease is still held, the epoch unchanged, and the key
//!   unchanged since the lease was granted (the lease records a digest of
//!   what the key held: a value another client wrote meanwhile, Django's
//!   included, is never overwritten). A refused value is still returned to
//!   its caller, whose call began before the invalidation; the flight's
//!   followers look again instead of taking it, and the flight closes to
//!   new followers before the value is sent to the store.
//!   An invalidation is only as durable as Redis' own write: a failover
//!   that loses the write of a new epoch loses that invalidation.
//! * **Unstored results are shared in a process.** A result the policy
//!   does not store (an `Err`, a `None`) goes to the followers of the
//!   in-process flight when it can be cloned and no invalidation happened
//!   meanwhile; otherwise they run the body themselves, concurrently. Across
//!   processes such a result is not shared: the holder releases the lease
//!   and the next process's leader computes, so P processes may run a
//!   failing body up to P times, one after another.
//! * **Fail-open.** If the store cannot be reached, the body runs and its
//!   result is returned, not stored; the error is logged and counted.

use crate::cache::{CachePolicy, CacheValue, Core};
use crate::exec::{in_io, io_runtime, must_not_wait};
use crate::flight::{Leader, Outcome};
use crate::generation;
use crate::store::{Filled, Lease, LeaseOutcome, Slot, Store};
use crate::timeout::Timeout;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether a computation may use what is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Return a cached value if there is one; compute and store on a miss.
    Normal,
    /// Compute and store, replacing what is cached (refresh scopes).
    Refresh,
}

/// What a leader hands its followers, type-erased in the flight.
enum Handoff<S, R> {
    /// The stored value: followers load it.
    Stored(S),
    /// A result the policy does not store: followers share a copy.
    Result(Mutex<R>, fn(&R) -> Option<R>),
}

/// What a lookup found.
enum Found<T> {
    Hit(T),
    Miss,
    /// Undecodable or oversized bytes (counted and logged): fill over them.
    Corrupt,
    /// The read timed out: Redis is down, or this value cannot be read in
    /// time. Compute without storing; a check in the background removes
    /// the value if Redis answers otherwise.
    Slow,
}

/// How the leader may store what it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Only where nothing live is stored.
    Fresh,
    /// Over what is stored (a refresh, or bytes that cannot be decoded).
    Replace,
    /// Not at all: compute and hand the result on.
    Skip,
}

impl<T> Found<T> {
    fn fill(&self) -> Fill {
        match self {
            Found::Hit(_) | Found::Miss => Fill::Fresh,
            Found::Corrupt => Fill::Replace,
            Found::Slow => Fill::Skip,
        }
    }
}

/// `f()`'s result, through the cache: see the module docs.
pub(crate) async fn get_or_compute<P, R, F, Fut>(
    core: &Core,
    key: &str,
    timeout: Timeout,
    mode: Mode,
    share: fn(&R) -> Option<R>,
    f: F,
) -> R
where
    P: CachePolicy<R>,
    R: Send + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let Some(ttl) = timeout.resolve(core.default_timeout) else {
        return f().await;
    };
    let slot = match core.slot(key) {
        Ok(slot) => slot,
        Err(e) => {
            core.report("get_or_set", key, &e);
            return f().await;
        }
    };
    if mode == Mode::Refresh {
        // A refresh never takes another flight's result: it computes anew.
        let miss = Miss {
            core,
            key,
            slot: &slot,
            ttl,
        };
        return lead::<P, R, F, Fut>(&miss, Fill::Replace, None, share, f)
            .await
            .0;
    }
    // Each caller looks up for itself: a value read by another caller
    // before an invalidation must not reach a caller that began after it.
    let mut fill = match lookup::<P::Stored>(core, key, &slot).await {
        Found::Hit(v) => {
            core.count_lookup(key, true);
            return P::load(v);
        }
        found => found.fill(),
    };
    core.count_lookup(key, false);
    let miss = Miss {
        core,
        key,
        slot: &slot,
        ttl,
    };
    let mut f = Some(f);
    loop {
        let leader = match core.flights.join(&slot.key) {
            Ok(leader) => leader,
            Err(flight) => {
                if must_not_wait() {
                    // The flight's leader may be an async call of this very
                    // thread's runtime, which cannot run while we wait.
                    warn_once_sole_thread(key);
                    return f.take().expect("computes once")().await;
                }
                match flight.wait().await {
                    Outcome::Value(v) => {
                        if let Some(h) = v.downcast_ref::<Handoff<P::Stored, R>>() {
                            match h {
                                Handoff::Stored(s) => return P::load(s.clone()),
                                Handoff::Result(r, share) => {
                                    let copy = share(&r.lock().unwrap_or_else(|p| p.into_inner()));
                                    if let Some(r) = copy {
                                        return r;
                                    }
                                }
                            }
                        }
                        // Another call shape on the same key: compute alone.
                        return f.take().expect("computes once")().await;
                    }
                    Outcome::Compute => return f.take().expect("computes once")().await,
                    Outcome::Retry => {
                        // The leader's value did not stick (an invalidation,
                        // or another writer's value): look again.
                        match lookup::<P::Stored>(core, key, &slot).await {
                            Found::Hit(v) => return P::load(v),
                            found => fill = found.fill(),
                        }
                        continue;
                    }
                }
            }
        };
        let f = f.take().expect("the leader computes once");
        let (result, outcome) = lead::<P, R, F, Fut>(&miss, fill, Some(&leader), share, f).await;
        leader.finish(outcome);
        return result;
    }
}

/// The live value at `slot`, decoded.
async fn lookup<T: CacheValue>(core: &Core, key: &str, slot: &Slot) -> Found<T> {
    match core.store.get(slot).await {
        Ok(None) => Found::Miss,
        Ok(Some(s)) => match core.decode::<T>(&slot.key, s) {
            Some(v) => Found::Hit(v),
            None => Found::Corrupt,
        },
        Err(e @ crate::Error::Timeout(_)) => {
            core.report("get", key, &e);
            drop_if_unreadable(core, slot);
            Found::Slow
        }
        Err(e) => {
            core.report("get", key, &e);
            Found::Miss
        }
    }
}

/// A read of `slot` timed out. If Redis answers a `PING` within the same
/// timeout, the value itself is what cannot be read in time: it is
/// removed (logged and counted), like a corrupt value, so the next call
/// fills it. Runs in the background; the caller computes meanwhile.
fn drop_if_unreadable(core: &Core, slot: &Slot) {
    let (store, slot) = (core.store.clone(), slot.clone());
    io_runtime().spawn(async move {
        if store.ping().await.is_ok() && store.delete(std::slice::from_ref(&slot.key)).await.is_ok()
        {
            tracing::warn!(key = %slot.key, "a cached value could not be read within the response timeout while Redis answered; it was removed");
        }
    });
}

fn warn_once_sole_thread(key: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            key,
            "a blocking cache call on a current-thread tokio runtime found the key being computed by another call; it computes without waiting (waiting could deadlock). Use a multi-thread runtime or the async API. Logged once."
        );
    });
}

/// One miss being filled: the cache, the key as given and as stored, and
/// the timeout to store with.
#[derive(Clone, Copy)]
struct Miss<'a> {
    core: &'a Core,
    key: &'a str,
    slot: &'a Slot,
    ttl: Option<Duration>,
}

/// The leader's part: take the lease (waiting while another process holds
/// it), compute, store under the lease, and say what the followers get.
async fn lead<P, R, F, Fut>(
    miss: &Miss<'_>,
    fill: Fill,
    flight: Option<&Leader<'_>>,
    share: fn(&R) -> Option<R>,
    f: F,
) -> (R, Outcome)
where
    P: CachePolicy<R>,
    R: Send + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let Miss {
        core,
        key,
        slot,
        ttl,
    } = *miss;
    let mut replace = fill == Fill::Replace;
    let token = generation::new_token();
    let mut backoff = Backoff::default();
    let lease = loop {
        if fill == Fill::Skip {
            break None;
        }
        match core.store.lease(slot, &token, replace).await {
            Ok(LeaseOutcome::Granted(lease)) => break Some(lease),
            Ok(LeaseOutcome::Found(stored)) => match core.decode::<P::Stored>(&slot.key, stored) {
                Some(v) => return (P::load(v.clone()), handoff::<P, R>(Handoff::Stored(v))),
                // Corrupt or foreign bytes: fill over them.
                None => replace = true,
            },
            Ok(LeaseOutcome::Busy) if must_not_wait() => {
                // The holder may be a call on this very thread: waiting
                // could never end. Compute without storing.
                warn_once_sole_thread(key);
                break None;
            }
            Ok(LeaseOutcome::Busy) => backoff.wait().await,
            Err(e) => {
                core.report("lease", key, &e);
                // The script may have run and granted the lease before the
                // reply was lost: give it back rather than leave it to expire.
                drop(LeaseGuard::hold(
                    core.store.clone(),
                    slot.clone(),
                    Lease {
                        token: token.clone(),
                        epoch: generation::Epoch::None,
                    },
                    false,
                ));
                break None;
            }
        }
    };
    let Some(lease) = lease else {
        // The store is unreachable: compute, return, store nothing.
        let result = f().await;
        let outcome = unstored::<P, R>(&result, share);
        return (result, outcome);
    };
    let guard = LeaseGuard::hold(core.store.clone(), slot.clone(), lease, true);
    let result = f().await;
    let Some(stored) = P::store(&result) else {
        let outcome = match guard.release().await {
            Ok(false) => Outcome::Retry,
            Ok(true) => unstored::<P, R>(&result, share),
            Err(e) => {
                core.report("release", key, &e);
                unstored::<P, R>(&result, share)
            }
        };
        return (result, outcome);
    };
    if let Some(flight) = flight {
        flight.detach();
    }
    let filled = core
        .store
        .fill(slot, &stored, ttl, guard.lease(), replace)
        .await;
    let outcome = match filled {
        Ok(Filled::Stored) => {
            guard.disarm();
            core.count_set();
            handoff::<P, R>(Handoff::Stored(stored))
        }
        Ok(Filled::Dropped) => {
            guard.disarm();
            handoff::<P, R>(Handoff::Stored(stored))
        }
        Ok(Filled::Kept | Filled::Lost) => {
            guard.disarm();
            Outcome::Retry
        }
        Err(e) => {
            // Maybe stored, maybe not; the guard releases the lease.
            core.report("set", key, &e);
            handoff::<P, R>(Handoff::Stored(stored))
        }
    };
    (result, outcome)
}

fn handoff<P: CachePolicy<R>, R: Send + 'static>(h: Handoff<P::Stored, R>) -> Outcome {
    Outcome::Value(Arc::new(h))
}

/// What followers get for a result that is not stored.
fn unstored<P: CachePolicy<R>, R: Send + 'static>(
    result: &R,
    share: fn(&R) -> Option<R>,
) -> Outcome {
    match share(result) {
        Some(copy) => handoff::<P, R>(Handoff::Result(Mutex::new(copy), share)),
        None => Outcome::Compute,
    }
}

/// Exponential backoff for waiters polling another process's lease.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(2))
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_millis(50);

    async fn wait(&mut self) {
        // The timer lives on tg-cache's runtime, so this works for blocking
        // callers and under any executor.
        // (created inside `in_io`, where that runtime is the context).
        let delay = self.0;
        in_io(async move { tokio::time::sleep(delay).await }).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

/// How long a holder keeps renewing its lease: a computation that takes
/// longer (a hung body) lets the lease expire, and a waiter in another
/// process takes over. Waiters therefore wait at most this plus the lease
/// timeout.
const MAX_HOLD: Duration = Duration::from_secs(60);

/// A held lease: renewed in the background while its holder computes, and
/// released at once if the holder is dropped (cancelled, or unwinding from
/// a panic) before it stores.
struct LeaseGuard {
    store: Arc<dyn Store>,
    slot: Slot,
    lease: Lease,
    renewal: Option<tokio::task::JoinHandle<()>>,
    armed: bool,
}

impl LeaseGuard {
    /// Holds `lease`, renewing it while `renew` (a lease that is only to be
    /// given back is not renewed: dropping the guard releases it).
    fn hold(store: Arc<dyn Store>, slot: Slot, lease: Lease, renew: bool) -> Self {
        let renewal = store.renew_every().filter(|_| renew).map(|every| {
            let (store, slot, lease) = (store.clone(), slot.clone(), lease.clone());
            io_runtime().spawn(async move {
                let until = tokio::time::Instant::now() + MAX_HOLD;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(every).await;
                    // Stop when the lease is lost; a failed renewal (Redis
                    // slow or busy) is tried again next time.
                    if let Ok(false) = store.renew(&slot, &lease).await {
                        return;
                    }
                }
            })
        });
        Self {
            store,
            slot,
            lease,
            renewal,
            armed: true,
        }
    }

    fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The lease was consumed (by a fill): nothing to release.
    fn disarm(mut self) {
        self.armed = false;
    }

    /// Gives the lease up; returns whether it was still held.
    async fn release(mut self) -> crate::Result<bool> {
        self.armed = false;
        self.stop_renewal();
        self.store.release(&self.slot, &self.lease).await
    }

    fn stop_renewal(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        if !self.armed {
            return;
        }
        let (store, slot, lease) = (self.store.clone(), self.slot.clone(), self.lease.clone());
        let release = async move {
            let _ = store.release(&slot, &lease).await;
        };
        // A local store releases synchronously; a remote one on tg-cache's
        // runtime, so that a dropped holder frees its key at once.
        let mut release = Box::pin(release);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if release.as_mut().poll(&mut cx).is_pending() {
            io_runtime().spawn(release);
        }
    }
}
