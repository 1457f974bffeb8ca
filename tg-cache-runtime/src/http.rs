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
//!     .route_layer(cache_page(LONG).view("meritflaw_list").allow_cookies(["theme"]));
//! ```
//!
//! # What is cached
//!
//! Only `GET` responses with status 200 and a body of known length up to
//! [`CachePageLayer::max_body_bytes`]; never a response that sets a cookie,
//! says `Cache-Control: private`, `no-store` or `no-cache`, or `Vary: *`.
//! `HEAD` requests are served from a cached `GET`.
//!
//! **Requests that may be personal pass through uncached** (the cache is
//! neither read nor written): by default any request with a `Cookie` header
//! (whatever the cookie's name: Django's `sessionid`, tower-sessions' and
//! axum-login's `id`...) or an `Authorization` header. A route opts in with:
//!
//! * [`CachePageLayer::allow_cookies`]: cookies that do not personalise the
//!   page (`theme`). A request whose cookies are all allowed (or varied on,
//!   below) is cacheable; allowed cookies never enter the key. Never allow a
//!   cookie a page is computed from (a CSRF token, a session): vary on it.
//! * [`CachePageLayer::vary_on_cookie`]: the page depends on this cookie
//!   (`id`): the key includes a SHA-256 hash of its value (absent and empty
//!   are different), so each session gets its own entry.
//! * [`CachePageLayer::vary_on_authorization`]: the same for the
//!   `Authorization` header.
//!
//! A response's `Vary: Cookie` / `Vary: Authorization` (Django's CSRF
//! middleware adds the former) adds nothing to the key: the cookies and
//! credential a route varies on are already in it. But such a page may
//! depend on cookies that are not in the key: a request carrying an allowed
//! (not varied-on) cookie neither stores nor is served a page that says
//! `Vary: Cookie`; likewise `Authorization` without
//! [`CachePageLayer::vary_on_authorization`]. The layer adds those `Vary`
//! headers to responses of routes that vary on them, for downstream caches.
//!
//! Other `Vary` headers are honoured: the entry is keyed on a SHA-256 hash
//! of the values of the request headers the response varies on (every value,
//! as bytes; an absent header differs from an empty one). Raw header,
//! cookie and credential values never appear in a key or a log line.
//!
//! Responses get `Cache-Control: max-age` and `Expires` (as Django's
//! `patch_response_headers`, unless already set) and `X-Cache: HIT|MISS`.
//! A miss computes the page through [`Cache::get_or_set_with`]: concurrent
//! misses of one page run the handler once, across processes too, and a page whose
//! path or view is invalidated while it is computed is not stored.
//!
//! # Keys and invalidation
//!
//! `tg:view:<view>:path=<path>:scheme=<scheme>:host=<host>:query=<hash>`,
//! then `:headers` (the learned `Vary` list) or `:page[:v=<hash>]`, every
//! part escaped ([`crate::key`]; the path percent-decoded once, then
//! escaped: [`crate::key::page_path`]), so a host or path can neither
//! collide with another nor act as a glob. The query string (which may hold a credential,
//! `?token=...`) enters the key only as a SHA-256 hash (first 128 bits, hex;
//! `~` when there is none), never raw, and is never logged.
//!
//! The host (with its port, lowercased, without any `user:password@`) comes
//! from the `Host` header, or from the request URI when it is absolute (then
//! a `Host` header, if any, must name the same host, else the request passes
//! through uncached: the app might render for either). A request without
//! exactly one readable `Host` passes through uncached. `X-Forwarded-Host`
//! and `Forwarded` are ignored unless the route trusts its proxy's
//! `X-Forwarded-Host` ([`CachePageLayer::trust_forwarded_host`]): **behind a
//! proxy that rewrites `Host`, enable it**, or every host's pages share the
//! proxy's `Host`. The scheme comes from the URI when absolute, else is
//! `http`, unless the route trusts a proxy's `X-Forwarded-Proto`
//! ([`CachePageLayer::trust_forwarded_proto`]).
//!
//! Drop one page (every host, scheme, query string and variant) with
//! [`invalidate_path`], a whole view in O(1) with [`invalidate_view`], or
//! from a model with `#[invalidate(page(view = "character", path = "/characters/{id}"))]`,
//! whatever the field holds (a slug, spaces, a leading digit, non-ASCII,
//! any length): the path is keyed in one canonical form
//! ([`crate::key::page_path`]).

