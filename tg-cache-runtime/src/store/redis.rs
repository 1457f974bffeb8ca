//! The Redis store: values in Redis, read with plain `GETRANGE`s (one round
//! trip, no script), written through the Lua scripts of `scripts.rs` that
//! keep the fill guarantee (`store/mod.rs`, `lease.rs`), reached through
//! [`Connections`].
//!
//! The same store runs on a Redis Cluster (`CacheConfig::redis_cluster`):
//! its internal keys are then named into their key's slot
//! ([`super::names`]), every call's commands stay in one slot, and what
//! spans slots (`get_many`, `set_many`, `delete_many`) is split by slot,
//! while what spans the keyspace (`delete_pattern`, `clear`, a family's
//! invalidation) visits every primary.

use super::Write;
use super::connection::{Conn, ConnectionSettings, Connections};
use super::epochs::Lookup;
use super::framing::Framing;
use super::names::Names;
use super::primaries::TrackedPrimaries;
use super::scripts::Scripts;
use super::slots::Primary;
use super::{
    Family, Filled, Incr, Lease, LeaseMode, LeaseOutcome, Seen, Slot, Store, StoreFuture, Stored,
    Value,
};
use crate::error::{Error, Result};
use crate::generation::{self, Epoch};
use crate::lease::{self, HEAD_BYTES, Holders};
use crate::timeout::Ttl;
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
    /// How family values are stored (`framing.rs`).
    pub(crate) framing: Framing,
}

pub(crate) struct RedisStore {
    conns: Connections,
    /// On a cluster with a near cache: the tracked connections of each
    /// primary, where tracked reads go (`primaries.rs`).
    tracked: std::sync::OnceLock<Arc<TrackedPrimaries>>,
    connection: ConnectionSettings,
    /// Where internal keys live: beside their key, or in its slot.
    names: Names,
    /// Family values stamped with their epoch, or bare (shared with Django).
    framing: Framing,
    scripts: Scripts,
    lease_timeout: Duration,
    compress_min: Option<usize>,
    max_value_bytes: usize,
    /// The longest stored value read: the cap plus room for a header.
    read_limit: usize,
    /// How many bytes the first read of a value asks for.
    first_read: usize,
}

/// Whether a reply is a cluster's redirection (`ASK`, `MOVED`, `TRYAGAIN`).
fn redirected(v: &redis::Value) -> bool {
    use redis::ServerErrorKind::{Ask, Moved, TryAgain};
    matches!(v, redis::Value::ServerError(e) if matches!(e.kind(), Some(Ask | Moved | TryAgain)))
}

/// Whether a reply is one the server read a key for (a string, or none):
/// not an error, so the key is tracked.
fn answered(v: &redis::Value) -> bool {
    matches!(v, redis::Value::BulkString(_) | redis::Value::Nil)
}

/// The replies of `pipe`'s commands sent one at a time (each routed, and
/// redirected, on its own); a command the server refused reads as
/// [`redis::Value::Nil`], as the pipeline's ignored errors do, but for a
/// redirection that did not settle.
async fn one_by_one(pipe: &redis::Pipeline, c: &mut Conn) -> redis::RedisResult<Vec<redis::Value>> {
    let mut out = Vec::new();
    for cmd in pipe.cmd_iter() {
        out.push(match cmd.query_async::<redis::Value>(c).await {
            Ok(v) => v,
            Err(e) if e.is_cluster_error() => return Err(e),
            Err(e)
                if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) =>
            {
                redis::Value::Nil
            }
            Err(e) => return Err(e),
        });
    }
    Ok(out)
}

/// The first read of a value asks for at most this many bytes: almost every
/// value fits, and a huge value at a key (a foreign writer's) costs a
/// reader no more than this, however many read it at once.
const FIRST_READ_BYTES: usize = 1 << 20;

