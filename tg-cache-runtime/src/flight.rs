//! In-process single-flight, used only by [`crate::protocol`]: concurrent
//! misses of one key in one process wait for one leader; different keys
//! never wait on each other.
//!
//! The map lock is held only to join or leave a flight, never while
//! computing.
//!
//! A value the leader *read* from the store (another process stored it)
//! goes only to the followers that joined before that read was sent: a
//! follower that began later may have begun after an invalidation that
//! the read predates, and looks again instead ([`Follower::wait`]). A leader that panics or whose future is dropped ends its
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
    Value(Handed),
    /// The result cannot be shared (it is not `Clone`): each follower runs
    /// the body itself, concurrently, without storing.
    Compute,
    /// Nothing usable (an invalidation raced the leader, or it was
    /// cancelled): follow a new flight.
    Retry,
}

/// A leader's value, and whether it was read from the store.
#[derive(Clone)]
pub(crate) struct Handed {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    /// The number of the leader's store read it came from ([`Leader::reading`]),
    /// or `None` for a value the leader computed.
    pub(crate) read: Option<u64>,
}

#[derive(Default)]
struct State {
    done: Option<Outcome>,
    /// Store reads the leader has sent so far.
    reads: u64,
}

pub(crate) struct Flight {
    state: Mutex<State>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A follower's hold on a flight it joined.
pub(crate) struct Follower {
    flight: Arc<Flight>,
    /// The leader's store reads sent before this follower joined.
    joined_after: u64,
}

impl Follower {
    /// Waits for the leader's outcome. A value the leader read from the
    /// store with a read sent after this follower joined is
    /// [`Outcome::Retry`] for it.
    pub(crate) async fn wait(&self) -> Outcome {
        loop {
            let notified = self.flight.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(o) = &lock(&self.flight.state).done {
                return match o {
                    Outcome::Value(Handed {
                        read: Some(read), ..
                    }) if *read <= self.joined_after => Outcome::Retry,
                    o => o.clone(),
                };
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
    pub(crate) fn join<'a>(&'a self, key: &str) -> Result<Leader<'a>, Follower> {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(key) {
            let joined_after = lock(&f.state).reads;
            return Err(Follower {
                flight: f.clone(),
                joined_after,
            });
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

    /// Numbers a store read the leader is about to send: a value it reads
    /// goes to the followers that joined before (see [`Handed::read`]).
    pub(crate) fn reading(&self) -> u64 {
        let mut state = lock(&self.flight.state);
        state.reads += 1;
        state.reads
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::block_on;

    fn read_value(n: u64, read: Option<u64>) -> Outcome {
        Outcome::Value(Handed {
            value: Arc::new(n),
            read,
        })
    }

    fn got(o: Outcome) -> Option<u64> {
        match o {
            Outcome::Value(h) => h.value.downcast_ref::<u64>().copied(),
            _ => None,
        }
    }

    /// A value the leader read goes only to the followers that joined
    /// before the read was sent; a computed one goes to every follower.
    #[test]
    fn a_read_value_reaches_only_the_followers_that_joined_before_the_read() {
        let flights = Flights::default();
        let leader = flights.join("k").ok().unwrap();
        let early = flights.join("k").err().unwrap();
        let read = leader.reading();
        let late = flights.join("k").err().unwrap();
        leader.finish(read_value(7, Some(read)));
        assert_eq!(got(block_on(early.wait())), Some(7));
        assert!(matches!(block_on(late.wait()), Outcome::Retry));

        let leader = flights.join("k").ok().unwrap();
        leader.reading();
        let late = flights.join("k").err().unwrap();
        leader.finish(read_value(8, None));
        assert_eq!(got(block_on(late.wait())), Some(8));
    }

    /// A second read numbers after the first: a follower that joined
    /// between them gets the second read's value.
    #[test]
    fn a_later_read_serves_the_followers_that_joined_before_it() {
        let flights = Flights::default();
        let leader = flights.join("k").ok().unwrap();
        leader.reading();
        let between = flights.join("k").err().unwrap();
        let second = leader.reading();
        leader.finish(read_value(9, Some(second)));
        assert_eq!(got(block_on(between.wait())), Some(9));
    }
}