use crate::cache::{Cache, CachePolicy};
use crate::error::Result;
use crate::key::KeyBuilder;
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
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::fmt::Write as _;
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
            allow_cookies: Vec::new(),
            vary_cookies: Vec::new(),
            vary_authorization: false,
            trust_forwarded_proto: false,
            trust_forwarded_host: false,
            vary_seen: Arc::default(),
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
    /// Cookies that do not personalise the page; never in the key.
    allow_cookies: Vec<String>,
    /// Cookies whose values are hashed into the key; sorted, unique.
    vary_cookies: Vec<String>,
    vary_authorization: bool,
    trust_forwarded_proto: bool,
    trust_forwarded_host: bool,
    /// The `Vary` list this route's responses gave last: a page hit reads
    /// the learned list and the page keyed with this guess in one round
    /// trip (a second only when the guess is wrong).
    vary_seen: Arc<std::sync::Mutex<Vec<String>>>,
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

    /// Cookies that do not change the page (`theme`): a request whose
    /// cookies are all in this list (or varied on with
    /// [`CachePageLayer::vary_on_cookie`]) is cacheable, and these cookies
    /// do not enter the key. Never list a cookie the page is computed from
    /// (a CSRF token, a session id): vary on it instead. A response that
    /// says `Vary: Cookie` is neither stored from nor served to a request
    /// carrying an allowed cookie. By default any `Cookie` header makes a
    /// request pass through uncached. Names are compared exactly
    /// (case-sensitive, as browsers do).
    pub fn allow_cookies<I, N>(self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        self.with(|c| {
            c.allow_cookies.extend(names);
            c.allow_cookies.sort();
            c.allow_cookies.dedup();
        })
    }

    /// The page depends on the cookie `name` (a session id such as
    /// tower-sessions' `id`): requests carrying it are cacheable, keyed on a
    /// SHA-256 hash of its value, so every session gets its own entry (a
    /// request without it gets the shared anonymous entry). Responses get
    /// `Vary: Cookie`. Call it once per cookie.
    pub fn vary_on_cookie(self, name: &str) -> Self {
        let name = name.to_owned();
        self.with(|c| {
            c.vary_cookies.push(name);
            c.vary_cookies.sort();
            c.vary_cookies.dedup();
        })
    }

    /// Requests with `Authorization` are cacheable, keyed on a SHA-256 hash
    /// of its value (each credential gets its own entry). Responses get
    /// `Vary: Authorization`. By default such requests pass through.
    pub fn vary_on_authorization(self) -> Self {
        self.with(|c| c.vary_authorization = true)
    }

    /// Take the scheme of origin-form requests from `X-Forwarded-Proto`
    /// (its first value, lowercased; one of `http`/`https`, else the request
    /// passes through uncached). Only for a route behind a proxy that sets
    /// (or strips) that header: otherwise clients choose it. Without this
    /// option the scheme is the URI's when the request URI is absolute, else
    /// `http`.
    pub fn trust_forwarded_proto(self) -> Self {
        self.with(|c| c.trust_forwarded_proto = true)
    }

    /// Key on the host in `X-Forwarded-Host` (its first value, lowercased,
    /// without any `user:password@`; empty or unreadable: the request passes
    /// through uncached) when the request has it, else on `Host` as usual.
    /// Only for a route behind a proxy that sets (or strips) that header:
    /// otherwise clients choose it. **Behind a proxy that rewrites `Host`
    /// this is required**: without it `X-Forwarded-Host` and `Forwarded` are
    /// ignored and every site the proxy serves is keyed on the proxy's
    /// `Host`, sharing pages.
    pub fn trust_forwarded_host(self) -> Self {
        self.with(|c| c.trust_forwarded_host = true)
    }

    /// The page key this layer would use for a request with `uri` and
    /// `headers` when the response varies on `vary` (lowercase header
    /// names), or `None` if the request passes through uncached.
    #[doc(hidden)]
    pub fn __page_key(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        vary: &[String],
    ) -> Option<String> {
        let id = identify(&self.cfg, uri, headers).ok()?;
        Some(page_key(&self.cfg, &id.base, vary, headers, &id))
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
    /// The handler (not the layer) said `Vary: Cookie`: never served to a
    /// request with a cookie outside the key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    vary_cookie: bool,
    /// The same for `Vary: Authorization`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    vary_authorization: bool,
}

