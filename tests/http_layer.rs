//! `cache_page` over real HTTP: an axum server on a free loopback port, a
//! real client, and counters of how often each handler ran.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use tg_cache::CacheConfig;
use tg_cache::http::{cache_page, invalidate_path, invalidate_view};
use tg_cache::testing::{RedisCluster, RedisServer};
use tg_cache::timeout::LONG;

/// Every test gets its own app, cache and counter.
struct App {
    base: String,
    runs: Arc<AtomicUsize>,
    client: reqwest::Client,
}

/// The default cache is local; the alias `redis` is a real Redis server.
static CACHES: LazyLock<(RedisServer, RedisCluster)> = LazyLock::new(|| {
    install_log_capture();
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    tg_cache::configure(
        tg_cache::Caches::new(CacheConfig::local().max_entries(10_000))
            .with("redis", CacheConfig::redis(&server.url()))
            .with("cluster", CacheConfig::redis_cluster(cluster.urls())),
    )
    .unwrap();
    (server, cluster)
});

/// Every tracing event of this test binary, at every level, as text.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = format!("span {}", span.metadata().name());
        span.record(&mut Fields(&mut line));
        LOG.lock().unwrap().push(line);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::from("record");
        values.record(&mut Fields(&mut line));
        LOG.lock().unwrap().push(line);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{} {}", event.metadata().level(), event.metadata().target());
        event.record(&mut Fields(&mut line));
        LOG.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn install_log_capture() {
    tracing::subscriber::set_global_default(Capture).unwrap();
}

fn redis_server() -> &'static RedisServer {
    &CACHES.0
}

async fn start(
    view: &str,
    layer: impl FnOnce(tg_cache::http::CachePageLayer) -> tg_cache::http::CachePageLayer,
) -> App {
    LazyLock::force(&CACHES);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let counted = move |f: fn(HeaderMap) -> axum::response::Response| {
        let r = r.clone();
        move |h: HeaderMap| {
            r.fetch_add(1, SeqCst);
            std::future::ready(f(h))
        }
    };
    let app = Router::new()
        .route("/page", get(counted(|_| "<h1>merits</h1>".into_response())))
        .route(
            "/cookie",
            get(counted(|_| {
                ([(header::SET_COOKIE, "a=b")], "x").into_response()
            })),
        )
        .route(
            "/private",
            get(counted(|_| {
                ([(header::CACHE_CONTROL, "private")], "x").into_response()
            })),
        )
        .route(
            "/nostore",
            get(counted(|_| {
                ([(header::CACHE_CONTROL, "no-store")], "x").into_response()
            })),
        )
        .route(
            "/nocache",
            get(counted(|_| {
                ([(header::CACHE_CONTROL, "no-cache")], "x").into_response()
            })),
        )
        .route(
            "/notfound",
            get(counted(|_| (StatusCode::NOT_FOUND, "gone").into_response())),
        )
        .route("/big", get(counted(|_| "x".repeat(2048).into_response())))
        .route(
            "/stream",
            get(counted(|_| {
                axum::body::Body::from_stream(TwoChunks(0)).into_response()
            })),
        )
        .route(
            "/vary",
            get(counted(|h| {
                let lang = h
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("en")
                    .to_owned();
                (
                    [(header::VARY, "Accept-Language")],
                    format!("hello in {lang}"),
                )
                    .into_response()
            })),
        )
        .route(
            "/varystar",
            get(counted(|_| ([(header::VARY, "*")], "x").into_response())),
        )
        .route(
            "/me",
            get(counted(|h| {
                let user = h
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("anonymous")
                    .to_owned();
                ([(header::VARY, "Authorization")], format!("hello {user}")).into_response()
            })),
        )
        .route(
            "/whoami",
            get(counted(|h| {
                let auth = h
                    .get(header::AUTHORIZATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let cookies: Vec<String> = h
                    .get_all(header::COOKIE)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                format!("auth={auth:?} cookies={cookies:?}").into_response()
            })),
        )
        .route(
            "/csrf",
            get(counted(|_| {
                ([(header::VARY, "Cookie")], "a form").into_response()
            })),
        )
        .route(
            "/token",
            // a per-request token (a CSRF form) on a page that says so
            get(counted(|_| {
                let n = TOKENS.fetch_add(1, SeqCst);
                ([(header::VARY, "Cookie")], format!("token {n}")).into_response()
            })),
        )
        .route(
            "/bytes",
            get(counted(|h| {
                let values: Vec<Vec<u8>> = h
                    .get_all("x-v")
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect();
                ([(header::VARY, "X-V")], format!("{values:?}")).into_response()
            })),
        )
        .route("/post", post(counted(|_| "posted".into_response())))
        .route_layer(layer(cache_page(LONG).view(view).max_body_bytes(1024)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    App {
        base: format!("http://{addr}"),
        runs,
        client: reqwest::Client::new(),
    }
}

/// The next token `/token` hands out.
static TOKENS: AtomicUsize = AtomicUsize::new(0);

/// A two-chunk body of unknown length (a streaming response).
struct TwoChunks(u8);

impl futures_core::Stream for TwoChunks {
    type Item = Result<String, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0 += 1;
        std::task::Poll::Ready((self.0 <= 2).then(|| Ok(format!("chunk{}", self.0))))
    }
}

impl App {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.get_bytes(path, &headers).await
    }
    /// A GET with raw header values (repeated names give repeated headers).
    async fn get_bytes(
        &self,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                reqwest::header::HeaderName::try_from(*k).unwrap(),
                reqwest::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        req = req.headers(map);
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }
    fn runs(&self) -> usize {
        self.runs.load(SeqCst)
    }
    /// A raw HTTP/1.1 GET with `target` as written (absolute-form allowed)
    /// and exactly these headers; returns the status and `X-Cache`.
    async fn raw_get(&self, target: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
        use std::io::{Read as _, Write as _};
        let addr = self.base.trim_start_matches("http://").to_owned();
        let mut req = format!("GET {target} HTTP/1.1\r\nconnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tokio::task::spawn_blocking(move || {
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            conn.write_all(req.as_bytes()).unwrap();
            let mut resp = Vec::new();
            conn.read_to_end(&mut resp).unwrap();
            let resp = String::from_utf8_lossy(&resp).into_owned();
            let head = resp.split("\r\n\r\n").next().unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let x_cache = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-cache")
                    .then(|| v.trim().to_owned())
            });
            (status, x_cache)
        })
        .await
        .unwrap()
    }
}

