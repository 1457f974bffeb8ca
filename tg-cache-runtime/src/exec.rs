//! Where Redis I/O runs, and how blocking calls wait.
//!
//! Connections live on one small runtime owned by tg-cache ("tg-cache-io"),
//! so they survive the caller's runtimes (each `#[tokio::test]` has its own)
//! and blocking calls never need, or disturb, the caller's runtime.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

static IO_RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tg-cache-io")
        .enable_all()
        .build()
        .expect("tg-cache: cannot start its I/O runtime thread")
});

/// The runtime that owns tg-cache's connections.
pub(crate) fn io_runtime() -> &'static tokio::runtime::Runtime {
    &IO_RUNTIME
}

/// Runs `fut` with the tg-cache runtime as the current tokio context on every
/// poll. Sockets, connection driver tasks and timers created by `fut` then
/// belong to that runtime, which lives as long as the process: a connection
/// first used from one `#[tokio::test]` keeps working in the next, and the
/// future can be polled by any executor (a tokio runtime, a blocking call, or
/// none at all), without a hop to another thread.
pub(crate) async fn in_io<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let _ctx = io_runtime().enter();
        fut.as_mut().poll(cx)
    })
    .await
}

/// [`tokio::time::timeout`] with its timer on tg-cache's runtime, so it works
/// under any executor (a plain thread has no tokio context). The only
/// timeout the runtime uses (`clippy.toml` disallows tokio's own).
#[allow(clippy::disallowed_methods)]
pub(crate) async fn timeout<F: Future>(
    after: std::time::Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    in_io(async move { tokio::time::timeout(after, fut).await }).await
}

/// [`tokio::time::timeout_at`], made like [`timeout`].
#[allow(clippy::disallowed_methods)]
pub(crate) async fn timeout_at<F: Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    in_io(async move { tokio::time::timeout_at(deadline, fut).await }).await
}

/// [`tokio::time::sleep`], made like [`timeout`].
#[allow(clippy::disallowed_methods)]
pub(crate) async fn sleep(for_: std::time::Duration) {
    in_io(async move { tokio::time::sleep(for_).await }).await
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
