//! Family epochs known to one connection, kept exact by that connection's
//! tracking, so that a family hit reads its value alone (one native command)
//! instead of the value and its family's epoch key every time.
//!
//! A connection tracks every key it reads (`tracking.rs`). When any client
//! changes an epoch key this connection read, the server queues the
//! invalidation on this connection *before* the reply of any command it
//! executes later (for the connection's own write: right after that
//! write's reply), and redis-rs hands pushes to the push sender (a
//! closure, `connection.rs`) in wire order, before it delivers the replies
//! that follow. Tracking of a key lapses once it was invalidated, until the
//! key is read again; the invalidation removes the key's entry here, so a
//! known epoch is always a tracked one. So after a read's reply has
//! arrived:
//!
//! * an epoch still known since before the read was sent was current when
//!   the server executed the read (else its invalidation, queued before the
//!   reply, would have removed it): the value can be checked against it;
//! * an epoch that was forgotten meanwhile is read again (one more round
//!   trip, only after a race with an invalidation).
//!
//! What is learnt from a reply goes in only if no invalidation of that key
//! came between the moment the read was decided and the insertion (the
//! pending entry, or placeholder, of Redis' client-side-caching
//! documentation): an invalidation handled before the reply is inserted
//! would otherwise be overtaken by the older value.
//!
//! Being per connection is what makes this exact: another connection's
//! invalidations are not ordered with this connection's replies. A
//! connection marked lost still hears its pushes here, for the reads still
//! in flight on it; a new connection starts with none.
//!
//! Preconditions, kept by the scripts and `redis.rs`: a value is stamped
//! with its family's epoch atomically when it is written, and a family
//! whose epoch is absent serves nothing. (`SWAPDB` sends no invalidation:
//! like the near cache, this is not for databases that get swapped.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// More epoch keys than this on one connection (families of sessions,
/// `tg:session:<sid>`, can be many) and the map starts over: forgetting is
/// always safe, and costs each family one more epoch read.
const MAX_KEYS: usize = 4096;

/// Reads whose known epoch was invalidated while they were in flight (and
/// that read it again): a count for the race tests.
pub(crate) static RACED: AtomicU64 = AtomicU64::new(0);

/// An epoch key's state on one connection.
enum Entry {
    /// A read was decided under this ticket; no invalidation since.
    Pending(u64),
    /// Its value (`None`: absent or not a token), learnt under this ticket.
    Known(u64, Option<Arc<[u8]>>),
}

impl Entry {
    fn ticket(&self) -> u64 {
        match self {
            Self::Pending(t) | Self::Known(t, _) => *t,
        }
    }
}

/// What a read does about one epoch key.
pub(crate) enum Lookup {
    /// Known: check it again once the reply is in
    /// ([`KnownEpochs::unchanged_since`]).
    Known(u64, Option<Arc<[u8]>>),
    /// To be read with the value, and learnt under this ticket
    /// ([`KnownEpochs::learn`]).
    Read(u64),
}

/// The family epochs one connection read and still tracks.
#[derive(Default)]
pub(crate) struct KnownEpochs {
    map: RwLock<HashMap<Box<str>, Entry>>,
    next: AtomicU64,
    /// Set for a connection that tracks nothing: every epoch is read.
    never: bool,
}

impl KnownEpochs {
    /// For a connection without tracking (a cluster's): it never knows an
    /// epoch, so every read reads its family's epoch with the value.
    pub(crate) fn never() -> Self {
        Self {
            never: true,
            ..Self::default()
        }
    }

