//! Drives the `chronicle` example over real HTTP, on whichever store the
//! including binary configured as the default cache.

#[path = "../../examples/chronicle/app.rs"]
pub mod app;

use reqwest::header::HeaderMap;

pub struct Running {
    pub base: String,
    pub client: reqwest::Client,
    _dir: TempDir,
}

/// A temp dir removed on drop.
pub struct TempDir(pub std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn start() -> Running {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tg-cache-chronicle-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let router = app::build(dir.join("chronicle.db").to_str().unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Running {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        _dir: TempDir(dir),
    }
}

impl Running {
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> (u16, HeaderMap, String) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.headers().clone(),
            resp.text().await.unwrap(),
        )
    }

    pub async fn x_cache(&self, path: &str) -> Option<String> {
        let (status, h, _) = self.get(path, None).await;
        assert_eq!(status, 200, "{path}");
        h.get("x-cache").map(|v| v.to_str().unwrap().to_owned())
    }
}

fn has(key: &str) -> bool {
    tg_cache::cache().blocking().has_key(key).unwrap()
}

/// The walk-through of the README: every strategy, then an edit.
pub async fn every_strategy_and_an_edit() {
    let app = start().await;
    // cache_page: first request MISS, second HIT
    assert_eq!(app.x_cache("/meritflaws").await.as_deref(), Some("MISS"));
    assert_eq!(app.x_cache("/meritflaws").await.as_deref(), Some("HIT"));
    assert_eq!(app.x_cache("/").await.as_deref(), Some("MISS"));
    assert_eq!(app.x_cache("/").await.as_deref(), Some("HIT"));
    // detail pages: #[cache_function], the model key and the fragment
    for id in [1, 2, 3, 5] {
        let (status, _, body) = app.get(&format!("/characters/{id}"), None).await;
        assert_eq!(status, 200);
        assert!(body.contains("<h2>Scenes</h2>"), "{body}");
    }
    let (_, _, ada) = app.get("/characters/1", None).await;
    assert!(ada.contains("<h1>Ada Lovelace</h1>") && ada.contains("The Primogen Convene"));
    for id in [1, 2, 3, 5] {
        assert!(has(&format!("tg:fn:char_scenes:character_id={id}")));
        assert!(has(&format!("tg:fragment:character_details:{id}")));
        assert!(has(&format!("tg:queryset:Character:id={id}")));
    }
    // the fragment is served from the cache: its render time does not change
    let stamp = |body: &str| {
        body.split("rendered at ")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned()
    };
    let (_, _, again) = app.get("/characters/1", None).await;
    assert_eq!(stamp(&again), stamp(&ada));

    // Edit Ada through the HTML form.
    let resp = app
        .client
        .post(format!("{}/characters/1/edit", app.base))
        .form(&[
            ("name", "Ada King"),
            ("clan", "Tremere"),
            ("concept", "Countess"),
            ("description", "Renamed."),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "followed the redirect to the detail page"
    );
    let fresh = resp.text().await.unwrap();
    assert!(
        fresh.contains("<h1>Ada King</h1>") && fresh.contains("Countess"),
        "{fresh}"
    );
    assert_ne!(
        stamp(&fresh),
        stamp(&ada),
        "the fragment was rendered again"
    );

    // Affected: the character list and co-stars' scene lists are fresh.
    let (_, h, home) = app.get("/", None).await;
    assert_eq!(h.get("x-cache").unwrap(), "MISS");
    assert!(home.contains("Ada King") && !home.contains("Ada Lovelace"));
    let (_, _, marcus) = app.get("/characters/2", None).await;
    assert!(
        marcus.contains("Ada King, Marcus Vale"),
        "co-star's cast is fresh: {marcus}"
    );
    // Unaffected: still cached.
    assert_eq!(app.x_cache("/meritflaws").await.as_deref(), Some("HIT"));
    assert!(
        has("tg:fragment:character_details:2"),
        "another character's fragment survived"
    );
    assert!(has("tg:fragment:character_details:5"));
    assert!(
        has("tg:fn:char_scenes:character_id=5"),
        "Liesl shares no scene with Ada"
    );
    assert!(has("tg:queryset:Character:id=2"));
}

/// The per-user page is never cached or shared.
pub async fn per_user_page_is_never_shared() {
    let app = start().await;
    for _ in 0..2 {
        let (_, h, alice) = app.get("/me", Some("id=alice")).await;
        assert!(alice.contains("Hello, alice"));
        assert!(h.get("x-cache").is_none());
        assert!(
            h.get("cache-control")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("private")
        );
        let (_, _, bob) = app.get("/me", Some("id=bob")).await;
        assert!(bob.contains("Hello, bob") && !bob.contains("alice"));
    }
    let (_, _, anon) = app.get("/me", None).await;
    assert!(anon.contains("Who are you?"));
    // logging in sets the session cookie
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/login?user=carol", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert!(
        resp.headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("id=carol")
    );
}

