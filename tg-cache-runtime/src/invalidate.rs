//! Model invalidation: the [`Invalidate`] trait that `#[derive(Invalidate)]`
//! implements, custom receivers, and transaction batches.
//!
//! ```
//! # use tg_cache_runtime as tg_cache;
//! use tg_cache::{Event, Invalidate, Target};
//!
//! // What #[derive(Invalidate)] generates, written by hand:
//! struct Character { id: i64 }
//! impl Invalidate for Character {
//!     const MODEL: &'static str = "Character";
//!     const EVENTS: &'static [Event] = &[Event::Save, Event::Delete];
//!     fn targets(&self) -> tg_cache::Result<Vec<Target>> {
//!         let key = tg_cache::CacheKeyGenerator::make_model_key(Self::MODEL, &[("id", &self.id)]);
//!         Ok(vec![Target::key(tg_cache::cache(), key)])
//!     }
//!     fn all_targets() -> tg_cache::Result<Vec<Target>> {
//!         Ok(vec![Target::family(tg_cache::cache(), "tg:queryset:Character")])
//!     }
//! }
//! Character { id: 5 }.saved_blocking().unwrap();
//! ```

use crate::cache::Cache;
use crate::error::Result;
use crate::exec::block_on;
use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A model event, like Django's `post_save` / `post_delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The row was written (`post_save`).
    Save,
    /// The row was deleted (`post_delete`).
    Delete,
}

/// What to remove from which cache.
#[derive(Debug, Clone)]
pub struct Target {
    cache: &'static Cache,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Key(String),
    Pattern(String),
    Family(String),
}

impl Target {
    /// Delete one key.
    pub fn key(cache: &'static Cache, key: impl Into<String>) -> Self {
        Self {
            cache,
            action: Action::Key(key.into()),
        }
    }

    /// Delete every key matching a glob pattern (a `SCAN` on Redis).
    pub fn pattern(cache: &'static Cache, pattern: impl Into<String>) -> Self {
        Self {
            cache,
            action: Action::Pattern(pattern.into()),
        }
    }

    /// Delete every cached variant of one page of a view (see
    /// [`crate::key::page_pattern`]): `path` is the page's URL path, as a
    /// link writes it or decoded.
    pub fn page(cache: &'static Cache, view: &str, path: &str) -> Self {
        Self {
            cache,
            action: Action::Pattern(crate::key::page_pattern(view, path).as_str().to_owned()),
        }
    }

    /// Invalidate a whole key family in O(1) (see [`Cache::invalidate_family`]).
    pub fn family(cache: &'static Cache, family: impl Into<String>) -> Self {
        Self {
            cache,
            action: Action::Family(family.into()),
        }
    }

    /// The key, pattern or family this target removes.
    pub fn describe(&self) -> String {
        match &self.action {
            Action::Key(k) => format!("key {k}"),
            Action::Pattern(p) => format!("pattern {p}"),
            Action::Family(f) => format!("family {f}"),
        }
    }

    /// Carries the target out.
    pub async fn run(&self) -> Result<()> {
        match &self.action {
            Action::Key(k) => self.cache.delete(k).await.map(drop),
            Action::Pattern(p) => self.cache.delete_pattern(p).await.map(drop),
            Action::Family(f) => self.cache.invalidate_family(f).await,
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.cache, other.cache) && self.action == other.action
    }
}

