//! Shared test helpers: one cache per store kind, each Redis cache on its own
//! real `redis-server`.
#![allow(dead_code)]

pub use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig};

pub fn local() -> Cache {
    CacheConfig::local().build().unwrap()
}

pub fn redis_config(server: &RedisServer) -> CacheConfig {
    CacheConfig::redis(&server.url())
}

pub fn redis(server: &RedisServer) -> Cache {
    redis_config(server).build().unwrap()
}

/// Runs each listed `async fn(&Cache, Option<&RedisServer>)` as a test on the
/// local store and on a fresh real Redis.
#[macro_export]
macro_rules! for_each_store {
    ($($name:ident),* $(,)?) => {
        mod on_local {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::$name(&$crate::support::local(), None).await
            }
        )*}
        mod on_redis {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let server = $crate::support::RedisServer::start();
                super::$name(&$crate::support::redis(&server), Some(&server)).await
            }
        )*}
    };
}
