//! The chronicle example over HTTP (cache_page, template fragments,
//! invalidation on save) on a real Redis Cluster, with a near cache in
//! front (as a production deployment would run it; the plain cluster store
//! runs the model and macro suites: `invalidation_cluster.rs`,
//! `cache_function_cluster.rs`).

mod chronicle;

use std::sync::LazyLock;
use tg_cache::testing::RedisCluster;

static CLUSTER: LazyLock<RedisCluster> =
    LazyLock::new(|| RedisCluster::start_as_default(|c| c.near_cache(10_000)));

fn setup() {
    LazyLock::force(&CLUSTER);
}

chronicle_tests!(setup);