fn x_cache(h: &HeaderMap) -> Option<&str> {
    h.get("x-cache").and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn first_request_misses_second_hits() {
    let app = start("t_basic", |l| l).await;
    let (s, h, body) = app.get("/page", &[]).await;
    assert_eq!(
        (s, x_cache(&h), body.as_str()),
        (StatusCode::OK, Some("MISS"), "<h1>merits</h1>")
    );
    assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "max-age=900");
    assert!(h.contains_key(header::EXPIRES));
    let (s, h, body) = app.get("/page", &[]).await;
    assert_eq!(
        (s, x_cache(&h), body.as_str()),
        (StatusCode::OK, Some("HIT"), "<h1>merits</h1>")
    );
    assert_eq!(
        h.get(header::CONTENT_TYPE).unwrap(),
        "text/plain; charset=utf-8"
    );
    assert_eq!(app.runs(), 1);
    // another query string is another page
    let (_, h, _) = app.get("/page?sort=name", &[]).await;
    assert_eq!(x_cache(&h), Some("MISS"));
    assert_eq!(app.runs(), 2);
    // HEAD is served from the cached GET
    let resp = app
        .client
        .head(format!("{}/page", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers().get("x-cache").unwrap(), "HIT");
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn uncacheable_responses_pass_through() {
    let app = start("t_rules", |l| l).await;
    for path in [
        "/cookie",
        "/private",
        "/nostore",
        "/nocache",
        "/notfound",
        "/big",
        "/stream",
        "/varystar",
    ] {
        let before = app.runs();
        let (_, h1, b1) = app.get(path, &[]).await;
        let (_, h2, b2) = app.get(path, &[]).await;
        assert_eq!(app.runs() - before, 2, "{path} was served from the cache");
        assert_eq!(x_cache(&h1), None, "{path}");
        assert_eq!(x_cache(&h2), None, "{path}");
        assert_eq!(b1, b2);
    }
    let (_, _, body) = app.get("/stream", &[]).await;
    assert_eq!(body, "chunk1chunk2");
    let before = app.runs();
    app.client
        .post(format!("{}/post", app.base))
        .send()
        .await
        .unwrap();
    app.client
        .post(format!("{}/post", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(app.runs() - before, 2);
}

#[tokio::test]
async fn vary_keys_the_entry_on_the_varied_headers() {
    let app = start("t_vary", |l| l).await;
    // The first response teaches the layer that the page varies; it was
    // computed before its key could include the varied header, so it is
    // not stored.
    let (_, h, b) = app.get("/vary", &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("MISS"), "hello in de"));
    let (_, h, b) = app.get("/vary", &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("MISS"), "hello in de"));
    let (_, h, b) = app.get("/vary", &[("accept-language", "fr")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("MISS"), "hello in fr"));
    let (_, h, b) = app.get("/vary", &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("HIT"), "hello in de"));
    let (_, h, b) = app.get("/vary", &[("accept-language", "fr")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("HIT"), "hello in fr"));
    assert_eq!(app.runs(), 3);
}

#[tokio::test]
async fn pages_are_invalidated_in_one_call() {
    let app = start("t_inval", |l| l).await;
    app.get("/page", &[]).await;
    app.get("/page?a=1", &[]).await;
    assert_eq!(x_cache(&app.get("/page", &[]).await.1), Some("HIT"));
    let cache = tg_cache::cache();
    assert_eq!(
        invalidate_path(cache, "t_inval", "/page").await.unwrap(),
        4,
        "2 pages + 2 header lists"
    );
    assert_eq!(x_cache(&app.get("/page", &[]).await.1), Some("MISS"));
    assert_eq!(x_cache(&app.get("/page?a=1", &[]).await.1), Some("MISS"));
    invalidate_view(cache, "t_inval").await.unwrap();
    assert_eq!(x_cache(&app.get("/page", &[]).await.1), Some("MISS"));
    let keys_are_view_keys = cache
        .family_stats()
        .iter()
        .any(|(f, _)| f == "tg:view:t_inval");
    assert!(keys_are_view_keys);
}

#[tokio::test]
async fn x_cache_header_can_be_renamed_or_removed() {
    let app = start("t_hdr", |l| l.x_cache_header(Some("x-tg-cache"))).await;
    app.get("/page", &[]).await;
    let (_, h, _) = app.get("/page", &[]).await;
    assert_eq!(h.get("x-tg-cache").unwrap(), "HIT");
    let app = start("t_hdr_off", |l| l.x_cache_header(None)).await;
    app.get("/page", &[]).await;
    let (_, h, _) = app.get("/page", &[]).await;
    assert!(!h.contains_key("x-cache"));
    assert_eq!(app.runs(), 1);
}

fn on(
    alias: Option<&str>,
) -> impl Fn(tg_cache::http::CachePageLayer) -> tg_cache::http::CachePageLayer {
    let alias = alias.map(str::to_owned);
    move |l| match &alias {
        Some(a) => l.cache(a),
        None => l,
    }
}

fn store_of(alias: Option<&str>) -> &'static tg_cache::Cache {
    match alias {
        Some(a) => tg_cache::caches(a).unwrap(),
        None => tg_cache::cache(),
    }
}

