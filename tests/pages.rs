//! `cache_page` as Django's: invalidation of pages whose path holds any
//! value, the response's own `max-age`, 304s, the cache's default timeout,
//! every `Cache-Control` line, and one round trip per page hit. Through a
//! real axum stack on a free loopback port and a real `redis-server`.

#[path = "cross_process/helpers.rs"]
mod helpers;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tg_cache::http::{cache_page, invalidate_path};
use tg_cache::testing::{RedisCluster, RedisServer};
use tg_cache::timeout::LONG;
use tg_cache::{CacheConfig, Invalidate, Timeout};

/// The alias `redis` reaches the server through a proxy; the alias
/// `counted` through another, used by one test only, which counts its
/// round trips.
struct Setup {
    server: RedisServer,
    /// The alias `cluster`.
    _cluster: RedisCluster,
    counted: helpers::Proxy,
    _shared: helpers::Proxy,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let server = RedisServer::start();
    // The proxies live on a runtime of their own, on a thread of its own,
    // for the whole run (this runs inside a test's runtime).
    let port = server.port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = helpers::Proxy::start(port, b"").await;
            let counted = helpers::Proxy::start(port, b"").await;
            tx.send((shared, counted)).unwrap();
            std::future::pending::<()>().await
        })
    });
    let (shared, counted) = rx.recv().unwrap();
    let cluster = RedisCluster::start();
    tg_cache::configure(
        tg_cache::Caches::new(CacheConfig::local())
            .with("redis", CacheConfig::redis(&shared.url()))
            .with("counted", CacheConfig::redis(&counted.url()))
            .with("cluster", CacheConfig::redis_cluster(cluster.urls()))
            .with(
                "short_default",
                CacheConfig::local().default_timeout(tg_cache::timeout::SHORT),
            )
            .with(
                "nocache_default",
                CacheConfig::local().default_timeout(Timeout::NoCache),
            ),
    )
    .unwrap();
    Setup {
        server,
        _cluster: cluster,
        counted,
        _shared: shared,
    }
});

struct App {
    base: String,
    runs: Arc<AtomicUsize>,
    client: reqwest::Client,
}

impl App {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// The `X-Cache` header of a GET.
    async fn x_cache(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// `/posts/{slug}` cached on Redis (view `posts`, alias `redis`), counting
/// handler runs.
async fn posts_app() -> App {
    posts_app_on("redis").await
}

async fn posts_app_on(alias: &'static str) -> App {
    posts_app_as(alias, "posts").await
}

/// [`posts_app_on`], cached under view `view`.
async fn posts_app_as(alias: &'static str, view: &'static str) -> App {
    LazyLock::force(&SETUP);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let router = Router::new().route(
        "/posts/{slug}",
        get(move |Path(slug): Path<String>| {
            r.fetch_add(1, SeqCst);
            std::future::ready(format!("<h1>{slug}</h1>"))
        })
        .layer(cache_page(LONG).view(view).cache(alias)),
    );
    App {
        base: serve(router).await,
        runs,
        client: reqwest::Client::new(),
    }
}

#[derive(Clone, Invalidate)]
#[invalidate_on(save, delete)]
#[invalidate(cache = "redis", page(view = "posts", path = "/posts/{slug}"))]
struct Post {
    slug: String,
}

/// [`Post`], with its pages cached on the Redis Cluster.
#[derive(Clone, Invalidate)]
#[invalidate_on(save, delete)]
#[invalidate(
    cache = "cluster",
    page(view = "cluster_posts", path = "/posts/{slug}")
)]
struct ClusterPost {
    slug: String,
}

/// A URL path segment as a link writes it (RFC 3986: unreserved bytes as
/// they are, every other byte percent-encoded).
fn link_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Slugs of every shape: a leading digit, a space, non-ASCII, a slash, a
/// percent sign, a plus, a quote, 300 bytes.
fn slugs() -> Vec<String> {
    vec![
        "plain".into(),
        "2024-recap".into(),
        "Ada Lovelace".into(),
        "café-noir".into(),
        "a/b".into(),
        "100%".into(),
        "c++".into(),
        "o'neil".into(),
        "-lead".into(),
        "x".repeat(300),
    ]
}

