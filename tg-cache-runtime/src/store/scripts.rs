//! The Lua scripts of the Redis stores: every write and every step of the
//! fill protocol (`lease.rs`), each atomic on one key (and, on one node, the
//! family's epoch key beside it). Reads need no script: they are plain
//! `GETRANGE`s (`store/redis.rs`), except the second read of a value longer
//! than the first read's bound ([`READ_BIG`]).
//!
//! Every script reads at most the first [`HEAD_BYTES`] bytes of a key to
//! decide (placeholder, live or dead value); none hashes or copies a value
//! it does not return or write.
//!
//! **The epoch.** A script that needs the family's epoch reads it at
//! `KEYS[2]` when the caller passes the epoch key (it is in the same slot:
//! one Redis server); otherwise it uses the epoch the caller passes as an
//! argument (`''` for a key outside any family).

use super::framing::Framing;
use crate::generation;
use crate::lease::{self, HEAD_BYTES, MAX_HOLDERS};
use std::sync::Arc;

/// Shared by the scripts: writes and epoch bookkeeping.
const PRELUDE: &str = r"
local function put(k, v, px)
  if px == '0' then
    redis.call('SET', k, v)
  else
    redis.call('SET', k, v, 'PX', px)
  end
end
-- The lifetime of an epoch made or extended by a write of lifetime px.
local function epoch_px(px)
  if px == '0' then return '0' end
  return string.format('%d', math.min(2 * tonumber(px), 2 ^ 50))
end
-- The family's epoch and whether it was made now (0: no, 1: it was
-- missing, 2: it was malformed): read at ek when given (made from fresh
-- if missing and fresh is given, with the lifetime px), else the epoch
-- the caller passed (belief).
local function family_epoch(ek, belief, fresh, px)
  if not ek then return belief, 0 end
  local e = read_epoch(ek)
  if e then return e, 0 end
  if fresh == nil or fresh == '' then return nil, 0 end
  local made = 1
  if redis.call('EXISTS', ek) == 1 then
    made = 2
    redis.call('DEL', ek)
  end
  put(ek, fresh, epoch_px(px))
  return fresh, made
end
-- An epoch outlives every value of its family, by at most as long again:
-- a write with lifetime px extends it to twice px ('0': forever) when it
-- has less than px left. (Each extension is a change that every
-- connection tracking the epoch is told of, and that makes it read the
-- epoch again: the slack makes that once per lifetime, not once per
-- write.)
local function keep_epoch(ek, px)
  if not ek then return end
  if px == '0' then
    redis.call('PERSIST', ek)
    return
  end
  local t = redis.call('PTTL', ek)
  if t >= 0 and t < tonumber(px) then redis.call('PEXPIRE', ek, epoch_px(px)) end
end
-- The epoch at ek equals e.
local function epoch_is(ek, e)
  if not ek then return true end
  return read_epoch(ek) == e
end
local function strlen(k)
  local ok, n = pcall(redis.call, 'STRLEN', k)
  if ok then return n end
  return -1