impl CachedPage {
    /// See [`Unkeyed::allows`].
    fn servable_to(&self, unkeyed: Unkeyed) -> bool {
        unkeyed.allows(self.vary_cookie, self.vary_authorization)
    }

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

/// What the miss path of [`handle`] produced.
enum Outcome {
    /// The handler ran. `page` is what to store (`None`: not cacheable, or
    /// computed under another `Vary` list than the key's); `vary` is the
    /// response's `Vary` list when it was cacheable.
    Fresh {
        resp: Response,
        page: Option<CachedPage>,
        vary: Option<Vec<String>>,
        /// The response's own freshness (`s-maxage`, else `max-age`), when
        /// shorter than the route's timeout.
        lifetime: Option<Duration>,
    },
    /// Another caller's value (a concurrent leader's, or one stored since).
    Cached(CachedPage),
}

/// Stores only the pages [`Outcome::Fresh`] says are cacheable.
enum PagePolicy {}

impl CachePolicy<Outcome> for PagePolicy {
    type Stored = CachedPage;
    fn store(result: &Outcome) -> Option<CachedPage> {
        match result {
            Outcome::Fresh { page, .. } => page.clone(),
            Outcome::Cached(_) => None,
        }
    }
    fn load(stored: CachedPage) -> Outcome {
        Outcome::Cached(stored)
    }
    fn lifetime(result: &Outcome) -> Option<Duration> {
        match result {
            Outcome::Fresh { lifetime, .. } => *lifetime,
            Outcome::Cached(_) => None,
        }
    }
}

fn mark(resp: &mut Response, x_cache: &Option<HeaderName>, v: &'static str) {
    if let Some(h) = x_cache {
        resp.headers_mut()
            .insert(h.clone(), HeaderValue::from_static(v));
    }
}

/// Why a request passes through uncached (logged; never a value).
type PassReason = &'static str;

/// What identifies a cacheable request's page, apart from varied headers.
struct Identity {
    /// `tg:view:<view>:path=..:scheme=..:host=..:query=<hash>`.
    base: String,
    /// The values of each varied cookie (`cfg.vary_cookies` order), in
    /// request order. Hashed into the key, never written raw.
    cookies: Vec<Vec<Bytes>>,
    /// The request carries a cookie or credential that is not in the key:
    /// a page that says `Vary: Cookie` (or `Authorization`) is neither
    /// stored from it nor served to it.
    unkeyed: Unkeyed,
}

/// Personalising request values that are not in the key.
#[derive(Debug, Clone, Copy, Default)]
struct Unkeyed {
    cookie: bool,
    authorization: bool,
}

impl Unkeyed {
    /// Whether a page whose handler said `Vary: Cookie` (`cookie`) or
    /// `Vary: Authorization` (`authorization`) may be stored from, or served
    /// to, this request: not if the request has such a value outside the key.
    fn allows(self, cookie: bool, authorization: bool) -> bool {
        !((self.cookie && cookie) || (self.authorization && authorization))
    }
}

/// Whether the handler's `Vary` names `Cookie`, and `Authorization`.
fn varies_on_personal(headers: &HeaderMap) -> (bool, bool) {
    let (mut cookie, mut authorization) = (false, false);
    for v in headers.get_all(header::VARY) {
        for n in v.as_bytes().split(|&b| b == b',') {
            let n = n.trim_ascii();
            cookie |= n.eq_ignore_ascii_case(b"cookie");
            authorization |= n.eq_ignore_ascii_case(b"authorization");
        }
    }
    (cookie, authorization)
}

/// Decides whether a request may use the cache and, if so, its base key.
fn identify(
    cfg: &PageConfig,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> std::result::Result<Identity, PassReason> {
    if headers.contains_key(header::AUTHORIZATION) && !cfg.vary_authorization {
        return Err("authorization");
    }
    if cfg.allow_cookies.is_empty()
        && cfg.vary_cookies.is_empty()
        && headers.contains_key(header::COOKIE)
    {
        return Err("cookie");
    }
    let mut cookies = vec![Vec::new(); cfg.vary_cookies.len()];
    let mut unkeyed = Unkeyed {
        cookie: false,
        authorization: headers.contains_key(header::AUTHORIZATION) && !cfg.vary_authorization,
    };
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let (name, val) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
                None => (pair, &b""[..]),
            };
            let Ok(name) = std::str::from_utf8(name) else {
                return Err("cookie");
            };
            if let Ok(i) = cfg.vary_cookies.binary_search_by(|c| c.as_str().cmp(name)) {
                cookies[i].push(Bytes::copy_from_slice(val));
            } else if cfg
                .allow_cookies
                .binary_search_by(|c| c.as_str().cmp(name))
                .is_ok()
            {
                unkeyed.cookie = true;
            } else {
                return Err("cookie");
            }
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(host_only(h.to_str().map_err(|_| "host")?)),
        (None, _) => None,
        _ => return Err("host"),
    };
    let mut host = match (uri.authority(), host_header) {
        // An absolute-form request names its host twice: if they differ,
        // the app may render for either, so neither keys it.
        (Some(a), Some(h)) if host_only(a.as_str()) != h => return Err("host mismatch"),
        (Some(a), _) => host_only(a.as_str()),
        (None, Some(h)) => h,
        (None, None) => return Err("host"),
    };
    if cfg.trust_forwarded_host
        && let Some(v) = headers.get("x-forwarded-host")
    {
        let first = v.to_str().map_err(|_| "x-forwarded-host")?;
        let first = host_only(first.split(',').next().unwrap_or("").trim());
        if first.is_empty() {
            return Err("x-forwarded-host");
        }
        host = first;
    }
    let scheme = match uri.scheme_str() {
        Some(s) => s.to_ascii_lowercase(),
        None if cfg.trust_forwarded_proto => match headers.get("x-forwarded-proto") {
            None => "http".to_owned(),
            Some(v) => {
                let first = v.to_str().map_err(|_| "x-forwarded-proto")?;
                let first = first.split(',').next().unwrap_or("").trim();
                let first = first.to_ascii_lowercase();
                if first != "http" && first != "https" {
                    return Err("x-forwarded-proto");
                }
                first
            }
        },
        None => "http".to_owned(),
    };
    Ok(Identity {
        base: base_key(&cfg.view, &scheme, &host, uri.path(), uri.query()),
        cookies,
        unkeyed,
    })
}

