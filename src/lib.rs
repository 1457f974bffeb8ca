//! # tg-cache
//!
//! Django-style caching for Rust services, checked by the compiler.
//!
//! * [`cache()`] / [`caches()`]: the configured caches, with Django's API
//!   (`get`, `set`, `add`, `get_or_set`, `delete`, `incr`, `delete_pattern`, ...).
//! * Local (moka), Redis and dummy stores, chosen by configuration
//!   ([`CacheConfig`], or the `TG_CACHE_*` environment variables).
//! * [`CacheKeyGenerator`] and [`KeyBuilder`]: escaped, collision-free keys.
//! * [`timeout`]: `SHORT`, `MEDIUM`, `LONG`, `VERY_LONG`, `DAY`.
//!
//! ```
//! # #[tokio::main] async fn main() -> tg_cache::Result<()> {
//! use tg_cache::timeout::MEDIUM;
//! let cache = tg_cache::cache(); // local store with zero configuration
//! cache.set("my_key", &"data".to_string(), MEDIUM).await?;
//! assert_eq!(cache.get::<String>("my_key").await?.as_deref(), Some("data"));
//! let n = cache.get_or_set("expensive_calculation", MEDIUM, || async { 6 * 7 }).await;
//! assert_eq!(n, 42);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub use tg_cache_runtime::*;