/// Runs `async fn name(alias: Option<&'static str>)` on the local store, on
/// Redis and on a Redis Cluster.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod local {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(None).await }
        )*}
        mod redis {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(Some("redis")).await }
        )*}
        mod cluster {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(Some("cluster")).await }
        )*}
    };
}

on_both_stores!(
    two_hosts_never_share_a_page,
    absolute_form_with_another_host_passes_through,
    forwarded_host_is_keyed_only_when_trusted,
    query_strings_are_keyed_by_hash_only,
    vary_cookie_pages_never_reach_unkeyed_cookies,
    session_cookies_bypass_by_default,
    vary_on_cookie_gives_each_session_its_entry,
    allow_listed_cookies_are_cacheable_and_not_keyed,
    authorization_bypasses_unless_varied_on,
    non_utf8_varied_values_give_separate_pages,
);

async fn two_hosts_never_share_a_page(alias: Option<&'static str>) {
    let view = format!("t_hosts_{}", alias.unwrap_or("local"));
    let app = start(&view, on(alias)).await;
    let host = |h: &'static str| [("host", h)];
    assert_eq!(
        x_cache(&app.get("/page", &host("a.example")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&app.get("/page", &host("b.example")).await.1),
        Some("MISS")
    );
    // a glob character in a host is a literal, not a wildcard
    assert_eq!(x_cache(&app.get("/page", &host("*")).await.1), Some("MISS"));
    assert_eq!(
        x_cache(&app.get("/page", &host("a.example")).await.1),
        Some("HIT")
    );
    assert_eq!(
        x_cache(&app.get("/page", &host("A.EXAMPLE")).await.1),
        Some("HIT"),
        "hosts are case-insensitive"
    );
    assert_eq!(
        x_cache(&app.get("/page", &host("b.example")).await.1),
        Some("HIT")
    );
    assert_eq!(
        x_cache(&app.get("/page", &host("a.example:8080")).await.1),
        Some("MISS")
    );
    assert_eq!(app.runs(), 4);
    // X-Forwarded-Proto is not trusted by default...
    let (_, h, _) = app
        .get(
            "/page",
            &[("host", "a.example"), ("x-forwarded-proto", "https")],
        )
        .await;
    assert_eq!(x_cache(&h), Some("HIT"));
    // ...and keys the scheme on a route that trusts its proxy.
    let tview = format!("{view}_proxied");
    let proxied = start(&tview, |l| on(alias)(l).trust_forwarded_proto()).await;
    let via = |proto: &'static str| [("host", "a.example"), ("x-forwarded-proto", proto)];
    assert_eq!(
        x_cache(&proxied.get("/page", &via("https")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("http")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("HTTPS")).await.1),
        Some("HIT")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("ftp")).await.1),
        None,
        "an unknown scheme passes through"
    );
    // One call drops the path on every host and scheme.
    let cache = store_of(alias);
    assert_eq!(
        invalidate_path(cache, &view, "/page").await.unwrap(),
        8,
        "4 pages + 4 header lists"
    );
    assert_eq!(invalidate_path(cache, &tview, "/page").await.unwrap(), 4);
    assert_eq!(
        x_cache(&app.get("/page", &host("b.example")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("https")).await.1),
        Some("MISS")
    );
}

