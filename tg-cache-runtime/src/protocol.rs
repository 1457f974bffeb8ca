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
//!   store for the key's **lease**, a placeholder written at the key itself
//!   (`lease.rs`). Only holders compute. A leader that finds the lease held
//!   by another process waits for that holder until its value appears: its
//!   lease request read the key on a tracking connection, so the server's
//!   invalidation push for the key (the holder stored, gave up, or the key
//!   was invalidated) wakes it, and it asks once more (a poll every 250 ms
//!   is the safety net; stores without tracking poll with a backoff of
//!   2 ms doubling to 8 ms).
//! * **Bounded waits.** A waiter remembers the holder it waits on. When that
//!   holder is gone (it stored nothing it could read: an `Err`, a `None`,
//!   a value over the cap; or an invalidation ended its lease; or it died
//!   and its lease expired), the waiter stops waiting at once and computes,
//!   as a co-holder of whatever lease is there now or as the new holder.
//!   So no caller waits longer than the holder's computation plus a few
//!   round trips, whatever the other processes do meanwhile. A holder that
//!   computes longer than `max_wait` (default 30 s, a hung body) gets
//!   co-holders: each waiting process computes too, and the first value
//!   stored wins. A follower of the in-process flight does the same after
//!   `max_wait`: it computes as a co-holder of its leader's lease.
//! * **No stale hand-off.** A value the leader *read* (another process
//!   stored it first) goes only to the followers that joined before that
//!   read was sent; a follower that joined later looks again, since it may
//!   have begun after an invalidation the read predates.
//! * **Any computation length.** A holder renews its lease every third of
//!   the lease timeout (default 3 s) for as long as it computes, so a
//!   computation of any length is stored when nothing invalidated it. If
//!   the holder's process dies, its lease expires within the lease timeout.
//!   A holder that is cancelled or panics releases its lease at once.
//! * **No set-after-invalidate.** Every invalidation that covers a key
//!   (`set`, `add`, `delete`, `delete_many`, `delete_pattern`, `clear`, by
//!   any client) removes or replaces its placeholder, and
//!   `invalidate_family` changes the epoch the placeholder carries. The
//!   holder's value is stored only over its own placeholder, in the epoch
//!   it was taken in; a value another client wrote meanwhile, Django's
//!   included, is never overwritten. A refused value is still returned to
//!   its caller, whose call began before the invalidation; the flight's
//!   followers look again instead of taking it, and the flight closes to
//!   new followers before the value is sent to the store. The same holds
//!   when the store's reply to the fill is lost.
//!   An invalidation is only as durable as Redis' own write: a failover
//!   that loses the write of a new epoch loses that invalidation.
//! * **Unstored results are shared in a process.** A result the policy
//!   does not store (an `Err`, a `None`), or a value over the cap, goes to
//!   the followers of the in-process flight when it can be cloned and no
//!   invalidation happened meanwhile; otherwise they run the body
//!   themselves, concurrently. Across processes such a result is not
//!   shared: the waiting processes compute it, each at once.
//! * **Fail-open.** If the store cannot be reached, the body runs and its
//!   result is returned, not stored; the error is logged and counted.

use crate::cache::{CachePolicy, CacheValue, Core};
use crate::exec::{io_runtime, must_not_wait};
use crate::flight::{Handed, Leader, Outcome};
use crate::generation;
use crate::lease::Holders;
use crate::store::{Filled, Lease, LeaseMode, LeaseOutcome, Slot, Store};
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
    /// No answer now, not for this value's sake (the connection queue was
    /// full for the whole deadline, the breaker is open, or the process's
    /// inflation budget stayed in use): compute without storing.
    Busy,
    /// Another application's value (Python pickle, counted and logged):
    /// compute without storing, so that it is never overwritten.
    Foreign,
}

/// How the leader starts: asking for a lease in a mode, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Lease(LeaseMode),
    /// Compute and hand the result on, storing nothing.
    Skip,
}

