//! #[derive(Invalidate)] on a real Redis Cluster: the same model tests as on one Redis server.

mod models;

use std::sync::LazyLock;
use tg_cache::testing::RedisCluster;

static CLUSTER: LazyLock<RedisCluster> = LazyLock::new(|| RedisCluster::start_as_default(|c| c));

fn setup() {
    LazyLock::force(&CLUSTER);
}

model_tests!(setup);