end
-- Whether the key still holds the bytes a caller found undecodable: their
-- length and first bytes (after the family header), or 'big' for a value
-- over the read limit (never read).
local function still_seen(k, h, e, len, seen)
  if len == 'big' then return strlen(k) > READ_LIMIT end
  if h == nil or h == '' then return false end
  local hdr = 0
  if not BARE and e ~= nil and e ~= '' then
    local pre = '#' .. e .. ':'
    if string.sub(h, 1, #pre) ~= pre then return false end
    hdr = #pre
  end
  if strlen(k) - hdr ~= tonumber(len) then return false end
  return string.sub(h, hdr + 1, hdr + #seen) == seen
end
-- What a refresh will replace: its length and a digest of its head.
local function fingerprint(k)
  return strlen(k) .. ' ' .. redis.sha1hex(head(k) or '')
end
";

/// KEYS: key, [epoch key]. ARGV: token, lease px, mode, fresh epoch,
/// value px, epoch belief, and for `repair` the length and first bytes of
/// the undecodable payload seen (`big` for one over the read limit).
/// `{4}` when the live value is over the read limit. Modes (`protocol.rs`): `fresh` (a miss), `repair`
/// (over bytes that could not be decoded), `refresh` (over anything), `join`
/// (as a co-holder). Replies: `{1, value, epoch, made}` when a live value
/// is there (`fresh`, `join`); `{2, epoch, made}` when the caller holds
/// the lease; `{3, holders}` when others hold it.
const LEASE: &str = r"
local e, made = family_epoch(KEYS[2], ARGV[6], ARGV[4], ARGV[5])
local h = head(KEYS[1])
local s = state(h, e)
local mode = ARGV[3]
-- Repair only the bytes the caller saw: a value stored since is taken.
if mode == 'repair' and s ~= 'lease' and not still_seen(KEYS[1], h, e, ARGV[7], ARGV[8]) then
  mode = 'fresh'
end
if s == 'live' and (mode == 'fresh' or mode == 'join') then
  if redis.call('STRLEN', KEYS[1]) > READ_LIMIT then return {4} end
  return {1, redis.call('GET', KEYS[1]), e, made}
end
if s == 'lease' then
  local _, list = lease_parts(h)
  if mode == 'join' then
    if holds(list, ARGV[1]) then return {2, e, made} end
    if count(list) < MAX_HOLDERS then
      redis.call('SET', KEYS[1], placeholder(e, list .. ',' .. ARGV[1]), 'PX', ARGV[2])
      return {2, e, made}
    end
  end
  return {3, list}
end
redis.call('SET', KEYS[1], placeholder(e or '', ARGV[1]), 'PX', ARGV[2])
-- The epoch outlives the lease: a long computation is not refused
-- because its family's values (and so its epoch) expired meanwhile.
keep_epoch(KEYS[2], ARGV[2])
return {2, e or '', made}
";

/// KEYS: key (or a refresh's sidecar), [epoch key]. ARGV: token, px.
/// Extends a lease its holder still holds, in an epoch that is still
/// current (and the epoch with it); 0 if it was lost.
const RENEW: &str = r"
local h = head(KEYS[1])
if not is_lease(h) then return 0 end
local le, list = lease_parts(h)
if not holds(list, ARGV[1]) then return 0 end
if not epoch_is(KEYS[2], le) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
keep_epoch(KEYS[2], ARGV[2])
return 1
";

/// KEYS: key, [epoch key]. ARGV: value (with its header), px, token, lease
/// epoch. 1: stored over the caller's placeholder; 2: the placeholder is
/// gone and a value of the lease's epoch is there (another writer's,
/// kept); 0: the lease was lost (an invalidation, or it expired) or the
/// epoch changed: nothing stored.
const FILL: &str = r"
local h = head(KEYS[1])
if not is_lease(h) then
  if h ~= nil and h ~= '' and live(h, ARGV[4]) then return 2 end
  return 0
end
local le, list = lease_parts(h)
if le ~= ARGV[4] or not holds(list, ARGV[3]) then return 0 end
if not epoch_is(KEYS[2], le) then
  redis.call('DEL', KEYS[1])
  return 0
end
put(KEYS[1], ARGV[1], ARGV[2])
keep_epoch(KEYS[2], ARGV[2])
return 1
";

/// KEYS: key (or a refresh's sidecar), [epoch key]. ARGV: token, lease
/// epoch. Gives a lease up
/// (the key is deleted when no holder is left); 1 if it was still held and
/// its epoch is still current (no invalidation since it was taken).
const RELEASE: &str = r"
local h = head(KEYS[1])
if not is_lease(h) then return 0 end
local le, list = lease_parts(h)
if not holds(list, ARGV[1]) then return 0 end
local rest = without(list, ARGV[1])
if rest == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], placeholder(le, rest), 'KEEPTTL')
end
if le ~= ARGV[2] or not epoch_is(KEYS[2], le) then return 0 end
return 1
";