async fn session_cookies_bypass_by_default(alias: Option<&'static str>) {
    let view = format!("t_sessions_{}", alias.unwrap_or("local"));
    let app = start(&view, on(alias)).await;
    for _ in 0..2 {
        for (cookie, who) in [
            ("id=zzAliceSession", "zzAliceSession"),
            ("id=zzBobSession", "zzBobSession"),
            ("sessionid=zzCarolSession", "zzCarolSession"),
            ("theme=dark", "theme"),
            ("", "cookies"),
        ] {
            let (_, h, b) = app.get("/whoami", &[("cookie", cookie)]).await;
            assert_eq!(x_cache(&h), None, "{cookie}");
            assert!(b.contains(who), "{b}");
        }
    }
    assert_eq!(app.runs(), 10, "never read from the cache");
    // nor written: an anonymous request is the first to fill it
    assert_eq!(x_cache(&app.get("/whoami", &[]).await.1), Some("MISS"));
    assert_eq!(x_cache(&app.get("/whoami", &[]).await.1), Some("HIT"));
    // a cookie request still bypasses a cached anonymous page
    let (_, h, b) = app.get("/whoami", &[("cookie", "id=zzAliceSession")]).await;
    assert_eq!((x_cache(&h), b.contains("zzAliceSession")), (None, true));
    assert_no_secret_in_keys(alias).await;
}

async fn vary_on_cookie_gives_each_session_its_entry(alias: Option<&'static str>) {
    let view = format!("t_vary_cookie_{}", alias.unwrap_or("local"));
    let app = start(&view, |l| {
        on(alias)(l).vary_on_cookie("id").allow_cookies(["theme"])
    })
    .await;
    let alice = [("cookie", "id=zzAliceSession")];
    let bob = [("cookie", "id=zzBobSession; theme=zzTheme")];
    let (_, h, b) = app.get("/whoami", &alice).await;
    assert_eq!(x_cache(&h), Some("MISS"));
    assert!(b.contains("zzAliceSession"));
    assert_eq!(h.get(header::VARY).unwrap(), "Cookie");
    let (_, h, b) = app.get("/whoami", &bob).await;
    assert_eq!(x_cache(&h), Some("MISS"));
    assert!(b.contains("zzBobSession") && !b.contains("zzAliceSession"));
    for _ in 0..2 {
        let (_, h, b) = app.get("/whoami", &alice).await;
        assert_eq!(x_cache(&h), Some("HIT"));
        assert!(
            b.contains("zzAliceSession") && !b.contains("zzBobSession"),
            "{b}"
        );
        let (_, h, b) = app.get("/whoami", &bob).await;
        assert_eq!(x_cache(&h), Some("HIT"));
        assert!(
            b.contains("zzBobSession") && !b.contains("zzAliceSession"),
            "{b}"
        );
    }
    // absent and empty are two more entries; the theme does not matter
    let (_, h, b) = app.get("/whoami", &[]).await;
    assert_eq!(
        (x_cache(&h), b.contains("zzAlice") || b.contains("zzBob")),
        (Some("MISS"), false)
    );
    assert_eq!(
        x_cache(&app.get("/whoami", &[("cookie", "id=")]).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&app.get("/whoami", &[("cookie", "theme=x")]).await.1),
        Some("HIT")
    );
    // an unknown cookie beside it still bypasses
    assert_eq!(
        x_cache(
            &app.get("/whoami", &[("cookie", "id=zzAliceSession; other=zzOther")])
                .await
                .1
        ),
        None
    );
    assert_eq!(app.runs(), 5);
    // A handler's `Vary: Cookie` is keyed when every cookie is varied on...
    assert_eq!(x_cache(&app.get("/csrf", &alice).await.1), Some("MISS"));
    assert_eq!(x_cache(&app.get("/csrf", &alice).await.1), Some("HIT"));
    // ...but not with an allowed cookie beside it: it may depend on that one.
    assert_eq!(x_cache(&app.get("/csrf", &bob).await.1), None);
    assert_eq!(x_cache(&app.get("/csrf", &bob).await.1), None);
    assert_eq!(
        invalidate_path(store_of(alias), &view, "/whoami")
            .await
            .unwrap(),
        5,
        "4 pages (alice, bob, absent, empty) + their one header list"
    );
    assert_no_secret_in_keys(alias).await;
}

