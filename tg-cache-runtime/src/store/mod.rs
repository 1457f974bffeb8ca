//! The stores behind a [`crate::Cache`].

pub(crate) mod local;
pub(crate) mod redis;

use crate::error::ConfigError;

pub(crate) enum Store {
    Local(local::LocalStore),
    Redis(redis::RedisStore),
    Dummy,
    /// The configuration was invalid: every call returns this error (and
    /// cached functions still run their bodies).
    Broken(ConfigError),
}
