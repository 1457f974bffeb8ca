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

/// How a call is being made: from async code, or from a blocking twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Async,
    Blocking,
}

impl Mode {
    /// Whether I/O must be handed to the tg-cache runtime rather than run in
    /// the caller's task (always for blocking calls, whose thread is parked,
    /// and for async calls made outside any tokio runtime).
    pub(crate) fn needs_io_runtime(self) -> bool {
        self == Mode::Blocking || tokio::runtime::Handle::try_current().is_err()
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
}

/// Drives `fut` to completion on the current thread, parking it while the
/// future waits. Works with or without a surrounding tokio runtime and never
/// panics inside one (a blocking call there only blocks that thread, like any
/// other blocking call). All I/O of a blocking call runs on the tg-cache
/// runtime, so nothing here depends on the caller's runtime making progress.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
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