async fn allow_listed_cookies_are_cacheable_and_not_keyed(alias: Option<&'static str>) {
    let view = format!("t_allow_{}", alias.unwrap_or("local"));
    let app = start(&view, |l| on(alias)(l).allow_cookies(["theme", "lang"])).await;
    assert_eq!(
        x_cache(&app.get("/page", &[("cookie", "theme=zzDark")]).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&app.get("/page", &[("cookie", "theme=zzLight")]).await.1),
        Some("HIT")
    );
    assert_eq!(
        x_cache(
            &app.get("/page", &[("cookie", "lang=zzLang; theme=x")])
                .await
                .1
        ),
        Some("HIT")
    );
    assert_eq!(x_cache(&app.get("/page", &[]).await.1), Some("HIT"));
    assert_eq!(
        x_cache(
            &app.get("/page", &[("cookie", "theme=x; id=zzAliceSession")])
                .await
                .1
        ),
        None
    );
    // a response that says `Vary: Cookie` is never shared by allowed cookies
    assert_eq!(
        x_cache(&app.get("/csrf", &[("cookie", "theme=zzDark")]).await.1),
        None
    );
    assert_eq!(
        x_cache(&app.get("/csrf", &[("cookie", "theme=zzDark")]).await.1),
        None
    );
    assert_eq!(app.runs(), 4);
    assert_no_secret_in_keys(alias).await;
}

async fn authorization_bypasses_unless_varied_on(alias: Option<&'static str>) {
    let view = format!("t_auth_{}", alias.unwrap_or("local"));
    let app = start(&view, on(alias)).await;
    for _ in 0..2 {
        let (_, h, b) = app
            .get("/me", &[("authorization", "Bearer zzAliceToken")])
            .await;
        assert_eq!(
            (x_cache(&h), b.as_str()),
            (None, "hello Bearer zzAliceToken")
        );
        let (_, h, b) = app
            .get("/page", &[("authorization", "Bearer zzBobToken")])
            .await;
        assert_eq!((x_cache(&h), b.as_str()), (None, "<h1>merits</h1>"));
    }
    assert_eq!(app.runs(), 4);

    // Opted in: one entry per credential, keyed on its hash.
    let view = format!("{view}_opt_in");
    let app = start(&view, |l| on(alias)(l).vary_on_authorization()).await;
    let alice = [("authorization", "Bearer zzAliceToken")];
    let bob = [("authorization", "Bearer zzBobToken")];
    assert_eq!(app.get("/me", &alice).await.2, "hello Bearer zzAliceToken");
    assert_eq!(app.get("/me", &bob).await.2, "hello Bearer zzBobToken");
    let (_, h, b) = app.get("/me", &alice).await;
    assert_eq!(
        (x_cache(&h), b.as_str()),
        (Some("HIT"), "hello Bearer zzAliceToken")
    );
    let (_, h, b) = app.get("/me", &bob).await;
    assert_eq!(
        (x_cache(&h), b.as_str()),
        (Some("HIT"), "hello Bearer zzBobToken")
    );
    // even when the handler forgets `Vary: Authorization`
    let (_, h, b) = app.get("/whoami", &alice).await;
    assert_eq!(
        (x_cache(&h), h.get(header::VARY).unwrap().to_str().unwrap()),
        (Some("MISS"), "Authorization")
    );
    assert!(b.contains("zzAliceToken"));
    let (_, h, b) = app.get("/whoami", &bob).await;
    assert_eq!(x_cache(&h), Some("MISS"));
    assert!(b.contains("zzBobToken") && !b.contains("zzAliceToken"));
    assert_eq!(x_cache(&app.get("/whoami", &[]).await.1), Some("MISS"));
    assert_eq!(app.runs(), 5);
    assert_no_secret_in_keys(alias).await;
}

async fn non_utf8_varied_values_give_separate_pages(alias: Option<&'static str>) {
    let view = format!("t_bytes_{}", alias.unwrap_or("local"));
    let app = start(&view, on(alias)).await;
    // learn that /bytes varies on X-V
    app.get("/bytes", &[]).await;
    let variants: Vec<Vec<&[u8]>> = vec![
        vec![],
        vec![b""],
        vec![b"\xff"],
        vec![b"\xfe"],
        vec![b"\xc3\xa9"],
        vec![b"\xef\xbf\xbd"],
        vec![b"a", b"b"],
        vec![b"a,b"],
        vec![b"b", b"a"],
    ];
    for round in ["MISS", "HIT"] {
        for values in &variants {
            let headers: Vec<(&str, &[u8])> = values.iter().map(|v| ("x-v", *v)).collect();
            let (_, h, body) = app.get_bytes("/bytes", &headers).await;
            let expected: Vec<Vec<u8>> = values.iter().map(|v| v.to_vec()).collect();
            assert_eq!(
                (x_cache(&h), body),
                (Some(round), format!("{expected:?}")),
                "{values:?}"
            );
        }
    }
    assert_eq!(app.runs(), 1 + variants.len());
}

