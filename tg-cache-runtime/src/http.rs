//! View caching: a tower layer that caches whole responses (Django's
//! `cache_page`), for axum routers. Enabled by the `axum` feature.
//!
//! ```
//! # use tg_cache_runtime as tg_cache;
//! use axum::{Router, routing::get};
//! use tg_cache::http::cache_page;
//! use tg_cache::timeout::LONG;
//!
//! let app: Router = Router::new()
//!     .route("/meritflaws", get(|| async { "<ul>...</ul>" }))
//!     .route_layer(cache_page(LONG).view("meritflaw_list"));
//! ```
//!
//! # What is cached
//!
//! Only `GET` responses with status 200 and a body of known length up to
//! [`CachePageLayer::max_body_bytes`]; never a response that sets a cookie,
//! says `Cache-Control: private`, `no-store` or `no-cache`, or `Vary: *`.
//! A request carrying `Authorization` or the session cookie is passed
//! through, unless the route opts in with
//! [`CachePageLayer::allow_authenticated`] *and* the response says it varies
//! on that header. `Vary` is honoured: the entry is keyed on the values of
//! the request headers the response varies on. `HEAD` requests are served
//! from a cached `GET`.
//!
//! Responses get `Cache-Control: max-age` and `Expires` (as Django's
//! `patch_response_headers`, unless already set) and `X-Cache: HIT|MISS`.
//!
//! # Keys and invalidation
//!
//! `tg:view:<view>:path=<path>:query=<query>` plus the varied headers, every
//! part escaped. Drop one page (all its query strings and variants) with
//! [`invalidate_path`], a whole view in O(1) with [`invalidate_view`], or from
//! a model with `#[invalidate(pattern = "tg:view:character:path=/characters/{id}:*")]`.

use crate::cache::Cache;
use crate::error::Result;
use crate::key::{KeyBuilder, KeyPattern};
use crate::timeout::Timeout;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

/// The default view name of [`cache_page`].
pub const DEFAULT_VIEW: &str = "page";

/// Caches whole responses for `timeout`: `Router::route_layer(cache_page(LONG))`.
pub fn cache_page(timeout: impl Into<Timeout>) -> CachePageLayer {
    CachePageLayer {
        cfg: Arc::new(PageConfig {
            timeout: timeout.into(),
            cache: None,
            view: DEFAULT_VIEW.to_owned(),
            x_cache: Some(HeaderName::from_static("x-cache")),
            max_body: 1024 * 1024,
            allow_authenticated: false,
            session_cookie: "sessionid".to_owned(),
        }),
    }
}

#[derive(Debug, Clone)]
struct PageConfig {
    timeout: Timeout,
    cache: Option<String>,
    view: String,
    x_cache: Option<HeaderName>,
    max_body: usize,
    allow_authenticated: bool,
    session_cookie: String,
}

/// The layer made by [`cache_page`]; its methods tune it.
#[derive(Debug, Clone)]
pub struct CachePageLayer {
    cfg: Arc<PageConfig>,
}

impl CachePageLayer {
    fn with(mut self, f: impl FnOnce(&mut PageConfig)) -> Self {
        f(Arc::make_mut(&mut self.cfg));
        self
    }

    /// The view name in the keys (`tg:view:<name>:...`); default `page`.
    pub fn view(self, name: &str) -> Self {
        let name = name.to_owned();
        self.with(|c| c.view = name)
    }

    /// Use the cache named `alias` instead of the default one.
    pub fn cache(self, alias: &str) -> Self {
        let alias = alias.to_owned();
        self.with(|c| c.cache = Some(alias))
    }

    /// The name of the HIT/MISS header (default `X-Cache`); `None` turns it off.
    ///
    /// # Panics
    /// If `name` is not a valid header name.
    pub fn x_cache_header(self, name: Option<&str>) -> Self {
        let h = name.map(|n| HeaderName::try_from(n).expect("a valid header name"));
        self.with(|c| c.x_cache = h)
    }

    /// Responses with a larger body pass through uncached (default 1 MiB).
    pub fn max_body_bytes(self, n: usize) -> Self {
        self.with(|c| c.max_body = n)
    }

    /// Also cache requests that carry `Authorization` or the session cookie,
    /// when (and only when) the response varies on that header.
    pub fn allow_authenticated(self) -> Self {
        self.with(|c| c.allow_authenticated = true)
    }

    /// The name of the session cookie (default `sessionid`, as Django's).
    pub fn session_cookie(self, name: &str) -> Self {
        let name = name.to_owned();
        self.with(|c| c.session_cookie = name)
    }
}