/// The status page shows counters per key family and the health.
pub async fn cache_status_page() {
    let app = start().await;
    app.get("/meritflaws", None).await;
    app.get("/meritflaws", None).await;
    app.get("/characters/4", None).await;
    let (status, _, page) = app.get("/cache", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<strong>working</strong>"), "{page}");
    for family in [
        "tg:view:meritflaw_list",
        "tg:fn:char_scenes",
        "tg:fragment:character_details",
    ] {
        assert!(
            page.contains(&format!("<code>{family}</code>")),
            "{family} missing: {page}"
        );
    }
    assert!(page.contains("hit ratio"));
    // One lookup is counted per page request (not one per key read).
    let lookups = |page: &str| -> u64 {
        let row = page
            .split("<code>tg:view:meritflaw_list</code></td>")
            .nth(1)
            .expect("the family's row");
        let cells: Vec<u64> = row
            .split("<td>")
            .skip(1)
            .take(2)
            .map(|c| c.split('<').next().unwrap().trim().parse().unwrap())
            .collect();
        cells[0] + cells[1]
    };
    let before = lookups(&page);
    for _ in 0..3 {
        app.get("/meritflaws", None).await;
    }
    let (_, _, page) = app.get("/cache", None).await;
    assert_eq!(lookups(&page) - before, 3, "{page}");
}

/// A database made by an older chronicle (its schema created without
/// migrations) is refused with a message, never used as it is.
pub async fn an_old_database_is_refused() {
    let dir = std::env::temp_dir().join(format!("tg-cache-chronicle-old-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let file = dir.join("chronicle.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let db = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::raw_sql("CREATE TABLE chronicles (id INTEGER PRIMARY KEY, name TEXT NOT NULL);")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let Err(err) = app::build(file.to_str().unwrap()).await else {
        panic!("an old database was accepted");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("already exists") && msg.contains("older version"),
        "{msg}"
    );
}

/// Session cookies bypass shared pages; a theme cookie does not; the
/// welcome page is cached once per session.
pub async fn cookies_and_the_page_cache() {
    let app = start().await;
    let x = |h: &HeaderMap| h.get("x-cache").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(x(&app.get("/", None).await.1).as_deref(), Some("MISS"));
    assert_eq!(
        x(&app.get("/", Some("id=alice")).await.1),
        None,
        "a session bypasses"
    );
    assert_eq!(x(&app.get("/", None).await.1).as_deref(), Some("HIT"));
    assert_eq!(
        x(&app.get("/meritflaws", Some("theme=dark")).await.1).as_deref(),
        Some("MISS")
    );
    assert_eq!(
        x(&app.get("/meritflaws", Some("theme=light")).await.1).as_deref(),
        Some("HIT")
    );
    assert_eq!(
        x(&app.get("/meritflaws", Some("theme=dark; id=alice")).await.1),
        None
    );
    let (_, h, alice) = app.get("/welcome", Some("id=alice")).await;
    assert_eq!(x(&h).as_deref(), Some("MISS"));
    assert!(alice.contains("Welcome, alice"));
    let (_, h, bob) = app.get("/welcome", Some("id=bob")).await;
    assert_eq!(x(&h).as_deref(), Some("MISS"));
    assert!(bob.contains("Welcome, bob"));
    let (_, h, again) = app.get("/welcome", Some("id=alice")).await;
    assert_eq!((x(&h).as_deref(), again), (Some("HIT"), alice));
    let (_, h, again) = app.get("/welcome", Some("id=bob")).await;
    assert_eq!((x(&h).as_deref(), again), (Some("HIT"), bob));
    let (_, _, anon) = app.get("/welcome", None).await;
    assert!(anon.contains("Welcome, stranger"));
}

/// The scenarios share the process's cache, so they run one after the
/// other on an emptied cache, each against its own fresh database.
pub async fn all_scenarios() {
    for scenario in [0, 1, 2, 3, 4] {
        tg_cache::cache().clear().await.unwrap();
        match scenario {
            0 => every_strategy_and_an_edit().await,
            1 => per_user_page_is_never_shared().await,
            2 => cookies_and_the_page_cache().await,
            3 => cache_status_page().await,
            _ => an_old_database_is_refused().await,
        }
    }
}

/// Declares the test of an including binary.
#[macro_export]
macro_rules! chronicle_tests {
    ($setup:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn chronicle_over_http() {
            $setup();
            chronicle::all_scenarios().await
        }
    };
}