/// KEYS: key, its refresh sidecar, [epoch key]. ARGV: payload, px, fresh
/// epoch, epoch belief. Writes in the current epoch; any fill in progress
/// is cancelled (its placeholder is overwritten, a refresh's sidecar
/// deleted). Returns whether the epoch was made.
const SET: &str = r"
local e, made = family_epoch(KEYS[3], ARGV[4], ARGV[3], ARGV[2])
put(KEYS[1], with_epoch(ARGV[1], e), ARGV[2])
redis.call('DEL', KEYS[2])
keep_epoch(KEYS[3], ARGV[2])
return made
";

/// KEYS: key, its refresh sidecar, [epoch key]. ARGV as [`SET`]. Writes
/// only if no live value is there: `{1, made}` if it wrote (cancelling any
/// fill), `{0, made}`.
const ADD: &str = r"
local e, made = family_epoch(KEYS[3], ARGV[4], ARGV[3], ARGV[2])
if state(head(KEYS[1]), e) == 'live' then return {0, made} end
put(KEYS[1], with_epoch(ARGV[1], e), ARGV[2])
redis.call('DEL', KEYS[2])
keep_epoch(KEYS[3], ARGV[2])
return {1, made}
";

/// KEYS: key, its refresh sidecar, [epoch key]. ARGV: token, lease px,
/// fresh epoch, value px, epoch belief. A refresh's lease, in the sidecar:
/// the value stays readable while the refresh computes. The sidecar holds
/// the placeholder and the fingerprint of the value (length, digest of its
/// head) that the fill will replace. Any earlier refresh of the key is
/// superseded. `{2, epoch, made}`.
const REFRESH: &str = r"
local e, made = family_epoch(KEYS[3], ARGV[5], ARGV[3], ARGV[4])
local lease = placeholder(e or '', ARGV[1]) .. '\n' .. fingerprint(KEYS[1])
redis.call('SET', KEYS[2], lease, 'PX', ARGV[2])
keep_epoch(KEYS[3], ARGV[2])
return {2, e or '', made}
";

/// KEYS: key, its refresh sidecar, [epoch key]. ARGV: value (with its
/// header), px, token, lease epoch. A refresh's fill: 1 stored; 2 the value
/// changed since the refresh began and is live (kept); 0 the lease was
/// lost, the epoch changed, or the value changed (nothing stored).
const REFRESH_FILL: &str = r"
local l = head(KEYS[2])
if not is_lease(l) then return 0 end
local le, list = lease_parts(l)
if le ~= ARGV[4] or not holds(list, ARGV[3]) then return 0 end
redis.call('DEL', KEYS[2])
if not epoch_is(KEYS[3], le) then return 0 end
if string.match(l, '\n(.*)$') ~= fingerprint(KEYS[1]) then
  local h = head(KEYS[1])
  if h ~= nil and h ~= '' and not is_lease(h) and live(h, le) then return 2 end
  return 0
end
put(KEYS[1], ARGV[1], ARGV[2])
keep_epoch(KEYS[3], ARGV[2])
return 1
";

/// KEYS: key. The whole value if it is a string no longer than the read
/// limit; 1 if it is longer (never sent); nil if absent or another type.
/// The second read of a value longer than the first read's bound: atomic,
/// so the value is never torn, and an oversized value costs nothing.
const READ_BIG: &str = r"
local ok, n = pcall(redis.call, 'STRLEN', KEYS[1])
if not ok then return false end
if n > READ_LIMIT then return 1 end
return redis.call('GET', KEYS[1])
";

/// KEYS: key. Deletes the key only if it is over the read limit: a value
/// written since the read is kept. 1 if it deleted.
const DROP_OVERSIZED: &str = r"
local ok, n = pcall(redis.call, 'STRLEN', KEYS[1])
if not ok or n <= READ_LIMIT then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