async fn vary_cookie_pages_never_reach_unkeyed_cookies(alias: Option<&'static str>) {
    let view = format!("t_token_{}", alias.unwrap_or("local"));
    let app = start(&view, |l| on(alias)(l).allow_cookies(["theme"])).await;
    // Two users with different allowed cookies each get their own token.
    let (_, h1, t1) = app.get("/token", &[("cookie", "theme=zzDark")]).await;
    let (_, h2, t2) = app.get("/token", &[("cookie", "theme=zzLight")]).await;
    let (_, h3, t3) = app.get("/token", &[("cookie", "theme=zzDark")]).await;
    assert_eq!(
        (x_cache(&h1), x_cache(&h2), x_cache(&h3)),
        (None, None, None)
    );
    assert!(t1 != t2 && t2 != t3 && t1 != t3, "{t1} {t2} {t3}");
    // A cookieless request may store it, but it is never served to a cookie.
    let (_, h, anon) = app.get("/token", &[]).await;
    assert_eq!(x_cache(&h), Some("MISS"));
    let (_, h, b) = app.get("/token", &[]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("HIT"), anon.as_str()));
    let (_, h, b) = app.get("/token", &[("cookie", "theme=zzDark")]).await;
    assert_eq!(x_cache(&h), None);
    assert_ne!(b, anon);
    let resp = app
        .client
        .head(format!("{}/token", app.base))
        .header("cookie", "theme=zzDark")
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.headers().get("x-cache").map(|v| v.to_str().unwrap()),
        Some("HIT")
    );
    assert_eq!(app.runs(), 6);
    assert_no_secret_in_keys(alias).await;
}

async fn absolute_form_with_another_host_passes_through(alias: Option<&'static str>) {
    let view = format!("t_absolute_{}", alias.unwrap_or("local"));
    let app = start(&view, on(alias)).await;
    let b = [("host", "b.example")];
    // Host b.example fills its page.
    assert_eq!(app.raw_get("/page", &b).await, (200, Some("MISS".into())));
    assert_eq!(app.raw_get("/page", &b).await, (200, Some("HIT".into())));
    // An absolute-form request naming another host is neither read nor written.
    for _ in 0..2 {
        assert_eq!(app.raw_get("http://a.example/page", &b).await, (200, None));
    }
    // Agreeing (case-insensitively) is fine, and keys on that host.
    assert_eq!(
        app.raw_get("http://B.example/page", &b).await,
        (200, Some("HIT".into()))
    );
    let a = [("host", "a.example")];
    assert_eq!(
        app.raw_get("http://a.example/page", &a).await,
        (200, Some("MISS".into()))
    );
    assert_eq!(app.raw_get("/page", &a).await, (200, Some("HIT".into())));
    assert_eq!(app.runs(), 4);
}

async fn forwarded_host_is_keyed_only_when_trusted(alias: Option<&'static str>) {
    let view = format!("t_xfh_{}", alias.unwrap_or("local"));
    // Not trusted: keyed on Host, whatever X-Forwarded-Host or Forwarded say.
    let app = start(&view, on(alias)).await;
    let via = |h: &'static str| [("host", "proxy.internal"), ("x-forwarded-host", h)];
    assert_eq!(
        x_cache(&app.get("/page", &via("a.example")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&app.get("/page", &via("b.example")).await.1),
        Some("HIT")
    );
    assert_eq!(
        x_cache(
            &app.get(
                "/page",
                &[("host", "proxy.internal"), ("forwarded", "host=c.example")]
            )
            .await
            .1
        ),
        Some("HIT")
    );
    // Trusted: keyed on its first value.
    let tview = format!("{view}_trusted");
    let proxied = start(&tview, |l| on(alias)(l).trust_forwarded_host()).await;
    assert_eq!(
        x_cache(&proxied.get("/page", &via("a.example")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("b.example")).await.1),
        Some("MISS")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("B.example, a.example")).await.1),
        Some("HIT")
    );
    assert_eq!(
        x_cache(&proxied.get("/page", &via("a.example")).await.1),
        Some("HIT")
    );
    // without it, keyed on Host; an empty one passes through
    assert_eq!(
        x_cache(&proxied.get("/page", &[("host", "proxy.internal")]).await.1),
        Some("MISS")
    );
    assert_eq!(x_cache(&proxied.get("/page", &via("")).await.1), None);
    assert_eq!(
        x_cache(&proxied.get("/page", &[("host", "a.example")]).await.1),
        Some("HIT"),
        "the same host whether forwarded or not"
    );
    assert_eq!(app.runs(), 1);
    assert_eq!(proxied.runs(), 4);
}

