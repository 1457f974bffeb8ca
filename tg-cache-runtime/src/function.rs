//! Support for `#[cache_function]`: the registry of cached functions, the
//! duplicate-prefix check, bypass/refresh scopes, and the local hit path.

use crate::cache::{Cache, CachePolicy};
use crate::key::MAX_KEY_BYTES;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

/// One `#[cache_function]`, registered at link time (see [`cached_functions`]).
#[derive(Debug)]
pub struct CachedFunction {
    /// Its `key_prefix`.
    pub key_prefix: &'static str,
    /// `module::path::fn_name`.
    pub path: &'static str,
    /// Source file of the function.
    pub file: &'static str,
    /// Source line of the function.
    pub line: u32,
}

inventory::collect!(CachedFunction);

impl std::fmt::Display for CachedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}:{})", self.path, self.file, self.line)
    }
}

/// Every `#[cache_function]` linked into this program.
pub fn cached_functions() -> impl Iterator<Item = &'static CachedFunction> {
    inventory::iter::<CachedFunction>.into_iter()
}

/// Two or more cached functions share a `key_prefix`, so their entries could
/// overwrite each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct DuplicateKeyPrefix(pub Vec<(String, Vec<String>)>);

fn describe(dups: &[(String, Vec<String>)]) -> String {
    let mut s = String::new();
    for (prefix, fns) in dups {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(&format!(
            "key_prefix \"{prefix}\" is used by {}: give each #[cache_function] its own key_prefix",
            fns.join(" and ")
        ));
    }
    s
}

static DUPLICATES: LazyLock<BTreeMap<&'static str, Vec<&'static CachedFunction>>> =
    LazyLock::new(|| {
        let mut by_prefix: BTreeMap<&'static str, Vec<&'static CachedFunction>> = BTreeMap::new();
        for f in cached_functions() {
            by_prefix.entry(f.key_prefix).or_default().push(f);
        }
        by_prefix.retain(|_, v| v.len() > 1);
        for v in by_prefix.values_mut() {
            v.sort_by_key(|f| (f.path, f.file, f.line));
        }
        by_prefix
    });

/// Checks that no two `#[cache_function]`s of this program share a
/// `key_prefix`. It also runs by itself before the first call of any cached
/// function: the functions of a duplicated prefix then run uncached, and the
/// error is logged. Call it in a test to catch the mistake in CI:
///
/// ```
/// // in a test of the application:
/// tg_cache_runtime::check_cache_functions().unwrap();
/// ```
pub fn check_cache_functions() -> Result<(), DuplicateKeyPrefix> {
    if DUPLICATES.is_empty() {
        return Ok(());
    }
    Err(DuplicateKeyPrefix(
        DUPLICATES
            .iter()
            .map(|(p, fns)| (p.to_string(), fns.iter().map(|f| f.to_string()).collect()))
            .collect(),
    ))
}

/// How the next cached call made in a scope behaves.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallMode {
    /// Read the cache, compute and store on a miss.
    #[default]
    Normal,
    /// Run the body; neither read nor write the cache.
    Uncached,
    /// Run the body and store its result, ignoring what is cached.
    Refresh,
}

thread_local! {
    static SYNC_MODE: Cell<CallMode> = const { Cell::new(CallMode::Normal) };
    static KEY_BUF: RefCell<String> = RefCell::new(String::with_capacity(128));
}

tokio::task_local! {
    static ASYNC_MODE: CallMode;
}

/// How many bypass/refresh scopes are open in the process. While none is,
/// the hit path skips the thread- and task-local lookups.
static OPEN_SCOPES: AtomicUsize = AtomicUsize::new(0);

/// The mode for a cached call made now.
#[doc(hidden)]
#[inline]
pub fn current_mode() -> CallMode {
    if OPEN_SCOPES.load(Ordering::Acquire) == 0 {
        return CallMode::Normal;
    }
    ASYNC_MODE
        .try_with(|m| *m)
        .unwrap_or_else(|_| SYNC_MODE.with(Cell::get))
}

