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
