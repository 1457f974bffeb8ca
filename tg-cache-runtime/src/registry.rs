//! The process-wide caches: Django's `CACHES` setting.

use crate::cache::Cache;
use crate::config::CacheConfig;
use crate::error::{ConfigError, Error, Result};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The alias of the default cache.
pub const DEFAULT_ALIAS: &str = "default";

/// The set of caches of a process: a default one and named ones.
///
/// ```
/// use tg_cache_runtime::{CacheConfig, Caches};
/// let caches = Caches::new(CacheConfig::local())
///     .with("sessions", CacheConfig::local().max_entries(10_000));
/// // tg_cache_runtime::configure(caches)?; at startup, before the first cache() call
/// ```
#[derive(Debug, Clone)]
pub struct Caches {
    default: CacheConfig,
    named: Vec<(String, CacheConfig)>,
}

impl Caches {
    /// Caches whose default is `default`.
    pub fn new(default: CacheConfig) -> Self {
        Self {
            default,
            named: Vec::new(),
        }
    }

    /// The default cache from the `TG_CACHE_*` environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self::new(CacheConfig::from_env()?))
    }

    /// Adds (or replaces) a named cache.
    pub fn with(mut self, alias: impl Into<String>, config: CacheConfig) -> Self {
        let alias = alias.into();
        self.named.retain(|(a, _)| *a != alias);
        self.named.push((alias, config));
        self
    }

    fn build(&self) -> Result<Registry> {
        self.default.validate()?;
        let default = Cache::from_config(DEFAULT_ALIAS, &self.default)?;
        let mut named = HashMap::new();
        for (alias, cfg) in &self.named {
            cfg.validate().map_err(|mut e| {
                e.setting = format!("caches[{alias}].{}", e.setting);
                e
            })?;
            named.insert(alias.clone(), Cache::from_config(alias, cfg)?);
        }
        Ok(Registry { default, named })
    }
}

struct Registry {
    default: Cache,
    named: HashMap<String, Cache>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Installs the process's caches. Call once at startup, before the first
/// [`cache`] call; later calls return [`Error::AlreadyConfigured`]. Without
/// it, the default cache is configured from the environment on first use.
pub fn configure(caches: Caches) -> Result<()> {
    let registry = caches.build()?;
    REGISTRY.set(registry).map_err(|_| Error::AlreadyConfigured)
}

/// Configures the default cache from the `TG_CACHE_*` environment
/// variables and checks its server once ([`check_caches`]): call it at
/// startup, so that a bad setting stops the program there, with the
/// message, instead of at the first cache call.
///
/// ```no_run
/// fn main() -> Result<(), tg_cache_runtime::Error> {
///     tg_cache_runtime::init_from_env()?;
///     // ... start the application
///     Ok(())
/// }
/// ```
pub fn init_from_env() -> Result<()> {
    configure(Caches::from_env()?)?;
    check_caches()
}

/// Checks every configured cache's server once, as a startup check: a
/// wrong password or a database index the server does not have is an
/// error (the message names the server's `host:port`, never the password);
/// a server that does not answer is only logged (a warning naming it):
/// caches fail open, and caching starts when it answers.
pub fn check_caches() -> Result<()> {
    for cache in all_caches() {
        match cache.blocking().health() {
            Ok(_) => {}
            Err(e) if e.is_misconfiguration() => return Err(e),
            Err(e) => tracing::warn!(
                cache = cache.alias(),
                error = %e,
                "tg-cache: the cache's server does not answer at startup; cached functions compute without caching until it does"
            ),
        }
    }
    Ok(())
}

/// The exit status of a program stopped by a bad cache configuration
/// (`EX_CONFIG` of BSD's `sysexits.h`).
pub const EX_CONFIG: i32 = 78;

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| match Caches::from_env().map_err(Error::Config).and_then(|c| c.build()) {
        Ok(r) => r,
        // As Django refuses to start on a bad setting: a program whose
        // caching is misconfigured stops here, saying what is wrong.
        // A panic would only end the task or thread that happened to look
        // first, and the rest of the program would run uncached: the
        // process ends, with exit status 78 (`EX_CONFIG`).
        Err(e) => {
            let message = format!(
                "tg-cache: the cache configuration from the environment is invalid: {e} (call tg_cache::init_from_env() at startup to handle this error there)"
            );
            tracing::error!("{message}");
            eprintln!("{message}");
            std::process::exit(EX_CONFIG)
        }
    })
}

/// The default cache (Django's `django.core.cache.cache`).
///
/// Configured from the environment on first use, unless [`configure`] (or
/// [`init_from_env`]) ran first.
///
/// # Exits
/// If the environment's configuration is invalid, the process stops with
/// exit status [`EX_CONFIG`] after printing what is wrong (the message
/// names the variable), as Django refuses to start on a bad setting; a
/// panic would end only the task that looked first. Call
/// [`init_from_env`] at startup to get that error as a `Result` instead.
pub fn cache() -> &'static Cache {
    &registry().default
}

/// The cache named `alias` (Django's `caches["alias"]`); `"default"` is [`cache`].
pub fn caches(alias: &str) -> Result<&'static Cache> {
    let r = registry();
    if alias == DEFAULT_ALIAS {
        return Ok(&r.default);
    }
    r.named.get(alias).ok_or_else(|| {
        let mut known: Vec<&str> = r.named.keys().map(String::as_str).collect();
        known.push(DEFAULT_ALIAS);
        known.sort_unstable();
        Error::UnknownCache {
            alias: alias.to_owned(),
            known: known.join(", "),
        }
    })
}

/// Every configured cache, the default first.
pub fn all_caches() -> Vec<&'static Cache> {
    let r = registry();
    let mut v = vec![&r.default];
    let mut named: Vec<&Cache> = r.named.values().collect();
    named.sort_by(|a, b| a.alias().cmp(b.alias()));
    v.extend(named);
    v
}
