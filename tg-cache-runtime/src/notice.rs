//! Warnings that are logged now and then, not on every call: at most once
//! per kind, key family and minute. A diagnosis that would repeat on
//! every read of a hot key (a value written by Python pickle, a key Django
//! warns about) would otherwise flood the log; its counter still counts
//! every occurrence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of warning is logged for one key family.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

/// The families remembered per cache; past it, the rest share one entry.
const MAX_REMEMBERED: usize = 1000;

/// When each (kind, family) pair was last logged.
#[derive(Debug, Default)]
pub(crate) struct Notices {
    last: Mutex<HashMap<(&'static str, String), Instant>>,
}

impl Notices {
    /// Whether a warning of `kind` about `family` is due now; if so, it is
    /// recorded as logged.
    pub(crate) fn due(&self, kind: &'static str, family: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= MAX_REMEMBERED && !last.contains_key(&(kind, family.to_owned())) {
            last.retain(|_, at| now.duration_since(*at) < EVERY);
        }
        let family = if last.len() >= MAX_REMEMBERED {
            "other"
        } else {
            family
        };
        match last.get_mut(&(kind, family.to_owned())) {
            Some(at) if now.duration_since(*at) < EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                last.insert((kind, family.to_owned()), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_kind_and_family() {
        let n = Notices::default();
        assert!(n.due("pickle", "tg:fn:a"));
        assert!(!n.due("pickle", "tg:fn:a"));
        assert!(n.due("pickle", "tg:fn:b"));
        assert!(n.due("key", "tg:fn:a"));
        for i in 0..2 * MAX_REMEMBERED {
            n.due("key", &format!("tg:fn:{i}"));
        }
        assert!(n.last.lock().unwrap().len() <= MAX_REMEMBERED + 1);
    }
}
