//! Redis client-side tracking, as the stores and their layers use it:
//! invalidation pushes from the server, and the loss of a connection (after
//! which invalidations may have been missed), dispatched to whoever listens.
//!
//! Every connection of a Redis store runs in RESP3 with `CLIENT TRACKING
//! ON` (`connection.rs`): the server remembers every key a connection read
//! (scripts' reads included, absent keys too) and pushes an `invalidate`
//! message on that same connection when any client changes one, in wire
//! order with the replies. Listeners are
//!
//! * the family epochs each connection knows (`epochs.rs`), told of its own
//!   connection's pushes only, even after it was marked lost (they need no
//!   generation: they die with their connection);
//! * layers such as the near cache (`near.rs`), through [`Listener`];
//! * lease waiters ([`Tracking::watch`]): a waiter whose poll read a key
//!   sleeps until that key changes (a fill, a release, an invalidation, an
//!   expiry) instead of polling.
//!
//! [`Tracking::generation`] changes whenever tracking may have lapsed (a
//! connection lost or replaced, a flush): what was read under an older
//! generation is not to be trusted.

use super::epochs::KnownEpochs;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::Notify;

/// Told of invalidations, in the order the server sent them.
pub(crate) trait Listener: Send + Sync {
    /// `key` was changed (written, deleted, expired, evicted) by any client.
    fn invalidated(&self, key: &[u8]);
    /// Anything may have changed: a `FLUSHDB`/`FLUSHALL`, or a connection
    /// lost (its invalidations may be lost too).
    fn flushed(&self);
}

/// The invalidations of one store's connections.
#[derive(Default)]
pub(crate) struct Tracking {
    listeners: RwLock<Vec<Weak<dyn Listener>>>,
    /// Lease waiters, by key.
    watchers: Mutex<HashMap<Vec<u8>, Vec<Weak<Notify>>>>,
    generation: AtomicU64,
}

/// A waiter's interest in one key (see [`Tracking::watch`]).
pub(crate) struct Watch {
    notify: Arc<Notify>,
}

impl Watch {
    /// Completes when the key changes or tracking lapses, or after `at_most`
    /// (a safety net: a wake-up is never missed for long).
    pub(crate) async fn changed(&self, at_most: std::time::Duration) {
        let _ = crate::exec::timeout(at_most, self.notify.notified()).await;
    }
}

impl Tracking {
    /// The current generation: it changes whenever tracking may have lapsed.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a new generation (tracking may have lapsed: a connection lost, a flush).
    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Adds a listener, for as long as it lives.
    pub(crate) fn subscribe(&self, listener: Weak<dyn Listener>) {
        let mut l = self.listeners.write().unwrap_or_else(|p| p.into_inner());
        l.retain(|w| w.strong_count() > 0);
        l.push(listener);
    }

    /// Registers interest in `key` before the command that reads it is
    /// sent, so that no change after that read is missed. A permit is
    /// stored: a change between the read and the wait wakes the waiter.
    pub(crate) fn watch(&self, key: &str) -> Watch {
        let notify = Arc::new(Notify::new());
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 4096 {
            // Keys watched once and never changed: forget the dead waiters.
            w.retain(|_, list| {
                list.retain(|n| n.strong_count() > 0);
                !list.is_empty()
            });
        }
        let list = w.entry(key.as_bytes().to_vec()).or_default();
        list.retain(|n| n.strong_count() > 0);
        list.push(Arc::downgrade(&notify));
        Watch { notify }
    }

    fn listeners(&self) -> Vec<Arc<dyn Listener>> {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The server invalidated `keys`.
    pub(crate) fn invalidated(&self, keys: &[&[u8]]) {
        let listeners = self.listeners();
        for key in keys {
            for l in &listeners {
                l.invalidated(key);
            }
        }
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(list) = w.remove(*key) {
                for n in list.iter().filter_map(Weak::upgrade) {
                    n.notify_one();
                }
            }
        }
    }

    /// Everything may have changed (a flush, or a connection lost): a new
    /// generation, every listener flushed, every waiter woken.
    pub(crate) fn flushed(&self) {
        self.next_generation();
        for l in self.listeners() {
            l.flushed();
        }
        let all: Vec<_> = {
            let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            w.drain().flat_map(|(_, v)| v).collect()
        };
        for n in all.iter().filter_map(Weak::upgrade) {
            n.notify_one();
        }
    }

    /// Handles one push message of a connection (`live`: whether that
    /// connection is still the one in use), whose own known epochs are
    /// `known` (`epochs.rs`).
    ///
    /// `known` hears every push of its connection, live or not: reads that
    /// took the connection before it was marked lost may still be in flight
    /// on it, and check their epochs against `known` after their reply
    /// (the listeners do not need that: a lost connection already flushed
    /// them, and its generation is over).
    pub(crate) fn push(&self, info: redis::PushInfo, live: bool, known: &KnownEpochs) {
        match info.kind {
            redis::PushKind::Invalidate => match info.data.first() {
                Some(redis::Value::Array(keys)) => {
                    let keys: Vec<&[u8]> = keys
                        .iter()
                        .filter_map(|k| match k {
                            redis::Value::BulkString(b) => Some(b.as_slice()),
                            redis::Value::SimpleString(s) => Some(s.as_bytes()),
                            _ => None,
                        })
                        .collect();
                    for key in &keys {
                        known.invalidated(key);
                    }
                    if live {
                        self.invalidated(&keys);
                    }
                }
                // A null key list: FLUSHDB/FLUSHALL (of any database).
                _ => {
                    known.clear();
                    if live {
                        self.flushed();
                    }
                }
            },
            redis::PushKind::Disconnection => {
                known.clear();
                if live {
                    self.flushed();
                }
            }
            _ => {}
        }
    }
}
