//! The chronicle application, shared by the example binary and its tests.
//!
//! Every caching strategy of the seed on a real SQLite database:
//! * `cache_page` on the merit/flaw reference list and the character list;
//! * `#[cache_function]` for a character's scenes (one joined query);
//! * a MiniJinja fragment cache around the character details block;
//! * the seed's model key (`tg:queryset:Character:id=<id>`) for a character row;
//! * `#[derive(Invalidate)]` on `Character`, fired from a transaction batch
//!   when the edit form is saved;
//! * a per-user page that is never cached, a per-session page cached once
//!   per session cookie (`vary_on_cookie`), and a `/cache` status page.

#![allow(dead_code)] // the tests use only part of the app

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use std::str::FromStr;
use std::sync::Arc;
use tg_cache::http::cache_page;
use tg_cache::timeout::{LONG, MEDIUM, SHORT};
use tg_cache::{Batch, CacheKeyGenerator, Invalidate, Target, cache_function};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct AppState {
    pub db: SqlitePool,
    env: Arc<Environment<'static>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, Invalidate)]
#[invalidate_on(save, delete)]
#[invalidate(model_key(id), function = get_character_scenes(id))]
#[invalidate(key = "tg:fragment:character_details:{id}")]
#[invalidate(pattern = "tg:view:home:*")]
pub struct Character {
    pub id: i64,
    pub chronicle_id: i64,
    pub name: String,
    pub clan: String,
    pub concept: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Chronicle {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct MeritFlaw {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub cost: i64,
    pub description: String,
}

/// A scene with its chronicle, location and cast, as one row.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Scene {
    pub id: i64,
    pub title: String,
    pub date_of_scene: String,
    pub chronicle: String,
    pub location: String,
    pub cast: String,
}

/// The seed's `get_character_scenes`: scenes with their chronicle and
/// location joined in (`select_related`) and the cast aggregated in the same
/// query (`prefetch_related`), newest first.
#[cache_function(timeout = MEDIUM, key_prefix = "char_scenes", skip(db))]
pub async fn get_character_scenes(
    db: &SqlitePool,
    character_id: i64,
) -> Result<Vec<Scene>, String> {
    sqlx::query_as::<_, Scene>(
        "SELECT s.id, s.title, s.date_of_scene, c.name AS chronicle, l.name AS location,
                (SELECT GROUP_CONCAT(ch.name, ', ') FROM scene_characters sc2
                   JOIN characters ch ON ch.id = sc2.character_id
                  WHERE sc2.scene_id = s.id) AS \"cast\"
           FROM scenes s
           JOIN scene_characters sc ON sc.scene_id = s.id
           JOIN chronicles c ON c.id = s.chronicle_id
           JOIN locations l ON l.id = s.location_id
          WHERE sc.character_id = ?
          ORDER BY s.date_of_scene DESC",
    )
    .bind(character_id)
    .fetch_all(db)
    .await
    .map_err(|e| e.to_string())
}

/// A character row, cached under the seed's model key.
pub async fn load_character(db: &SqlitePool, id: i64) -> Result<Option<Character>, String> {
    let key = CacheKeyGenerator::make_model_key("Character", &[("id", &id)]);
    // Only a found row is cached (`SomeOnly`); a missing one is looked up again.
    let mut failure = None;
    let row = tg_cache::cache()
        .get_or_set_with::<tg_cache::SomeOnly, _, _, _>(&key, MEDIUM, || async {
            sqlx::query_as::<_, Character>("SELECT * FROM characters WHERE id = ?")
                .bind(id)
                .fetch_optional(db)
                .await
                .unwrap_or_else(|e| {
                    failure = Some(e.to_string());
                    None
                })
        })
        .await;
    match failure {
        Some(e) => Err(e),
        None => Ok(row),
    }
}

/// Builds the application on the SQLite file `db_path`, creating and seeding
/// it on first start.
pub async fn build(db_path: &str) -> Result<Router, BoxError> {
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{db_path}"))?.create_if_missing(true);
    let db = SqlitePool::connect_with(options).await?;
    migrate_and_seed(&db).await?;
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("home.html", include_str!("templates/home.html")),
        ("meritflaws.html", include_str!("templates/meritflaws.html")),
        ("character.html", include_str!("templates/character.html")),
        ("edit.html", include_str!("templates/edit.html")),
        ("me.html", include_str!("templates/me.html")),
        ("cache.html", include_str!("templates/cache.html")),
    ] {
        env.add_template(name, source)?;
    }
    tg_cache::template::add_to_environment(&mut env, tg_cache::cache());
    let state = AppState {
        db,
        env: Arc::new(env),
    };
    Ok(Router::new()
        .route("/", get(home).layer(cache_page(SHORT).view("home")))
        .route(
            "/meritflaws",
            // A theme cookie does not change the list: still one shared page.
            get(meritflaws).layer(
                cache_page(LONG)
                    .view("meritflaw_list")
                    .allow_cookies(["theme"]),
            ),
        )
        // Personal but cacheable: one entry per session cookie value.
        .route(
            "/welcome",
            get(welcome).layer(
                cache_page(SHORT)
                    .view("welcome")
                    .vary_on_cookie(SESSION_COOKIE),
            ),
        )
        .route("/characters/{id}", get(character_detail))
        .route("/characters/{id}/edit", get(edit_form).post(edit_save))
        .route("/me", get(me))
        .route("/login", get(login))
        .route("/cache", get(cache_status))
        .with_state(state))
}

/// Renders off the async workers: fragment caching uses the cache's
/// blocking face, which on Redis waits for a round trip.
async fn render(state: &AppState, name: &'static str, ctx: minijinja::Value) -> Response {
    let env = state.env.clone();
    let rendered = tokio::task::spawn_blocking(move || env.get_template(name)?.render(ctx)).await;
    match rendered {
        Ok(Ok(html)) => Html(html).into_response(),
        Ok(Err(e)) => error(format!("template {name}: {e}")),
        Err(e) => error(e.to_string()),
    }
}

fn error(msg: String) -> Response {
    tracing_error(&msg);
    (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
}

fn tracing_error(msg: &str) {
    eprintln!("chronicle: {msg}");
}

async fn home(State(state): State<AppState>) -> Response {
    let chronicles = sqlx::query_as::<_, Chronicle>("SELECT id, name FROM chronicles ORDER BY id")
        .fetch_all(&state.db)
        .await;
    let characters = sqlx::query_as::<_, Character>("SELECT * FROM characters ORDER BY name")
        .fetch_all(&state.db)
        .await;
    let (Ok(chronicles), Ok(characters)) = (chronicles, characters) else {
        return error("database error".into());
    };
    let chronicles: Vec<_> = chronicles
        .iter()
        .map(|ch| {
            let cs: Vec<&Character> = characters
                .iter()
                .filter(|c| c.chronicle_id == ch.id)
                .collect();
            context! { name => ch.name, characters => cs }
        })
        .collect();
    render(&state, "home.html", context! { chronicles }).await
}

async fn meritflaws(State(state): State<AppState>) -> Response {
    match sqlx::query_as::<_, MeritFlaw>("SELECT * FROM merit_flaws ORDER BY kind, name")
        .fetch_all(&state.db)
        .await
    {
        Ok(meritflaws) => render(&state, "meritflaws.html", context! { meritflaws }).await,
        Err(e) => error(e.to_string()),
    }
}

async fn character_detail(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let character = match load_character(&state.db, id).await {
        Ok(Some(c)) => c,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such character").into_response(),
        Err(e) => return error(e),
    };
    let scenes = match get_character_scenes(&state.db, id).await {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let rendered_at = httpdate_now();
    render(
        &state,
        "character.html",
        context! { character, scenes, rendered_at },
    )
    .await
}

/// Now, as an HTTP date (`Tue, 01 Dec 2026 05:38:41 GMT`), with the
/// number of this render (two renders in one second still differ).
fn httpdate_now() -> String {
    static RENDERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RENDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    format!(
        "{} (render {n})",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
}

async fn edit_form(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match load_character(&state.db, id).await {
        Ok(Some(character)) => render(&state, "edit.html", context! { character }).await,
        Ok(None) => (StatusCode::NOT_FOUND, "no such character").into_response(),
        Err(e) => error(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct CharacterForm {
    pub name: String,
    pub clan: String,
    pub concept: String,
    pub description: String,
}

/// Saves the form in a transaction; the invalidations are collected while
/// it is open and fired only after it committed.
async fn edit_save(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Form(form): Form<CharacterForm>,
) -> Response {
    match save_character(&state.db, id, form).await {
        Ok(true) => Redirect::to(&format!("/characters/{id}")).into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, "no such character").into_response(),
        Err(e) => error(e.to_string()),
    }
}

pub async fn save_character(
    db: &SqlitePool,
    id: i64,
    form: CharacterForm,
) -> Result<bool, BoxError> {
    let mut tx = db.begin().await?;
    let updated: Option<Character> = sqlx::query_as(
        "UPDATE characters SET name = ?, clan = ?, concept = ?, description = ? WHERE id = ? RETURNING *",
    )
    .bind(form.name.trim())
    .bind(form.clan.trim())
    .bind(form.concept.trim())
    .bind(form.description.trim())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(character) = updated else {
        return Ok(false);
    };
    let mut batch = Batch::new();
    character.saved_in(&mut batch)?;
    // The cast column of co-stars' scene lists shows this name too: a
    // relation the derive cannot see, added by hand.
    let co_stars: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT b.character_id FROM scene_characters a
           JOIN scene_characters b ON a.scene_id = b.scene_id
          WHERE a.character_id = ? AND b.character_id != ?",
    )
    .bind(id)
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    for co in co_stars {
        batch.add(Target::key(
            get_character_scenes_cache()?,
            get_character_scenes_cache_key(&co),
        ));
    }
    tx.commit().await?;
    batch.commit().await?;
    Ok(true)
}

/// The session cookie's name (as tower-sessions' and axum-login's).
pub const SESSION_COOKIE: &str = "id";

fn user_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|c| c.strip_prefix('='))
                .map(str::to_owned)
        })
        .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric()))
}

