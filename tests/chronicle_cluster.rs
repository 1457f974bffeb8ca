//! The chronicle example over HTTP (cache_page, template fragments, invalidation on save) on a real Redis Cluster.

mod chronicle;

use std::sync::LazyLock;
use tg_cache::testing::RedisCluster;

static CLUSTER: LazyLock<RedisCluster> = LazyLock::new(|| {
    let cluster = RedisCluster::start();
    tg_cache::configure(tg_cache::Caches::new(tg_cache::CacheConfig::redis_cluster(
        cluster.urls(),
    )))
    .unwrap();
    cluster
});

fn setup() {
    LazyLock::force(&CLUSTER);
}

chronicle_tests!(setup);