/// Caches a function's result in a tg-cache store, keyed by its arguments:
/// the seed's `@cache_function`, checked at compile time.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tg_cache::cache_function;
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Scene { id: i64, title: String }
///
/// #[cache_function(timeout = MEDIUM, key_prefix = "char_scenes")]
/// async fn get_character_scenes(character_id: i64) -> Result<Vec<Scene>, String> {
///     // the expensive query
///     Ok(vec![Scene { id: 1, title: format!("Elysium ({character_id})") }])
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), tg_cache::Error> {
/// let scenes = get_character_scenes(5).await; // runs the body, stores Ok
/// let again = get_character_scenes(5).await;  // served from the cache
/// assert_eq!(get_character_scenes_cache_key(&5), "tg:fn:char_scenes:character_id=5");
/// get_character_scenes_invalidate(&5).await?;  // drop this entry
/// # Ok(()) }
/// ```
///
/// # Keys
///
/// `tg:fn:<key_prefix>:<param>=<value>:...`, parameters in declaration order,
/// values escaped by [`KeyPart`] (so `"a:b"` and `"a"`+`"b"` never collide).
/// In a `key` template, two placeholders must be separated by text holding a
/// `:` or `=` (characters no value contains): `"{a}:{b}"`, not `"{a}-{b}"` or
/// `"{a}{b}"`, which could give two calls the same key.
/// With the default Redis configuration this is literally the Redis key.
///
/// # Options
///
/// | option | meaning |
/// |---|---|
/// | `key_prefix = "name"` | required; letters, digits, `_`, `-`, `.`; unique per program |
/// | `timeout = MEDIUM` | `SHORT`, `MEDIUM`, `LONG`, `VERY_LONG`, `DAY`, whole seconds, or any expression convertible into [`Timeout`] (`Duration::from_millis(500)`, `Timeout::Never`); default: the cache's default |
/// | `jitter = 0.1` | each stored entry lives a time drawn from `[timeout·(1 − j), timeout]`, `0 < j < 1` (a compile error otherwise, or with a timeout that never expires); default: the cache's ([`CacheConfig::jitter`], `TG_CACHE_JITTER`). To turn a cache-wide jitter off for one function: `timeout = Timeout::from(MEDIUM).jitter(0.0)` |
/// | `key = "{character_id}:{page}"` | key template over parameter names and `{self.field}`; every non-skipped parameter must appear |
/// | `skip(pool, request)` | parameters left out of the key (a pool, a request); `skip(self)` leaves out a method's receiver |
/// | `cache = "alias"` | a named cache (see [`caches`]) instead of the default |
/// | `cache_none = true` | also cache `None` results |
/// | `result = true` / `option = true` / `always = true` | what to cache when the return type does not say it: only `Ok`, only `Some`, or every value (at most one) |
///
/// # What is cached
///
/// * `Result<T, E>`: only `Ok` values; errors are recomputed next time.
/// * `Option<T>`: only `Some`, unless `cache_none = true`.
/// * anything else: every value. The stored type must be `Serialize +
///   Deserialize + Clone + Send + Sync + 'static`; return `Arc<T>` to make a
///   local hit a reference-count increment.
///
/// The choice is made from the return type as written. A return type that is
/// a `Result` or an `Option` behind an alias (`type ApiResult<T> = Result<T,
/// String>`) is a compile error until you say `result = true` (cache only
/// `Ok`), `option = true` (only `Some`) or `always = true` (every value).
///
/// # Shapes
///
/// Sync and async fns; free fns, associated fns in an `impl` (the seed's
/// `@staticmethod`), and methods. A method must either name a field of
/// `self` in its template (`key = "{self.id}:{page}"`) or say `skip(self)`
/// when every instance gives the same result; otherwise it is a compile
/// error. Parameters may be owned or references.
/// Generic and `impl Trait` parameters must be skipped (a key cannot tell
/// concrete types apart), and the return type must be concrete and owned.
///
/// # Generated helpers
///
/// Next to the function (inside the same `impl` for associated fns), taking
/// only the key's values, by reference, in parameter order (so
/// `with_pool(pool, id)` with `skip(pool)` gives `with_pool_cache_key(&id)`):
///
/// * `<fn>_cache_key(..) -> String`: the key a call would use.
/// * `<fn>_invalidate(..) -> Result<bool, Error>`: removes that entry (async
///   when the fn is async); an unreachable store is an error here.
/// * `<fn>_invalidate_all() -> Result<usize, Error>`: removes every entry of
///   the function.
///
/// To run the body bypassing the cache, call the function inside
/// [`uncached`] / [`uncached_async`]; to recompute and store, inside
/// [`refresh`] / [`refresh_async`]. Both affect the cached calls made
/// directly in the scope, not the calls nested inside their bodies.
///
/// # Behaviour
///
/// * Concurrent callers of one cold key run the body once, in this process
///   and across every process sharing the Redis (a lease in Redis, see
///   [`Cache`](crate::Cache#across-processes)); a panicking or cancelled
///   caller releases the others at once, and a `Clone` result that is not
///   stored (an `Err`, a `None`) goes to the callers waiting on it.
/// * A failing store (Redis down, undecodable value) never fails the
///   function: the body's result is returned, the failure logged and counted.
/// * A local hit takes no lock, has no await point and, with an `Arc<T>`
///   return, allocates nothing.
/// * Generic parameters are in the key: a type parameter's type name
///   (`:T=alloc%3A%3Astring%3A%3AString`), a const parameter's value
///   (`:N=3`), and for a method, or a function whose signature names
///   `Self`, the type of `Self` (`:Self=..`), which holds the parameters of
///   a surrounding `impl<T>`. An associated function of a generic impl whose
///   signature uses the impl's `T` without naming `Self` is a compile error
///   (E0401, on the `T`) unless it says `self_type = true`. A use of the
///   impl's parameters in the body only cannot be seen: say
///   `self_type = true` there too.
/// * Two functions with the same `key_prefix` are found before the first
///   call (both then run uncached, with an error log naming both) and by
///   [`check_cache_functions`], which a test of the application should call.
pub use tg_cache_macros::cache_function;

/// Derives [`Invalidate`](trait@Invalidate) for a model struct: invalidation
/// that cannot drift from what was cached.
///
/// ```
/// use tg_cache::{Invalidate, cache_function};
///
/// #[cache_function(timeout = MEDIUM, key_prefix = "char_scenes")]
/// async fn get_character_scenes(character_id: i64) -> Vec<String> {
///     vec![format!("scenes of {character_id}")]
/// }
///
/// #[derive(Clone, Invalidate)]
/// #[invalidate_on(save, delete)]
/// #[invalidate(model_key(id), model_key(chronicle = chronicle_id))] // tg:queryset:Character:id=5, ..:chronicle=3
/// #[invalidate(function = get_character_scenes(id))]                 // that function's entry for this character
/// struct Character { id: i64, chronicle_id: i64, name: String }
///
/// # #[tokio::main] async fn main() -> tg_cache::Result<()> {
/// let character = Character { id: 5, chronicle_id: 3, name: "Ada".into() };
/// character.saved().await?;             // after the row was written
/// character.deleted().await?;           // after the row was deleted
/// Character::invalidate_all().await?;   // every entry of the model, in O(1)
/// # Ok(()) }
/// ```
///
/// # Events
///
/// `#[invalidate_on(save)]`, `(delete)` or `(save, delete)` (the default).
/// `saved()` / `deleted()` (and `_blocking` twins) run the targets for
/// their event, then any receivers connected with [`connect`]. Inside a
/// database transaction use `saved_in(&mut batch)` and commit the
/// [`Batch`] after the transaction commits.
///
/// # Targets (`#[invalidate(..)]`, any number, comma-separated)
///
/// | target | removes |
/// |---|---|
/// | `model_key(id)`, `model_key(chronicle = chronicle_id)` | `tg:queryset:<Model>:id=<id>` (one key per `model_key`, several fields sorted by name) |
/// | `function = path(field, ..)` | the entry of that `#[cache_function]` for those fields, computed by its generated `_cache_key` function: renaming the function or changing its parameters breaks the build, and wrong field types are type errors |
/// | `function = path(..)` | every entry of that function |
/// | `key = "tg:view:character:{id}"` | that key, `{field}` values escaped |
/// | `pattern = "tg:view:search:*:name={name}"` | every key matching (a SCAN on Redis); values escaped, so they never widen it |
/// | `model = "Name"` | sets the model name (default: the struct's name) |
/// | `cache = "alias"` | the cache of model, key and pattern targets (functions use their own) |
///
/// In `key` and `pattern` templates, two placeholders must be separated by
/// text holding a `:` or `=` (`"{a}:{b}"`), as in `#[cache_function]`'s.
///
/// With no target, the default is `model_key(id)`; a struct without an
/// `id` field must name its targets. `function =` must name a
/// `#[cache_function]`: otherwise the compiler reports that its generated
/// `<name>_key_family`/`<name>_cache_key` function cannot be found.
///
/// # `invalidate_all()`
///
/// Model keys and functions are invalidated as whole key families with a
/// generation bump: O(1) whatever the number of entries, no SCAN. A fill
/// that began before any invalidation never stores its stale result.
pub use tg_cache_macros::Invalidate;

/// Derives [`KeyPart`](trait@KeyPart) for a struct or enum, so it can be an
/// argument of a `#[cache_function]` (or a value in any key) without
/// writing the impl by hand. It goes through the fields' own `KeyPart`
/// impls, so every escaping rule holds: two different values never share a
/// key, and no value can widen a pattern.
///
/// ```
/// use tg_cache::{KeyPart, cache_function};
///
/// #[derive(KeyPart)]
/// struct Filter { chronicle: i64, clan: Option<String> }
///
/// #[derive(KeyPart)]
/// struct CharacterId(i64); // one field: keys like the field itself
///
/// #[derive(KeyPart)]
/// enum Sort { Name, Since(i32) }
///
/// #[cache_function(key_prefix = "search")]
/// fn search(filter: Filter, sort: Sort) -> Vec<i64> { vec![filter.chronicle] }
///
/// assert_eq!(
///     search_cache_key(&Filter { chronicle: 3, clan: None }, &Sort::Since(2024)),
///     "tg:fn:search:filter=(3,~):sort=Since(2024)"
/// );
/// assert_eq!(CharacterId(5).to_key_part(), "5");
/// ```
///
/// * A struct with one field is written as that field; with several, as
///   the tuple of its fields in declaration order; a unit struct as `()`.
/// * An enum as its variant's name, then the tuple of its fields, if any.
/// * `#[key_part(skip)]` on a field leaves it out.
///
/// Every field's type must implement `KeyPart` (type parameters get the
/// bound). Deriving `Serialize` is not enough: a key is not a value's
/// serialization (maps would not be ordered, and strings not escaped).
pub use tg_cache_macros::KeyPart;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