impl<T> Found<T> {
    fn fill(&self) -> Fill {
        match self {
            // Corrupt bytes are looked at again by the lease request, which
            // repairs them only if they are still there: a value another
            // caller stored since is taken, not overwritten.
            Found::Hit(_) | Found::Miss | Found::Corrupt => Fill::Lease(LeaseMode::Fresh),
            Found::Slow | Found::Busy | Found::Foreign => Fill::Skip,
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
    // Whether to cache at all; the entry's lifetime (its jitter drawn) is
    // only needed on a miss.
    if !core.caches(timeout) {
        return f().await;
    }
    let ttl = || core.lifetime(timeout).flatten();
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
            ttl: ttl(),
        };
        return lead::<P, R, F, Fut>(&miss, Fill::Lease(LeaseMode::Refresh), None, share, f)
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
    if fill == Fill::Skip {
        // The store did not answer in time: compute now, outside the
        // flight (waiting for a leader that would meet the same store
        // could take as long again).
        return f().await;
    }
    let miss = Miss {
        core,
        key,
        slot: &slot,
        ttl: ttl(),
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
                let Ok(outcome) = crate::exec::timeout(core.max_wait, flight.wait()).await else {
                    // The leader has computed for `max_wait` (a hung
                    // body?): compute too, as a co-holder of its lease, so
                    // the first value stored serves both.
                    let f = f.take().expect("computes once");
                    let join = Fill::Lease(LeaseMode::Join);
                    return lead::<P, R, F, Fut>(&miss, join, None, share, f).await.0;
                };
                match outcome {
                    Outcome::Value(handed) => {
                        let v = handed.value;
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
                        if fill == Fill::Skip {
                            return f.take().expect("computes once")().await;
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
        Ok(Some(s)) => match core.decode::<T>(&slot.key, s).await {
            Ok(v) => Found::Hit(v),
            Err(crate::cache::Undecodable::Busy) => Found::Busy,
            Err(crate::cache::Undecodable::Corrupt) => Found::Corrupt,
            Err(crate::cache::Undecodable::Foreign) => Found::Foreign,
        },
        Err(e @ crate::Error::Timeout { .. }) => {
            core.report("get", key, &e);
            drop_if_unreadable(core, slot);
            Found::Slow
        }
        // Queued for the whole deadline, or the breaker is open: the next
        // store call would fare no better. Compute without storing.
        Err(e @ (crate::Error::Saturated { .. } | crate::Error::Unavailable { .. })) => {
            core.report("get", key, &e);
            Found::Busy
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
        if store.ping_for(&slot).await.is_ok()
            && store.delete(std::slice::from_ref(&slot.key)).await.is_ok()
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
    let token = generation::new_token();
    let mut backoff = Backoff::default();
    let mut wait = Wait::new(core.max_wait);
    let mut mode = match fill {
        Fill::Lease(mode) => mode,
        Fill::Skip => LeaseMode::Fresh,
    };
    let lease = loop {
        if fill == Fill::Skip {
            break None;
        }
        // Registered before the request, so that a change right after
        // the script read the key still wakes this waiter.
        let watch = core.store.watch(slot);
        let read = flight.map(Leader::reading);
        match core.store.lease(slot, &token, mode, ttl).await {
            Ok(LeaseOutcome::Granted(lease)) => break Some(lease),
            Ok(LeaseOutcome::Found(stored)) => {
                let seen = stored.seen();
                match core.decode::<P::Stored>(&slot.key, stored).await {
                    Ok(v) => {
                        // Only for the followers that joined before this
                        // read was sent.
                        let handed = Handed {
                            value: Arc::new(Handoff::<P::Stored, R>::Stored(v.clone())),
                            read,
                        };
                        return (P::load(v), Outcome::Value(handed));
                    }
                    // Corrupt or foreign bytes: fill over them (over those
                    // only: a value stored since is taken instead).
                    Err(crate::cache::Undecodable::Corrupt) => mode = LeaseMode::Repair(seen),
                    Err(crate::cache::Undecodable::Busy | crate::cache::Undecodable::Foreign) => {
                        break None;
                    }
                }
            }
            // The holder may be a call on this very thread: waiting could
            // never end. Compute without storing.
            Ok(LeaseOutcome::Busy(_)) if must_not_wait() => {
                warn_once_sole_thread(key);
                break None;
            }
            // Joining found the lease full of co-holders: compute alone.
            Ok(LeaseOutcome::Busy(_)) if mode == LeaseMode::Join => break None,
            Ok(LeaseOutcome::Busy(holders)) => match wait.next(&holders) {
                // Woken by the key's invalidation push when the holder
                // stores or gives up; polling is the safety net.
                Next::Wait => match &watch {
                    Some(w) => w.changed(WATCH_NET).await,
                    None => backoff.wait().await,
                },
                Next::Join => mode = LeaseMode::Join,
            },
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
                        refresh: mode == LeaseMode::Refresh,
                    },
                    false,
                ));
                break None;
            }
        }
    };
    let Some(lease) = lease else {
        // Nothing to store under: compute, return, store nothing.
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
    let ttl = match (ttl, P::lifetime(&result)) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (None, l) => l,
        (t, None) => t,
    };
    let filled = core.store.fill(slot, &stored, ttl, guard.lease()).await;
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
            core.count_refused_fill();
            Outcome::Retry
        }
        Err(e @ crate::Error::ValueTooLarge { .. }) => {
            // Served uncached: this caller and the flight's followers get
            // the value (computed once), the other processes compute it.
            core.report_too_large(key, &e);
            match guard.release().await {
                Ok(true) => handoff::<P, R>(Handoff::Stored(stored)),
                Ok(false) => Outcome::Retry,
                Err(e) => {
                    core.report("release", key, &e);
                    Outcome::Retry
                }
            }
        }
        Err(e) => {
            // Maybe stored, maybe refused: the followers must not take the
            // value. They look again, or, when Redis does not answer (their
            // lookup would wait as long again), compute themselves. The
            // guard releases the lease if it is still held.
            core.report("set", key, &e);
            if e.is_unreachable() {
                Outcome::Compute
            } else {
                Outcome::Retry
            }
        }
    };
    (result, outcome)
}

