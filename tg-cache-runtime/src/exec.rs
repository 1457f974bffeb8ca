//! Where Redis I/O runs, and how blocking calls wait.
//!
//! A caller on a multi-thread tokio runtime has its connections driven by
//! that runtime ([`caller_runtime`], `store/connection.rs`). Everything
//! else (connections of other callers, timers, background tasks) lives on
//! one small runtime owned by tg-cache ("tg-cache-io"), so it survives the
//! caller's runtimes (each `#[tokio::test]` has its own), and blocking calls
//! never need, or disturb, the caller's runtime.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

static IO_RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tg-cache-io")
        .on_thread_start(|| {
            let _ = OWN.try_with(|c| c.set(1));
        })
        .enable_all()
        .build()
        .expect("tg-cache: cannot start its I/O runtime thread")
});

/// The runtime that owns tg-cache's connections made outside a
/// multi-thread tokio runtime, and its background tasks.
pub(crate) fn io_runtime() -> &'static tokio::runtime::Runtime {
    &IO_RUNTIME
}

/// What this thread's runtime can do for tg-cache (see [`caller_runtime`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Not tried yet.
    Unknown,
    /// It drove a connection: it has I/O and timers.
    Verified,
    /// It could not (built without I/O or timers).
    Unusable,
}

thread_local! {
    static CALLER: std::cell::Cell<Caller> = const { std::cell::Cell::new(Caller::Unknown) };
    /// Non-zero on tg-cache's own threads and inside [`in_io`]: work for
    /// tg-cache's runtime, which uses its pool.
    static OWN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn own() -> bool {
    OWN.try_with(std::cell::Cell::get).unwrap_or(1) != 0
}

fn caller() -> Caller {
    CALLER
        .try_with(std::cell::Cell::get)
        .unwrap_or(Caller::Unusable)
}

fn multi_thread_runtime() -> Option<tokio::runtime::Handle> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let h = Handle::try_current().ok()?;
    (h.runtime_flavor() == RuntimeFlavor::MultiThread).then_some(h)
}

/// The caller's runtime, if tg-cache can drive this thread's connections
/// on it: a multi-thread tokio runtime, not found unusable on this thread,
/// outside blocking calls and [`in_io`] (which use tg-cache's own). A connection
/// driven by the caller's runtime costs a hit no hop to tg-cache's I/O
/// thread and back (`BENCHMARKS.md`).
pub(crate) fn caller_runtime() -> Option<tokio::runtime::Handle> {
    if own() || caller() == Caller::Unusable {
        return None;
    }
    multi_thread_runtime()
}

/// Records whether this thread's runtime could drive a connection.
pub(crate) fn caller_runtime_usable(usable: bool) {
    let state = if usable {
        Caller::Verified
    } else {
        Caller::Unusable
    };
    let _ = CALLER.try_with(|c| c.set(state));
}

/// Whether timers can live on the caller's runtime: one that drove a
/// connection (so it has timers). A timer there costs no wake-up of
/// tg-cache's I/O thread; elsewhere timers live on tg-cache's runtime.
fn caller_timers() -> bool {
    !own() && caller() == Caller::Verified && multi_thread_runtime().is_some()
}

/// Runs `fut` with the tg-cache runtime as the current tokio context on every
/// poll. Sockets, connection driver tasks and timers created by `fut` then
/// belong to that runtime, which lives as long as the process: a connection
/// first used from one `#[tokio::test]` keeps working in the next, and the
/// future can be polled by any executor (a tokio runtime, a blocking call, or
/// none at all), without a hop to another thread.
///
/// Redis calls made inside it use connections driven by tg-cache's runtime
/// (never the caller's, see [`caller_runtime`]): a future that starts on a
/// caller's thread and goes on on tg-cache's runtime (a lease released in
/// the background) never depends on the caller's runtime.
pub(crate) async fn in_io<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let _ctx = io_runtime().enter();
        let _own = OwnScope::enter();
        fut.as_mut().poll(cx)
    })
    .await
}

