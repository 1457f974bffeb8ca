//! Key-family generations ("epochs"): what makes `invalidate_family` O(1),
//! and why an invalidated value can never come back.
//!
//! Every entry of a key family (`tg:fn:char_scenes`, `tg:queryset:Character`,
//! ...) is written together with its family's current epoch, and a read only
//! accepts an entry of the current epoch. Invalidating the family replaces
//! the epoch.
//!
//! * **Local store**: an in-process counter per family. It only grows, and
//!   nothing outside the process can touch it.
//! * **Redis Cluster**: one such token per hash slot that holds keys of
//!   the family, beside them (`store/names.rs`); invalidating replaces them
//!   all, so it is O(16,384 slots) there, not O(1).
//! * **Redis**: the epoch is a random 128-bit token kept at
//!   `#epoch:<family>` (after the cache's namespace, if any). Values of the
//!   family are stored as `#<token>:<payload>`. A bump writes a *new random
//!   token*, never an incremented number, so losing the key (a `DEL`, an
//!   eviction, a `clear()`) or finding junk in it can never make an old
//!   token current again. (A failover that loses the bump's own write loses
//!   that invalidation, like any lost write.) A missing or
//!   malformed epoch reads as "no entry of this family is live"; the next
//!   fill writes a fresh token (and counts the repair as an error), so
//!   caching is never disabled either.
//!
//! Keys outside any family have no epoch: they are stored as plain payloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The longest epoch token accepted; a longer value at an epoch key is junk.
pub(crate) const MAX_TOKEN_LEN: usize = 64;

/// The epoch a reader or a fill saw, to be compared when it stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Epoch {
    /// The key belongs to no family.
    None,
    /// A local family's counter value.
    Local(u64),
    /// A Redis family's token.
    Token(String),
}

/// Where a family's epoch lives in Redis: `#epoch:<family>` under the
/// cache's namespace. The `#` segment is reserved: no public key can name it.
pub(crate) fn epoch_key(namespace: &str, family: &str) -> String {
    if namespace.is_empty() {
        format!("#epoch:{family}")
    } else {
        format!("{namespace}:#epoch:{family}")
    }
}

/// Whether a stored key is an epoch key (`#epoch:<family>`, possibly
/// namespaced).
pub(crate) fn is_epoch_key(key: &str) -> bool {
    key.starts_with("#epoch:") || key.contains(":#epoch:")
}

/// A fresh epoch token: 128 random bits as 32 hex digits. Two tokens never
/// repeat in practice, so a bump can never bring back an older epoch.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to time, pid and a counter, which
        // still never repeat within or across processes of one host.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        bytes[12..]
            .copy_from_slice(&(COUNTER.fetch_add(1, Ordering::Relaxed) as u32).to_le_bytes());
    }
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether `token` is a well-formed epoch token (what [`new_token`] makes,
/// or any short alphanumeric string another writer left).
pub(crate) fn valid_token(token: &[u8]) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.iter().all(u8::is_ascii_alphanumeric)
}

/// The header put before a family value's payload: `#<token>:`.
#[cfg(test)]
fn header(token: &str) -> String {
    format!("#{token}:")
}

/// The payload of a stored family value if it carries `token`'s header.
pub(crate) fn strip_header<'v>(value: &'v [u8], token: &str) -> Option<&'v [u8]> {
    let rest = value.strip_prefix(b"#")?.strip_prefix(token.as_bytes())?;
    rest.strip_prefix(b":")
}

/// The Lua helpers that the Redis scripts share: the same rules as above.
pub(crate) const LUA: &str = r"
local function valid_epoch(e)
  return type(e) == 'string' and #e > 0 and #e <= 64 and not string.find(e, '[^%w]')
end
-- The family's current epoch; '' for a key outside any family. A missing
-- or malformed epoch is replaced by the fresh token ARGV[fresh] when `fix`,
-- else nil is returned (nothing of the family is live).
-- The well-formed epoch at `ek`, or false; junk of any size or type is
-- never copied (its length is checked first).
local function read_epoch(ek)
  local ok, len = pcall(redis.call, 'STRLEN', ek)
  if not ok or len == 0 or len > 64 then return false end
  local e = redis.call('GET', ek)
  if valid_epoch(e) then return e end
  return false
end
local function epoch_of(ek, fresh, fix)
  if not ek then return '', false end
  local e = read_epoch(ek)
  if e then return e, false end
  if not fix then return nil, false end
  redis.call('DEL', ek)
  redis.call('SET', ek, fresh)
  return fresh, true
end
-- Bare values (a cache shared with Django, `store/framing.rs`) carry no
-- epoch: every value is live.
local function live(v, e)
  if not v then return false end
  if BARE then return true end
  if e == nil then return false end
  if e == '' then return true end
  local h = '#' .. e .. ':'
  return string.sub(v, 1, #h) == h
end
local function with_epoch(payload, e)
  if BARE or e == nil or e == '' then return payload end
  return '#' .. e .. ':' .. payload
end
";

/// The local store's family counters.
#[derive(Default)]
pub(crate) struct LocalEpochs {
    map: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl LocalEpochs {
    /// The current epoch of `family` (0 until it is first bumped).
    pub(crate) fn current(&self, family: Option<&str>) -> u64 {
        let Some(family) = family else { return 0 };
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(family).map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// A handle on `family`'s counter, for hit paths that read it often.
    pub(crate) fn handle(&self, family: &str) -> Arc<AtomicU64> {
        crate::stats::shared_entry(&self.map, family, |_| family)
    }

    /// Every family bumped at least once, with its current epoch.
    pub(crate) fn snapshot(&self) -> HashMap<String, u64> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, g)| (k.clone(), g.load(Ordering::Acquire)))
            .filter(|(_, g)| *g != 0)
            .collect()
    }

    /// Makes every entry of `family` invisible, in O(1).
    pub(crate) fn bump(&self, family: &str) {
        self.handle(family).fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_valid() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(valid_token(a.as_bytes()));
        assert!(!valid_token(b"junk:with:colons"));
        assert!(!valid_token(b""));
        assert!(!valid_token("x".repeat(65).as_bytes()));
    }

    #[test]
    fn headers() {
        let v = format!("{}[1,2]", header("abc"));
        assert_eq!(strip_header(v.as_bytes(), "abc"), Some(&b"[1,2]"[..]));
        assert_eq!(strip_header(v.as_bytes(), "ab"), None);
        assert_eq!(strip_header(b"[1,2]", "abc"), None);
        assert_eq!(epoch_key("", "tg:fn:x"), "#epoch:tg:fn:x");
        assert_eq!(epoch_key("v1", "tg:fn:x"), "v1:#epoch:tg:fn:x");
        assert!(is_epoch_key("v1:#epoch:tg:fn:x") && !is_epoch_key("tg:fn:x"));
    }

    #[test]
    fn local_epochs_only_grow() {
        let e = LocalEpochs::default();
        assert_eq!(e.current(Some("tg:fn:x")), 0);
        e.bump("tg:fn:x");
        e.bump("tg:fn:x");
        assert_eq!(e.current(Some("tg:fn:x")), 2);
        assert_eq!(e.current(None), 0);
    }
}