/// How long a waiter woken by pushes sleeps at most before it asks again,
/// should a push go astray.
const WATCH_NET: Duration = Duration::from_millis(250);

/// What a waiter does after finding the lease busy.
enum Next {
    /// Poll again.
    Wait,
    /// Compute now, as a co-holder of the lease (or its new holder).
    Join,
}

/// A waiter's memory of the holder it waits on (see the module docs).
struct Wait {
    /// The first holder it saw.
    holder: Option<String>,
    /// When it stops waiting for a live holder.
    deadline: Option<std::time::Instant>,
    max: Duration,
}

impl Wait {
    fn new(max: Duration) -> Self {
        Self {
            holder: None,
            deadline: None,
            max,
        }
    }

    fn next(&mut self, holders: &Holders) -> Next {
        let now = std::time::Instant::now();
        let deadline = *self.deadline.get_or_insert(now + self.max);
        match &self.holder {
            None => self.holder = holders.first().map(str::to_owned),
            // The holder waited on is done without a value this caller
            // could read: waiting for the next one could go on forever.
            Some(h) if !holders.contains(h) => return Next::Join,
            Some(_) => {}
        }
        if now >= deadline {
            return Next::Join;
        }
        Next::Wait
    }
}

/// A value the leader computed, for every follower.
fn handoff<P: CachePolicy<R>, R: Send + 'static>(h: Handoff<P::Stored, R>) -> Outcome {
    Outcome::Value(Handed {
        value: Arc::new(h),
        read: None,
    })
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
    const MAX: Duration = Duration::from_millis(8);

    async fn wait(&mut self) {
        crate::exec::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

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
                // For as long as the holder computes (this task is aborted
                // when it stores, gives up or is dropped). Stop when the
                // lease is lost; a failed renewal (Redis slow or busy) is
                // tried again next time.
                loop {
                    crate::exec::sleep(every).await;
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
        // On tg-cache's connections (`in_io`): polled first here, it may
        // go on on tg-cache's runtime, after the caller's runtime ended.
        let release = crate::exec::in_io(async move {
            let _ = store.release(&slot, &lease).await;
        });
        // A local store releases synchronously; a remote one on tg-cache's
        // runtime, so that a dropped holder frees its key at once.
        let mut release = Box::pin(release);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if release.as_mut().poll(&mut cx).is_pending() {
            io_runtime().spawn(release);
        }
    }
}