async fn me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let user = user_of(&headers);
    let mut resp = render(&state, "me.html", context! { user }).await;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-store"),
    );
    resp
}

/// A per-session page cached per session (`vary_on_cookie`).
async fn welcome(headers: HeaderMap) -> Response {
    // `user_of` accepts letters and digits only, so this is safe HTML.
    let who = user_of(&headers).unwrap_or_else(|| "stranger".to_owned());
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Html(format!("<h1>Welcome, {who}</h1><p>rendered at {at}</p>")).into_response()
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(Query(q): Query<Login>) -> Response {
    if q.user.is_empty() || !q.user.chars().all(|c| c.is_ascii_alphanumeric()) {
        return (StatusCode::BAD_REQUEST, "user names are letters and digits").into_response();
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}={}; Path=/; HttpOnly", q.user),
        )],
        Redirect::to("/me"),
    )
        .into_response()
}

fn ratio(s: &tg_cache::CacheStats) -> String {
    s.hit_ratio()
        .map_or_else(|| "–".into(), |r| format!("{:.0}%", r * 100.0))
}

/// The seed's "Check Cache Status", as a page.
async fn cache_status(State(state): State<AppState>) -> Response {
    let mut caches = Vec::new();
    for cache in tg_cache::all_caches() {
        let health = cache.health().await;
        let s = cache.stats();
        let families: Vec<_> = cache
            .family_stats()
            .into_iter()
            .map(|(family, f)| {
                context! { family, hits => f.hits, misses => f.misses, ratio => ratio(&f), errors => f.errors }
            })
            .collect();
        // The near cache's own counters (a Redis cache with
        // TG_CACHE_NEAR_CACHE set): the hits it answered in this process.
        let near = cache.near_stats().map(|stats| {
            let flushes = stats.first().map_or(0, |(_, s)| s.flushes);
            let families: Vec<_> = stats
                .into_iter()
                .map(|(family, n)| {
                    context! { family, hits => n.hits, misses => n.misses, invalidations => n.invalidations }
                })
                .collect();
            context! { entries => cache.local_len().unwrap_or(0), flushes, families }
        });
        caches.push(context! {
            near,
            alias => cache.alias(),
            backend => cache.backend().to_string(),
            healthy => health.is_ok(),
            round_trip => health.as_ref().map(|d| format!("{d:.2?}")).unwrap_or_default(),
            error => health.err().map(|e| e.to_string()).unwrap_or_default(),
            hits => s.hits, misses => s.misses, ratio => ratio(&s), errors => s.errors,
            decode_errors => s.decode_errors,
            families,
        });
    }
    render(&state, "cache.html", context! { caches }).await
}

async fn migrate_and_seed(db: &SqlitePool) -> Result<(), BoxError> {
    // sqlx migrations (`examples/chronicle/migrations`): a database made by
    // an older chronicle, or by hand, fails here with sqlx's message
    // instead of running on a schema it was not made for.
    sqlx::migrate!("examples/chronicle/migrations")
        .run(db)
        .await
        .map_err(|e| format!("{e} (a chronicle.db from an older version? delete it)"))?;
    Ok(())
}
