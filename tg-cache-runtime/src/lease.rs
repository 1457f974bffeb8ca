//! Fill leases: the right to fill a cold key, held **at the key itself**.
//!
//! A filler that finds a key absent (or dead: of an outdated family epoch,
//! corrupt, or being replaced) writes a *placeholder* at the key, then
//! computes, then stores its value over the placeholder with a
//! compare-and-set. This is rueidisaside's design; what it gives:
//!
//! * **Every invalidation defeats every fill that began before it**, with
//!   no bookkeeping of its own: a `set`, `delete`, pattern delete or
//!   `clear`, by tg-cache or by any other client (Django, `redis-cli`),
//!   removes or replaces the placeholder, and the fill's compare-and-set
//!   then stores nothing. A pattern delete or `clear` runs `SCAN`, which
//!   returns every key present from its start to its end: a key being
//!   filled is present all along (placeholder, then value, one entry), so a
//!   fill that began before the scan is always seen, on a database of any
//!   size. A family invalidation changes the epoch that the placeholder
//!   and the value carry, so both read as dead.
//! * **Costs do not grow with the value at the key.** Every check reads
//!   the key's first [`HEAD_BYTES`] bytes (`GETRANGE`), never the value.
//! * **Waits are bounded.** A waiter remembers the holder it waits on. When
//!   that holder is gone from the placeholder (it stored, gave up, or was
//!   invalidated), the waiter looks again and, without a value, becomes a
//!   holder itself at once: a co-holder next to whoever holds the key now,
//!   or the only holder. A waiter also becomes a co-holder after
//!   `max_wait` (a hung holder). Co-holders compute side by side, and the
//!   first value stored wins.
//!
//! The placeholder is `#!lease:<epoch>:<token>[,<token>...]`: the family
//! epoch it was taken in (`-` for a key outside any family) and up to
//! [`MAX_HOLDERS`] holder tokens (32 hex digits each). No value can look
//! like it: JSON never starts with `#`, and a family value's header is
//! `#<alphanumeric epoch>:`. It expires with the lease timeout unless a
//! holder renews it; a holder renews for as long as it computes.

/// What every placeholder starts with.
pub(crate) const PREFIX: &str = "#!lease:";

/// The most holders one placeholder lists; a waiter that finds it full
/// computes without storing.
pub(crate) const MAX_HOLDERS: usize = 8;

/// How much of a key the scripts and the readers look at to tell a
/// placeholder, a live value and a dead one apart: enough for a full
/// placeholder and for a family header.
pub(crate) const HEAD_BYTES: usize = 400;

/// The holders listed by a placeholder, as a waiter saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holders(Vec<String>);

impl Holders {
    /// The holders of `tokens`.
    pub(crate) fn new(tokens: Vec<String>) -> Self {
        Self(tokens)
    }

    /// The first-listed holder (the one that took the key).
    pub(crate) fn first(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    /// Whether `token` is among them.
    pub(crate) fn contains(&self, token: &str) -> bool {
        self.0.iter().any(|t| t == token)
    }
}

/// Where a refresh of `key` keeps its lease: `<key>:#refresh` (a reserved
/// segment: no public key can name it).
pub(crate) fn sidecar(key: &str) -> String {
    format!("{key}:#refresh")
}

/// Whether a stored key is a refresh's sidecar.
pub(crate) fn is_sidecar(key: &str) -> bool {
    key.ends_with(":#refresh")
}

/// Whether stored bytes are a placeholder.
pub(crate) fn is_placeholder(bytes: &[u8]) -> bool {
    bytes.starts_with(PREFIX.as_bytes())
}

/// The Lua helpers of the scripts that take, renew, fill and release
/// leases: the same rules as above, with the value's liveness (its family
/// header) from `generation.rs`.
pub(crate) const LUA: &str = r"
local LEASE = '#!lease:'
-- The first bytes of key k, never the whole value: '' when absent, nil
-- when it holds another type than a string.
local function head(k)
  local ok, h = pcall(redis.call, 'GETRANGE', k, 0, HEAD_BYTES - 1)
  if not ok then return nil end
  return h
end
local function is_lease(h)
  return h ~= nil and string.sub(h, 1, #LEASE) == LEASE
end
-- A placeholder's epoch ('' for a key outside any family) and holders
-- (a refresh's placeholder has a fingerprint line after them).
local function lease_parts(h)
  local e, list = string.match(h, '^#!lease:([^:]*):([^\n]*)')
  if e == '-' then e = '' end
  return e, list or ''
end
local function holds(list, token)
  for t in string.gmatch(list, '[^,]+') do
    if t == token then return true end
  end
  return false
end
local function count(list)
  local n = 0
  for _ in string.gmatch(list, '[^,]+') do n = n + 1 end
  return n
end
local function without(list, token)
  local out = {}
  for t in string.gmatch(list, '[^,]+') do
    if t ~= token then out[#out + 1] = t end
  end
  return table.concat(out, ',')
end
local function placeholder(e, list)
  if e == '' then e = '-' end
  return LEASE .. e .. ':' .. list
end
-- What the key holds, given its family's epoch e ('' outside any family,
-- nil when the family has no valid epoch): 'none' (absent, empty or of
-- another type), 'lease' (a placeholder of epoch e), 'live' (a value of
-- epoch e), or 'dead' (a value or placeholder of another epoch).
local function state(h, e)
  if h == nil or h == '' then return 'none' end
  if is_lease(h) then
    if e ~= nil and lease_parts(h) == e then return 'lease' end
    return 'dead'
  end
  if live(h, e) then return 'live' end
  return 'dead'
end
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        assert!(is_placeholder(b"#!lease:-:t") && !is_placeholder(b"#!lea"));
        assert!(!is_placeholder(b"#abc:[1]") && !is_placeholder(b"[1]"));
        let h = Holders::new(vec!["t1".into(), "t2".into()]);
        assert_eq!(h.first(), Some("t1"));
        assert!(h.contains("t2") && !h.contains("t3"));
    }
}
