//! The chronicle example over HTTP, on a real Redis.

mod chronicle;

use std::sync::LazyLock;
use tg_cache::testing::RedisServer;

static SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    tg_cache::configure(tg_cache::Caches::new(tg_cache::CacheConfig::redis(
        &server.url(),
    )))
    .unwrap();
    server
});

fn setup() {
    LazyLock::force(&SERVER);
}

chronicle_tests!(setup);