impl<S> tower::Layer<S> for CachePageLayer {
    type Service = CachePage<S>;
    fn layer(&self, inner: S) -> CachePage<S> {
        CachePage {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// The service made by [`CachePageLayer`].
#[derive(Debug, Clone)]
pub struct CachePage<S> {
    inner: S,
    cfg: Arc<PageConfig>,
}

impl<S> tower::Service<Request> for CachePage<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone that was polled ready handles this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cfg = self.cfg.clone();
        Box::pin(async move { Ok(handle(&cfg, inner, req).await) })
    }
}

/// A response as stored: readable JSON in Redis for text bodies.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedPage {
    status: u16,
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

impl CachedPage {
    fn into_response(self, head: bool, x_cache: &Option<HeaderName>) -> Option<Response> {
        let body = match (self.text, self.base64) {
            (Some(t), _) => Bytes::from(t),
            (None, Some(b)) => {
                Bytes::from(base64::engine::general_purpose::STANDARD.decode(b).ok()?)
            }
            (None, None) => Bytes::new(),
        };
        let mut resp = Response::new(if head {
            Body::empty()
        } else {
            Body::from(body)
        });
        *resp.status_mut() = StatusCode::from_u16(self.status).ok()?;
        for (k, v) in self.headers {
            resp.headers_mut().append(
                HeaderName::try_from(k).ok()?,
                HeaderValue::try_from(v).ok()?,
            );
        }
        mark(&mut resp, x_cache, "HIT");
        Some(resp)
    }
}

fn mark(resp: &mut Response, x_cache: &Option<HeaderName>, v: &'static str) {
    if let Some(h) = x_cache {
        resp.headers_mut()
            .insert(h.clone(), HeaderValue::from_static(v));
    }
}

fn has_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(header::COOKIE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(';').any(|c| {
                c.trim()
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == name)
            })
        })
    })
}

/// `tg:view:<view>:path=<path>:query=<query>`.
fn base_key(view: &str, uri: &http::Uri) -> String {
    KeyBuilder::new(&format!("tg:view:{}", crate::key::escape(view)))
        .param("path", uri.path())
        .param("query", &uri.query())
        .finish()
}

/// The page key: the base key plus the values of the varied headers.
fn page_key(base: &str, vary: &[String], headers: &HeaderMap) -> String {
    let mut b = KeyBuilder::new(base).part("page");
    for name in vary {
        let values: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        b = b.param(&format!("h.{name}"), &values);
    }
    b.finish()
}

fn vary_list(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::VARY) {
        for name in v.to_str().ok()?.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out.sort();
    Some(out)
}

fn cache_control_forbids(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().map_or(true, |s| {
            s.split(',').any(|d| {
                let d = d.trim().to_ascii_lowercase();
                d == "private" || d == "no-store" || d == "no-cache" || d.starts_with("private=")
            })
        })
    })
}

fn max_age(timeout: Timeout) -> Option<Duration> {
    match timeout {
        Timeout::NoCache => None,
        Timeout::After(d) if d.is_zero() => None,
        Timeout::After(d) => Some(d),
        Timeout::Never => Some(Duration::from_secs(365 * 86_400)),
        Timeout::Default => Some(crate::timeout::MEDIUM),
    }
}

async fn handle<S>(cfg: &PageConfig, mut inner: S, req: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let pass = |inner: &mut S, req| inner.call(req);
    let Some(max_age) = max_age(cfg.timeout) else {
        return pass(&mut inner, req).await.unwrap_or_else(|e| match e {});
    };
    let cache = match crate::function::cache_for(cfg.cache.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cache_page runs uncached");
            return pass(&mut inner, req).await.unwrap_or_else(|e| match e {});
        }
    };
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return pass(&mut inner, req).await.unwrap_or_else(|e| match e {});
    }
    let authorization = req.headers().contains_key(header::AUTHORIZATION);
    let session = has_cookie(req.headers(), &cfg.session_cookie);
    if (authorization || session) && !cfg.allow_authenticated {
        return pass(&mut inner, req).await.unwrap_or_else(|e| match e {});
    }

    let base = base_key(&cfg.view, req.uri());
    let headers_key = format!("{base}:headers");
    if let Ok(Some(vary)) = cache.get::<Vec<String>>(&headers_key).await {
        let key = page_key(&base, &vary, req.headers());
        if let Ok(Some(page)) = cache.get::<CachedPage>(&key).await
            && let Some(resp) = page.into_response(head, &cfg.x_cache)
        {
            return resp;
        }
    }
    if head {
        return pass(&mut inner, req).await.unwrap_or_else(|e| match e {});
    }
    let req_headers = req.headers().clone();
    let resp = pass(&mut inner, req).await.unwrap_or_else(|e| match e {});
    match store(
        cfg,
        cache,
        &base,
        &headers_key,
        &req_headers,
        authorization,
        session,
        max_age,
        resp,
    )
    .await
    {
        Ok(resp) | Err(resp) => resp,
    }
}

