//! #[cache_function] on a real Redis Cluster: the same shapes as on the local store and on one Redis server.

mod shapes;

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

shape_tests!(setup);