/// The indices of `items` grouped by their key, each group with the
/// value of its first item, in the order the groups first appear.
fn grouped<K: Eq + std::hash::Hash, V>(
    items: impl Iterator<Item = (K, V)>,
) -> Vec<(V, Vec<usize>)> {
    let mut at: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    let mut groups: Vec<(V, Vec<usize>)> = Vec::new();
    for (i, (k, v)) in items.enumerate() {
        let g = *at.entry(k).or_insert_with(|| {
            groups.push((v, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// The results of [`grouped`] parts put back in the order of the `n`
/// items they were grouped from.
fn in_order<T>(n: usize, parts: Vec<(Vec<usize>, Vec<T>)>) -> Vec<T> {
    let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(n).collect();
    for (ix, values) in parts {
        for (i, v) in ix.into_iter().zip(values) {
            out[i] = Some(v);
        }
    }
    out.into_iter()
        .map(|v| v.expect("every item is in one group"))
        .collect()
}

/// Slot epochs a cluster's invalidation writes through the routing at once
/// (those its primary's sweep could not).
const BUMPS_AT_ONCE: usize = 64;

/// How often a cluster's topology is read for its tracked connections
/// (`primaries.rs`).
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// One script call being built: its keys and arguments, owned, so that it
/// can be sent to the connection's task.
struct Call {
    script: Arc<redis::Script>,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Call {
    /// A call of `script` on `slot`'s key and, if it has a family, its
    /// epoch key (`KEYS[2]`: one server, one slot on a cluster, keeps both).
    fn on(script: &Arc<redis::Script>, names: Names, slot: &Slot) -> Self {
        let mut keys = Vec::with_capacity(3);
        keys.push(slot.key.clone());
        if let Some(f) = &slot.family {
            keys.push(names.epoch(f, &slot.key).into_owned());
        }
        Self {
            script: script.clone(),
            keys,
            args: Vec::with_capacity(6),
        }
    }

    /// A call of `script` on `slot`'s key, its refresh sidecar and, if it
    /// has a family, its epoch key (`KEYS[3]`).
    fn with_sidecar(script: &Arc<redis::Script>, names: Names, slot: &Slot) -> Self {
        let mut call = Self::on(script, names, slot);
        call.keys.insert(1, names.sidecar(&slot.key));
        call
    }

    /// A call of `script` on the key that holds `lease`: the slot's key, or
    /// for a refresh its sidecar; and the epoch key.
    fn on_lease(script: &Arc<redis::Script>, names: Names, slot: &Slot, lease: &Lease) -> Self {
        let mut call = Self::on(script, names, slot);
        if lease.refresh {
            call.keys[0] = names.sidecar(&slot.key);
        }
        call
    }

    fn arg(&mut self, a: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(a.to_redis_args());
        self
    }
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A value's lifetime as the scripts take it: milliseconds, `0` forever.
fn ttl_arg(ttl: Option<Duration>) -> String {
    ttl.map_or_else(|| "0".to_owned(), |t| px(t).to_string())
}

fn epoch_arg(e: &Epoch) -> &str {
    match e {
        Epoch::Token(t) => t,
        Epoch::None | Epoch::Local(_) => "",
    }
}

fn mode_arg(mode: LeaseMode) -> &'static str {
    match mode {
        LeaseMode::Fresh => "fresh",
        LeaseMode::Repair(_) => "repair",
        LeaseMode::Refresh => "refresh",
        LeaseMode::Join => "join",
    }
}

/// A slot whose breaker range (`connection::SLOTS_PER_BREAKER` slots)
/// lies wholly in `slots` (a primary's ranges), or else the first slot.
fn own_breaker_slot(slots: &[(u16, u16)]) -> Option<u16> {
    use super::connection::SLOTS_PER_BREAKER as PER;
    slots
        .iter()
        .find_map(|&(a, b)| {
            let start = a.div_ceil(PER).checked_mul(PER)?;
            (u32::from(start) + u32::from(PER) - 1 <= u32::from(b)).then_some(start)
        })
        .or_else(|| slots.first().map(|&(a, _)| a))
}

/// The epoch token read from an epoch key, if well-formed.
fn valid(e: Option<&[u8]>) -> Option<&[u8]> {
    e.filter(|t| generation::valid_token(t))
}

fn bytes(v: Option<&redis::Value>) -> Option<&[u8]> {
    match v {
        Some(redis::Value::BulkString(b)) => Some(b),
        Some(redis::Value::SimpleString(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: Option<&redis::Value>) -> i64 {
    match v {
        Some(redis::Value::Int(n)) => *n,
        _ => -1,
    }
}

/// Logs an epoch that a script had to make: the first one of a family is
/// routine, a malformed one replaced is worth a warning.
fn log_made(slot: &Slot, made: i64) {
    let Some(f) = &slot.family else { return };
    match made {
        1 => tracing::debug!(family = %f.name, "first epoch of this key family written"),
        2 => {
            tracing::warn!(family = %f.name, "the epoch of this key family was malformed; a fresh one was written (every entry of the family reads as a miss)")
        }
        _ => {}
    }
}

impl RedisStore {
    pub(crate) fn new(s: &RedisSettings) -> Result<Self> {
        let read_limit = s.max_value_bytes.saturating_add(HEAD_BYTES);
        let conns = Connections::new(&s.connection)?;
        if conns.is_cluster() {
            // The slots' tags, built now rather than on the first hit.
            super::slots::tag_for(0);
        }
        Ok(Self {
            tracked: std::sync::OnceLock::new(),
            connection: s.connection.clone(),
            names: if conns.is_cluster() {
                Names::Cluster
            } else {
                Names::Node
            },
            conns,
            framing: s.framing,
            scripts: Scripts::new(read_limit, s.framing),
            lease_timeout: s.lease_timeout,
            compress_min: s.compress_min,
            max_value_bytes: s.max_value_bytes,
            read_limit,
            first_read: FIRST_READ_BYTES.min(read_limit + 1),
        })
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.conns.run(None, op).await
    }

    /// The hash slot of `key` on a cluster (which chooses the breaker of a
    /// call, `connection.rs`); `None` on one server.
    fn key_slot(&self, key: &str) -> Option<u16> {
        (self.names == Names::Cluster).then(|| super::slots::slot_of(key.as_bytes()))
    }

    async fn invoke<T: redis::FromRedisValue + Send + 'static>(&self, call: Call) -> Result<T> {
        self.invoke_on(&self.conns, &call).await
    }

    /// [`RedisStore::invoke`], on a cluster through the tracked connection
    /// of the key's primary (`primaries.rs`), so that what the script read
    /// is tracked there and its change wakes a waiter ([`Store::watch`]).
    /// Sent again through the cluster connection only when the primary
    /// surely did not run it: it refused the slot (`MOVED`, `ASK`,
    /// `TRYAGAIN`, `CLUSTERDOWN`), refused the connection, or its breaker
    /// is open.
    async fn invoke_tracked<T: redis::FromRedisValue + Send + 'static>(
        &self,
        call: Call,
    ) -> Result<T> {
        if let Some(tracked) = self.tracked.get()
            && let Some(node) = tracked.owner(super::slots::slot_of(call.keys[0].as_bytes()))
        {
            match self.invoke_on(&node, &call).await {
                Err(Error::Redis { source, .. }) if source.is_cluster_error() => tracked.moved(),
                Err(Error::Redis { source, .. }) if source.is_connection_refusal() => {}
                Err(Error::Unavailable { .. }) => {}
                done => return done,
            }
        }
        self.invoke(call).await
    }

    async fn invoke_on<T: redis::FromRedisValue + Send + 'static>(
        &self,
        conns: &Connections,
        call: &Call,
    ) -> Result<T> {
        let slot = self.key_slot(&call.keys[0]);
        conns
            .run(slot, |mut c| async move {
                let mut i = call.script.prepare_invoke();
                for k in &call.keys {
                    i.key(k);
                }
                for a in &call.args {
                    i.arg(a.as_slice());
                }
                i.invoke_async::<T>(&mut c).await
            })
            .await
    }

    /// The value's JSON, compressed as configured; refused over the cap.
    fn encode(&self, slot: &Slot, value: &dyn Value) -> Result<Vec<u8>> {
        let json = value.to_json().map_err(|source| Error::Encode {
            key: slot.key.clone(),
            source,
        })?;
        if json.len() > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: slot.key.clone(),
                bytes: json.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(crate::codec::compress(json, self.compress_min))
    }

    /// The family of `slot` if its values are stamped with the family's
    /// epoch (`framing.rs`): what a read checks them against.
    fn stamped<'s>(&self, slot: &'s Slot) -> Option<&'s Family> {
        slot.family.as_ref().filter(|_| self.framing.stamps())
    }

    /// What stored bytes mean for a reader: the payload of a live value,
    /// an oversized one, or nothing (absent, a placeholder, dead). `epoch`:
    /// `None` outside any family, `Some(None)` for a family whose epoch is
    /// missing or junk.
    fn classify(&self, raw: Vec<u8>, epoch: Option<Option<&[u8]>>) -> Option<Stored> {
        if raw.is_empty() || lease::is_placeholder(&raw) {
            return None;
        }
        if raw.len() > self.read_limit {
            return Some(Stored::Oversized);
        }
        let payload = match epoch {
            None => raw,
            // Python pickle carries no epoch, yet it is no tg-cache value
            // of an old one: handed on, so that the reader says why it is
            // a miss (`codec::DecodeError::Pickle`) instead of ignoring it.
            Some(_) if crate::codec::is_pickle(&raw) => raw,
            Some(None) => return None,
            Some(Some(token)) => {
                let token = std::str::from_utf8(token).ok()?;
                let header = raw.len() - generation::strip_header(&raw, token)?.len();
                // In place: a big value is never held twice.
                let mut raw = raw;
                raw.drain(..header);
                raw
            }
        };
        if payload.len() > self.max_value_bytes {
            return Some(Stored::Oversized);
        }
        Some(Stored::Bytes(payload))
    }

    /// Whether the first bytes of a value may belong to a live one: not a
    /// placeholder, and for a family, stamped with its current epoch.
    fn may_be_live(&self, head: &[u8], epoch: Option<Option<&[u8]>>) -> bool {
        if lease::is_placeholder(head) {
            return false;
        }
        match epoch {
            None => true,
            Some(None) => false,
            Some(Some(token)) => std::str::from_utf8(token)
                .is_ok_and(|token| generation::strip_header(head, token).is_some()),
        }
    }

    /// The values at `slots`, each checked against its family epoch, in one
    /// round trip of plain reads: a `GETRANGE` of the first
    /// [`FIRST_READ_BYTES`] per key, and one per distinct epoch key that
    /// the connection does not know (`epochs.rs`; a hit of a known family
    /// is one command). A value longer than that is read again, whole, by
    /// [`scripts`]' size-checked `READ_BIG` (a second round trip, for big
    /// values only); so is an epoch invalidated during the read.
    async fn read(&self, slots: &[Slot]) -> Result<Vec<Option<Stored>>> {
        Ok(self.read_with(slots, false).await?.0)
    }

    /// [`RedisStore::read`], with each key's remaining lifetime (`PTTL`, in
    /// the same round trip) when `lifetimes` is set: the near cache's read.
    /// Every key read is tracked by the connection that read it
    /// (`tracking.rs`).
    pub(crate) async fn read_tracked(
        &self,
        slots: &[Slot],
    ) -> Result<(Vec<Option<Stored>>, Vec<Option<Ttl>>)> {
        self.read_with(slots, true).await
    }

    /// The tracking of this store's connections.
    pub(crate) fn tracking(&self) -> &Arc<super::tracking::Tracking> {
        self.conns.tracking()
    }

    /// Where its internal keys live.
    pub(crate) fn names(&self) -> Names {
        self.names
    }

    /// A store, shared; on a cluster its reads and lease requests go to
    /// tracked connections of each key's primary from now on
    /// ([`RedisStore::track_primaries`]).
    pub(crate) fn shared(s: &RedisSettings) -> Result<Arc<Self>> {
        let store = Arc::new(Self::new(s)?);
        store.track_primaries();
        Ok(store)
    }

    /// On a cluster: from now on, reads and lease requests go to tracked
    /// connections of each key's primary (`primaries.rs`), whose topology
    /// is read now and then once a second (at once after a redirected
    /// read) for as long as this store lives. Nothing on one server, whose
    /// connections all track.
    fn track_primaries(self: &Arc<Self>) {
        if self.names != Names::Cluster {
            return;
        }
        let tracked = Arc::new(TrackedPrimaries::new(
            self.connection.clone(),
            self.conns.tracking().clone(),
        ));
        if self.tracked.set(tracked.clone()).is_err() {
            return;
        }
        let store = Arc::downgrade(self);
        crate::exec::io_runtime().spawn(async move {
            let mut failures = 0;
            loop {
                let Some(s) = store.upgrade() else { return };
                match s.primaries().await {
                    Ok(p) if !p.is_empty() => {
                        failures = 0;
                        match tracked.update(p) {
                            Ok(true) => tracing::debug!(
                                "tg-cache: the cluster's topology changed; the near cache was dropped"
                            ),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "tg-cache: no tracked connection to a primary; its keys are read untracked"),
                        }
                    }
                    Ok(_) => {
                        failures += 1;
                        tracked.unreadable(failures);
                    }
                    Err(e) => {
                        failures += 1;
                        tracked.unreadable(failures);
                        tracing::debug!(error = %e, "tg-cache: the cluster's topology could not be read");
                    }
                }
                drop(s);
                tracked.next_turn(TOPOLOGY_EVERY).await;
            }
        });
    }

    async fn read_with(
        &self,
        slots: &[Slot],
        lifetimes: bool,
    ) -> Result<(Vec<Option<Stored>>, Vec<Option<Ttl>>)> {
        if slots.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if self.names == Names::Node {
            let read = self.read_on(&self.conns, slots, lifetimes, false).await?;
            return Ok(read.expect("only a primary's own connection is refused a redirection"));
        }
        // A cluster's read: from each key's primary, on a connection that
        // tracks it and knows the family epochs it read (`primaries.rs`,
        // `epochs.rs`); one pipeline per primary, all at once.
        let owner = |s: &Slot| {
            self.tracked
                .get()
                .and_then(|t| t.owner(super::slots::slot_of(s.key.as_bytes())))
        };
        if slots.len() == 1 {
            return self.read_owned(owner(&slots[0]), slots, lifetimes).await;
        }
        let groups = grouped(slots.iter().map(|s| {
            let node = owner(s);
            (node.as_ref().map(|n| Arc::as_ptr(n) as usize), node)
        }));
        let reads = futures_util::future::try_join_all(groups.into_iter().map(|(node, ix)| {
            let part: Vec<Slot> = ix.iter().map(|&i| slots[i].clone()).collect();
            Box::pin(async move {
                let (values, mut ttls) = self.read_owned(node, &part, lifetimes).await?;
                // Without `lifetimes`, no lifetime was read.
                ttls.resize(values.len(), None);
                Ok::<_, Error>((ix, values.into_iter().zip(ttls).collect::<Vec<_>>()))
            })
        }))
        .await?;
        Ok(in_order(slots.len(), reads).into_iter().unzip())
    }

    /// A cluster's read of `slots`, whose keys `node` serves (`None`: no
    /// tracked primary is known for them): on its tracked connection, or
    /// else through the cluster connection.
    async fn read_owned(
        &self,
        node: Option<Arc<Connections>>,
        slots: &[Slot],
        lifetimes: bool,
    ) -> Result<(Vec<Option<Stored>>, Vec<Option<Ttl>>)> {
        if let Some(node) = node {
            let started = std::time::Instant::now();
            match self.read_on(&node, slots, lifetimes, true).await {
                Ok(Some(read)) => return Ok(read),
                Ok(None) => {
                    if let Some(t) = self.tracked.get() {
                        t.moved();
                    }
                }
                // A slow primary: its deadline is spent.
                Err(e @ (Error::Timeout { .. } | Error::Saturated { .. })) => return Err(e),
                // Most of it, at least: a second read could double the
                // call's time (this way it is at most 1.5 deadlines).
                Err(e) if started.elapsed() > self.connection.response_timeout / 2 => {
                    return Err(e);
                }
                // Unreachable or failing fast: the cluster connection
                // follows a failover.
                Err(e) => {
                    tracing::debug!(error = %e, "tg-cache: a primary's tracked read failed; reading through the cluster")
                }
            }
        }
        // Through the cluster connection, which tracks nothing (no
        // lifetime, so a near cache does not keep it); its pipelines hold
        // one hash slot each.
        let groups = grouped(
            slots
                .iter()
                .map(|s| (super::slots::slot_of(s.key.as_bytes()), ())),
        );
        let reads = futures_util::future::try_join_all(groups.into_iter().map(|((), ix)| {
            let part: Vec<Slot> = ix.iter().map(|&i| slots[i].clone()).collect();
            Box::pin(async move {
                let read = self.read_on(&self.conns, &part, false, false).await?;
                let (values, _) = read.expect("the cluster connection follows redirections");
                Ok::<_, Error>((ix, values))
            })
        }))
        .await?;
        Ok((in_order(slots.len(), reads), vec![None; slots.len()]))
    }

    /// One slot's read (or one server's) on `conns`: `None` if
    /// `refuse_moved` and a reply said the slot is served elsewhere (on a
    /// primary's own connection, which follows no redirection).
    async fn read_on(
        &self,
        conns: &Connections,
        slots: &[Slot],
        lifetimes: bool,
        refuse_moved: bool,
    ) -> Result<Option<(Vec<Option<Stored>>, Vec<Option<Ttl>>)>> {
        // Each key's family epoch: on one server the family's own, on a
        // cluster the one in the key's slot (`names.rs`); each read once.
        let epoch_names: Vec<Option<std::borrow::Cow<'_, str>>> = slots
            .iter()
            .map(|s| self.stamped(s).map(|f| self.names.epoch(f, &s.key)))
            .collect();
        let mut epoch_keys: Vec<&str> = epoch_names.iter().flatten().map(|e| &**e).collect();
        epoch_keys.sort_unstable();
        epoch_keys.dedup();
        // On a cluster the keys share one primary (its own connection) or
        // one hash slot (the cluster connection's routing).
        let key_slot = self.key_slot(&slots[0].key);
        let first_read = self.first_read;
        let epoch_keys = &epoch_keys;
        let read = conns
            .run_on(key_slot, move |mut c, known| async move {
                // Epochs this connection knows are not read (`epochs.rs`).
                let lookups: Vec<Lookup> = epoch_keys.iter().map(|e| known.lookup(e)).collect();
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for s in slots {
                    pipe.cmd("GETRANGE").arg(&s.key).arg(0).arg(first_read - 1);
                }
                for (e, look) in epoch_keys.iter().zip(&lookups) {
                    if let Lookup::Read(_) = look {
                        pipe.cmd("GETRANGE")
                            .arg(*e)
                            .arg(0)
                            .arg(generation::MAX_TOKEN_LEN);
                    }
                }
                if lifetimes {
                    for s in slots {
                        pipe.cmd("PTTL").arg(&s.key);
                    }
                }
                let reply = match pipe.query_async::<Vec<redis::Value>>(&mut c).await {
                    Ok(r) if !r.iter().any(redirected) => r,
                    Err(e) if !e.is_cluster_error() => return Err(e),
                    // The slot moved away from this primary.
                    _ if refuse_moved => return Ok(None),
                    // A slot in migration (its keys split between two
                    // nodes): each read alone, in order (the value before
                    // its epoch, which is enough: an epoch never comes
                    // back), each following `ASK`/`MOVED`/`TRYAGAIN`.
                    _ => one_by_one(&pipe, &mut c).await?,
                };
                let mut reply = reply.into_iter();
                let values: Vec<redis::Value> = reply.by_ref().take(slots.len()).collect();
                let mut epochs: Vec<Option<Arc<[u8]>>> = Vec::with_capacity(lookups.len());
                let mut again = Vec::new();
                for (i, (e, look)) in epoch_keys.iter().zip(lookups).enumerate() {
                    match look {
                        Lookup::Read(ticket) => {
                            let v = reply.next();
                            let token = valid(bytes(v.as_ref())).map(Arc::from);
                            // Only what the server read (and so tracks):
                            // never an error reply (`CLUSTERDOWN`).
                            if v.as_ref().is_some_and(answered) {
                                known.learn(e, ticket, &token);
                            }
                            epochs.push(token);
                        }
                        Lookup::Known(ticket, token) => {
                            // Invalidated before the reply: the epoch may
                            // have moved before the value was read.
                            if !known.unchanged_since(e, ticket) {
                                again.push(i);
                            }
                            epochs.push(token);
                        }
                    }
                }
                if !again.is_empty() {
                    super::epochs::RACED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Read now: a value stamped with the epoch current now
                    // was stamped with the one current at its read too
                    // (values are stamped atomically when written, and
                    // epochs never come back). What another read learnt
                    // meanwhile (`Known`) is not needed: this read's own
                    // answer is used, and kept only under a fresh ticket.
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    let mut tickets = Vec::with_capacity(again.len());
                    for &i in &again {
                        tickets.push(match known.lookup(epoch_keys[i]) {
                            Lookup::Read(t) => Some(t),
                            Lookup::Known(..) => None,
                        });
                        pipe.cmd("GETRANGE")
                            .arg(epoch_keys[i])
                            .arg(0)
                            .arg(generation::MAX_TOKEN_LEN);
                    }
                    let fresh: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                    if refuse_moved && fresh.iter().any(redirected) {
                        // The slot moved away meanwhile (a migration).
                        return Ok(None);
                    }
                    for ((&i, ticket), v) in again.iter().zip(tickets).zip(&fresh) {
                        let token = valid(bytes(Some(v))).map(Arc::from);
                        if let Some(t) = ticket
                            && answered(v)
                        {
                            known.learn(epoch_keys[i], t, &token);
                        }
                        epochs[i] = token;
                    }
                }
                let ttls: Vec<Option<Ttl>> = reply
                    .map(|v| match v {
                        redis::Value::Int(-1) => Some(Ttl::Forever),
                        redis::Value::Int(ms) if ms >= 0 => {
                            Some(Ttl::Remaining(Duration::from_millis(ms as u64)))
                        }
                        _ => None,
                    })
                    .collect();
                Ok(Some((values, epochs, ttls)))
            })
            .await?;
        let Some((values, epochs, ttls)) = read else {
            return Ok(None);
        };
        let n = slots.len();
        let mut out = Vec::with_capacity(n);
        for ((slot, v), name) in slots.iter().zip(values).zip(&epoch_names) {
            let mut raw = match v {
                redis::Value::BulkString(raw) => raw,
                // Another type than a string (a WRONGTYPE error): foreign.
                _ => {
                    out.push(None);
                    continue;
                }
            };
            let epoch = name.as_ref().map(|name| {
                let i = epoch_keys.binary_search(&&**name).ok()?;
                epochs.get(i)?.as_deref()
            });
            if raw.len() == self.first_read && self.first_read <= self.read_limit {
                // A dead value (its family's epoch moved on) is a miss
                // whatever its length: its header, in the first read, says
                // so, and its bulk is never fetched.
                if !self.may_be_live(&raw, epoch) {
                    out.push(None);
                    continue;
                }
                // Boxed: rare, and a script call's future is big.
                match Box::pin(self.read_big(slot)).await? {
                    Some(Some(whole)) => raw = whole,
                    Some(None) => {
                        out.push(Some(Stored::Oversized));
                        continue;
                    }
                    None => {
                        out.push(None);
                        continue;
                    }
                }
            }
            out.push(self.classify(raw, epoch));
        }
        Ok(Some((out, ttls)))
    }

    /// The whole value at a key longer than the first read: `Some(None)`
    /// when it is over the read limit (and was not sent), `None` when it is
    /// gone or of another type.
    async fn read_big(&self, slot: &Slot) -> Result<Option<Option<Vec<u8>>>> {
        let mut call = Call::on(&self.scripts.read_big, self.names, slot);
        call.keys.truncate(1);
        Ok(match self.invoke::<redis::Value>(call).await? {
            redis::Value::BulkString(b) => Some(Some(b)),
            redis::Value::Int(_) => Some(None),
            _ => None,
        })
    }

    async fn set_now(&self, slot: &Slot, value: &dyn Value, ttl: Option<Duration>) -> Result<()> {
        self.set_encoded(slot, self.encode(slot, value)?, ttl).await
    }

    /// [`RedisStore::set_now`] of a value already encoded.
    async fn set_encoded(
        &self,
        slot: &Slot,
        payload: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let mut call = Call::with_sidecar(&self.scripts.set, self.names, slot);
        call.arg(payload)
            .arg(ttl_arg(ttl))
            .arg(generation::new_token())
            .arg("");
        let made: i64 = self.invoke(call).await?;
        log_made(slot, made);
        Ok(())
    }

    async fn set_many_now(&self, items: &[Write<'_>]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if self.names == Names::Cluster {
            // Every value encoded first (one refused writes none), then
            // each write on its own key's node, all at once.
            let payloads = items
                .iter()
                .map(|w| self.encode(&w.slot, w.value))
                .collect::<Result<Vec<_>>>()?;
            futures_util::future::try_join_all(
                items
                    .iter()
                    .zip(payloads)
                    .map(|(w, p)| Box::pin(self.set_encoded(&w.slot, p, w.ttl))),
            )
            .await?;
            return Ok(());
        }
        let fresh = generation::new_token();
        let mut pipe = redis::pipe();
        for Write { slot, value, ttl } in items {
            let mut keys = vec![slot.key.clone(), self.names.sidecar(&slot.key)];
            keys.extend(
                slot.family
                    .as_ref()
                    .map(|f| self.names.epoch(f, &slot.key).into_owned()),
            );
            pipe.cmd("EVALSHA")
                .arg(self.scripts.set.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(self.encode(slot, *value)?)
                .arg(ttl_arg(*ttl))
                .arg(&fresh)
                .arg("")
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
        let mut call = Call::with_sidecar(&self.scripts.add, self.names, slot);
        call.arg(self.encode(slot, value)?)
            .arg(ttl_arg(ttl))
            .arg(generation::new_token())
            .arg("");
        let (stored, made): (i64, i64) = self.invoke(call).await?;
        log_made(slot, made);
        Ok(stored == 1)
    }

    async fn lease_now(
        &self,
        slot: &Slot,
        token: &str,
        mode: LeaseMode,
        ttl: Option<Duration>,
    ) -> Result<LeaseOutcome> {
        let reply: Vec<redis::Value> = if mode == LeaseMode::Refresh {
            let mut call = Call::with_sidecar(&self.scripts.refresh, self.names, slot);
            call.arg(token)
                .arg(px(self.lease_timeout))
                .arg(generation::new_token())
                .arg(ttl_arg(ttl))
                .arg("");
            self.invoke_tracked(call).await?
        } else {
            let mut call = Call::on(&self.scripts.lease, self.names, slot);
            call.arg(token)
                .arg(px(self.lease_timeout))
                .arg(mode_arg(mode))
                .arg(generation::new_token())
                .arg(ttl_arg(ttl))
                .arg("");
            match mode {
                LeaseMode::Repair(Seen::Bytes { len, head, n }) => {
                    call.arg(len).arg(&head[..usize::from(n)]);
                }
                _ => {
                    call.arg("big").arg("");
                }
            }
            self.invoke_tracked(call).await?
        };
        match int(reply.first()) {
            4 => Ok(LeaseOutcome::Found(Stored::Oversized)),
            1 => {
                log_made(slot, int(reply.get(3)));
                let raw = bytes(reply.get(1)).unwrap_or_default().to_vec();
                let epoch = self.stamped(slot).map(|_| bytes(reply.get(2)));
                Ok(match self.classify(raw, epoch) {
                    Some(stored) => LeaseOutcome::Found(stored),
                    None => LeaseOutcome::Busy(Holders::new(Vec::new())),
                })
            }
            2 => {
                log_made(slot, int(reply.get(2)));
                let epoch = String::from_utf8_lossy(bytes(reply.get(1)).unwrap_or_default());
                Ok(LeaseOutcome::Granted(Lease {
                    token: token.to_owned(),
                    epoch: if slot.family.is_some() {
                        Epoch::Token(epoch.into_owned())
                    } else {
                        Epoch::None
                    },
                    refresh: mode == LeaseMode::Refresh,
                }))
            }
            _ => {
                let list = String::from_utf8_lossy(bytes(reply.get(1)).unwrap_or_default());
                Ok(LeaseOutcome::Busy(Holders::new(
                    list.split(',')
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )))
            }
        }
    }

    async fn fill_now(
        &self,
        slot: &Slot,
        value: &dyn Value,
        ttl: Option<Duration>,
        lease: &Lease,
    ) -> Result<Filled> {
        let epoch = epoch_arg(&lease.epoch);
        let stored = self.framing.frame(self.encode(slot, value)?, epoch);
        let mut call = if lease.refresh {
            Call::with_sidecar(&self.scripts.refresh_fill, self.names, slot)
        } else {
            Call::on(&self.scripts.fill, self.names, slot)
        };
        call.arg(stored)
            .arg(ttl_arg(ttl))
            .arg(&lease.token)
            .arg(epoch);
        Ok(match self.invoke::<i64>(call).await? {
            1 => Filled::Stored,
            2 => Filled::Kept,
            _ => Filled::Lost,
        })
    }

    async fn release_now(&self, slot: &Slot, lease: &Lease) -> Result<bool> {
        let mut call = Call::on_lease(&self.scripts.release, self.names, slot, lease);
        call.arg(&lease.token).arg(epoch_arg(&lease.epoch));
        Ok(self.invoke::<i64>(call).await? == 1)
    }

    async fn renew_now(&self, slot: &Slot, lease: &Lease) -> Result<bool> {
        let mut call = Call::on_lease(&self.scripts.renew, self.names, slot, lease);
        call.arg(&lease.token).arg(px(self.lease_timeout));
        Ok(self.invoke::<i64>(call).await? == 1)
    }

    /// Deletes `keys` (values or placeholders) and their refreshes'
    /// sidecars; returns how many keys existed.
    async fn delete_now(&self, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.names == Names::Cluster && keys.len() > 1 {
            // A `DEL` of many keys spans slots: one per key (with its
            // sidecar, in its slot), all at once; a key given twice counts
            // once, as in one `DEL`.
            let mut keys = keys.to_vec();
            keys.sort_unstable();
            keys.dedup();
            let n = futures_util::future::try_join_all(
                keys.iter()
                    .map(|k| Box::pin(self.delete_now(std::slice::from_ref(k)))),
            )
            .await?;
            return Ok(n.into_iter().sum());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(keys);
        let sidecars: Vec<String> = keys.iter().map(|k| self.names.sidecar(k)).collect();
        pipe.cmd("DEL").arg(sidecars).ignore();
        // One key, on a cluster (above): behind its slot's breaker.
        let slot = self.key_slot(&keys[0]);
        let (n,): (usize,) = self
            .conns
            .run(
                slot,
                move |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(n)
    }

    /// Deletes every key `pattern` matches with `SCAN` in batches (never
    /// `KEYS`), epoch keys too when `epochs`; returns how many it deleted.
    ///
    /// On one server a fill that began before this call cannot survive it,
    /// on a database of any size (a cluster: see
    /// [`RedisStore::unlink_matching_on_primaries`]): its key holds its placeholder, then its value, from
    /// before the scan began until it is deleted, and `SCAN` returns every
    /// key present from its start to its end.
    async fn unlink_matching(&self, pattern: &str, epochs: bool) -> Result<usize> {
        if self.names == Names::Cluster {
            return self.unlink_matching_on_primaries(pattern, epochs).await;
        }
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let scan = pattern.to_owned();
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
            // Values (counted) with their refreshes' sidecars, and the
            // sidecars the scan found itself.
            let (sidecars, values): (Vec<String>, Vec<String>) = keys
                .into_iter()
                .filter(|k| epochs || !generation::is_epoch_key(k))
                .partition(|k| lease::is_sidecar(k));
            let mut others: Vec<String> = values.iter().map(|k| self.names.sidecar(k)).collect();
            others.extend(sidecars);
            if !values.is_empty() || !others.is_empty() {
                let mut pipe = redis::pipe();
                if values.is_empty() {
                    pipe.cmd("ECHO").arg(0);
                } else {
                    pipe.cmd("UNLINK").arg(&values);
                }
                if !others.is_empty() {
                    pipe.cmd("UNLINK").arg(&others).ignore();
                }
                let (n,): (usize,) = self
                    .run(move |mut c| async move { pipe.query_async(&mut c).await })
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The cluster's primaries and the slots each serves (`CLUSTER SLOTS`
    /// of any node: what the cluster said last, which a migration may
    /// change meanwhile; the commands sent by it retry what was moved).
    async fn primaries(&self) -> Result<Vec<Primary>> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        Ok(Primary::all_in(&self.cmd::<redis::Value>(cmd).await?))
    }

    /// Sends `pipe` to one primary (a pipeline of commands for any of its
    /// slots); the replies, errors included, in order.
    async fn on_primary(&self, node: &Primary, pipe: redis::Pipeline) -> Result<Vec<redis::Value>> {
        let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
            host: node.host.clone(),
            port: node.port,
        };
        // Behind the breaker of a slot range the node alone serves (its
        // first whole one; else its first slot's): a failed primary fails
        // fast alone, never a neighbour whose slots share a range with
        // its own, nor the calls that span slots (the topology's read
        // among them).
        let slot = own_breaker_slot(&node.slots);
        self.conns
            .run(slot, move |c| async move {
                match c {
                    Conn::Cluster(mut c) => {
                        c.route_pipeline(pipe.clone(), 0, pipe.len(), route).await
                    }
                    Conn::Node(mut c) => pipe.query_async(&mut c).await,
                }
            })
            .await
    }

    /// Runs `cmds` on the primaries that serve their keys' slots, one
    /// pipeline per primary; a command its node refused (its slot moved
    /// meanwhile) is sent again alone, routed by its key. The replies, in
    /// order.
    async fn on_owners(&self, cmds: Vec<(u16, redis::Cmd)>) -> Result<Vec<redis::Value>> {
        let primaries = self.primaries().await?;
        let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); primaries.len()];
        let mut alone = Vec::new();
        for (i, (slot, _)) in cmds.iter().enumerate() {
            match primaries.iter().position(|p| p.serves(*slot)) {
                Some(n) => by_node[n].push(i),
                None => alone.push(i),
            }
        }
        let mut replies = vec![redis::Value::Nil; cmds.len()];
        let sent = futures_util::future::try_join_all(
            by_node
                .iter()
                .zip(&primaries)
                .filter(|(ix, _)| !ix.is_empty())
                .map(|(ix, node)| {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for &i in ix {
                        pipe.add_command(cmds[i].1.clone());
                    }
                    Box::pin(
                        async move { Ok::<_, Error>((ix, self.on_primary(node, pipe).await?)) },
                    )
                }),
        )
        .await?;
        for (ix, values) in sent {
            for (&i, v) in ix.iter().zip(values) {
                if matches!(v, redis::Value::ServerError(_)) {
                    alone.push(i);
                } else {
                    replies[i] = v;
                }
            }
        }
        for i in alone {
            replies[i] = self.cmd(cmds[i].1.clone()).await?;
        }
        Ok(replies)
    }

    /// Unlinks `values` (counted) with their sidecars, and `others`, that
    /// `node`'s `SCAN` returned: in one [`scripts::UNLINK_LOCAL`] call on
    /// it, and the keys it refused (their slot moved meanwhile) one by one
    /// through the routing. Returns how many values it unlinked.
    async fn unlink_on(
        &self,
        node: &Primary,
        values: &[String],
        others: &[String],
    ) -> Result<usize> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(super::scripts::UNLINK_LOCAL)
            .arg(0)
            .arg(values.len());
        cmd.arg(values).arg(others);
        for k in values {
            cmd.arg(self.names.sidecar(k));
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let reply = self.on_primary(node, pipe).await?.into_iter().next();
        let (mut unlinked, refused): (usize, Vec<String>) = match reply {
            Some(redis::Value::Array(out)) if !out.is_empty() => {
                let n = usize::try_from(int(out.first())).unwrap_or(0);
                let refused = out[1..]
                    .iter()
                    .filter_map(|k| bytes(Some(k)))
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                (n, refused)
            }
            // The node failed the call (or was demoted meanwhile): every
            // key through the routing, wherever it is.
            _ => {
                let mut all: Vec<String> = values.iter().chain(others).cloned().collect();
                all.extend(values.iter().map(|k| self.names.sidecar(k)));
                (0, all)
            }
        };
        if !refused.is_empty() {
            let cmds = refused
                .iter()
                .map(|k| {
                    let mut c = redis::cmd("UNLINK");
                    c.arg(k);
                    (super::slots::slot_of(k.as_bytes()), c)
                })
                .collect();
            let replies = self.on_owners(cmds).await?;
            unlinked += refused
                .iter()
                .zip(&replies)
                .filter(|(k, _)| values.contains(k))
                .map(|(_, v)| usize::try_from(int(Some(v))).unwrap_or(0))
                .sum::<usize>();
        }
        Ok(unlinked)
    }

    /// A family's invalidation on a cluster: its epoch replaced in every
    /// slot (`names.rs`), by one [`scripts::SWEEP_EPOCHS`] call per
    /// primary, for the slots it serves; slots no primary was listed for,
    /// or that moved meanwhile, one `SET` each through the routing.
    async fn bump_every_slot(&self, family: &Family, token: &str) -> Result<()> {
        let primaries = self.primaries().await?;
        let mut left: Vec<u16> = (0..super::slots::SLOTS)
            .filter(|&s| !primaries.iter().any(|p| p.serves(s)))
            .collect();
        let swept = futures_util::future::join_all(primaries.iter().map(|node| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(super::scripts::SWEEP_EPOCHS)
                .arg(0)
                .arg(token)
                .arg(&family.epoch_key);
            for &(a, b) in &node.slots {
                for s in a..=b {
                    cmd.arg(super::slots::tag_for(s));
                }
            }
            let mut pipe = redis::pipe();
            pipe.add_command(cmd);
            Box::pin(async move {
                let reply = self.on_primary(node, pipe).await;
                match reply.map(|r| r.into_iter().next()) {
                    Ok(Some(redis::Value::Array(tags))) => Ok(tags
                        .iter()
                        .filter_map(|t| bytes(Some(t)))
                        .filter_map(|t| std::str::from_utf8(t).ok())
                        .map(|t| super::slots::slot_of(t.as_bytes()))
                        .collect::<Vec<u16>>()),
                    // Unreachable (or its calls fill the queue): its slots
                    // cannot be written now, through the routing either
                    // (which would wait out a deadline per slot).
                    Err(e) if e.is_unreachable() || matches!(e, Error::Saturated { .. }) => Err(e),
                    // The node refused (demoted meanwhile): its slots are
                    // written through the routing, wherever they are.
                    _ => Ok(node.slots.iter().flat_map(|&(a, b)| a..=b).collect()),
                }
            })
        }))
        .await;
        // The other primaries are swept; this one's slots stay old.
        for s in swept {
            left.extend(s?);
        }
        // Each through the routing (behind the fair queue and each slot's
        // breaker), with a token of its own per run; at most
        // `BUMPS_AT_ONCE` at a time, so that thousands of them (a failed
        // primary's slots) do not time out in the queue. Every one is
        // tried, unless one finds its node unreachable, or the queue full
        // for its whole deadline (the calls to a dead primary hold it):
        // the invalidation has then failed, and the others would wait out
        // their deadlines for the same answer.
        use futures_util::StreamExt;
        let mut bumps = futures_util::stream::iter(left)
            .map(|s| {
                let call = Call {
                    script: self.scripts.bump_epoch.clone(),
                    keys: vec![self.names.epoch_in(family, s)],
                    args: vec![token.as_bytes().to_vec()],
                };
                Box::pin(self.invoke::<redis::Value>(call))
            })
            .buffer_unordered(BUMPS_AT_ONCE);
        let mut failed = None;
        while let Some(r) = bumps.next().await {
            match r {
                Err(e) if e.is_unreachable() || matches!(e, Error::Saturated { .. }) => {
                    return Err(e);
                }
                Err(e) => failed = failed.or(Some(e)),
                Ok(_) => {}
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// [`RedisStore::unlink_matching`] on a cluster: every primary is
    /// scanned, for the keys and for the internal keys of the matching
    /// names (`#{<tag>}:<name>`, `names.rs`: sidecars, and epochs with
    /// `epochs`).
    ///
    /// A key that a slot migration moves from a primary not yet scanned to
    /// one already scanned is missed, so during a migration a fill begun
    /// before the call may survive it (on one server it cannot).
    async fn unlink_matching_on_primaries(&self, pattern: &str, epochs: bool) -> Result<usize> {
        let mut deleted = 0;
        for node in self.primaries().await? {
            // The keys, then the internal keys (sidecars, and epochs with
            // `epochs`) of names the pattern matches: `#{<tag>}:<name>`.
            // A pattern that opens with `*` matches the internal keys of the
            // names it matches itself: one scan finds both.
            let both = pattern.starts_with('*');
            // (The pattern scanned; whether it is for internal keys only,
            // user keys only, or `None`: both.)
            let mut scans = vec![(pattern.to_owned(), None)];
            if !both {
                scans = vec![
                    (pattern.to_owned(), Some(false)),
                    (format!("#{{*}}:{pattern}"), Some(true)),
                ];
            }
            for (scan, internal) in scans {
                let mut cursor: u64 = 0;
                loop {
                    let mut pipe = redis::pipe();
                    pipe.cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&scan)
                        .arg("COUNT")
                        .arg(1000);
                    let reply = self.on_primary(&node, pipe).await?;
                    let (next, keys): (u64, Vec<String>) = redis::from_redis_value(
                        reply.into_iter().next().unwrap_or(redis::Value::Nil),
                    )
                    .map_err(|source| Error::Redis {
                        addr: format!("{}:{}", node.host, node.port),
                        source: source.into(),
                    })?;
                    let keys: Vec<String> = keys
                        .into_iter()
                        .filter(|k| {
                            let kept = epochs || !generation::is_epoch_key(k);
                            match self.names.untagged(k) {
                                // Only names the pattern matches: a `*` of
                                // either scan may match across `#{<tag>}:`.
                                Some(name) => {
                                    internal != Some(false)
                                        && kept
                                        && crate::key::glob_match(pattern, name)
                                }
                                None => internal != Some(true) && kept,
                            }
                        })
                        .collect();
                    // Values (counted), and internal keys and sidecars.
                    let (sidecars, values): (Vec<String>, Vec<String>) = keys
                        .into_iter()
                        .partition(|k| self.names.untagged(k).is_some() || lease::is_sidecar(k));
                    if !values.is_empty() || !sidecars.is_empty() {
                        deleted += self.unlink_on(&node, &values, &sidecars).await?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        Ok(deleted)
    }

    async fn ttl_script(&self, slot: &Slot, arg: String) -> Result<i64> {
        let mut call = Call::on(&self.scripts.ttl, self.names, slot);
        call.arg(arg).arg("");
        self.invoke(call).await
    }

    async fn incr_now(&self, slot: &Slot, delta: i128) -> Result<Incr> {
        let mut call = Call::with_sidecar(&self.scripts.incr, self.names, slot);
        call.arg(delta.to_string()).arg("");
        match self.invoke::<Option<String>>(call).await {
            Ok(Some(n)) => Ok(n.parse().map_or(Incr::NotAnInteger, Incr::Done)),
            Ok(None) => Ok(Incr::Missing),
            Err(Error::Redis { source: e, .. })
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

    fn watch(&self, slot: &Slot) -> Option<super::tracking::Watch> {
        // A cluster's lease requests are tracked by their primary's own
        // connection (`invoke_tracked`); one sent through the cluster
        // connection instead (a slot in migration) wakes no one, and its
        // waiter polls again after `WATCH_NET` (`protocol.rs`).
        let tracked = match self.tracked.get() {
            None => self.names == Names::Node,
            // Only if its lease request will go to a tracked connection.
            Some(t) => t
                .owner(super::slots::slot_of(slot.key.as_bytes()))
                .is_some(),
        };
        tracked.then(|| self.conns.tracking().watch(&slot.key))
    }

    fn get<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move { Ok(self.read(std::slice::from_ref(slot)).await?.pop().flatten()) })
    }

    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        Box::pin(self.read(slots))
    }

    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.set_now(slot, value, ttl))
    }

    fn set_many<'a>(&'a self, items: &'a [Write<'a>]) -> StoreFuture<'a, ()> {
        Box::pin(self.set_many_now(items))
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
        mode: LeaseMode,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, LeaseOutcome> {
        Box::pin(self.lease_now(slot, token, mode, ttl))
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
    ) -> StoreFuture<'a, Filled> {
        Box::pin(self.fill_now(slot, value, ttl, lease))
    }

    fn release<'a>(&'a self, slot: &'a Slot, lease: &'a Lease) -> StoreFuture<'a, bool> {
        Box::pin(self.release_now(slot, lease))
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, usize> {
        Box::pin(self.delete_now(keys))
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(self.unlink_matching(pattern, false))
    }

    fn clear<'a>(&'a self, pattern: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.unlink_matching(pattern, true).await.map(drop) })
    }

    fn flush<'a>(&'a self) -> StoreFuture<'a, ()> {
        Box::pin(self.cmd(redis::cmd("FLUSHDB")))
    }

    fn scan<'a>(
        &'a self,
        pattern: &'a str,
        mut at: super::ScanAt,
    ) -> StoreFuture<'a, (Vec<String>, Option<super::ScanAt>)> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN")
                .arg(at.cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (reply, nodes) = if self.names == Names::Node {
                let reply: Vec<redis::Value> = self
                    .run(move |mut c| async move { pipe.query_async(&mut c).await })
                    .await?;
                (reply, 1)
            } else {
                // Primaries in address order, so that a listing goes on
                // from one to the next across calls; the same primaries
                // all along, or an error.
                let mut primaries = self.primaries().await?;
                primaries.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
                let topology = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    for p in &primaries {
                        (&p.host, p.port, &p.slots).hash(&mut h);
                    }
                    h.finish() | 1
                };
                let changed = at.topology != 0 && at.topology != topology;
                let Some(node) = primaries.get(at.node).filter(|_| !changed) else {
                    return Err(Error::Redis {
                        addr: self.connection.url.address(),
                        source: redis::RedisError::from((
                            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                            "the cluster's primaries changed during the listing (a failover or a migration); list again",
                        )),
                    });
                };
                at.topology = topology;
                (self.on_primary(node, pipe).await?, primaries.len())
            };
            let (cursor, keys): (u64, Vec<String>) = match reply.into_iter().next() {
                Some(v) => redis::from_redis_value(v).map_err(|source| Error::Redis {
                    addr: self.connection.url.address(),
                    source: source.into(),
                })?,
                None => (0, Vec::new()),
            };
            let next = match cursor {
                0 if at.node + 1 < nodes => Some(super::ScanAt {
                    node: at.node + 1,
                    cursor: 0,
                    ..at
                }),
                0 => None,
                c => Some(super::ScanAt { cursor: c, ..at }),
            };
            Ok((keys, next))
        })
    }

    fn raw_connection<'a>(&'a self) -> StoreFuture<'a, Option<crate::RedisConnection>> {
        Box::pin(async move { self.conns.raw().await.map(Some) })
    }

    fn bump<'a>(&'a self, family: &'a Family) -> StoreFuture<'a, ()> {
        let token = generation::new_token();
        Box::pin(async move {
            match self.names {
                Names::Node => {
                    // A family without an epoch has nothing live: nothing
                    // to replace. The new epoch keeps the old one's
                    // lifetime (that of its values).
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&family.epoch_key)
                        .arg(&token)
                        .arg("XX")
                        .arg("KEEPTTL");
                    self.cmd::<redis::Value>(cmd).await.map(drop)
                }
                Names::Cluster => self.bump_every_slot(family, &token).await,
            }?;
            if self.framing == Framing::Bare {
                // Bare values carry no epoch: the family's keys go, after
                // the epoch that refuses the fills in progress.
                self.delete_now(std::slice::from_ref(&family.name)).await?;
                let mut pattern = String::with_capacity(family.name.len() + 2);
                crate::key::glob_escape_into(&family.name, &mut pattern);
                pattern.push_str(":*");
                self.unlink_matching(&pattern, false).await?;
            }
            Ok(())
        })
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
        Box::pin(async move {
            if self.names == Names::Node {
                return self.conns.ping(None).await;
            }
            // Every primary, by its address (a `PING` routed otherwise is
            // answered by any node that can be reached).
            let primaries = self.primaries().await?;
            // A topology that leaves slots unserved is no healthy cluster,
            // even if every primary it lists answers.
            let unserved = (0..super::slots::SLOTS)
                .filter(|&s| !primaries.iter().any(|p| p.serves(s)))
                .count();
            if unserved > 0 {
                let addr = primaries.first().map_or_else(
                    || "the cluster".to_owned(),
                    |p| format!("{}:{}", p.host, p.port),
                );
                return Err(Error::Redis {
                    addr,
                    source: redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                        "hash slots not served by any primary",
                        format!("{unserved} of {} slots", super::slots::SLOTS),
                    )),
                });
            }
            futures_util::future::try_join_all(primaries.iter().map(|node| {
                let mut pipe = redis::pipe();
                pipe.cmd("PING");
                Box::pin(async move {
                    // An error names the primary that did not answer.
                    let addr = || format!("{}:{}", node.host, node.port);
                    match self.on_primary(node, pipe).await {
                        Ok(r) => match r.first() {
                            Some(redis::Value::ServerError(e)) => Err(Error::Redis {
                                addr: addr(),
                                source: e.clone().into(),
                            }),
                            _ => Ok(()),
                        },
                        Err(Error::Redis { source, .. }) => Err(Error::Redis {
                            addr: addr(),
                            source,
                        }),
                        Err(e) => Err(e),
                    }
                })
            }))
            .await?;
            Ok(())
        })
    }

    fn ping_for<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, ()> {
        Box::pin(self.conns.ping(self.key_slot(&slot.key)))
    }

    fn drop_oversized<'a>(&'a self, slot: &'a Slot) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut call = Call::on(&self.scripts.drop_oversized, self.names, slot);
            call.keys.truncate(1);
            Ok(self.invoke::<i64>(call).await? == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{grouped, in_order, own_breaker_slot};

    #[test]
    fn a_primary_is_behind_a_breaker_range_of_its_own() {
        // redis-cli's layout of 3 primaries: 5461 and 10923 open ranges
        // that the previous primary shares.
        assert_eq!(own_breaker_slot(&[(0, 5460)]), Some(0));
        assert_eq!(own_breaker_slot(&[(5461, 10922)]), Some(5632));
        assert_eq!(own_breaker_slot(&[(10923, 16383)]), Some(11008));
        // No whole range: its first slot's.
        assert_eq!(own_breaker_slot(&[(300, 400), (700, 800)]), Some(300));
        assert_eq!(own_breaker_slot(&[(300, 400), (512, 767)]), Some(512));
        assert_eq!(own_breaker_slot(&[(16128, 16383)]), Some(16128));
        assert_eq!(own_breaker_slot(&[]), None);
    }

    #[test]
    fn groups_keep_their_first_value_and_results_return_in_order() {
        let items = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)];
        let groups = grouped(items.iter().copied());
        assert_eq!(groups, vec![(1, vec![0, 2]), (2, vec![1, 4]), (4, vec![3])]);
        // Each group's results, in the group's order; and back in the
        // items' order.
        let parts: Vec<(Vec<usize>, Vec<i32>)> = groups
            .into_iter()
            .map(|(_, ix)| {
                let values = ix.iter().map(|&i| items[i].1 * 10).collect();
                (ix, values)
            })
            .rev()
            .collect();
        assert_eq!(in_order(items.len(), parts), vec![10, 20, 30, 40, 50]);
    }
}
