//! `cache_page` over real HTTP: an axum server on a free loopback port, a
//! real client, and counters of how often each handler ran.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use tg_cache::CacheConfig;
use tg_cache::http::{cache_page, invalidate_path, invalidate_view};
use tg_cache::timeout::LONG;

/// Every test gets its own app, cache and counter.
struct App {
    base: String,
    runs: Arc<AtomicUsize>,
    client: reqwest::Client,
}

static CACHES: LazyLock<()> = LazyLock::new(|| {
    tg_cache::configure(tg_cache::Caches::new(
        CacheConfig::local().max_entries(10_000),
    ))
    .unwrap();
});

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
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }
    fn runs(&self) -> usize {
        self.runs.load(SeqCst)
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
    let (_, h, b) = app.get("/vary", &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("MISS"), "hello in de"));
    let (_, h, b) = app.get("/vary", &[("accept-language", "fr")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("MISS"), "hello in fr"));
    let (_, h, b) = app.get("/vary", &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("HIT"), "hello in de"));
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn authenticated_requests_are_never_shared() {
    let app = start("t_auth", |l| l).await;
    let (_, h, b) = app.get("/me", &[("authorization", "alice")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (None, "hello alice"));
    let (_, _, b) = app.get("/me", &[("authorization", "bob")]).await;
    assert_eq!(b, "hello bob");
    let (_, h, _) = app
        .get("/page", &[("cookie", "theme=dark; sessionid=abc")])
        .await;
    assert_eq!(x_cache(&h), None, "a session cookie bypasses the cache");
    assert_eq!(app.runs(), 3);

    // Opted in, and the response varies on Authorization: cached per user.
    let app = start("t_auth_opt_in", |l| l.allow_authenticated()).await;
    assert_eq!(
        app.get("/me", &[("authorization", "alice")]).await.2,
        "hello alice"
    );
    assert_eq!(
        app.get("/me", &[("authorization", "bob")]).await.2,
        "hello bob"
    );
    let (_, h, b) = app.get("/me", &[("authorization", "alice")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("HIT"), "hello alice"));
    let (_, h, b) = app.get("/me", &[("authorization", "bob")]).await;
    assert_eq!((x_cache(&h), b.as_str()), (Some("HIT"), "hello bob"));
    // ...but a response that does not vary on the session cookie is not cached for it
    let (_, h, _) = app.get("/page", &[("cookie", "sessionid=abc")]).await;
    assert_eq!(x_cache(&h), None);
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
