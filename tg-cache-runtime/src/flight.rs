//! In-process single-flight, used only by [`crate::protocol`]: concurrent
//! misses of one key in one process wait for one leader; different keys
//! never wait on each other.
//!
//! The map lock is held only to join or leave a flight, never while
//! computing. A leader that panics or whose future is dropped ends its
//! flight with [`Outcome::Retry`] (through `Drop`), and one follower takes
//! over.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// What a leader hands its followers.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// A result to return, type-erased (the protocol knows its type).
    Value(Arc<dyn Any + Send + Sync>),
    /// The result cannot be shared (it is not `Clone`): each follower runs
    /// the body itself, concurrently, without storing.
    Compute,
    /// Nothing usable (an invalidation raced the leader, or it was
    /// cancelled): follow a new flight.
    Retry,
}

#[derive(Default)]
struct State {
    done: Option<Outcome>,
}

pub(crate) struct Flight {
    state: Mutex<State>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Flight {
    /// Waits for the leader's outcome.
    pub(crate) async fn wait(&self) -> Outcome {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(o) = &lock(&self.state).done {
                return o.clone();
            }
            notified.await;
        }
    }
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
}

impl Flights {
    /// Joins the flight for `key`, or starts one (then the caller leads).
    pub(crate) fn join<'a>(&'a self, key: &str) -> Result<Leader<'a>, Arc<Flight>> {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(key) {
            return Err(f.clone());
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        });
        map.insert(key.to_owned(), flight.clone());
        Ok(Leader {
            flights: self,
            key: key.to_owned(),
            flight,
            outcome: Outcome::Retry,
        })
    }
}

/// The computing side of a flight. Dropping it without [`Leader::finish`]
/// (panic, cancellation) releases the followers with [`Outcome::Retry`].
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    flight: Arc<Flight>,
    outcome: Outcome,
}

impl Leader<'_> {
    /// Closes the flight to new followers (they start a flight of their
    /// own); the ones already waiting still get the outcome. Called when
    /// the leader's value is about to be stored: a caller that begins after
    /// that must not receive it, since an invalidation may come between.
    pub(crate) fn detach(&self) {
        let mut map = lock(&self.flights.map);
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }

    /// Hands `outcome` to the followers and ends the flight.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
        // Drop does the rest.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.detach();
        let outcome = std::mem::replace(&mut self.outcome, Outcome::Retry);
        lock(&self.flight.state).done = Some(outcome);
        self.flight.notify.notify_waiters();
    }
}