    /// Decides, before a read is sent, whether `key` is read with it.
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        if self.never {
            return Lookup::Read(0);
        }
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            match map.get(key) {
                Some(Entry::Known(t, token)) => return Lookup::Known(*t, token.clone()),
                Some(Entry::Pending(t)) => return Lookup::Read(*t),
                None => {}
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.clear();
        }
        let entry = map
            .entry(key.into())
            .or_insert_with(|| Entry::Pending(self.next.fetch_add(1, Relaxed)));
        match entry {
            Entry::Known(t, token) => Lookup::Known(*t, token.clone()),
            Entry::Pending(t) => Lookup::Read(*t),
        }
    }

    /// Whether `key` was not invalidated since it was looked up under
    /// `ticket`.
    pub(crate) fn unchanged_since(&self, key: &str, ticket: u64) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|e| e.ticket() == ticket)
    }

    /// Keeps what a read under `ticket` found at `key`, unless an
    /// invalidation came since (or another read under the same ticket
    /// already kept it).
    pub(crate) fn learn(&self, key: &str, ticket: u64, token: &Option<Arc<[u8]>>) {
        if self.never {
            return;
        }
        let pending = |map: &HashMap<Box<str>, Entry>| matches!(map.get(key), Some(Entry::Pending(t)) if *t == ticket);
        if !pending(&self.map.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if pending(&map)
            && let Some(e) = map.get_mut(key)
        {
            *e = Entry::Known(ticket, token.clone());
        }
    }

    /// The server invalidated `key` on this connection.
    pub(crate) fn invalidated(&self, key: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let known = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            map.contains_key(key)
        };
        if known {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            map.remove(key);
        }
    }

    /// Everything may have changed (a flush).
    pub(crate) fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(b: &[u8]) -> Option<Arc<[u8]>> {
        Some(Arc::from(b))
    }

    fn known(k: &KnownEpochs, key: &str) -> Option<Option<Arc<[u8]>>> {
        match k.lookup(key) {
            Lookup::Known(_, t) => Some(t),
            Lookup::Read(_) => None,
        }
    }

    #[test]
    fn learnt_then_known_until_invalidated() {
        let k = KnownEpochs::default();
        let Lookup::Read(t) = k.lookup("e") else {
            panic!("unknown at first")
        };
        k.learn("e", t, &tok(b"tok"));
        assert_eq!(known(&k, "e"), Some(Some(Arc::from(&b"tok"[..]))));
        assert!(k.unchanged_since("e", t));
        k.invalidated(b"e");
        assert!(!k.unchanged_since("e", t));
        assert_eq!(known(&k, "e"), None);
    }

    #[test]
    fn an_invalidation_before_the_insert_wins() {
        let k = KnownEpochs::default();
        let Lookup::Read(t) = k.lookup("e") else {
            panic!()
        };
        // The push of a change is handled before the older reply is kept.
        k.invalidated(b"e");
        k.learn("e", t, &tok(b"old"));
        assert_eq!(known(&k, "e"), None, "the overtaken reply is not kept");
        // A new read under a new ticket is kept.
        let Lookup::Read(t2) = k.lookup("e") else {
            panic!()
        };
        assert_ne!(t, t2);
        k.learn("e", t, &tok(b"old"));
        assert_eq!(known(&k, "e"), None, "an old ticket never fills");
        k.learn("e", t2, &None);
        assert_eq!(known(&k, "e"), Some(None), "an absent epoch is known too");
    }

    #[test]
    fn clear_forgets_everything() {
        let k = KnownEpochs::default();
        let Lookup::Read(t) = k.lookup("e") else {
            panic!()
        };
        k.learn("e", t, &tok(b"x"));
        k.clear();
        assert!(!k.unchanged_since("e", t));
    }

    #[test]
    fn two_reads_share_one_pending_ticket() {
        let k = KnownEpochs::default();
        let (Lookup::Read(a), Lookup::Read(b)) = (k.lookup("e"), k.lookup("e")) else {
            panic!("both read it")
        };
        assert_eq!(a, b);
        k.learn("e", a, &tok(b"first"));
        // The second reply (read with no invalidation between) keeps nothing
        // new, and the first one's stays.
        k.learn("e", b, &tok(b"second"));
        assert_eq!(known(&k, "e"), Some(tok(b"first")));
        assert!(k.unchanged_since("e", b));
    }

    #[test]
    fn too_many_keys_start_over() {
        let k = KnownEpochs::default();
        let Lookup::Read(t) = k.lookup("e0") else {
            panic!()
        };
        k.learn("e0", t, &tok(b"x"));
        for i in 1..MAX_KEYS {
            let _ = k.lookup(&format!("e{i}"));
        }
        assert!(k.unchanged_since("e0", t), "at the bound, nothing is lost");
        let _ = k.lookup("one more");
        assert!(!k.unchanged_since("e0", t), "past it, everything is");
    }
}