/// Counts an open scope for as long as it lives.
struct OpenScope;
impl OpenScope {
    fn new() -> Self {
        OPEN_SCOPES.fetch_add(1, Ordering::AcqRel);
        OpenScope
    }
}
impl Drop for OpenScope {
    fn drop(&mut self) {
        OPEN_SCOPES.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Restore(CallMode);
impl Drop for Restore {
    fn drop(&mut self) {
        SYNC_MODE.with(|m| m.set(self.0));
    }
}

fn with_sync_mode<R>(mode: CallMode, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(SYNC_MODE.with(|m| m.replace(mode)));
    f()
}

fn scoped<R>(mode: CallMode, f: impl FnOnce() -> R) -> R {
    let _open = OpenScope::new();
    with_sync_mode(mode, f)
}

async fn scoped_async<F: Future>(mode: CallMode, fut: F) -> F::Output {
    let _open = OpenScope::new();
    ASYNC_MODE.scope(mode, fut).await
}

/// Runs `f`; cached functions called directly inside it run their bodies
/// without reading or writing the cache (calls nested inside those bodies
/// are cached as usual).
///
/// ```
/// # use tg_cache_runtime as tg_cache;
/// let fresh = tg_cache::uncached(|| 2 + 2); // e.g. uncached(|| get_scenes(5))
/// ```
pub fn uncached<R>(f: impl FnOnce() -> R) -> R {
    scoped(CallMode::Uncached, f)
}

/// Runs `f`; cached functions called directly inside it recompute their
/// result and store it, replacing what was cached.
///
/// While a refresh computes, other callers (in every process) keep reading
/// the old value: the refresh's lease lives beside the key, not at it. A
/// refresh that outlasts its lease timeout keeps its lease by renewing it.
/// Any write or invalidation of the key during the refresh wins over it:
/// the refreshed result is then returned to its caller but not stored.
pub fn refresh<R>(f: impl FnOnce() -> R) -> R {
    scoped(CallMode::Refresh, f)
}

/// Async [`uncached`]: `uncached_async(get_scenes(5)).await`.
pub async fn uncached_async<F: Future>(fut: F) -> F::Output {
    scoped_async(CallMode::Uncached, fut).await
}

/// Async [`refresh`]: `refresh_async(get_scenes(5)).await`.
pub async fn refresh_async<F: Future>(fut: F) -> F::Output {
    scoped_async(CallMode::Refresh, fut).await
}

/// Runs a sync body with the normal mode, so a bypass or refresh scope
/// applies to the outermost cached call only.
#[doc(hidden)]
pub fn run_body<R, F: FnOnce() -> R>(f: F) -> R {
    with_sync_mode(CallMode::Normal, f)
}

/// Async [`run_body`].
#[doc(hidden)]
pub fn run_body_async<R, F: Future<Output = R>>(fut: F) -> impl Future<Output = R> {
    ASYNC_MODE.scope(CallMode::Normal, fut)
}

/// The cache a generated `_invalidate` function works on.
#[doc(hidden)]
pub fn cache_for(alias: Option<&str>) -> crate::Result<&'static Cache> {
    match alias {
        None => Ok(crate::cache()),
        Some(a) => crate::caches(a),
    }
}

/// A cached function's cache, resolved once per function.
#[doc(hidden)]
pub struct Resolved {
    /// The cache.
    pub cache: &'static Cache,
    /// The generation of the function's key family, on a local store.
    generation: Option<Arc<AtomicU64>>,
    /// The counters of the function's key family.
    stats: Arc<crate::stats::FamilyStats>,
}

/// Resolves the cache of a cached function once: `None` means run uncached
/// (its alias is not configured, or its prefix is shared with another
/// function); the reason is logged.
#[doc(hidden)]
pub fn resolve(alias: Option<&str>, key_prefix: &'static str, path: &str) -> Option<Resolved> {
    if let Some(fns) = DUPLICATES.get(key_prefix) {
        let names: Vec<String> = fns.iter().map(|f| f.to_string()).collect();
        tracing::error!(
            function = path,
            key_prefix,
            "key_prefix \"{key_prefix}\" is used by {}; these functions run uncached until each has its own key_prefix",
            names.join(" and ")
        );
        return None;
    }
    let cache = match alias {
        None => crate::cache(),
        Some(a) => match crate::caches(a) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(function = path, error = %e, "cached function runs uncached");
                return None;
            }
        },
    };
    let family = format!("tg:fn:{key_prefix}");
    Some(Resolved {
        cache,
        generation: cache.__family_generation(&family),
        stats: cache.family_counters(&family),
    })
}