/// Host and port, lowercased, without any `user:password@` (never keyed or
/// logged).
fn host_only(authority: &str) -> String {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_ascii_lowercase()
}

/// `tg:view:<view>:path=<path>:scheme=<scheme>:host=<host>:query=<hash>`:
/// the path first, so one glob drops every host's, scheme's and query's
/// variants. The query enters only as a hash ([`query_hash`]).
fn base_key(view: &str, scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
    let mut key = KeyBuilder::new(&view_prefix(view));
    key.push_literal(":path=");
    key.push_literal(&crate::key::page_path(path));
    key.param("scheme", scheme)
        .param("host", host)
        .param("query", &query.map(query_hash))
        .finish()
}

/// SHA-256 of a query string (first 128 bits, hex): it may hold a
/// credential (`?token=...`), so it never enters a key (or a log) raw.
fn query_hash(query: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tg-cache query v1");
    h.update(query.as_bytes());
    let mut out = String::with_capacity(32);
    for b in &h.finalize()[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Feeds `bytes` to `h` length-prefixed, so the encoding is injective.
fn feed(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The page key: `<base>:page`, or `<base>:page:v=<hash>` when anything is
/// varied on: a SHA-256 (first 128 bits, hex) over the varied headers'
/// values (every value, as bytes) and the varied cookies and credential.
fn page_key(
    cfg: &PageConfig,
    base: &str,
    vary: &[String],
    headers: &HeaderMap,
    id: &Identity,
) -> String {
    let mut key = String::with_capacity(base.len() + 40);
    key.push_str(base);
    key.push_str(":page");
    if vary.is_empty() && cfg.vary_cookies.is_empty() && !cfg.vary_authorization {
        return key;
    }
    let mut h = Sha256::new();
    h.update(b"tg-cache page v1");
    h.update((vary.len() as u64).to_be_bytes());
    for name in vary {
        feed(&mut h, name.as_bytes());
        let values: Vec<&HeaderValue> = headers.get_all(name.as_str()).iter().collect();
        h.update((values.len() as u64).to_be_bytes());
        for v in values {
            feed(&mut h, v.as_bytes());
        }
    }
    h.update((cfg.vary_cookies.len() as u64).to_be_bytes());
    for (name, values) in cfg.vary_cookies.iter().zip(&id.cookies) {
        feed(&mut h, name.as_bytes());
        h.update((values.len() as u64).to_be_bytes());
        for v in values {
            feed(&mut h, v);
        }
    }
    if cfg.vary_authorization {
        let values: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();
        h.update((values.len() as u64).to_be_bytes());
        for v in values {
            feed(&mut h, v.as_bytes());
        }
    }
    key.push_str(":v=");
    for b in &h.finalize()[..16] {
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// The response's `Vary` list, lowercased and sorted, without `cookie` and
/// `authorization` (the layer's options decide those, see the module docs);
/// `None` for `Vary: *` or an unreadable `Vary`.
fn vary_list(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::VARY) {
        for name in v.to_str().ok()?.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty()
                && name != "cookie"
                && name != "authorization"
                && !out.contains(&name)
            {
                out.push(name);
            }
        }
    }
    out.sort();
    Some(out)
}

/// Adds `name` to the response's `Vary` unless it is already there.
fn patch_vary(headers: &mut HeaderMap, name: &'static str) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|n| n.trim() == "*" || n.trim().eq_ignore_ascii_case(name))
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static(name));
    }
}

/// Every directive of every `Cache-Control` line, lowercased and trimmed;
/// `None` if a line is not text.
fn cache_control(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CACHE_CONTROL) {
        for d in v.to_str().ok()?.split(',') {
            let d = d.trim().to_ascii_lowercase();
            if !d.is_empty() {
                out.push(d);
            }
        }
    }
    Some(out)
}