async fn query_strings_are_keyed_by_hash_only(alias: Option<&'static str>) {
    let view = format!("t_query_{}", alias.unwrap_or("local"));
    let app = start(&view, on(alias)).await;
    for target in [
        "/page?token=zzAlice",
        "/page?token=zzBob",
        "/page?",
        "/page",
    ] {
        assert_eq!(
            x_cache(&app.get(target, &[]).await.1),
            Some("MISS"),
            "{target}"
        );
    }
    for target in [
        "/page?token=zzAlice",
        "/page?token=zzBob",
        "/page?",
        "/page",
    ] {
        assert_eq!(
            x_cache(&app.get(target, &[]).await.1),
            Some("HIT"),
            "{target}"
        );
    }
    assert_eq!(app.runs(), 4);
    assert_no_secret_in_keys(alias).await;
    assert_eq!(
        invalidate_path(store_of(alias), &view, "/page")
            .await
            .unwrap(),
        8,
        "4 pages + 4 header lists"
    );
    assert_eq!(
        x_cache(&app.get("/page?token=zzAlice", &[]).await.1),
        Some("MISS")
    );
}

/// Values used as cookies and credentials in these tests all start with `zz`.
async fn assert_no_secret_in_keys(alias: Option<&str>) {
    if alias.is_none() {
        return;
    }
    let keys = if alias == Some("cluster") {
        cluster_keys().await
    } else {
        redis_keys().await
    };
    assert!(keys.iter().any(|k| k.contains("tg:view:")), "{keys:?}");
    for k in &keys {
        assert!(
            !k.to_ascii_lowercase().contains("zz"),
            "a secret in the key {k}"
        );
    }
}

async fn redis_keys() -> Vec<String> {
    server_keys(&redis_server().url()).await
}

/// Every key of the cluster: of each of its primaries.
async fn cluster_keys() -> Vec<String> {
    let cluster = &CACHES.1;
    let mut keys = Vec::new();
    for p in cluster.primaries() {
        keys.extend(server_keys(&cluster.server(p.port).url()).await);
    }
    keys
}

