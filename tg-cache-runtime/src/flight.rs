//! Per-key single-flight: concurrent misses of one key compute once per
//! process; different keys never wait on each other.
//!
//! The map lock is held only to join or leave a flight, never while
//! computing. A leader that panics or whose future is dropped releases its
//! followers (through `Drop`), and one of them takes over.
//!
//! An invalidation of a key that is being computed marks the flight as
//! invalidated and detaches it, so the leader's result (computed from data
//! read before the invalidation) is not stored afterwards.

use crate::store::local::AnyValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    done: bool,
    invalidated: bool,
    value: Option<AnyValue>,
}

pub(crate) struct Flight {
    state: Mutex<State>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Flight {
    /// Waits for the leader; `None` if it failed, was cancelled, or chose not to cache.
    pub(crate) async fn wait(&self) -> Option<AnyValue> {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let s = lock(&self.state);
                if s.done {
                    return s.value.clone();
                }
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
        })
    }

    /// Marks flights whose key satisfies `pred` as invalidated and detaches them.
    pub(crate) fn invalidate(&self, pred: impl Fn(&str) -> bool) {
        let mut map = lock(&self.map);
        map.retain(|k, f| {
            if pred(k) {
                lock(&f.state).invalidated = true;
                false
            } else {
                true
            }
        });
    }

    /// Marks the flight of exactly `key`, if any, as invalidated.
    pub(crate) fn invalidate_key(&self, key: &str) {
        let mut map = lock(&self.map);
        if let Some(f) = map.remove(key) {
            lock(&f.state).invalidated = true;
        }
    }
}

/// The computing side of a flight. Dropping it without [`Leader::finish`]
/// (panic, cancellation) releases the followers with no value.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    flight: Arc<Flight>,
}

impl Leader<'_> {
    /// Runs `store` unless the key was invalidated since the flight began;
    /// the check and the store are atomic with respect to invalidation.
    pub(crate) fn store_if_current(&self, store: impl FnOnce()) -> bool {
        let s = lock(&self.flight.state);
        if s.invalidated {
            return false;
        }
        store();
        true
    }

    /// Whether the key was invalidated since the flight began.
    pub(crate) fn invalidated(&self) -> bool {
        lock(&self.flight.state).invalidated
    }

    /// Hands `value` to the followers and ends the flight.
    pub(crate) fn finish(self, value: Option<AnyValue>) {
        lock(&self.flight.state).value = value;
        // Drop does the rest.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        lock(&self.flight.state).done = true;
        {
            let mut map = lock(&self.flights.map);
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        self.flight.notify.notify_waiters();
    }
}
