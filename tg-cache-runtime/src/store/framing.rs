//! How the Redis stores frame the values of a key family.
//!
//! * **Stamped** (tg-cache's own, [`crate::key::KeyFunction::Tg`]): a
//!   family's value is stored as `#<epoch>:<payload>`, stamped with the
//!   family's epoch when written. A read accepts only values of the
//!   current epoch, so replacing the epoch invalidates the whole family in
//!   O(1) (`generation.rs`).
//! * **Bare** (a cache shared with Django, [`crate::key::KeyFunction::Django`]):
//!   a value is stored exactly as its payload, the JSON (or zlib stream)
//!   that django-redis' `JSONSerializer` reads and writes. Nothing in a
//!   value says which epoch it belongs to, so every value that is not a
//!   fill's placeholder is live, whoever wrote it. The family's epoch still
//!   guards fills: a lease is taken in an epoch and a fill stores only in
//!   that epoch (`scripts.rs`). Invalidating a family therefore replaces
//!   the epoch *and then unlinks the family's keys* (a `SCAN` of
//!   `<family>:*` and the family's own key): O(keys in the database), not
//!   O(1). A fill that began before the invalidation is refused by its
//!   epoch, and its placeholder is unlinked with the rest; a value of the
//!   family present when the scan began is always found (`SCAN` returns
//!   every key present from its start to its end).

/// A store's framing of family values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `#<epoch>:<payload>`: O(1) family invalidation.
    Stamped,
    /// `<payload>`: what Django reads; family invalidation unlinks keys.
    Bare,
}

impl Framing {
    /// The framing of a cache with `function`.
    pub(crate) fn of(function: crate::key::KeyFunction) -> Self {
        match function {
            crate::key::KeyFunction::Tg => Framing::Stamped,
            crate::key::KeyFunction::Django => Framing::Bare,
        }
    }

    /// The line that tells the scripts which framing they work in
    /// (`generation::LUA`'s `live` and `with_epoch`).
    pub(crate) fn lua(self) -> &'static str {
        match self {
            Framing::Stamped => "local BARE = false\n",
            Framing::Bare => "local BARE = true\n",
        }
    }

    /// Whether a read checks a family value against the family's epoch.
    pub(crate) fn stamps(self) -> bool {
        self == Framing::Stamped
    }

    /// The bytes stored for `payload` of a value written in `epoch` (`""`
    /// outside any family).
    pub(crate) fn frame(self, payload: Vec<u8>, epoch: &str) -> Vec<u8> {
        if epoch.is_empty() || self == Framing::Bare {
            return payload;
        }
        let mut v = Vec::with_capacity(payload.len() + epoch.len() + 2);
        v.push(b'#');
        v.extend_from_slice(epoch.as_bytes());
        v.push(b':');
        v.extend_from_slice(&payload);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(Framing::Stamped.frame(b"[1]".to_vec(), "ab"), b"#ab:[1]");
        assert_eq!(Framing::Stamped.frame(b"[1]".to_vec(), ""), b"[1]");
        assert_eq!(Framing::Bare.frame(b"[1]".to_vec(), "ab"), b"[1]");
        assert!(Framing::Stamped.stamps());
        assert!(!Framing::Bare.stamps());
    }
}