fn cache_control_forbids(directives: &[String]) -> bool {
    directives
        .iter()
        .any(|d| d == "private" || d == "no-store" || d == "no-cache" || d.starts_with("private="))
}

/// The response's own freshness for a shared cache: `s-maxage`, else
/// `max-age` (Django's `get_max_age` reads `max-age`); an unreadable value
/// counts as 0.
fn response_max_age(directives: &[String]) -> Option<Duration> {
    let seconds = |name: &str| {
        directives.iter().find_map(|d| {
            let v = d.strip_prefix(name)?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').parse::<u64>().unwrap_or(0))
        })
    };
    seconds("s-maxage")
        .or_else(|| seconds("max-age"))
        .map(Duration::from_secs)
}

/// The route's timeout in seconds, resolved against the cache's default;
/// `None` if it caches nothing.
fn max_age(timeout: Timeout, default: Timeout) -> Option<Duration> {
    match timeout.resolve(default)? {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(365 * 86_400)),
    }
}

async fn pass<S>(inner: &mut S, req: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    inner.call(req).await.unwrap_or_else(|e| match e {})
}

async fn handle<S>(cfg: &PageConfig, mut inner: S, req: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let view = cfg.view.as_str();
    let cache = match crate::function::cache_for(cfg.cache.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(view, error = %e, "cache_page runs uncached");
            return pass(&mut inner, req).await;
        }
    };
    let Some(max_age) = max_age(cfg.timeout, cache.core().default_timeout) else {
        return pass(&mut inner, req).await;
    };
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return pass(&mut inner, req).await;
    }
    let id = match identify(cfg, req.uri(), req.headers()) {
        Ok(id) => id,
        Err(reason) => {
            tracing::debug!(view, reason, "cache_page: request passes through uncached");
            return pass(&mut inner, req).await;
        }
    };
    // One round trip: the learned `Vary` list (unknown before any page was
    // stored: then none is assumed, a response that varies is not stored,
    // and its list is learned for the next request) and the page keyed with
    // the list this route's pages had last.
    let headers_key = format!("{}:headers", id.base);
    let guess = cfg
        .vary_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let guess_key = page_key(cfg, &id.base, &guess, req.headers(), &id);
    let (known, guessed) = cache
        .core()
        .get_pair::<Vec<String>, CachedPage>(&headers_key, &guess_key)
        .await;
    let vary = known.clone().unwrap_or_default();
    let key = if vary == guess {
        if let Some(page) = guessed
            && page.servable_to(id.unkeyed)
            && let Some(resp) = page.into_response(head, &cfg.x_cache)
        {
            cache.core().count_lookup(&key_of_view(view), true);
            tracing::debug!(view, key = guess_key, "cache_page: hit");
            return resp;
        }
        guess_key
    } else {
        *cfg.vary_seen.lock().unwrap_or_else(|p| p.into_inner()) = vary.clone();
        page_key(cfg, &id.base, &vary, req.headers(), &id)
    };
    if head {
        if let Ok(Some(page)) = cache.get::<CachedPage>(&key).await
            && page.servable_to(id.unkeyed)
            && let Some(resp) = page.into_response(true, &cfg.x_cache)
        {
            tracing::debug!(view, key, "cache_page: HEAD hit");
            return resp;
        }
        return pass(&mut inner, req).await;
    }

    // The request is taken by the computation only if it runs; a cached
    // value that cannot be served gives it back.
    let mut slot = Some(req);
    let outcome = {
        let (slot, inner) = (&mut slot, &mut inner);
        let vary = &vary;
        let unkeyed = id.unkeyed;
        cache
            .get_or_set_with::<PagePolicy, Outcome, _, _>(&key, cfg.timeout, move || async move {
                let req = slot.take().expect("the computation runs once");
                let resp = pass(inner, req).await;
                fresh(cfg, vary, unkeyed, max_age, resp).await
            })
            .await
    };
    match outcome {
        Outcome::Cached(page) if !page.servable_to(id.unkeyed) => {
            // The page says `Vary: Cookie` and this request has a cookie
            // that is not in the key: compute its own page, unstored.
            tracing::debug!(
                view,
                key,
                "cache_page: a cached page varies on an unkeyed cookie; passes through"
            );
            match slot.take() {
                Some(req) => pass(&mut inner, req).await,
                None => internal_error(),
            }
        }
        Outcome::Cached(page) => {
            if let Some(resp) = page.into_response(false, &cfg.x_cache) {
                tracing::debug!(view, key, "cache_page: hit");
                return resp;
            }
            tracing::warn!(
                view,
                key,
                "cache_page: a cached page could not be served; dropped"
            );
            let _ = cache.delete(&key).await;
            match slot.take() {
                Some(req) => pass(&mut inner, req).await,
                None => internal_error(),
            }
        }
        Outcome::Fresh {
            resp,
            page,
            vary: learned,
            ..
        } => {
            tracing::debug!(
                view,
                key,
                stored = page.is_some(),
                cacheable = learned.is_some(),
                "cache_page: miss"
            );
            if let Some(learned) = learned
                && known.as_ref() != Some(&learned)
            {
                *cfg.vary_seen.lock().unwrap_or_else(|p| p.into_inner()) = learned.clone();
                // Failures are logged and counted by the cache. A plain set,
                // not a guarded fill: it holds header names only, and a page
                // is stored only when the learned list matches its key.
                let _ = cache.set(&headers_key, &learned, cfg.timeout).await;
            }
            resp
        }
    }
}

