//! Shared test helpers: one cache per store kind, each Redis cache on its own
//! real `redis-server`.
#![allow(dead_code)]

use std::sync::LazyLock;
use tg_cache::testing::RedisCluster;
pub use tg_cache::testing::RedisServer;
use tg_cache::{Cache, CacheConfig};

/// One Redis Cluster for every cluster test of a test binary (its nodes
/// stop with the process).
pub static CLUSTER: LazyLock<RedisCluster> = LazyLock::new(RedisCluster::start);

/// Held by the test that uses [`CLUSTER`]: one at a time, on an emptied
/// cluster, as each Redis test has a server of its own.
pub static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn cluster_config() -> CacheConfig {
    CacheConfig::redis_cluster(CLUSTER.urls())
}

/// A cache on the shared cluster, emptied (hold [`CLUSTER_TURN`]).
pub async fn cluster() -> Cache {
    let cache = cluster_config().build().unwrap();
    cache.flush_database().await.unwrap();
    cache
}

/// The JSON of a stored family value: values of a key family carry their
/// family's epoch as a `#<token>:` header (32 hex digits).
pub fn payload(raw: &str) -> &str {
    let (epoch, json) = raw
        .strip_prefix('#')
        .and_then(|r| r.split_once(':'))
        .unwrap_or_else(|| panic!("no epoch header in {raw:?}"));
    assert_eq!(epoch.len(), 32, "{raw:?}");
    json
}

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
/// local store, on a fresh real Redis, and on a real Redis Cluster (without
/// a server to read raw keys from).
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
        mod on_cluster {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let _turn = $crate::support::CLUSTER_TURN.lock().await;
                super::$name(&$crate::support::cluster().await, None).await
            }
        )*}
    };
}
