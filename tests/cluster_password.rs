//! A Redis Cluster whose nodes require a password: the cluster store works
//! through `redis://:<password>@...` seeds, and the password never appears
//! in an error, a log line or a configuration's `Debug`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tg_cache::testing::RedisCluster;
use tg_cache::{CacheConfig, Error};

const PASSWORD: &str = "s3cret-Pw0rd";
const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_cluster_works_and_never_shows_its_password() {
    let cluster = RedisCluster::start_with_password(PASSWORD);
    let urls = cluster.urls();
    assert!(urls[0].contains(PASSWORD));
    let config = CacheConfig::redis_cluster(&urls).near_cache(1000);
    assert!(!format!("{config:?}").contains(PASSWORD), "{config:?}");
    let (a, b) = (config.build().unwrap(), config.build().unwrap());
    a.health()
        .await
        .expect("the cluster answers with the password");

    // The API, across keys of every primary.
    let items: Vec<(String, u64)> = (0..200).map(|i| (format!("tg:fn:pw:id={i}"), i)).collect();
    a.set_many(&items, TTL).await.unwrap();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(b.get_many::<u64, _>(&keys).await.unwrap().len(), 200);
    assert_eq!(a.get::<u64>("tg:fn:pw:id=7").await.unwrap(), Some(7));
    a.invalidate_family("tg:fn:pw").await.unwrap();
    assert_eq!(b.get::<u64>("tg:fn:pw:id=7").await.unwrap(), None);
    // One computation for two caches.
    let runs = AtomicUsize::new(0);
    for cache in [&a, &b, &a] {
        let v: u64 = cache
            .get_or_set("tg:fn:pw:id=1", TTL, || async {
                runs.fetch_add(1, SeqCst);
                11
            })
            .await;
        assert_eq!(v, 11);
    }
    assert_eq!(runs.load(SeqCst), 1);
    a.set("pw:plain:1", &1u64, TTL).await.unwrap();
    assert_eq!(a.delete_pattern("pw:plain:*").await.unwrap(), 1);
    a.clear().await.unwrap();
    assert_eq!(b.get::<u64>("tg:fn:pw:id=1").await.unwrap(), None);
    assert_eq!(a.stats().errors + b.stats().errors, 0);

    // A wrong password: an error that names no password, and fail-open.
    let wrong: Vec<String> = urls
        .iter()
        .map(|u| u.replace(PASSWORD, "wr0ng-guess"))
        .collect();
    let bad = CacheConfig::redis_cluster(&wrong)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = bad.health().await.unwrap_err();
    let shown = format!("{err} / {err:?}");
    assert!(
        !shown.contains("wr0ng-guess") && !shown.contains(PASSWORD),
        "{shown}"
    );
    assert!(
        matches!(
            err,
            Error::Redis { .. } | Error::Unavailable { .. } | Error::Timeout { .. }
        ),
        "{err:?}"
    );
    let v: u64 = bad.get_or_set("tg:fn:pw:id=2", TTL, || async { 22 }).await;
    assert_eq!(v, 22, "a working function never fails");

    // From the environment, as applications configure it.
    let nodes = urls.join(",");
    let env = CacheConfig::from_lookup(|name| match name {
        "TG_CACHE_BACKEND" => Some("redis-cluster".into()),
        "TG_CACHE_REDIS_NODES" => Some(nodes.clone()),
        _ => None,
    })
    .unwrap();
    assert!(!format!("{env:?}").contains(PASSWORD));
    let c = env.build().unwrap();
    c.set("pw:env", &5u64, TTL).await.unwrap();
    assert_eq!(a.get::<u64>("pw:env").await.unwrap(), Some(5));
}