/// KEYS: key, its refresh sidecar, [epoch key]. ARGV: delta (decimal; any
/// value in i64 ± 2^63), epoch belief. A refresh in progress is cancelled. Nil when missing, else the new value as decimal text. The
/// arithmetic is exact over the whole i64 range: it works on decimal digit
/// strings, never on Lua numbers (doubles, exact only up to 2^53). The
/// result must fit an i64, else nothing is written and an overflow error
/// is returned.
const INCR: &str = r"
local e = family_epoch(KEYS[3], ARGV[2])
local h = head(KEYS[1])
if state(h, e) ~= 'live' then return false end
local cur = h
if not BARE and e ~= '' then cur = string.sub(cur, #e + 3) end
local function parse(s)
  local sign, digits = string.match(s, '^(%-?)(%d+)$')
  if not digits then return nil end
  digits = (string.gsub(digits, '^0+', ''))
  if digits == '' then return false, '0' end
  return sign == '-', digits
end
local function cmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for k = 1, #a do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end
local function add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48 end
    if j > 0 then d = d + string.byte(b, j) - 48 end
    out[#out + 1] = d % 10
    carry = (d - d % 10) / 10
    i = i - 1
    j = j - 1
  end
  return string.reverse(table.concat(out))
end
local function sub(a, b)
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local d = string.byte(a, i) - 48 - borrow
    if j > 0 then d = d - (string.byte(b, j) - 48) end
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    out[#out + 1] = d
    i = i - 1
    j = j - 1
  end
  local s = (string.gsub(string.reverse(table.concat(out)), '^0+', ''))
  if s == '' then return '0' end
  return s
end
local function fits(neg, mag)
  return cmp(mag, neg and '9223372036854775808' or '9223372036854775807') <= 0
end
local na, ma = parse(cur)
if na == nil or not fits(na, ma) then
  return redis.error_reply('ERR value is not an integer or out of range')
end
local nb, mb = parse(ARGV[1])
local neg, mag
if na == nb then
  neg, mag = na, add(ma, mb)
elseif cmp(ma, mb) >= 0 then
  neg, mag = na, sub(ma, mb)
else
  neg, mag = nb, sub(mb, ma)
end
if mag == '0' then neg = false end
if not fits(neg, mag) then return redis.error_reply('ERR increment would overflow') end
local out = (neg and '-' or '') .. mag
redis.call('SET', KEYS[1], with_epoch(out, e), 'KEEPTTL')
redis.call('DEL', KEYS[2])
return out
";

/// KEYS: key, [epoch key]. ARGV: px ('0': persist), or '' to only read the
/// TTL; epoch belief. -2 when the key is not live, else PTTL after touching.
const TTL: &str = r"
local e = family_epoch(KEYS[2], ARGV[2])
if state(head(KEYS[1]), e) ~= 'live' then return -2 end
if ARGV[1] == '0' then
  redis.call('PERSIST', KEYS[1])
  keep_epoch(KEYS[2], '0')
elseif ARGV[1] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  keep_epoch(KEYS[2], ARGV[1])
end
return redis.call('PTTL', KEYS[1])
";

/// A family's invalidation on one primary of a Redis Cluster: replaces
/// the family's epoch in each of the node's slots whose tag is given, where
/// it exists (`XX`, its lifetime kept), the name built as `names.rs` builds
/// it (`#{<tag>}:<epoch key>`). It touches keys of many slots (Redis 7's
/// `allow-cross-slot-keys`), all served by the node it runs on. Redis
/// refuses a key the node does not hold the slot of, and a missing key of
/// a slot it is migrating away (checked on Redis 7.0.15: "Script attempted
/// to access a non local key"): such a slot's tag is returned, for the
/// caller to write through the cluster's routing, which follows `ASK` and
/// `MOVED` to wherever the epoch is.
/// ARGV: token, epoch key, tags. Sent with `EVAL`: its shebang must open
/// it, so it shares no prelude.
///
/// Each run writes a token of its own (the caller's, with the server's
/// clock appended): a run that redis-rs sends again after a lost reply, once
/// a later invalidation wrote its own token, cannot bring an old epoch
/// back.
pub(crate) const SWEEP_EPOCHS: &str = r"#!lua flags=allow-cross-slot-keys
local t = redis.call('TIME')
local token = ARGV[1] .. t[1] .. t[2]
local refused = {}
for i = 3, #ARGV do
  local ok = pcall(redis.call, 'SET', '#{' .. ARGV[i] .. '}:' .. ARGV[2], token, 'XX', 'KEEPTTL')
  if not ok then refused[#refused + 1] = ARGV[i] end
end
return refused
";

/// A cluster's batch of keys that one primary's `SCAN` returned, unlinked
/// on that primary in one call (a multi-key `UNLINK` would span slots):
/// each key that the node refuses (its slot moved meanwhile) is returned,
/// for the caller to unlink through the cluster's routing.
/// ARGV: how many of the keys are values (counted), then the keys.
/// Returns the values unlinked, then the refused keys.
pub(crate) const UNLINK_LOCAL: &str = r"#!lua flags=allow-cross-slot-keys
local values = tonumber(ARGV[1])
local out = {0}
for i = 2, #ARGV do
  local ok, n = pcall(redis.call, 'UNLINK', ARGV[i])
  if not ok then
    out[#out + 1] = ARGV[i]
  elseif i <= values + 1 then
    out[1] = out[1] + n
  end
end
return out
";

/// One slot's epoch replaced (`KEYS[1]`), as [`SWEEP_EPOCHS`] does, for a
/// slot the sweep could not write: routed by its key, so it follows `ASK`
/// and `MOVED`. ARGV: token.
pub(crate) const BUMP_EPOCH: &str = r"
local t = redis.call('TIME')
return redis.call('SET', KEYS[1], ARGV[1] .. t[1] .. t[2], 'XX', 'KEEPTTL')
";

/// The scripts of one store, with its read limit written in.
pub(crate) struct Scripts {
    pub(crate) lease: Arc<redis::Script>,
    pub(crate) renew: Arc<redis::Script>,
    pub(crate) fill: Arc<redis::Script>,
    pub(crate) release: Arc<redis::Script>,
    pub(crate) set: Arc<redis::Script>,
    pub(crate) add: Arc<redis::Script>,
    pub(crate) refresh: Arc<redis::Script>,
    pub(crate) refresh_fill: Arc<redis::Script>,
    pub(crate) drop_oversized: Arc<redis::Script>,
    pub(crate) read_big: Arc<redis::Script>,
    pub(crate) incr: Arc<redis::Script>,
    pub(crate) ttl: Arc<redis::Script>,
    pub(crate) bump_epoch: Arc<redis::Script>,
}

impl Scripts {
    /// `read_limit`: the last byte index a read returns (the value cap plus
    /// room for a header); `framing`: how family values are stored.
    pub(crate) fn new(read_limit: usize, framing: Framing) -> Self {
        let script = |body: &str| {
            Arc::new(redis::Script::new(&format!(
                "local READ_LIMIT = {read_limit}\nlocal HEAD_BYTES = {HEAD_BYTES}\nlocal MAX_HOLDERS = {MAX_HOLDERS}\n{}{}{}{PRELUDE}{body}",
                framing.lua(),
                generation::LUA,
                lease::LUA,
            )))
        };
        Self {
            lease: script(LEASE),
            renew: script(RENEW),
            fill: script(FILL),
            release: script(RELEASE),
            set: script(SET),
            add: script(ADD),
            refresh: script(REFRESH),
            refresh_fill: script(REFRESH_FILL),
            drop_oversized: script(DROP_OVERSIZED),
            read_big: script(READ_BIG),
            incr: script(INCR),
            ttl: script(TTL),
            bump_epoch: Arc::new(redis::Script::new(BUMP_EPOCH)),
        }
    }
}
