//! Error types of the runtime.

use std::time::Duration;

/// The error type of every fallible tg-cache operation.
///
/// Undecodable cached bytes are *not* an error: they are treated as a miss,
/// logged with `tracing` and counted in [`crate::CacheStats::decode_errors`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis answered with an error, or the connection failed.
    #[error("redis at {addr}: {source}")]
    Redis {
        /// `host:port` (or socket path) of the server; never a password.
        addr: String,
        /// What redis-rs reported.
        source: redis::RedisError,
    },
    /// Redis did not answer within the configured time.
    #[error(
        "redis at {addr} did not answer within {after:?}; check that it is running and reachable"
    )]
    Timeout {
        /// `host:port` (or socket path) of the server.
        addr: String,
        /// The response timeout.
        after: Duration,
    },
    /// Every connection was busy for the whole response timeout: the call
    /// waited its turn (first come, first served) and ran out of time. This
    /// is load, not a Redis failure: it never opens the circuit breaker.
    #[error(
        "every redis connection was busy for {waited:?}; raise max_connections or pool_size, or lower the load"
    )]
    Saturated {
        /// How long the call waited.
        waited: Duration,
    },
    /// A recent failure opened the circuit breaker: calls fail fast until it closes.
    #[error(
        "redis at {addr} is unavailable (a recent call failed; retrying after {retry_in:?}); the cache fails open meanwhile"
    )]
    Unavailable {
        /// `host:port` (or socket path) of the server.
        addr: String,
        /// Time until the next attempt to reach Redis.
        retry_in: Duration,
    },
    /// The value could not be serialized.
    #[error("could not serialize the value for key `{key}`: {source}")]
    Encode {
        /// The key being written.
        key: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// The value's JSON is longer than the cache's `max_value_bytes`: it
    /// was not written (and the key no longer holds an older value).
    /// Cached functions and `get_or_set` return such a value uncached.
    #[error(
        "the value for key `{key}` is {bytes} bytes of JSON, over max_value_bytes ({max}); it was not cached (raise TG_CACHE_MAX_VALUE_BYTES, or cache less)"
    )]
    ValueTooLarge {
        /// The key being written.
        key: String,
        /// The value's JSON size.
        bytes: usize,
        /// The cap.
        max: usize,
    },
    /// The key cannot be used (whitespace or control characters, or empty).
    #[error("invalid cache key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `incr`/`decr` on a key that is not in the cache (as in Django).
    #[error("cannot increment key `{0}`: it is not in the cache (set it first)")]
    MissingKey(String),
    /// `incr`/`decr` on a value that is not an integer, or an overflow.
    #[error(
        "cannot increment key `{0}`: the cached value is not a 64-bit integer or would overflow"
    )]
    NotAnInteger(String),
    /// [`crate::caches`] was asked for an alias that is not configured.
    #[error("no cache named `{alias}` is configured (configured: {known})")]
    UnknownCache {
        /// The alias asked for.
        alias: String,
        /// The aliases that exist, comma-separated.
        known: String,
    },
    /// [`crate::configure`] was called after the caches were already set up.
    #[error(
        "tg-cache is already configured (configure() must run once, before the first cache() call)"
    )]
    AlreadyConfigured,
}

/// A configuration value is invalid. The message names the setting (the
/// environment variable or builder method) and says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}={value}: {reason}")]
pub struct ConfigError {
    /// The environment variable or builder setting at fault, e.g. `TG_CACHE_BACKEND`.
    pub setting: String,
    /// The value given, with any password redacted.
    pub value: String,
    /// What is wrong and what is accepted instead.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(
        setting: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            setting: setting.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// `Result<T, tg_cache::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this error says the configuration is wrong rather than the
    /// server away: an invalid setting, a refused password, a database
    /// index the server does not have.
    pub fn is_misconfiguration(&self) -> bool {
        match self {
            Error::Config(_) => true,
            Error::Redis { source, .. } => {
                let text = source.to_string();
                source.kind() == redis::ErrorKind::AuthenticationFailed
                    || [
                        "WRONGPASS",
                        "NOAUTH",
                        "invalid password",
                        "DB index is out of range",
                        "invalid DB index",
                    ]
                    .iter()
                    .any(|m| text.contains(m))
            }
            _ => false,
        }
    }

    /// Whether this error means the store could not be reached (as opposed to
    /// a bad argument): such errors open the circuit breaker.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Unavailable { .. } => true,
            Error::Redis { source: e, .. } => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    // A Redis Cluster node that cannot be reached (failed,
                    // not yet replaced by its replica).
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::ClusterConnectionNotFound
                            | redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
                    )
            }
            _ => false,
        }
    }
}