/// Every page of `app` is dropped by its model's save (`save(slug)`),
/// whatever its path holds; no other page is.
async fn a_save_drops_its_page<F: Future<Output = ()>>(app: App, save: impl Fn(String) -> F) {
    let mut survived = Vec::new();
    for slug in slugs() {
        let path = format!("/posts/{}", link_segment(&slug));
        assert_eq!(app.x_cache(&path).await, "MISS", "{slug}");
        assert_eq!(app.x_cache(&path).await, "HIT", "{slug}");
        save(slug.clone()).await;
        if app.x_cache(&path).await == "HIT" {
            survived.push(slug.chars().take(20).collect::<String>());
        }
    }
    assert!(
        survived.is_empty(),
        "{} of {} pages survived their model's save: {survived:?}",
        survived.len(),
        slugs().len()
    );
    // Other pages stay cached: the pattern matches one page only.
    assert_eq!(app.x_cache("/posts/keep").await, "MISS");
    save("kee".into()).await;
    assert_eq!(app.x_cache("/posts/keep").await, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_save_drops_its_page_whatever_its_path_holds() {
    a_save_drops_its_page(posts_app().await, |slug| async move {
        Post { slug }.saved().await.unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_save_drops_its_page_on_a_cluster() {
    a_save_drops_its_page(
        posts_app_as("cluster", "cluster_posts").await,
        |slug| async move { ClusterPost { slug }.saved().await.unwrap() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_path_takes_the_link_or_the_decoded_path() {
    let app = posts_app().await;
    let cache = tg_cache::caches("redis").unwrap();
    for (i, slug) in ["Ada Lovelace", "café", "2024-recap"].iter().enumerate() {
        let slug = format!("{slug}-{i}");
        let link = format!("/posts/{}", link_segment(&slug));
        for given in [link.clone(), format!("/posts/{slug}")] {
            assert_eq!(app.x_cache(&link).await, "MISS", "{given}");
            assert_eq!(app.x_cache(&link).await, "HIT", "{given}");
            // The page and its learned `Vary` list.
            assert_eq!(
                invalidate_path(cache, "posts", &given).await.unwrap(),
                2,
                "{given}"
            );
        }
    }
    let runs = app.runs.load(SeqCst);
    assert_eq!(runs, 6);
}

/// A view name of its own for each app.
fn next_view() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("cc{}", N.fetch_add(1, SeqCst))
}

/// A route whose handler sets `Cache-Control` lines of its own.
async fn headers_app(lines: &'static [&'static str], alias: &'static str) -> App {
    LazyLock::force(&SETUP);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let router = Router::new().route(
        "/p",
        get(move || {
            r.fetch_add(1, SeqCst);
            let mut resp = "page".into_response();
            for l in lines {
                resp.headers_mut()
                    .append(header::CACHE_CONTROL, l.parse().unwrap());
            }
            std::future::ready(resp)
        })
        .layer(cache_page(Timeout::Default).view(&next_view()).cache(alias)),
    );
    App {
        base: serve(router).await,
        runs,
        client: reqwest::Client::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_responses_own_max_age_is_its_timeout() {
    // max-age=1 under a route timeout of the default (300 s): stored for 1 s.
    let app = headers_app(&["public, max-age=1"], "redis").await;
    assert_eq!(app.x_cache("/p").await, "MISS");
    assert_eq!(app.x_cache("/p").await, "HIT");
    let keys: Vec<String> = SETUP.server.cmd(&["KEYS", "tg:view:cc*:page"]);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let pttl: i64 = SETUP.server.cmd(&["PTTL", &keys[0]]);
    assert!((0..=1000).contains(&pttl), "PTTL {pttl}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.x_cache("/p").await, "MISS");
    assert_eq!(app.runs.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_age_zero_and_private_are_not_cached() {
    for lines in [&["max-age=0"][..], &["public", "private"], &["no-store"]] {
        let lines: &'static [&'static str] = Box::leak(lines.to_vec().into_boxed_slice());
        let app = headers_app(lines, "short_default").await;
        for _ in 0..3 {
            assert_eq!(app.x_cache("/p").await, "", "{lines:?}");
        }
        assert_eq!(app.runs.load(SeqCst), 3, "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cache_control_line_is_kept() {
    let app = headers_app(&["public", "no-transform"], "short_default").await;
    let r = app.get("/p").await;
    let cc: Vec<String> = r
        .headers()
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cc, vec!["public, no-transform, max-age=60".to_owned()]);
    assert_eq!(app.x_cache("/p").await, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_timeout_is_the_caches_own() {
    // The cache's default is 60 s: the page says so, and is cached.
    let app = headers_app(&[], "short_default").await;
    let r = app.get("/p").await;
    assert_eq!(r.headers()[header::CACHE_CONTROL], "max-age=60");
    assert_eq!(app.x_cache("/p").await, "HIT");
    // A cache whose default caches nothing: no caching, no cache headers.
    let app = headers_app(&["public"], "nocache_default").await;
    for _ in 0..2 {
        let r = app.get("/p").await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public");
        assert!(r.headers().get(header::EXPIRES).is_none());
    }
    assert_eq!(app.runs.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_304_gets_the_cache_headers_and_is_not_stored() {
    LazyLock::force(&SETUP);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let router = Router::new().route(
        "/cond",
        get(move || {
            r.fetch_add(1, SeqCst);
            std::future::ready(StatusCode::NOT_MODIFIED.into_response())
        })
        .layer(cache_page(LONG).view("cond").cache("redis")),
    );
    let app = App {
        base: serve(router).await,
        runs,
        client: reqwest::Client::new(),
    };
    for _ in 0..2 {
        let r = app.get("/cond").await;
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "max-age=900");
        assert!(r.headers().contains_key(header::EXPIRES));
    }
    assert_eq!(app.runs.load(SeqCst), 2, "a 304 was stored");
    let keys: Vec<String> = SETUP.server.cmd(&["KEYS", "tg:view:cond:*"]);
    assert!(keys.iter().all(|k| !k.ends_with(":page")), "{keys:?}");
}

/// A private 304 is passed on as it is: no max-age, no Expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_304_gets_no_cache_headers() {
    LazyLock::force(&SETUP);
    let router = Router::new().route(
        "/private304",
        get(|| {
            std::future::ready(
                (
                    StatusCode::NOT_MODIFIED,
                    [(header::CACHE_CONTROL, "private")],
                )
                    .into_response(),
            )
        })
        .layer(cache_page(LONG).view("private304").cache("redis")),
    );
    let app = App {
        base: serve(router).await,
        runs: Arc::new(AtomicUsize::new(0)),
        client: reqwest::Client::new(),
    };
    let r = app.get("/private304").await;
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "private");
    assert!(r.headers().get(header::EXPIRES).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_hit_is_one_round_trip_and_one_lookup() {
    // A view of its own: the other tests invalidate `posts` meanwhile, and
    // a hit that races with its family's invalidation reads the new epoch
    // in a second round trip (`store/epochs.rs`).
    let app = posts_app_as("counted", "posts_counted").await;
    assert_eq!(app.x_cache("/posts/one-trip").await, "MISS");
    assert_eq!(app.x_cache("/posts/one-trip").await, "HIT");
    let cache = tg_cache::caches("counted").unwrap();
    let family = |c: &tg_cache::Cache| {
        c.family_stats()
            .into_iter()
            .find(|(f, _)| f == "tg:view:posts_counted")
            .map(|(_, s)| s.hits + s.misses)
            .unwrap_or(0)
    };
    // Up to three rounds: rarely (about 1 run in 6 on a loaded 2-core
    // machine) one hit of a round re-reads its family's epoch, a second
    // round trip (`store/epochs.rs`, the race path; cause under study). A
    // hit path that takes two round trips fails every round.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let lookups = family(cache);
        let trips = SETUP.counted.round_trips();
        let conns = SETUP.counted.connections();
        for _ in 0..10 {
            assert_eq!(app.x_cache("/posts/one-trip").await, "HIT");
        }
        let trips = SETUP.counted.round_trips() - trips;
        // A worker thread's first command opens its connection (driven by
        // the app's runtime): `HELLO` and `CLIENT TRACKING ON`, two round
        // trips.
        let opened = SETUP.counted.connections() - conns;
        assert_eq!(family(cache) - lookups, 10, "a page hit counts one lookup");
        if trips == 10 + 2 * opened {
            return;
        }
        rounds.push(format!("{trips} round trips ({opened} connections opened)"));
    }
    panic!("10 page hits never took 10 round trips to Redis: {rounds:?}");
}