/// The local hit path: writes the key into a reused thread-local buffer and
/// looks it up without allocating; on a miss (or on another store) returns
/// the key as a `String`.
#[doc(hidden)]
#[inline]
pub fn local_hit<P: CachePolicy<R>, R>(
    resolved: &Resolved,
    write_key: impl Fn(&mut String),
) -> Result<R, String> {
    let Some(generation) = &resolved.generation else {
        let mut key = String::with_capacity(64);
        write_key(&mut key);
        return Err(key);
    };
    let looked_up = KEY_BUF.try_with(|buf| {
        let mut buf = buf.try_borrow_mut().ok()?;
        buf.clear();
        write_key(&mut buf);
        if buf.len() > MAX_KEY_BYTES {
            // Refused on the slow path, which says why.
            return Some(Err(buf.clone()));
        }
        match resolved.cache.__local_hit::<P, R>(&buf, generation) {
            Some(hit) => {
                resolved.stats.hits.bump();
                Some(Ok(hit))
            }
            None => Some(Err(buf.clone())),
        }
    });
    match looked_up {
        Ok(Some(r)) => r,
        // The buffer is in use (a key part that itself calls a cached
        // function) or the thread is exiting: build the key on its own.
        _ => {
            let mut key = String::new();
            write_key(&mut key);
            Err(key)
        }
    }
}

/// A key value, for the copies of a key writer in the helpers that
/// `#[cache_function]` generates: `(&KeyArg(&v)).write(buf)` writes `v`
/// when it is a [`crate::KeyPart`] ([`WriteKeyArg`], which autoref picks
/// first), else nothing ([`WriteNothing`]). It never writes nothing in a
/// program that compiles: the function's own key writer requires the
/// `KeyPart`, and reports its absence once, on the parameter's type.
#[doc(hidden)]
pub struct KeyArg<'a, T: ?Sized>(pub &'a T);

/// The `KeyPart` case of [`KeyArg`].
#[doc(hidden)]
pub trait WriteKeyArg {
    /// Writes the value.
    fn write(&self, out: &mut String);
}

impl<T: crate::KeyPart + ?Sized> WriteKeyArg for KeyArg<'_, T> {
    #[inline]
    fn write(&self, out: &mut String) {
        self.0.write_key_part(out)
    }
}

/// The fallback case of [`KeyArg`].
#[doc(hidden)]
pub trait WriteNothing {
    /// Writes nothing.
    fn write(&self, _out: &mut String) {}
}

impl<T: ?Sized> WriteNothing for &KeyArg<'_, T> {}

/// Asserts at compile time that `T` can be stored in a cache.
#[doc(hidden)]
pub fn assert_cacheable<T: crate::CacheValue>() {}

/// Picks the `share` function `#[cache_function]` hands to the single-flight:
/// `(&Share::<R>::new()).share()` is `|r| Some(r.clone())` when `R: Clone`
/// (autoref specialisation: [`ShareClone`] matches the receiver `&Share<R>`
/// without an extra borrow), else `|_| None` ([`ShareNone`]).
#[doc(hidden)]
pub struct Share<R>(PhantomData<fn() -> R>);

impl<R> Share<R> {
    /// The selector for `R`.
    pub const fn new() -> Self {
        Share(PhantomData)
    }
}

impl<R> Default for Share<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// The `R: Clone` case of [`Share`].
#[doc(hidden)]
pub trait ShareClone<R> {
    /// `|r| Some(r.clone())`.
    fn share(&self) -> fn(&R) -> Option<R>;
}

impl<R: Clone> ShareClone<R> for Share<R> {
    fn share(&self) -> fn(&R) -> Option<R> {
        |r| Some(r.clone())
    }
}

