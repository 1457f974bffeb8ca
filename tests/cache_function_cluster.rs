//! #[cache_function] on a real Redis Cluster: the same shapes as on the local store and on one Redis server.

mod shapes;

use std::sync::LazyLock;
use tg_cache::testing::RedisCluster;

static CLUSTER: LazyLock<RedisCluster> = LazyLock::new(|| RedisCluster::start_as_default(|c| c));

fn setup() {
    LazyLock::force(&CLUSTER);
}

shape_tests!(setup);