/// Runs every target, even after a failure; returns the first error.
async fn run_all(targets: &[Target]) -> Result<()> {
    let mut first = None;
    for t in targets {
        if let Err(e) = t.run().await {
            tracing::warn!(target = %t.describe(), error = %e, "invalidation failed");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

type ReceiverFn = Arc<dyn Fn(&dyn Any, Event) -> Result<()> + Send + Sync>;

struct Receiver {
    id: u64,
    model: TypeId,
    events: Vec<Event>,
    f: ReceiverFn,
}

static RECEIVERS: RwLock<Vec<Receiver>> = RwLock::new(Vec::new());
static NEXT_RECEIVER: AtomicU64 = AtomicU64::new(1);

/// The handle of a connected receiver, for [`disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverId(u64);

/// Connects a receiver to `M`'s `events`, like Django's
/// `@receiver(post_save, sender=Character)`. It runs after the model's own
/// targets on `saved()` / `deleted()` (or at a [`Batch`]'s commit), whether
/// or not the model lists the event in `#[invalidate_on]`.
///
/// Receivers are synchronous so that they run from both the async and the
/// blocking faces; use `cache.blocking()` inside one.
pub fn connect<M: Invalidate>(
    events: &[Event],
    f: impl Fn(&M, Event) -> Result<()> + Send + Sync + 'static,
) -> ReceiverId {
    let id = NEXT_RECEIVER.fetch_add(1, Ordering::Relaxed);
    let f: ReceiverFn = Arc::new(move |any: &dyn Any, ev| match any.downcast_ref::<M>() {
        Some(m) => f(m, ev),
        None => Ok(()),
    });
    RECEIVERS
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(Receiver {
            id,
            model: TypeId::of::<M>(),
            events: events.to_vec(),
            f,
        });
    ReceiverId(id)
}

/// Disconnects a receiver; returns whether it was connected.
pub fn disconnect(id: ReceiverId) -> bool {
    let mut r = RECEIVERS.write().unwrap_or_else(|p| p.into_inner());
    let before = r.len();
    r.retain(|x| x.id != id.0);
    r.len() != before
}

fn receivers_for(model: TypeId, event: Event) -> Vec<ReceiverFn> {
    RECEIVERS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|r| r.model == model && r.events.contains(&event))
        .map(|r| r.f.clone())
        .collect()
}

fn run_receivers<M: Invalidate>(model: &M, event: Event) -> Result<()> {
    let mut first = None;
    for f in receivers_for(TypeId::of::<M>(), event) {
        if let Err(e) = f(model, event) {
            tracing::warn!(model = M::MODEL, ?event, error = %e, "receiver failed");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

async fn fire<M: Invalidate>(model: &M, event: Event) -> Result<()> {
    let targets = if M::EVENTS.contains(&event) {
        model.targets()?
    } else {
        Vec::new()
    };
    let t = run_all(&targets).await;
    let r = run_receivers(model, event);
    t.and(r)
}

/// Cache invalidation for a model, implemented by `#[derive(Invalidate)]`.
///
/// Call [`Invalidate::saved`] after the row was written and
/// [`Invalidate::deleted`] after it was deleted (or the `_blocking` twins
/// from sync code). An invalidation that did not reach the store is an
/// error, so the caller can react. Inside a database transaction, collect
/// invalidations in a [`Batch`] and commit it after the transaction.
pub trait Invalidate: Send + Sync + 'static {
    /// The model name of its model keys (`tg:queryset:<MODEL>:...`).
    const MODEL: &'static str;
    /// The events that fire this model's targets (`#[invalidate_on(..)]`).
    const EVENTS: &'static [Event];

    /// The entries to drop for this instance.
    fn targets(&self) -> Result<Vec<Target>>;

    /// The entries to drop for every instance: model keys and functions as
    /// whole families (O(1)), other keys by family or pattern.
    fn all_targets() -> Result<Vec<Target>>;

    /// Invalidates after the row was written (`post_save`).
    fn saved(&self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        fire(self, Event::Save)
    }

    /// Invalidates after the row was deleted (`post_delete`).
    fn deleted(&self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        fire(self, Event::Delete)
    }

    /// Blocking [`Invalidate::saved`].
    fn saved_blocking(&self) -> Result<()>
    where
        Self: Sized,
    {
        block_on(fire(self, Event::Save))
    }

    /// Blocking [`Invalidate::deleted`].
    fn deleted_blocking(&self) -> Result<()>
    where
        Self: Sized,
    {
        block_on(fire(self, Event::Delete))
    }

    /// Invalidates every cached entry of this model, in O(1) for its model
    /// keys and cached functions, however many entries there are.
    fn invalidate_all() -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        async { run_all(&Self::all_targets()?).await }
    }

    /// Blocking [`Invalidate::invalidate_all`].
    fn invalidate_all_blocking() -> Result<()>
    where
        Self: Sized,
    {
        block_on(Self::invalidate_all())
    }

    /// Records a save in `batch`, to be carried out when it commits.
    fn saved_in(&self, batch: &mut Batch) -> Result<()>
    where
        Self: Sized + Clone,
    {
        batch.record(self, Event::Save)
    }

    /// Records a delete in `batch`, to be carried out when it commits.
    fn deleted_in(&self, batch: &mut Batch) -> Result<()>
    where
        Self: Sized + Clone,
    {
        batch.record(self, Event::Delete)
    }
}

type Deferred = Box<dyn FnOnce() -> Result<()> + Send>;

/// Invalidations collected while a database transaction is open: carried
/// out by [`Batch::commit`] after the transaction commits, dropped by
/// [`Batch::rollback`] (or by dropping the batch) if it rolls back. So a
/// concurrent reader cannot refill the cache with pre-commit data, and a
/// rolled-back write invalidates nothing.
///
/// ```
/// # use tg_cache_runtime as tg_cache;
/// # async fn demo() -> tg_cache::Result<()> {
/// let mut batch = tg_cache::Batch::new();
/// // character.saved_in(&mut batch)?;   (inside the transaction)
/// // tx.commit().await?;
/// batch.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
#[must_use = "a batch does nothing until it is committed"]
pub struct Batch {
    targets: Vec<Target>,
    receivers: Vec<Deferred>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("targets", &self.targets)
            .field("receivers", &self.receivers.len())
            .finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event` of `model`: its targets now (computed from the
    /// instance as it is), its receivers for the commit.
    pub fn record<M: Invalidate + Clone>(&mut self, model: &M, event: Event) -> Result<()> {
        if M::EVENTS.contains(&event) {
            for t in model.targets()? {
                if !self.targets.contains(&t) {
                    self.targets.push(t);
                }
            }
        }
        if !receivers_for(TypeId::of::<M>(), event).is_empty() {
            let m = model.clone();
            self.receivers
                .push(Box::new(move || run_receivers(&m, event)));
        }
        Ok(())
    }

    /// Adds a target of your own.
    pub fn add(&mut self, target: Target) {
        if !self.targets.contains(&target) {
            self.targets.push(target);
        }
    }

    /// The targets recorded so far (duplicates merged).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.receivers.is_empty()
    }

    /// Carries out everything recorded. Call after the transaction committed.
    pub async fn commit(self) -> Result<()> {
        let t = run_all(&self.targets).await;
        let mut first = None;
        for r in self.receivers {
            if let Err(e) = r() {
                first.get_or_insert(e);
            }
        }
        t.and(first.map_or(Ok(()), Err))
    }

    /// Blocking [`Batch::commit`].
    pub fn commit_blocking(self) -> Result<()> {
        block_on(self.commit())
    }

    /// Drops everything recorded (the transaction rolled back).
    pub fn rollback(self) {}
}
