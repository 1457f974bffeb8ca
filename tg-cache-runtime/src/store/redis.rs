//! The Redis store: values in Redis, every write and fill through Lua
//! scripts that keep the fill guarantee (`store/mod.rs`), reached through
//! [`Connections`].

use super::connection::{ConnectionSettings, Connections};
use super::{Family, Filled, Incr, Lease, LeaseOutcome, Slot, Store, StoreFuture, Stored, Value};
use crate::error::{Error, Result};
use crate::generation::{self, Epoch};
use crate::key::{pattern_covers, scan_pattern};
use crate::timeout::Ttl;
use redis::aio::ConnectionManager;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Settings of a Redis store, taken from [`crate::CacheConfig`].
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) connection: ConnectionSettings,
    pub(crate) lease_timeout: Duration,
    pub(crate) compress_min: Option<usize>,
    pub(crate) max_value_bytes: usize,
}

pub(crate) struct RedisStore {
    conns: Connections,
    scripts: Scripts,
    lease_timeout: Duration,
    compress_min: Option<usize>,
}

/// Shared by the scripts: the epoch rules of `generation.rs`, and writes.
const PRELUDE: &str = r"
-- A string value no longer than the cap; a bigger one (or another type)
-- reads as absent, so it is never copied and a fill replaces it.
local function get(k)
  local ok, n = pcall(redis.call, 'STRLEN', k)
  if not ok or n > MAX_VALUE_BYTES then return false end
  return redis.call('GET', k)
end
-- What a key holds, in short: '-' when absent, else a digest of its raw
-- bytes, whatever wrote them (tg-cache, or another client such as Django).
local function digest(k)
  if redis.call('EXISTS', k) == 0 then return '-' end
  local ok, n = pcall(redis.call, 'STRLEN', k)
  if not ok then return 'type' end
  if n > MAX_VALUE_BYTES then return 'big' .. n end
  return redis.sha1hex(redis.call('GET', k))
