//! The names of the Redis stores' internal keys: a family's epoch and a
//! refresh's sidecar, which every script that writes a key touches with it.
//!
//! * **One server**: beside the key, as they always were:
//!   `[<namespace>:]#epoch:<family>` and `<key>:#refresh`.
//! * **A Redis Cluster**: a script's keys must share one hash slot, so each
//!   internal key is put in the slot of the user key it belongs to, by a
//!   hash tag that [`slots::tag_for`] gives for that slot:
//!   `#{<tag>}:[<namespace>:]#epoch:<family>` (the family's epoch *in that
//!   slot*) and `#{<tag>}:<key>:#refresh`. The user's key is never touched:
//!   it stays readable and exactly as given, `{`/`}` included. The tag
//!   opens the name, so it is the name's first `{...}` whatever the key
//!   holds, and the leading `#` makes the name one no user key can have
//!   (`key::check_key` refuses keys that start with `#`).
//!
//! A family thus has one epoch per slot in which it has keys, spread over
//! every primary like the keys themselves: no hit of a family reads one hot
//! epoch key, and a hit reads its value and its slot's epoch from one node
//! in one round trip. Invalidating the family replaces every slot's epoch
//! ([`Names::epoch_in`], `scripts::SWEEP_EPOCHS`).

use super::Family;
use super::slots::{slot_of, tag_for};
use std::borrow::Cow;

/// Which naming a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Names {
    /// One server: internal keys beside the key.
    Node,
    /// A Redis Cluster: internal keys in the key's slot.
    Cluster,
}

impl Names {
    /// The epoch of `family` that `key` (one of its keys) is checked
    /// against.
    pub(crate) fn epoch<'a>(self, family: &'a Family, key: &str) -> Cow<'a, str> {
        match self {
            Names::Node => Cow::Borrowed(&family.epoch_key),
            Names::Cluster => Cow::Owned(in_slot(slot_of(key.as_bytes()), &family.epoch_key)),
        }
    }

    /// The epoch of `family` in `slot` (on one server, its only one).
    /// `scripts::SWEEP_EPOCHS` builds the same names.
    pub(crate) fn epoch_in(self, family: &Family, slot: u16) -> String {
        match self {
            Names::Node => family.epoch_key.clone(),
            Names::Cluster => in_slot(slot, &family.epoch_key),
        }
    }

    /// The key that holds a refresh's lease for `key`.
    pub(crate) fn sidecar(self, key: &str) -> String {
        let beside = crate::lease::sidecar(key);
        match self {
            Names::Node => beside,
            Names::Cluster => in_slot(slot_of(key.as_bytes()), &beside),
        }
    }

    /// The key whose name, with its hash tag removed, is `internal`, if it
    /// is a cluster's internal key (`#{<tag>}:<internal>`).
    pub(crate) fn untagged(self, key: &str) -> Option<&str> {
        let rest = key.strip_prefix("#{")?;
        let (tag, internal) = rest.split_once("}:")?;
        (self == Names::Cluster
            && !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_digit())
            && tag_for(slot_of(tag.as_bytes())) == tag)
            .then_some(internal)
    }
}

/// `name` put in `slot` by its hash tag.
fn in_slot(slot: u16, name: &str) -> String {
    let tag = tag_for(slot);
    let mut s = String::with_capacity(name.len() + tag.len() + 4);
    s.push_str("#{");
    s.push_str(tag);
    s.push_str("}:");
    s.push_str(name);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::slots::SLOTS;

    fn family() -> Family {
        Family {
            name: "tg:fn:x".into(),
            epoch_key: crate::generation::epoch_key("v1", "tg:fn:x"),
        }
    }

    #[test]
    fn one_server_keeps_the_names_it_always_had() {
        let f = family();
        assert_eq!(Names::Node.epoch(&f, "v1:tg:fn:x:1"), "v1:#epoch:tg:fn:x");
        assert_eq!(Names::Node.sidecar("v1:k"), "v1:k:#refresh");
        assert_eq!(Names::Node.epoch_in(&f, 7), "v1:#epoch:tg:fn:x");
    }

    #[test]
    fn a_cluster_puts_internal_keys_in_the_slot_of_their_key() {
        let f = family();
        // Keys with and without tags of their own, odd braces included.
        for key in [
            "v1:tg:fn:x:1",
            "{user1}:a",
            "a{b",
            "a{}b{c}",
            "}{",
            "v1:{x}",
        ] {
            let s = slot_of(key.as_bytes());
            let epoch = Names::Cluster.epoch(&f, key);
            let sidecar = Names::Cluster.sidecar(key);
            assert_eq!(slot_of(epoch.as_bytes()), s, "{epoch}");
            assert_eq!(slot_of(sidecar.as_bytes()), s, "{sidecar}");
            // Still recognised as what they are.
            assert!(crate::generation::is_epoch_key(&epoch), "{epoch}");
            assert!(crate::lease::is_sidecar(&sidecar), "{sidecar}");
            assert_eq!(
                Names::Cluster.untagged(&sidecar),
                Some(&*format!("{key}:#refresh"))
            );
            // No user key can be named so.
            assert!(crate::key::check_key(&epoch, crate::key::KeyFunction::Tg).is_err());
            assert!(crate::key::check_key(&sidecar, crate::key::KeyFunction::Tg).is_err());
        }
        for s in 0..SLOTS {
            let e = Names::Cluster.epoch_in(&f, s);
            assert_eq!(slot_of(e.as_bytes()), s);
            // As `scripts::SWEEP_EPOCHS` builds it.
            assert_eq!(e, format!("#{{{}}}:{}", tag_for(s), f.epoch_key));
        }
    }

    #[test]
    fn only_a_tag_of_its_own_slot_makes_an_internal_key() {
        assert_eq!(Names::Cluster.untagged("#{x}:k"), None);
        assert_eq!(Names::Cluster.untagged("{0}:k"), None);
        assert_eq!(Names::Node.untagged(&in_slot(7, "k")), None);
        assert_eq!(Names::Cluster.untagged(&in_slot(7, "k")), Some("k"));
    }
}
