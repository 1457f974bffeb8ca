//! The chronicle example over HTTP on a real Redis with a near cache
//! (`TG_CACHE_NEAR_CACHE=10000`): the scenarios of every store, and two
//! app processes sharing one Redis and one SQLite database, where an edit
//! in one is what the other serves next.

mod chronicle;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tg_cache::testing::RedisServer;

static SERVER: LazyLock<RedisServer> = LazyLock::new(|| {
    let server = RedisServer::start();
    tg_cache::configure(tg_cache::Caches::new(
        tg_cache::CacheConfig::redis(&server.url()).near_cache(10_000),
    ))
    .unwrap();
    server
});

fn setup() {
    LazyLock::force(&SERVER);
}

chronicle_tests!(setup);

const DB_VAR: &str = "XP_CHRONICLE_DB";

/// Child: the chronicle app configured from the environment, as
/// `cargo run --example chronicle` runs it, serving until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of an_edit_in_one_app_process_is_served_by_the_other"]
async fn helper_chronicle_app() {
    let Ok(db) = std::env::var(DB_VAR) else {
        return;
    };
    tg_cache::init_from_env().unwrap();
    let router = chronicle::app::build(&db).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("\nXP addr={}", listener.local_addr().unwrap());
    axum::serve(listener, router).await.unwrap();
}

/// A running app process, killed when dropped.
struct App {
    child: Child,
    base: String,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_app(redis_url: &str, db: &str) -> App {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_chronicle_app",
            "--exact",
            "--nocapture",
            "--include-ignored",
        ])
        .env("TG_CACHE_BACKEND", "redis")
        .env("TG_CACHE_REDIS_URL", redis_url)
        .env("TG_CACHE_NEAR_CACHE", "10000")
        .env(DB_VAR, db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the app process ended before serving")
            .unwrap();
        if let Some(at) = line.find("XP addr=") {
            break line[at + "XP addr=".len()..].trim().to_owned();
        }
    };
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    App {
        child,
        base: format!("http://{addr}"),
    }
}

async fn page(client: &reqwest::Client, app: &App, path: &str) -> String {
    let resp = client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_one_app_process_is_served_by_the_other() {
    let _w = tg_cache::testing::watchdog(
        "an_edit_in_one_app_process_is_served_by_the_other",
        Duration::from_secs(120),
    );
    let server = RedisServer::start();
    let dir = chronicle::TempDir(
        std::env::temp_dir().join(format!("tg-cache-chronicle-two-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("chronicle.db");
    let db = db.to_str().unwrap();
    // One after the other: the first migrates and seeds the database.
    let a = tokio::task::spawn_blocking({
        let (url, db) = (server.url(), db.to_owned());
        move || start_app(&url, &db)
    })
    .await
    .unwrap();
    let b = tokio::task::spawn_blocking({
        let (url, db) = (server.url(), db.to_owned());
        move || start_app(&url, &db)
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    // Both processes cache the detail page's parts and the list page.
    for app in [&a, &b] {
        for _ in 0..3 {
            let ada = page(&client, app, "/characters/1").await;
            assert!(ada.contains("<h1>Ada Lovelace</h1>"), "{ada}");
            let list = page(&client, app, "/").await;
            assert!(list.contains("Ada Lovelace"), "{list}");
        }
    }
    let status = page(&client, &b, "/cache").await;
    assert!(status.contains("Near cache"), "{status}");
    let near_hits = |status: &str, family: &str| -> u64 {
        let near = status.split("Near cache").nth(1).unwrap_or("");
        near.split(&format!("<code>{family}</code></td><td>"))
            .nth(1)
            .and_then(|r| r.split('<').next()?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        near_hits(&status, "tg:fn:char_scenes") > 0,
        "process B served no near hit of tg:fn:char_scenes: {status}"
    );

    // Edit Ada in process A.
    let resp = client
        .post(format!("{}/characters/1/edit", a.base))
        .form(&[
            ("name", "Ada King"),
            ("clan", "Tremere"),
            ("concept", "Countess"),
            ("description", "Renamed in process A."),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let fresh = resp.text().await.unwrap();
    assert!(fresh.contains("<h1>Ada King</h1>"), "{fresh}");

    // Process B serves the edit: at once, or within the near cache's bound.
    let start = Instant::now();
    loop {
        let detail = page(&client, &b, "/characters/1").await;
        let list = page(&client, &b, "/").await;
        if detail.contains("<h1>Ada King</h1>")
            && detail.contains("Renamed in process A.")
            && list.contains("Ada King")
            && !list.contains("Ada Lovelace")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "process B still serves the old character 100 ms after the edit returned:\n{detail}\n{list}"
        );
    }
    eprintln!(
        "process B served the edit {:?} after it returned",
        start.elapsed()
    );
}
