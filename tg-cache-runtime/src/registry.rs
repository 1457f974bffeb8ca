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

/// Configures the default cache from the environment now, so that a bad
/// `TG_CACHE_*` value is reported at startup instead of at first use.
pub fn init_from_env() -> Result<()> {
    configure(Caches::from_env()?)
}

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| {
        let (cfg, built) = match CacheConfig::from_env() {
            Ok(cfg) => {
                let built = Cache::from_config(DEFAULT_ALIAS, &cfg);
                (cfg, built)
            }
            Err(e) => (CacheConfig::dummy(), Err(Error::Config(e))),
        };
        let default = match built {
            Ok(c) => c,
            Err(Error::Config(e)) => Cache::broken(DEFAULT_ALIAS, &cfg, e),
            Err(e) => Cache::broken(
                DEFAULT_ALIAS,
                &cfg,
                ConfigError::new("REDIS_URL", "", e.to_string()),
            ),
        };
        Registry {
            default,
            named: HashMap::new(),
        }
    })
}

/// The default cache (Django's `django.core.cache.cache`).
///
/// If the environment configuration is invalid, this cache returns that
/// configuration error from every call (and cached functions run their
/// bodies uncached); call [`init_from_env`] at startup to fail early instead.
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