async fn server_keys(url: &str) -> Vec<String> {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cookie_or_credential_value_in_any_log_line_or_key() {
    LazyLock::force(&CACHES);
    let secrets = ["zzLogSession", "zzLogToken", "zzLogTheme", "zzLogQuery"];
    for (view, alias) in [
        ("t_log_local", None),
        ("t_log_redis", Some("redis")),
        ("t_log_cluster", Some("cluster")),
    ] {
        for layer in [
            |l: tg_cache::http::CachePageLayer| l,
            |l: tg_cache::http::CachePageLayer| l.vary_on_cookie("id").allow_cookies(["theme"]),
            |l: tg_cache::http::CachePageLayer| l.vary_on_authorization(),
        ] {
            let app = start(view, |l| layer(on(alias)(l))).await;
            for path in [
                "/page",
                "/whoami",
                "/vary",
                "/cookie",
                "/bytes",
                "/page?token=zzLogQuery",
                "/vary?token=zzLogQuery&x=1",
                "/cookie?token=zzLogQuery",
            ] {
                for headers in [
                    vec![("cookie", "id=zzLogSession; theme=zzLogTheme")],
                    vec![("cookie", "theme=zzLogTheme")],
                    vec![("authorization", "Basic zzLogToken")],
                    vec![("x-v", "zzLogToken"), ("accept-language", "zzLogTheme")],
                ] {
                    app.get(path, &headers).await;
                    app.get(path, &headers).await;
                }
            }
            invalidate_view(store_of(alias), view).await.unwrap();
        }
        assert_no_secret_in_keys(alias).await;
    }
    let log = LOG.lock().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("cache_page") && l.contains("key=")),
        "the layer logs its keys at debug level"
    );
    for line in log.iter() {
        for s in secrets {
            assert!(!line.contains(s), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_run_the_handler_once() {
    LazyLock::force(&CACHES);
    for alias in [None, Some("redis")] {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(move || {
                    r.fetch_add(1, SeqCst);
                    async {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        "slow"
                    }
                }),
            )
            .route_layer(on(alias)(
                cache_page(LONG).view(&format!("t_flight_{alias:?}")),
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (client, url) = (client.clone(), format!("{base}/slow"));
            tasks.push(tokio::spawn(async move {
                client.get(url).send().await.unwrap().text().await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "slow");
        }
        assert_eq!(runs.load(SeqCst), 1, "{alias:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_invalidated_while_computed_is_not_stored() {
    LazyLock::force(&CACHES);
    for alias in [None, Some("redis")] {
        let view = format!("t_race_{}", alias.unwrap_or("local"));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let v = view.clone();
        let app = Router::new()
            .route(
                "/racy",
                get(move || {
                    let (r, v) = (r.clone(), v.clone());
                    async move {
                        // a writer invalidates the view while the page is computed
                        if r.fetch_add(1, SeqCst) == 0 {
                            invalidate_view(store_of(alias), &v).await.unwrap();
                        }
                        "page"
                    }
                }),
            )
            .route_layer(on(alias)(cache_page(LONG).view(&view)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/racy", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::new();
        let get = || async {
            client
                .get(&url)
                .send()
                .await
                .unwrap()
                .headers()
                .get("x-cache")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(get().await, "MISS");
        assert_eq!(
            get().await,
            "MISS",
            "{alias:?}: the first page was not stored"
        );
        assert_eq!(get().await, "HIT");
        assert_eq!(runs.load(SeqCst), 2);
    }
}

mod keys {
    use axum::http::{HeaderMap, HeaderValue, Uri};
    use proptest::prelude::*;
    use tg_cache::http::cache_page;

    #[derive(Debug, Clone)]
    struct Req {
        scheme: &'static str,
        host: String,
        target: String,
        values: Vec<Vec<u8>>,
    }

    fn req() -> impl Strategy<Value = Req> {
        (
            prop_oneof![Just("http"), Just("https")],
            "[ab:*.]{0,3}",
            "/[ab:*=%]{0,3}(\\?[ab=:&*]{0,3})?",
            prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        Just(b'a'),
                        Just(b','),
                        Just(0x80u8),
                        Just(0xffu8),
                        Just(b' ')
                    ],
                    0..3,
                ),
                0..3,
            ),
        )
            .prop_map(|(scheme, host, target, values)| Req {
                scheme,
                host,
                target,
                values,
            })
    }

    /// The key, and what it must be keyed on (as the server sees it).
    fn key(r: &Req) -> Option<(String, impl PartialEq + std::fmt::Debug)> {
        let uri: Uri = r.target.parse().ok()?;
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_str(&r.host).ok()?);
        h.insert("x-forwarded-proto", HeaderValue::from_static(r.scheme));
        for v in &r.values {
            h.append("x-v", HeaderValue::from_bytes(v).ok()?);
        }
        let layer = cache_page(60).view("k").trust_forwarded_proto();
        let k = layer.__page_key(&uri, &h, &["x-v".to_owned()]).unwrap();
        let seen: Vec<Vec<u8>> = h
            .get_all("x-v")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        let identity = (
            r.scheme,
            r.host.clone(),
            uri.path().to_owned(),
            uri.query().map(str::to_owned),
            seen,
        );
        Some((k, identity))
    }

    #[test]
    fn userinfo_never_enters_the_key() {
        let layer = cache_page(60).view("k");
        let absolute: Uri = "http://alice:zzPassword@A.example:8080/p?q"
            .parse()
            .unwrap();
        let k = layer.__page_key(&absolute, &HeaderMap::new(), &[]).unwrap();
        assert!(!k.contains("zz") && !k.contains("alice"), "{k}");
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.example:8080"));
        let origin: Uri = "/p?q".parse().unwrap();
        assert_eq!(layer.__page_key(&origin, &h, &[]).unwrap(), k);
        h.insert(
            "host",
            HeaderValue::from_static("bob:zzPassword@a.example:8080"),
        );
        assert_eq!(layer.__page_key(&origin, &h, &[]).unwrap(), k);
    }

    #[test]
    fn the_query_enters_the_key_as_a_hash_only() {
        let layer = cache_page(60).view("k");
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.example"));
        let key = |t: &str| layer.__page_key(&t.parse().unwrap(), &h, &[]).unwrap();
        let k = key("/p?token=zzSecret");
        assert!(!k.contains("zz") && !k.contains("token"), "{k}");
        assert!(k.starts_with("tg:view:k:path=/p:"), "{k}");
        let hash = k.split("query=").nth(1).unwrap().split(':').next().unwrap();
        assert_eq!(hash.len(), 32, "{k}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{k}");
        assert_ne!(k, key("/p?token=zzOther"));
        assert_ne!(key("/p?"), key("/p"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn page_keys_are_distinct_across_host_scheme_target_and_header_bytes(a in req(), b in req()) {
            let (Some((ka, ia)), Some((kb, ib))) = (key(&a), key(&b)) else {
                return Ok(());
            };
            prop_assert_eq!(ka == kb, ia == ib, "{} vs {}", ka, kb);
            for k in [&ka, &kb] {
                prop_assert!(!k.bytes().any(|c| matches!(c, b'*' | b'?' | b'[' | b']' | b'\\') || c <= b' '), "{}", k);
            }
        }
    }
}