/// A key of `view`'s family, for counting its page lookups.
fn key_of_view(view: &str) -> String {
    format!("{}:page", view_prefix(view))
}

fn internal_error() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// Turns the handler's response into an [`Outcome::Fresh`]: buffers a
/// cacheable body, patches its headers, and builds the page to store when
/// its `Vary` list is the one the key was computed with.
///
/// As Django's `UpdateCacheMiddleware`: only a 200 is stored; a 304 gets
/// the cache headers but is not stored; `Cache-Control: private` is not
/// cached and gets no cache headers, 304 included. Two deliberate
/// differences, both toward caching less: `no-store`, `no-cache` and
/// `max-age=0` are not cached either (Django's `cache_page` caches them for
/// its `page_timeout`), and the response's own `s-maxage`/`max-age`, when
/// shorter than the route's timeout, is the entry's timeout (Django's
/// `page_timeout` takes precedence over it).
async fn fresh(
    cfg: &PageConfig,
    vary: &[String],
    unkeyed: Unkeyed,
    max_age: Duration,
    resp: Response,
) -> Outcome {
    let uncacheable = |resp| Outcome::Fresh {
        resp,
        page: None,
        vary: None,
        lifetime: None,
    };
    let Some(directives) = cache_control(resp.headers()) else {
        return uncacheable(resp);
    };
    let own = response_max_age(&directives);
    if resp.status() == StatusCode::NOT_MODIFIED {
        // A private (or uncacheable) 304 is passed on untouched: adding a
        // max-age would let shared caches keep it.
        if cache_control_forbids(&directives) || own.is_some_and(|d| d.is_zero()) {
            return uncacheable(resp);
        }
        let (mut parts, body) = resp.into_parts();
        let lifetime = own.filter(|d| *d < max_age).unwrap_or(max_age);
        patch_response_headers(&mut parts.headers, lifetime);
        return uncacheable(Response::from_parts(parts, body));
    }
    if resp.status() != StatusCode::OK
        || resp.headers().contains_key(header::SET_COOKIE)
        || cache_control_forbids(&directives)
        || own.is_some_and(|d| d.is_zero())
    {
        return uncacheable(resp);
    }
    let lifetime = own.filter(|d| *d < max_age);
    let Some(learned) = vary_list(resp.headers()) else {
        return uncacheable(resp);
    };
    // A page that varies on a cookie (or credential) this request carries
    // outside the key is this request's own: another one must not get it.
    let (vary_cookie, vary_authorization) = varies_on_personal(resp.headers());
    if !unkeyed.allows(vary_cookie, vary_authorization) {
        return uncacheable(resp);
    }
    // Only bodies of known, bounded length: never buffer a stream.
    let size = http_body::Body::size_hint(resp.body()).exact();
    if size.is_none_or(|n| n > cfg.max_body as u64) {
        return uncacheable(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::warn!(view = cfg.view.as_str(), error = %e, "cache_page: reading the response body failed");
            let mut r = Response::from_parts(parts, Body::empty());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return uncacheable(r);
        }
    };
    patch_response_headers(&mut parts.headers, lifetime.unwrap_or(max_age));
    if !cfg.vary_cookies.is_empty() {
        patch_vary(&mut parts.headers, "Cookie");
    }
    if cfg.vary_authorization {
        patch_vary(&mut parts.headers, "Authorization");
    }
    let mut headers = Vec::new();
    let mut storable = learned == vary;
    for (k, v) in &parts.headers {
        if Some(k) == cfg.x_cache.as_ref() {
            continue;
        }
        match v.to_str() {
            Ok(v) => headers.push((k.as_str().to_owned(), v.to_owned())),
            Err(_) => storable = false,
        }
    }
    let page = storable.then(|| {
        let (text, base64) = match std::str::from_utf8(&bytes) {
            Ok(t) => (Some(t.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            ),
        };
        CachedPage {
            status: parts.status.as_u16(),
            headers,
            text,
            base64,
            vary_cookie,
            vary_authorization,
        }
    });
    let mut resp = Response::from_parts(parts, Body::from(bytes));
    mark(&mut resp, &cfg.x_cache, "MISS");
    Outcome::Fresh {
        resp,
        page,
        vary: Some(learned),
        lifetime,
    }
}

/// Adds `Cache-Control: max-age` and `Expires` unless the response set them
/// (Django's `patch_response_headers`), keeping every directive of every
/// `Cache-Control` line the response had (joined into one line).
fn patch_response_headers(headers: &mut HeaderMap, max_age: Duration) {
    let lines: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let has_max_age = lines
        .iter()
        .flat_map(|l| l.split(','))
        .any(|d| d.trim().to_ascii_lowercase().starts_with("max-age"));
    if !has_max_age {
        let mut v = lines.join(", ");
        if !v.is_empty() {
            v.push_str(", ");
        }
        v.push_str(&format!("max-age={}", max_age.as_secs()));
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

/// Drops every cached variant of one path of a view (every host, scheme,
/// query string and varied header or cookie); returns how many entries were
/// removed. `path` is the URL path as a link or a browser writes it
/// (`/posts/Ada%20Lovelace`), or its decoded text (`/posts/Ada Lovelace`):
/// both name the same page ([`crate::key::page_path`]); it matches that
/// path only, literally. From a model, say
/// `#[invalidate(page(view = "posts", path = "/posts/{slug}"))]`.
pub async fn invalidate_path(cache: &Cache, view: &str, path: &str) -> Result<usize> {
    let pattern = crate::key::page_pattern(view, path);
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