/// Stores a cacheable response and returns it (`Ok`), or returns an
/// uncacheable one untouched (`Err`).
#[allow(clippy::too_many_arguments)]
async fn store(
    cfg: &PageConfig,
    cache: &Cache,
    base: &str,
    headers_key: &str,
    req_headers: &HeaderMap,
    authorization: bool,
    session: bool,
    max_age: Duration,
    resp: Response,
) -> std::result::Result<Response, Response> {
    if resp.status() != StatusCode::OK
        || resp.headers().contains_key(header::SET_COOKIE)
        || cache_control_forbids(resp.headers())
    {
        return Err(resp);
    }
    let Some(vary) = vary_list(resp.headers()) else {
        return Err(resp);
    };
    if (authorization && !vary.iter().any(|v| v == "authorization"))
        || (session && !vary.iter().any(|v| v == "cookie"))
    {
        return Err(resp);
    }
    // Only bodies of known, bounded length: never buffer a stream.
    let size = http_body::Body::size_hint(resp.body()).exact();
    if size.is_none_or(|n| n > cfg.max_body as u64) {
        return Err(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "cache_page: reading the response body failed");
            let mut r = Response::from_parts(parts, Body::empty());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return Err(r);
        }
    };
    patch_response_headers(&mut parts.headers, max_age);
    let mut headers = Vec::new();
    let mut storable = true;
    for (k, v) in &parts.headers {
        if Some(k) == cfg.x_cache.as_ref() {
            continue;
        }
        match v.to_str() {
            Ok(v) => headers.push((k.as_str().to_owned(), v.to_owned())),
            Err(_) => storable = false,
        }
    }
    if storable {
        let (text, base64) = match std::str::from_utf8(&bytes) {
            Ok(t) => (Some(t.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            ),
        };
        let page = CachedPage {
            status: parts.status.as_u16(),
            headers,
            text,
            base64,
        };
        let key = page_key(base, &vary, req_headers);
        // Failures are logged and counted by the cache; the page is served anyway.
        let _ = cache.set(headers_key, &vary, cfg.timeout).await;
        let _ = cache.set(&key, &page, cfg.timeout).await;
    }
    let mut resp = Response::from_parts(parts, Body::from(bytes));
    mark(&mut resp, &cfg.x_cache, "MISS");
    Ok(resp)
}

/// Adds `Cache-Control: max-age` and `Expires` unless the response set them
/// (Django's `patch_response_headers`).
fn patch_response_headers(headers: &mut HeaderMap, max_age: Duration) {
    let has_max_age = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("max-age"))
    });
    if !has_max_age {
        let v = match headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
        {
            Some(cc) if !cc.trim().is_empty() => format!("{cc}, max-age={}", max_age.as_secs()),
            _ => format!("max-age={}", max_age.as_secs()),
        };
        if let Ok(v) = HeaderValue::try_from(v) {
            headers.insert(header::CACHE_CONTROL, v);
        }
    }
    if !headers.contains_key(header::EXPIRES)
        && let Ok(v) = HeaderValue::try_from(httpdate::fmt_http_date(SystemTime::now() + max_age))
    {
        headers.insert(header::EXPIRES, v);
    }
}

/// The key prefix of a view's pages: `tg:view:<view>`.
pub fn view_prefix(view: &str) -> String {
    format!("tg:view:{}", crate::key::escape(view))
}

/// Drops every cached variant (query strings, varied headers) of one path of
/// a view; returns how many entries were removed.
pub async fn invalidate_path(cache: &Cache, view: &str, path: &str) -> Result<usize> {
    let pattern = KeyPattern::prefix(&view_prefix(view))
        .param("path", path)
        .any();
    cache.delete_pattern(pattern.as_str()).await
}

/// Drops every page of a view in O(1).
pub async fn invalidate_view(cache: &Cache, view: &str) -> Result<()> {
    cache.invalidate_family(&view_prefix(view)).await
}

/// The body bytes of a response, for tests and tools.
pub async fn body_bytes(resp: Response) -> Bytes {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}
