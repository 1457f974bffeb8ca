//! Redis Cluster hash slots: the slot a key hashes to, and a hash tag for
//! every slot, so that tg-cache's internal keys (leases, epochs) can be put
//! in the slot of the user key they belong to without touching the user's
//! key.
//!
//! A key's slot is `CRC16(key) mod 16384`, where only the key's hash tag is
//! hashed if it has one: the bytes between its first `{` and the first `}`
//! after it, when they are not empty (the cluster specification's rule).
//! [`tag_for`] gives, for any slot, a short tag hashing to it: an internal
//! key `{<tag>}...` lands in exactly that slot, whatever bytes the user's
//! key holds (`{`, `}` included), which a tag copied from the user's key
//! could not guarantee.

use std::sync::LazyLock;

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The slot `key` hashes to.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// For every slot, the shortest decimal number (as text) that hashes to it.
/// Built once, on first use (about 180,000 candidates: a few ms); the store
/// that uses it should build it when it is built, not on a hit.
static TAGS: LazyLock<Vec<Box<str>>> = LazyLock::new(|| {
    let mut tags: Vec<Option<Box<str>>> = vec![None; usize::from(SLOTS)];
    let mut missing = usize::from(SLOTS);
    let mut n = 0u64;
    while missing > 0 {
        let text = n.to_string();
        let slot = &mut tags[usize::from(slot_of(text.as_bytes()))];
        if slot.is_none() {
            *slot = Some(text.into());
            missing -= 1;
        }
        n += 1;
    }
    tags.into_iter().map(|t| t.expect("every slot")).collect()
});

/// A hash tag for `slot`: `{<tag>}` in a key puts the key in that slot.
pub(crate) fn tag_for(slot: u16) -> &'static str {
    debug_assert!(slot < SLOTS, "slot {slot} out of range");
    &TAGS[usize::from(slot % SLOTS)]
}

/// A primary of a Redis Cluster, and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) slots: Vec<(u16, u16)>,
}

impl Primary {
    /// Whether it serves `slot`.
    pub(crate) fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    /// The primaries a `CLUSTER SLOTS` reply lists: `[[from, to, [host,
    /// port, id, ...], replicas...], ...]`. What it cannot read is left out.
    pub(crate) fn all_in(reply: &redis::Value) -> Vec<Primary> {
        use redis::Value;
        let mut out: Vec<Primary> = Vec::new();
        let Value::Array(ranges) = reply else {
            return out;
        };
        for range in ranges {
            let Value::Array(r) = range else { continue };
            let (Some(Value::Int(from)), Some(Value::Int(to)), Some(Value::Array(node))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let (Some(Value::Int(port)), Ok(from), Ok(to)) =
                (node.get(1), u16::try_from(*from), u16::try_from(*to))
            else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            match out.iter_mut().find(|p| p.host == host && p.port == port) {
                Some(p) => p.slots.push((from, to)),
                None => out.push(Primary {
                    host,
                    port,
                    slots: vec![(from, to)],
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Values from the Redis documentation and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"123456789"), 0x31C3 % SLOTS);
        // Only the first tag counts, and an empty one is no tag.
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        let whole = |k: &[u8]| crc16::State::<crc16::XMODEM>::calculate(k) % SLOTS;
        assert_eq!(slot_of(b"foo{}{bar}"), whole(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), whole(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), whole(b"bar"));
        assert_eq!(slot_of(b"a}b{"), whole(b"a}b{"));
        assert_eq!(slot_of(b"a{b"), whole(b"a{b"));
    }

    #[test]
    fn cluster_slots_replies_name_each_primary_and_its_ranges() {
        use redis::Value::{Array, BulkString, Int};
        let node = |port| {
            Array(vec![
                BulkString(b"127.0.0.1".to_vec()),
                Int(port),
                BulkString(b"id".to_vec()),
            ])
        };
        let reply = Array(vec![
            Array(vec![Int(0), Int(5460), node(7000), node(7003)]),
            Array(vec![Int(5461), Int(10922), node(7001)]),
            Array(vec![Int(10923), Int(16383), node(7000)]),
            Array(vec![Int(-1), Int(3), node(7002)]),
            Int(4),
        ]);
        let p = Primary::all_in(&reply);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            (p[0].port, p[0].slots.clone()),
            (7000, vec![(0, 5460), (10923, 16383)])
        );
        assert!(p[0].serves(0) && p[0].serves(16383) && !p[0].serves(5461));
        assert!(p[1].serves(5461) && p[1].serves(10922));
    }

    #[test]
    fn every_slot_has_a_short_tag_that_hashes_to_it() {
        for slot in 0..SLOTS {
            let tag = tag_for(slot);
            assert!(tag.len() <= 6, "tag {tag} of slot {slot}");
            assert_eq!(slot_of(tag.as_bytes()), slot);
            // Inside a key, with anything after it.
            let key = format!("{{{tag}}}:#lease:any{{}}key");
            assert_eq!(slot_of(key.as_bytes()), slot);
        }
    }
}