/// The fallback case of [`Share`].
#[doc(hidden)]
pub trait ShareNone<R> {
    /// `|_| None`.
    fn share(&self) -> fn(&R) -> Option<R>;
}

impl<R> ShareNone<R> for &Share<R> {
    fn share(&self) -> fn(&R) -> Option<R> {
        |_| None
    }
}

/// Finds out whether a return type is a `Result` or an `Option` once its
/// aliases are resolved: `Probe::<R>::new().kind()` is [`IsResult`],
/// [`IsOption`] (inherent methods, which win) or [`IsPlain`] (the
/// [`ProbePlain`] fallback).
#[doc(hidden)]
pub struct Probe<R>(PhantomData<fn() -> R>);

impl<R> Probe<R> {
    /// The probe for `R`.
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<R> Default for Probe<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// The return type is a `Result`.
#[doc(hidden)]
pub struct IsResult;
/// The return type is an `Option`.
#[doc(hidden)]
pub struct IsOption;
/// The return type is neither.
#[doc(hidden)]
pub struct IsPlain;

impl<T, E> Probe<Result<T, E>> {
    /// A `Result`.
    pub fn kind(&self) -> IsResult {
        IsResult
    }
}

impl<T> Probe<Option<T>> {
    /// An `Option`.
    pub fn kind(&self) -> IsOption {
        IsOption
    }
}

/// The fallback of [`Probe`]: any other type.
#[doc(hidden)]
pub trait ProbePlain {
    /// Neither a `Result` nor an `Option`.
    fn kind(&self) -> IsPlain {
        IsPlain
    }
}

impl<R> ProbePlain for Probe<R> {}

/// Implemented by every probe result except [`IsResult`].
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the return type is an alias of `Result`; say `result = true` to cache only `Ok` values, or `always = true` to cache errors too",
    label = "this is a `Result` once its aliases are resolved",
    note = "#[cache_function] chooses what to cache from the return type as written, and `Result` is not visible here"
)]
pub trait NotAResult {}
impl NotAResult for IsOption {}
impl NotAResult for IsPlain {}

/// Implemented by every probe result except [`IsOption`].
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the return type is an alias of `Option`; say `option = true` to cache only `Some` values, or `always = true` to cache `None` too",
    label = "this is an `Option` once its aliases are resolved",
    note = "#[cache_function] chooses what to cache from the return type as written, and `Option` is not visible here"
)]
pub trait NotAnOption {}
impl NotAnOption for IsResult {}
impl NotAnOption for IsPlain {}

/// Fails to compile unless the probed return type is neither a `Result`
/// nor an `Option`.
#[doc(hidden)]
pub fn assert_plain<K: NotAResult + NotAnOption>(_: K) {}

/// Asserts at compile time that policy `P` applies to the return type `R`.
#[doc(hidden)]
pub fn assert_policy<P: CachePolicy<R>, R>() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The borrow is the point: autoref picks the `Clone` impl first.
    #[allow(clippy::needless_borrow)]
    fn share_clones_only_clone_types() {
        struct NotClone;
        let cloned = {
            #[allow(unused_imports)]
            use super::{ShareClone as _, ShareNone as _};
            (&Share::<Result<u8, String>>::new()).share()
        };
        assert_eq!(cloned(&Err("e".into())), Some(Err("e".to_owned())));
        let not_shared = {
            #[allow(unused_imports)]
            use super::{ShareClone as _, ShareNone as _};
            (&Share::<Result<u8, NotClone>>::new()).share()
        };
        assert!(not_shared(&Err(NotClone)).is_none());
    }

    #[test]
    fn probe_sees_through_aliases() {
        type ApiResult<T> = Result<T, String>;
        type Maybe = Option<u8>;
        #[allow(unused_imports)]
        use super::ProbePlain as _;
        let _: IsResult = Probe::<ApiResult<u8>>::new().kind();
        let _: IsOption = Probe::<Maybe>::new().kind();
        let _: IsPlain = Probe::<Vec<Maybe>>::new().kind();
    }
}
