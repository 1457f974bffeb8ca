//! Tracked connections to each primary of a Redis Cluster: where a cluster
//! store's reads and lease requests go (`redis.rs`), for the near cache
//! (`near.rs`), the family epochs a connection knows (`epochs.rs`) and the
//! wake-ups of lease waiters (`tracking.rs`).
//!
//! A server tracks the keys that a connection to *it* read, and pushes their
//! invalidations on that connection. redis-rs' cluster connection hides its
//! node connections (a `CLIENT TRACKING` sent through it reaches one node,
//! and the connections it makes after a topology refresh would not have
//! it), so reads do not use it: each primary gets
//! connections of its own ([`Connections::to_primary`]), made exactly as a
//! single server's are (RESP3, `CLIENT TRACKING ON` in the handshake, the
//! known family epochs, its own breaker), whose pushes go to the store's
//! one [`Tracking`]. Everything else (writes, fills, invalidations,
//! pattern deletes) still goes through the cluster connection and its
//! routing. A lease request is sent again through it only when the primary
//! surely did not run it (a refused slot or connection, an open breaker).
//!
//! * **Which primary.** A read goes to the primary that served the key's
//!   slot when the topology was last read (`CLUSTER SLOTS`, once a second).
//!   A reply that says the slot moved (`MOVED`/`ASK`/`TRYAGAIN`) is not
//!   kept: the read is sent again through the cluster connection, which
//!   follows the redirection but tracks nothing, and its value is served
//!   without being kept; the topology is read again at once.
//! * **What a topology change drops.** A server's tracking table is not
//!   replicated, and a key may have moved: when the primaries or their slots
//!   change, the whole near cache is dropped ([`Tracking::flushed`]) and
//!   every read in flight is void (a new tracking generation). So is it
//!   when any tracked connection is lost, as on one server.
//! * **A failed primary** fails fast behind its own breaker; its reads fall
//!   back to the cluster connection (untracked, so not kept), which follows
//!   the failover. If the topology cannot be read twice in a row, nothing
//!   is routed by the last one read (every read goes through the cluster
//!   connection, untracked) and the near cache is dropped, until it is
//!   read again.

use super::connection::{ConnectionSettings, Connections};
use super::slots::{Primary, SLOTS};
use super::tracking::Tracking;
use crate::error::Result;
use std::sync::{Arc, RwLock};

/// The least time between two reads of the topology.
const MIN_TURN: std::time::Duration = std::time::Duration::from_millis(100);

/// Failed topology reads in a row after which nothing is routed by the
/// last one read ([`TrackedPrimaries::unreadable`]).
const LOST_AFTER: u32 = 2;

/// The tracked connections of a cluster's primaries, by slot.
pub(crate) struct TrackedPrimaries {
    settings: ConnectionSettings,
    tracking: Arc<Tracking>,
    topology: RwLock<Topology>,
    /// Wakes the topology reader at once (a read was redirected).
    stale: tokio::sync::Notify,
}

#[derive(Default)]
struct Topology {
    primaries: Vec<Primary>,
    /// Per primary, its connections (made when the topology lists it;
    /// `None` if they could not be).
    conns: Vec<Option<Arc<Connections>>>,
    /// Per slot, the index of its primary in `conns`; `u16::MAX`: none.
    owner: Vec<u16>,
}

impl TrackedPrimaries {
    pub(crate) fn new(settings: ConnectionSettings, tracking: Arc<Tracking>) -> Self {
        Self {
            settings,
            tracking,
            topology: RwLock::default(),
            stale: tokio::sync::Notify::new(),
        }
    }

    /// The tracked connections of `slot`'s primary, if the topology read
    /// last lists one.
    pub(crate) fn owner(&self, slot: u16) -> Option<Arc<Connections>> {
        let t = self.topology.read().unwrap_or_else(|p| p.into_inner());
        let i = *t.owner.get(usize::from(slot))?;
        t.conns.get(usize::from(i))?.clone()
    }

    /// A read of `slot`'s primary was redirected: the topology is read
    /// again now, not at its next turn.
    pub(crate) fn moved(&self) {
        self.stale.notify_one();
    }

    /// Until the next turn of the topology reader: `every` from now, or
    /// sooner after a [`Self::moved`], but never sooner than
    /// [`MIN_TURN`] (a slot in migration redirects every read of it).
    pub(crate) async fn next_turn(&self, every: std::time::Duration) {
        crate::exec::sleep(MIN_TURN).await;
        let rest = every.saturating_sub(MIN_TURN);
        let _ = crate::exec::timeout(rest, self.stale.notified()).await;
    }

    /// The topology could not be read `failures` times in a row: after
    /// [`LOST_AFTER`], what is tracked may be out of date (a failover that
    /// could not be seen), so nothing is routed by it until it is read
    /// again (reads go through the cluster connection, untracked) and the
    /// near cache is dropped, once.
    pub(crate) fn unreadable(&self, failures: u32) {
        if failures < LOST_AFTER {
            return;
        }
        let mut t = self.topology.write().unwrap_or_else(|p| p.into_inner());
        if t.primaries.is_empty() {
            return;
        }
        *t = Topology::default();
        drop(t);
        self.tracking.flushed();
    }

    /// Installs the topology `primaries` (a `CLUSTER SLOTS` reply read).
    /// If it differs from the one in use, the near cache is dropped and
    /// the reads in flight are void (module docs). Returns whether it did.
    pub(crate) fn update(&self, mut primaries: Vec<Primary>) -> Result<bool> {
        if primaries.is_empty() {
            // No answer to go by (a cluster in trouble): as unreadable.
            return Ok(false);
        }
        for p in &mut primaries {
            p.slots.sort_unstable();
            if let Some(bare) = p.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                p.host = bare.to_owned();
            }
        }
        // An empty host means "the node that answered", which redis-rs
        // chose: unknown here, so that primary's slots are not tracked
        // (their reads go through the cluster connection).
        primaries.retain(|p| !p.host.is_empty());
        primaries.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        {
            let t = self.topology.read().unwrap_or_else(|p| p.into_inner());
            if t.primaries == primaries {
                return Ok(false);
            }
        }
        let mut conns = Vec::with_capacity(primaries.len());
        let mut owner = vec![u16::MAX; usize::from(SLOTS)];
        let mut refused = None;
        {
            let t = self.topology.read().unwrap_or_else(|p| p.into_inner());
            for (i, p) in primaries.iter().enumerate() {
                // A primary that stays keeps its connections (and what they
                // track); the near cache is dropped below all the same.
                let kept = t
                    .primaries
                    .iter()
                    .position(|q| q.host == p.host && q.port == p.port)
                    .and_then(|j| t.conns[j].clone());
                let made = match kept {
                    Some(c) => Ok(c),
                    None => Connections::to_primary(
                        &self.settings,
                        &p.host,
                        p.port,
                        self.tracking.clone(),
                    )
                    .map(Arc::new),
                };
                // One that cannot be made leaves its slots untracked; the
                // change is installed (and the near cache dropped) anyway.
                let made = match made {
                    Ok(c) => c,
                    Err(e) => {
                        refused.get_or_insert(e);
                        conns.push(None);
                        continue;
                    }
                };
                conns.push(Some(made));
                for &(from, to) in &p.slots {
                    for s in from..=to.min(SLOTS - 1) {
                        owner[usize::from(s)] = i as u16;
                    }
                }
            }
        }
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Topology {
            primaries,
            conns,
            owner,
        };
        // After the new topology is in place: a read that found the old one
        // took its ticket before this, and is void.
        self.tracking.flushed();
        match refused {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }
}