/// [`in_io`] and [`timeout_at`] in one, for a future its caller pinned:
/// polls `fut` as [`in_io`] does until `deadline` (`None` once it passed).
/// Nothing is moved or nested, so a hot path's future stays as small as
/// its own state (a nest of async wrappers doubles a future's size at each
/// level, and every `Box::pin` of it copies all of it).
pub(crate) async fn in_io_until<F: Future>(
    deadline: tokio::time::Instant,
    mut fut: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    let mut timer = std::pin::pin!(timer_until(deadline));
    std::future::poll_fn(move |cx| {
        {
            let _ctx = io_runtime().enter();
            let _own = OwnScope::enter();
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// A timer for `deadline`, made where a reactor exists: on the caller's
/// runtime when it can have timers ([`caller_timers`]), else on tg-cache's.
/// It can be polled from anywhere.
#[allow(clippy::disallowed_methods)]
fn timer_until(deadline: tokio::time::Instant) -> tokio::time::Sleep {
    if caller_timers() {
        tokio::time::sleep_until(deadline)
    } else {
        let _ctx = io_runtime().enter();
        tokio::time::sleep_until(deadline)
    }
}

/// Marks the thread as working for tg-cache's runtime while it lives.
struct OwnScope;

impl OwnScope {
    fn enter() -> Self {
        let _ = OWN.try_with(|c| c.set(c.get() + 1));
        Self
    }
}

impl Drop for OwnScope {
    fn drop(&mut self) {
        let _ = OWN.try_with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// [`tokio::time::timeout`] that works under any executor (a plain thread
/// has no tokio context): its timer lives on the caller's runtime when
/// that can hold it ([`caller_timers`]), else on tg-cache's. The only
/// timeout the runtime uses (`clippy.toml` disallows tokio's own).
pub(crate) async fn timeout<F: Future>(
    after: std::time::Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    timeout_at(tokio::time::Instant::now() + after, fut).await
}

/// [`tokio::time::timeout_at`], made like [`timeout`].
#[allow(clippy::disallowed_methods)]
pub(crate) async fn timeout_at<F: Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    if caller_timers() {
        tokio::time::timeout_at(deadline, fut).await
    } else {
        in_io(async move { tokio::time::timeout_at(deadline, fut).await }).await
    }
}

/// [`tokio::time::sleep`], made like [`timeout`].
#[allow(clippy::disallowed_methods)]
pub(crate) async fn sleep(for_: std::time::Duration) {
    if caller_timers() {
        tokio::time::sleep(for_).await
    } else {
        in_io(async move { tokio::time::sleep(for_).await }).await
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    /// Set while a blocking call runs on a thread that drives a
    /// current-thread tokio runtime: nothing else runs there meanwhile.
    static SOLE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the running call must not wait for another call of this
/// process: it is a blocking call on the thread of a current-thread tokio
/// runtime, so an async call it would wait for could never run.
pub(crate) fn must_not_wait() -> bool {
    SOLE_THREAD.with(std::cell::Cell::get)
}

/// Drives `fut` to completion on the current thread, parking it while the
/// future waits. All I/O of a blocking call runs on the tg-cache runtime, so
/// nothing here depends on the caller's runtime making progress.
///
/// * Outside any tokio runtime, or on a `spawn_blocking` thread: it parks.
/// * On a worker of a multi-thread runtime: through
///   [`tokio::task::block_in_place`], so the runtime moves its other tasks
///   to another thread and no worker is parked.
/// * On the thread of a current-thread runtime: it parks that thread (there
///   is no other), and marks the call so that it never waits for another
///   call of the process (see [`must_not_wait`]), which could not run.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| park_on(fut)),
        Ok(RuntimeFlavor::CurrentThread) => {
            struct Restore(bool);
            impl Drop for Restore {
                fn drop(&mut self) {
                    SOLE_THREAD.with(|s| s.set(self.0));
                }
            }
            let _restore = Restore(SOLE_THREAD.with(|s| s.replace(true)));
            park_on(fut)
        }
        _ => park_on(fut),
    }
}

fn park_on<F: Future>(fut: F) -> F::Output {
    // A blocking call uses tg-cache's own connections: the thread may be a
    // short-lived one (tokio's blocking pool retires idle threads), whose
    // own connection would come and go, and flush the near cache with it.
    let _own = OwnScope::enter();
    let mut fut = std::pin::pin!(fut);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(v) => return v,
                Poll::Pending => thread::park(),
            }
        }
    })
}

/// Work this big or bigger (in bytes) runs as blocking work: see [`heavy`].
pub(crate) const HEAVY_BYTES: usize = 64 * 1024;

/// Runs CPU-bound `work` (inflating or parsing a big value) without
/// stalling the caller's runtime: on a worker of a multi-thread tokio
/// runtime it runs through [`tokio::task::block_in_place`], so the
/// runtime hands that worker's other tasks to another thread meanwhile.
/// Elsewhere (no runtime, a current-thread runtime, where there is no
/// other thread to hand tasks to) it simply runs.
pub(crate) fn heavy<R>(size: usize, work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if size < HEAVY_BYTES {
        return work();
    }
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
