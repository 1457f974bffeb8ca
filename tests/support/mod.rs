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

/// The Redis behind a store test's cache, to build siblings on and to read
/// raw keys from: a server, or the shared cluster.
pub enum Shared<'a> {
    Server(&'a RedisServer),
    Cluster(&'a RedisCluster),
    /// A server shared with Django (`KeyFunction::Django`): keys stored as
    /// `:1:<key>`, values bare.
    Django(&'a RedisServer),
}

/// A cache shared with Django on `server`.
pub fn django_config(server: &RedisServer) -> CacheConfig {
    redis_config(server).key_function(tg_cache::KeyFunction::Django)
}

impl Shared<'_> {
    /// A configuration of a cache on the same Redis.
    pub fn config(&self) -> CacheConfig {
        match self {
            Shared::Server(s) => redis_config(s),
            Shared::Cluster(_) => cluster_config(),
            Shared::Django(s) => django_config(s),
        }
    }

    /// The name a key of the cache is stored under.
    pub fn stored(&self, key: &str) -> String {
        match self {
            Shared::Django(_) => format!(":1:{key}"),
            _ => key.to_owned(),
        }
    }

    /// Whether the cache's values are stored bare (no epoch header).
    pub fn bare(&self) -> bool {
        matches!(self, Shared::Django(_))
    }

    /// One raw command. On a cluster, `KEYS` and `DBSIZE` are summed over
    /// every primary; any other command goes to its key's node.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let cluster = match self {
            Shared::Server(s) | Shared::Django(s) => return s.cmd(args),
            Shared::Cluster(c) => c,
        };
        let primaries = cluster.primaries();
        let value = match args[0] {
            "KEYS" => redis::Value::Array(
                primaries
                    .iter()
                    .flat_map(|p| cluster.server(p.port).cmd::<Vec<redis::Value>>(args))
                    .collect(),
            ),
            "DBSIZE" => redis::Value::Int(
                primaries
                    .iter()
                    .map(|p| cluster.server(p.port).cmd::<i64>(args))
                    .sum(),
            ),
            _ => {
                let mut cmd = redis::cmd(args[0]);
                for a in &args[1..] {
                    cmd.arg(*a);
                }
                let mut con = redis::cluster::ClusterClient::new(cluster.urls())
                    .and_then(|c| c.get_connection())
                    .expect("a cluster connection");
                cmd.query(&mut con)
                    .unwrap_or_else(|e| panic!("redis {args:?} failed: {e}"))
            }
        };
        T::from_redis_value(value).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// The epoch key of `family` that `key` is checked against: the
    /// family's own on a server, its slot's on a cluster.
    pub fn epoch_key(&self, family: &str, key: &str) -> String {
        match self {
            Shared::Server(_) => format!("#epoch:{family}"),
            Shared::Django(_) => format!(":1:#epoch:{family}"),
            Shared::Cluster(_) => {
                format!("#{{{}}}:#epoch:{family}", tg_cache::testing::slot_tag(key))
            }
        }
    }
}

/// Runs each listed `async fn(&Cache, Option<&Shared>)` as a test on the
/// local store (`None`), on a fresh real Redis (tg-cache's own keys and
/// values, and shared with Django: `on_django`), and on the shared real
/// Redis Cluster.
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
                let shared = $crate::support::Shared::Server(&server);
                super::$name(&$crate::support::redis(&server), Some(&shared)).await
            }
        )*}
        mod on_django {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let server = $crate::support::RedisServer::start();
                let shared = $crate::support::Shared::Django(&server);
                let cache = $crate::support::django_config(&server).build().unwrap();
                super::$name(&cache, Some(&shared)).await
            }
        )*}
        mod on_cluster {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let _turn = $crate::support::CLUSTER_TURN.lock().await;
                let shared = $crate::support::Shared::Cluster(&$crate::support::CLUSTER);
                super::$name(&$crate::support::cluster().await, Some(&shared)).await
            }
        )*}
    };
}