end
-- A lease's value is '<token> <digest of the key when it was granted>'.
local function holds(lease, token)
  return lease and string.sub(lease, 1, #token + 1) == token .. ' '
end
local function put(k, v, px)
  if px == '0' then
    redis.call('SET', k, v)
  else
    redis.call('SET', k, v, 'PX', px)
  end
end
";

/// KEYS: key, [epoch key]. The value (false when absent or over the cap),
/// the epoch (false when absent), and 1 when the value is over the cap.
const READ_SCRIPT: &str = r"
local ok, n = pcall(redis.call, 'STRLEN', KEYS[1])
local big = ok and n > MAX_VALUE_BYTES
local v = false
if ok and not big then v = redis.call('GET', KEYS[1]) end
local e = false
if KEYS[2] then e = read_epoch(KEYS[2]) end
return {v, e, big and 1 or 0}
";

/// KEYS: n value keys, then epoch keys. ARGV: n. {v1, .., vn, e1, .., big1, ..}.
const READ_MANY_SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local v = false
  if i > n then
    v = read_epoch(KEYS[i])
  else
    local ok, len = pcall(redis.call, 'STRLEN', KEYS[i])
    if ok and len <= MAX_VALUE_BYTES then v = redis.call('GET', KEYS[i]) end
  end
  out[i] = v
end
for i = 1, n do
  local ok, len = pcall(redis.call, 'STRLEN', KEYS[i])
  out[#KEYS + i] = (ok and len > MAX_VALUE_BYTES) and 1 or 0
end
return out
";

/// KEYS: key, lease. Deletes the key (and cancels its fill) only if it is
/// still over the cap: a value written since the read is kept.
const DROP_OVERSIZED_SCRIPT: &str = r"
local ok, n = pcall(redis.call, 'STRLEN', KEYS[1])
if not ok or n <= MAX_VALUE_BYTES then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

/// KEYS: key, lease, [epoch key]. ARGV: payload, px, fresh epoch.
/// Writes in the current epoch and cancels any fill in progress.
const SET_SCRIPT: &str = r"
local e = epoch_of(KEYS[3], ARGV[3], true)
put(KEYS[1], with_epoch(ARGV[1], e), ARGV[2])
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: key, lease, [epoch key]. ARGV: payload, px, fresh epoch.
const ADD_SCRIPT: &str = r"
local e = epoch_of(KEYS[3], ARGV[3], true)
if live(get(KEYS[1]), e) then return 0 end
put(KEYS[1], with_epoch(ARGV[1], e), ARGV[2])
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: key, lease, [epoch key]. ARGV: token, px, fresh epoch, replace.
/// {1, value, epoch} when a live value is there (and not `replace`);
/// {2, epoch, repaired} when the lease is granted; {3} when another holds it.
const LEASE_SCRIPT: &str = r"
local e, repaired = epoch_of(KEYS[3], ARGV[3], true)
if ARGV[4] ~= '1' then
  local v = get(KEYS[1])
  if live(v, e) then return {1, v, e} end
end
if redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. digest(KEYS[1]), 'NX', 'PX', ARGV[2]) then
  return {2, e, repaired and 1 or 0}
end
return {3}
";

/// KEYS: lease. ARGV: token, px. Extends a lease its holder still holds.
const RENEW_SCRIPT: &str = r"
if not holds(get(KEYS[1]), ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: key, lease, [epoch key]. ARGV: payload, px, token, epoch seen, replace.
/// 1: stored; 2: the key was written after the lease was granted (by any
/// client, Django included), and that value was kept; 0: the lease was lost
/// or the family's epoch changed (an invalidation), nothing stored.
const FILL_SCRIPT: &str = r"
local lease = get(KEYS[2])
if not holds(lease, ARGV[3]) then return 0 end
redis.call('DEL', KEYS[2])
local e = epoch_of(KEYS[3], '', false)
if e == nil or e ~= ARGV[4] then return 0 end
if string.sub(lease, #ARGV[3] + 2) ~= digest(KEYS[1]) then return 2 end
if ARGV[5] ~= '1' and live(get(KEYS[1]), e) then return 2 end
put(KEYS[1], with_epoch(ARGV[1], e), ARGV[2])
return 1
";

/// KEYS: lease, [epoch key]. ARGV: token, epoch seen. Gives a lease up;
/// 1 if it was still held and the epoch unchanged (no invalidation since).
const RELEASE_SCRIPT: &str = r"
if not holds(get(KEYS[1]), ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
local e = epoch_of(KEYS[2], '', false)
if e ~= ARGV[2] then return 0 end
return 1
";

/// KEYS: key, [epoch key]. ARGV: delta (decimal; any value in i64 ± 2^63).
/// Nil when missing, else the new value as decimal text. The arithmetic is
/// exact over the whole i64 range: it works on decimal digit strings, never
/// on Lua numbers (doubles, exact only up to 2^53). The result must fit an
/// i64, else nothing is written and an overflow error is returned.
const INCR_SCRIPT: &str = r"
local e = epoch_of(KEYS[2], '', false)
local cur = get(KEYS[1])
if not live(cur, e) then return false end
if e ~= '' then cur = string.sub(cur, #e + 3) end
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
return out
";

/// KEYS: key, [epoch key]. ARGV: px ('0': persist), or '' to only read the TTL.
/// Returns -2 when the key is missing or outdated, else PTTL after touching.
const TTL_SCRIPT: &str = r"
local e = epoch_of(KEYS[2], '', false)
if not live(get(KEYS[1]), e) then return -2 end
if ARGV[1] == '0' then
  redis.call('PERSIST', KEYS[1])
elseif ARGV[1] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return redis.call('PTTL', KEYS[1])
";

/// The scripts of one store, with its value cap written in.
struct Scripts {
    read: Arc<redis::Script>,
    read_many: Arc<redis::Script>,
    set: Arc<redis::Script>,
    add: Arc<redis::Script>,
    lease: Arc<redis::Script>,
    renew: Arc<redis::Script>,
    fill: Arc<redis::Script>,
    release: Arc<redis::Script>,
    incr: Arc<redis::Script>,
    ttl: Arc<redis::Script>,
    drop_oversized: Arc<redis::Script>,
}

/// One script call being built: its keys and arguments, owned, so that it
/// can be sent to the connection's task.
struct Call {
    script: Arc<redis::Script>,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Call {
    fn new(script: &Arc<redis::Script>) -> Self {
        Self {
            script: script.clone(),
            keys: Vec::with_capacity(3),
            args: Vec::with_capacity(5),
        }
    }

    fn key(&mut self, k: impl Into<String>) -> &mut Self {
        self.keys.push(k.into());
        self
    }

    fn arg(&mut self, a: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(a.to_redis_args());
        self
    }
}

impl Scripts {
    fn new(max_value_bytes: usize) -> Self {
        let script = |body: &str| {
            Arc::new(redis::Script::new(&format!(
                "local MAX_VALUE_BYTES = {max_value_bytes}\n{}{PRELUDE}{body}",
                generation::LUA
            )))
        };
        Self {
            read: script(READ_SCRIPT),
            read_many: script(READ_MANY_SCRIPT),
            set: script(SET_SCRIPT),
            add: script(ADD_SCRIPT),
            lease: script(LEASE_SCRIPT),
            renew: script(RENEW_SCRIPT),
            fill: script(FILL_SCRIPT),
            release: script(RELEASE_SCRIPT),
            incr: script(INCR_SCRIPT),
            ttl: script(TTL_SCRIPT),
            drop_oversized: script(DROP_OVERSIZED_SCRIPT),
        }
    }
}

/// The suffix of a key's lease. A segment starting with `#` is reserved,
/// so no public key can name a lease.
const LEASE_SUFFIX: &str = ":#lease";

/// Where the lease of a fill of `key` lives: `<key>:#lease`.
pub(crate) fn lease_key(key: &str) -> String {
    format!("{key}{LEASE_SUFFIX}")
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn ttl_arg(ttl: Option<Duration>) -> String {
    ttl.map_or_else(|| "0".to_owned(), |t| px(t).to_string())
}

fn epoch_arg(e: &Epoch) -> &str {
    match e {
        Epoch::Token(t) => t,
        Epoch::None | Epoch::Local(_) => "",
    }
}

/// The payload of a stored value if it is live in the epoch `epoch`
/// (`None`: no family; `Some(None)`: a family whose epoch is missing or junk).
fn live_payload(value: Vec<u8>, epoch: Option<Option<&[u8]>>) -> Option<Vec<u8>> {
    match epoch {
        None => Some(value),
        Some(None) => None,
        Some(Some(token)) => {
            let token = std::str::from_utf8(token).ok()?;
            let header = value.len() - generation::strip_header(&value, token)?.len();
            // In place: a big value is never held twice.
            let mut value = value;
            value.drain(..header);
            Some(value)
        }
    }
}

/// The epoch token read from an epoch key, if well-formed.
fn valid(e: &Option<Vec<u8>>) -> Option<&[u8]> {
    e.as_deref().filter(|t| generation::valid_token(t))
}

impl RedisStore {
    pub(crate) fn new(s: &RedisSettings) -> Result<Self> {
        Ok(Self {
            conns: Connections::new(&s.connection)?,
            scripts: Scripts::new(s.max_value_bytes),
            lease_timeout: s.lease_timeout,
            compress_min: s.compress_min,
        })
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.conns.run(op).await
    }

    async fn invoke<T: redis::FromRedisValue + Send + 'static>(&self, inv: Call) -> Result<T> {
        self.run(|mut c| async move {
            let mut i = inv.script.prepare_invoke();
            for k in &inv.keys {
                i.key(k);
            }
            for a in &inv.args {
                i.arg(a.as_slice());
            }
            i.invoke_async::<T>(&mut c).await
        })
        .await
    }

    /// A call of `script` on `slot`'s key, its lease (if `lease`) and its
    /// epoch key (if it has a family).
    fn on_slot(script: &Arc<redis::Script>, slot: &Slot, lease: bool) -> Call {
        let mut inv = Call::new(script);
        inv.key(slot.key.clone());
        if lease {
            inv.key(lease_key(&slot.key));
        }
        if let Some(f) = &slot.family {
            inv.key(f.epoch_key.clone());
        }
        inv
    }

    fn encode(&self, slot: &Slot, value: &dyn Value) -> Result<Vec<u8>> {
        let json = value.to_json().map_err(|source| Error::Encode {
            key: slot.key.clone(),
            source,
        })?;
        Ok(crate::codec::compress(json, self.compress_min))
    }

    async fn get_one(&self, slot: &Slot) -> Result<Option<Stored>> {
        let mut inv = Call::new(&self.scripts.read);
        inv.key(slot.key.clone());
        if let Some(f) = &slot.family {
            inv.key(f.epoch_key.clone());
        }
        let (value, epoch, big): (Option<Vec<u8>>, Option<Vec<u8>>, i64) = self.invoke(inv).await?;
        if big == 1 {
            return Ok(Some(Stored::Oversized));
        }
        let epoch = slot.family.as_ref().map(|_| valid(&epoch));
        Ok(value
            .and_then(|v| live_payload(v, epoch))
            .map(Stored::Bytes))
    }

    async fn get_many_now(&self, slots: &[Slot]) -> Result<Vec<Option<Stored>>> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let mut epoch_keys: Vec<String> = slots
            .iter()
            .filter_map(|s| s.family.as_ref().map(|f| f.epoch_key.clone()))
            .collect();
        epoch_keys.sort();
        epoch_keys.dedup();
        let mut inv = Call::new(&self.scripts.read_many);
        for s in slots {
            inv.key(s.key.clone());
        }
        for e in &epoch_keys {
            inv.key(e.clone());
        }
        inv.arg(slots.len());
        let reply: Vec<redis::Value> = self.invoke(inv).await?;
        let bytes = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        };
        let n = slots.len();
        let epochs: Vec<Option<Vec<u8>>> = (0..epoch_keys.len())
            .map(|i| bytes(reply.get(n + i)))
            .collect();
        Ok(slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                if matches!(
                    reply.get(n + epoch_keys.len() + i),
                    Some(redis::Value::Int(1))
                ) {
                    return Some(Stored::Oversized);
                }
                let epoch = slot.family.as_ref().map(|f| {
                    let j = epoch_keys.binary_search(&f.epoch_key).ok()?;
                    valid(&epochs[j])
                });
                live_payload(bytes(reply.get(i))?, epoch).map(Stored::Bytes)
            })
            .collect())
    }

    async fn set_now(&self, slot: &Slot, value: &dyn Value, ttl: Option<Duration>) -> Result<()> {
        let mut inv = Self::on_slot(&self.scripts.set, slot, true);
        inv.arg(self.encode(slot, value)?)
            .arg(ttl_arg(ttl))
            .arg(generation::new_token());
        self.invoke::<i64>(inv).await.map(drop)
    }

    async fn set_many_now(
        &self,
        items: &[(Slot, &dyn Value)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let ttl = ttl_arg(ttl);
        let fresh = generation::new_token();
        let mut pipe = redis::pipe();
        for (slot, value) in items {
            let mut keys = vec![slot.key.clone(), lease_key(&slot.key)];
            keys.extend(slot.family.as_ref().map(|f| f.epoch_key.clone()));
            pipe.cmd("EVALSHA")
                .arg(self.scripts.set.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(self.encode(slot, *value)?)
                .arg(&ttl)
                .arg(&fresh)
                .ignore();
        }
        let set = self.scripts.set.clone();
        self.run(|mut c| async move {
            // Make sure the script is loaded before the EVALSHA pipeline.
            set.prepare_invoke().load_async(&mut c).await?;
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn add_now(&self, slot: &Slot, value: &dyn Value, ttl: Option<Duration>) -> Result<bool> {
        let mut inv = Self::on_slot(&self.scripts.add, slot, true);
        inv.arg(self.encode(slot, value)?)
            .arg(ttl_arg(ttl))
            .arg(generation::new_token());
        Ok(self.invoke::<i64>(inv).await? == 1)
    }

    async fn lease_now(&self, slot: &Slot, token: &str, replace: bool) -> Result<LeaseOutcome> {
        let mut inv = Self::on_slot(&self.scripts.lease, slot, true);
        inv.arg(token)
            .arg(px(self.lease_timeout))
            .arg(generation::new_token())
            .arg(if replace { "1" } else { "0" });
        let reply: Vec<redis::Value> = self.invoke(inv).await?;
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        };
        let bytes = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => b.clone(),
            _ => Vec::new(),
        };
        match int(reply.first()) {
            1 => {
                let epoch = bytes(reply.get(2));
                let value = bytes(reply.get(1));
                let payload = if slot.family.is_some() {
                    live_payload(value, Some(Some(&epoch)))
                } else {
                    Some(value)
                };
                Ok(match payload {
                    Some(p) => LeaseOutcome::Found(Stored::Bytes(p)),
                    None => LeaseOutcome::Busy,
                })
            }
            2 => {
                let epoch = String::from_utf8_lossy(&bytes(reply.get(1))).into_owned();
                if int(reply.get(2)) == 1
                    && let Some(f) = &slot.family
                {
                    tracing::warn!(family = %f.name, "the epoch of this key family was missing or malformed; a fresh one was written (every entry of the family reads as a miss)");
                }
                Ok(LeaseOutcome::Granted(Lease {
                    token: token.to_owned(),
                    epoch: if slot.family.is_some() {
                        Epoch::Token(epoch)
                    } else {
                        Epoch::None
                    },
                }))
            }
            _ => Ok(LeaseOutcome::Busy),
        }
    }

    async fn fill_now(
        &self,
        slot: &Slot,
        value: &dyn Value,
        ttl: Option<Duration>,
        lease: &Lease,
        replace: bool,
    ) -> Result<Filled> {
        let mut inv = Self::on_slot(&self.scripts.fill, slot, true);
        inv.arg(self.encode(slot, value)?)
            .arg(ttl_arg(ttl))
            .arg(&lease.token)
            .arg(epoch_arg(&lease.epoch))
            .arg(if replace { "1" } else { "0" });
        Ok(match self.invoke::<i64>(inv).await? {
            1 => Filled::Stored,
            2 => Filled::Kept,
            _ => Filled::Lost,
        })
    }

    async fn release_now(&self, slot: &Slot, lease: &Lease) -> Result<bool> {
        let mut inv = Call::new(&self.scripts.release);
        inv.key(lease_key(&slot.key));
        if let Some(f) = &slot.family {
            inv.key(f.epoch_key.clone());
        }
        inv.arg(&lease.token).arg(epoch_arg(&lease.epoch));
        Ok(self.invoke::<i64>(inv).await? == 1)
    }

    async fn renew_now(&self, slot: &Slot, lease: &Lease) -> Result<bool> {
        let mut inv = Call::new(&self.scripts.renew);
        inv.key(lease_key(&slot.key));
        inv.arg(&lease.token).arg(px(self.lease_timeout));
        Ok(self.invoke::<i64>(inv).await? == 1)
    }

    /// Deletes `keys` and their leases; returns how many keys existed.
    async fn delete_now(&self, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let keys = keys.to_vec();
        let leases: Vec<String> = keys.iter().map(|k| lease_key(k)).collect();
        self.run(|mut c| async move {
            let (n, _): (usize, usize) = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys)
                .cmd("DEL")
                .arg(leases)
                .query_async(&mut c)
                .await?;
            Ok(n)
        })
        .await
    }

    /// Deletes every key `pattern` covers (shortened keys included), and
    /// the lease of every key it covers, present or not, with `SCAN` in
    /// batches (never `KEYS`). Epoch keys are never deleted.
    async fn delete_pattern_now(&self, pattern: &str) -> Result<usize> {
        let scan = scan_pattern(pattern);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let scan = scan.clone();
            let (next, keys): (u64, Vec<String>) = self
                .run(move |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(scan)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            // Every covered key goes together with its lease, and every
            // covered lease with its key, in one atomic UNLINK: a fill that
            // completes between this SCAN and the UNLINK (its lease seen,
            // its value not yet written) is deleted with the rest.
            let mut values = std::collections::BTreeSet::new();
            for k in keys {
                if generation::is_epoch_key(&k) {
                    continue;
                }
                let base = k.strip_suffix(LEASE_SUFFIX).unwrap_or(&k);
                if pattern_covers(pattern, base) {
                    values.insert(base.to_owned());
                }
            }
            let leases: Vec<String> = values.iter().map(|k| lease_key(k)).collect();
            let values: Vec<String> = values.into_iter().collect();
            if !values.is_empty() || !leases.is_empty() {
                let n: usize = self
                    .run(move |mut c| async move {
                        let mut pipe = redis::pipe();
                        pipe.atomic();
                        if values.is_empty() {
                            pipe.cmd("ECHO").arg(0);
                        } else {
                            pipe.cmd("UNLINK").arg(&values);
                        }
                        if !leases.is_empty() {
                            pipe.cmd("UNLINK").arg(&leases).ignore();
                        }
                        let (n,): (usize,) = pipe.query_async(&mut c).await?;
                        Ok(n)
                    })
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn ttl_script(&self, slot: &Slot, arg: String) -> Result<i64> {
        let mut inv = Self::on_slot(&self.scripts.ttl, slot, false);
        inv.arg(arg);
        self.invoke(inv).await
    }

    async fn incr_now(&self, slot: &Slot, delta: i128) -> Result<Incr> {
        let mut inv = Self::on_slot(&self.scripts.incr, slot, false);
        inv.arg(delta.to_string());
        match self.invoke::<Option<String>>(inv).await {
            Ok(Some(n)) => Ok(n.parse().map_or(Incr::NotAnInteger, Incr::Done)),
            Ok(None) => Ok(Incr::Missing),
            Err(Error::Redis(e))
                if e.to_string().contains("not an integer")
                    || e.to_string().contains("overflow") =>
            {
                Ok(Incr::NotAnInteger)
            }
            Err(e) => Err(e),
        }
    }

    async fn cmd<T: redis::FromRedisValue + Send + 'static>(&self, cmd: redis::Cmd) -> Result<T> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }
}

impl Store for RedisStore {
    fn renew_every(&self) -> Option<Duration> {
        Some(self.lease_timeout / 3)
    }

    fn get<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(self.get_one(slot))
    }

    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        Box::pin(self.get_many_now(slots))
    }

    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.set_now(slot, value, ttl))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(Slot, &'a dyn Value)],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.set_many_now(items, ttl))
    }

    fn add<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.add_now(slot, value, ttl))
    }

    fn lease<'a>(
        &'a self,
        slot: &'a Slot,
        token: &'a str,
        replace: bool,
    ) -> StoreFuture<'a, LeaseOutcome> {
        Box::pin(self.lease_now(slot, token, replace))
    }

    fn renew<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        Box::pin(self.renew_now(slot, lease))
    }

    fn fill<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
        lease: &'a Lease,
        replace: bool,
    ) -> StoreFuture<'a, Filled> {
        Box::pin(self.fill_now(slot, value, ttl, lease, replace))
    }

    fn release<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        Box::pin(self.release_now(slot, lease))
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, usize> {
        Box::pin(self.delete_now(keys))
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(self.delete_pattern_now(pattern))
    }

    fn clear<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.delete_pattern_now(pattern).await.map(drop) })
    }

    fn flush<'a>(&'a self) -> StoreFuture<'a, ()> {
        Box::pin(self.cmd(redis::cmd("FLUSHDB")))
    }

    fn bump<'a>(&'a self, family: &'a Family) -> StoreFuture<'a, ()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&family.epoch_key).arg(generation::new_token());
        Box::pin(self.cmd(cmd))
    }

    fn incr<'a>(&'a self, slot: &'a Slot, delta: i128) -> StoreFuture<'a, Incr> {
        Box::pin(self.incr_now(slot, delta))
    }

    fn touch<'a>(&'a self, slot: &'a Slot, ttl: Option<Duration>) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(self.ttl_script(slot, ttl_arg(ttl)).await? != -2) })
    }

    fn ttl<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Ttl>> {
        Box::pin(async move {
            Ok(match self.ttl_script(slot, String::new()).await? {
                -2 => None,
                -1 => Some(Ttl::Forever),
                ms => Some(Ttl::Remaining(Duration::from_millis(ms.max(0) as u64))),
            })
        })
    }

    fn ping<'a>(&'a self) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.cmd::<String>(redis::cmd("PING")).await.map(drop) })
    }

    fn drop_oversized<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = Call::new(&self.scripts.drop_oversized);
            inv.key(slot.key.clone()).key(lease_key(&slot.key));
            Ok(self.invoke::<i64>(inv).await? == 1)
        })
    }
}
