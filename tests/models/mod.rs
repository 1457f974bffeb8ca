//! The seed's Character/Scene example with `#[derive(Invalidate)]`, run on
//! whichever store the including binary configured as the default cache.

#![allow(dead_code)] // model fields mirror rows; not every test reads them

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tg_cache::timeout::MEDIUM;
use tg_cache::{Batch, CacheKeyGenerator as G, Event, Invalidate, cache_function};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub id: i64,
    pub title: String,
}

pub static SCENE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(timeout = MEDIUM, key_prefix = "char_scenes")]
pub async fn get_character_scenes(character_id: i64) -> Result<Vec<Scene>, String> {
    SCENE_RUNS.fetch_add(1, SeqCst);
    Ok(vec![Scene {
        id: character_id * 10,
        title: format!("Scene of {character_id}"),
    }])
}

#[derive(Debug, Clone, Invalidate)]
#[invalidate_on(save, delete)]
#[invalidate(model_key(id), model_key(chronicle = chronicle_id))]
#[invalidate(function = get_character_scenes(id))]
pub struct Character {
    pub id: i64,
    pub chronicle_id: i64,
    pub name: String,
}

pub async fn seed_example_end_to_end() {
    let before = SCENE_RUNS.load(SeqCst);
    get_character_scenes(5).await.unwrap();
    get_character_scenes(5).await.unwrap();
    get_character_scenes(6).await.unwrap();
    assert_eq!(SCENE_RUNS.load(SeqCst) - before, 2);
    let cache = tg_cache::cache();
    cache
        .set("tg:queryset:Character:id=5", &"row 5".to_string(), MEDIUM)
        .await
        .unwrap();
    cache
        .set("tg:queryset:Character:chronicle=3", &vec![5i64, 6], MEDIUM)
        .await
        .unwrap();
    cache
        .set("tg:queryset:Character:id=6", &"row 6".to_string(), MEDIUM)
        .await
        .unwrap();

    let c = Character {
        id: 5,
        chronicle_id: 3,
        name: "Ada".into(),
    };
    let described: Vec<String> = c.targets().unwrap().iter().map(|t| t.describe()).collect();
    assert_eq!(
        described,
        [
            "key tg:queryset:Character:id=5",
            "key tg:queryset:Character:chronicle=3",
            "key tg:fn:char_scenes:character_id=5",
        ]
    );
    c.saved().await.unwrap();

    assert!(!cache.has_key("tg:queryset:Character:id=5").await.unwrap());
    assert!(
        !cache
            .has_key("tg:queryset:Character:chronicle=3")
            .await
            .unwrap()
    );
    assert!(
        cache.has_key("tg:queryset:Character:id=6").await.unwrap(),
        "other rows stay cached"
    );
    get_character_scenes(5).await.unwrap();
    get_character_scenes(6).await.unwrap();
    assert_eq!(
        SCENE_RUNS.load(SeqCst) - before,
        3,
        "only character 5 was recomputed"
    );
    c.deleted_blocking().unwrap();
    get_character_scenes(5).await.unwrap();
    assert_eq!(SCENE_RUNS.load(SeqCst) - before, 4);
}

// ---- every target kind ----

pub static VIEW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "chronicle_view")]
pub fn chronicle_view(chronicle_id: i64, page: u32) -> String {
    VIEW_RUNS.fetch_add(1, SeqCst);
    format!("{chronicle_id}/{page}")
}

#[derive(Clone, Invalidate)]
#[invalidate_on(delete)]
#[invalidate(model = "Chron", model_key(id))]
#[invalidate(function = chronicle_view(..))]
#[invalidate(key = "tg:view:chronicle:id={id}", key = "tg:view:home")]
#[invalidate(pattern = "tg:view:search:chronicle={id}:*")]
pub struct Chronicle {
    pub id: i64,
    pub title: String,
}

pub async fn every_target_kind() {
    let cache = tg_cache::cache();
    let keys = [
        "tg:queryset:Chron:id=7",
        "tg:view:chronicle:id=7",
        "tg:view:home",
        "tg:view:search:chronicle=7:q=a",
        "tg:view:search:chronicle=7:q=b",
    ];
    let kept = [
        "tg:queryset:Chron:id=8",
        "tg:view:chronicle:id=8",
        "tg:view:search:chronicle=77:q=a",
    ];
    for k in keys.iter().chain(&kept) {
        cache.set(k, &1, MEDIUM).await.unwrap();
    }
    chronicle_view(7, 1);
    chronicle_view(8, 2);
    let ch = Chronicle {
        id: 7,
        title: "Chicago".into(),
    };
    // save is not an event of this model
    ch.saved().await.unwrap();
    for k in keys {
        assert!(cache.has_key(k).await.unwrap(), "{k} dropped on save");
    }
    ch.deleted().await.unwrap();
    for k in keys {
        assert!(!cache.has_key(k).await.unwrap(), "{k} kept after delete");
    }
    for k in kept {
        assert!(
            cache.has_key(k).await.unwrap(),
            "{k} dropped although unrelated"
        );
    }
    // function = chronicle_view(..) drops every entry of the function
    let runs = VIEW_RUNS.load(SeqCst);
    chronicle_view(7, 1);
    chronicle_view(8, 2);
    assert_eq!(VIEW_RUNS.load(SeqCst) - runs, 2);
}

#[derive(Clone, Invalidate)]
pub struct Merit {
    pub id: i64,
}

pub async fn default_target_is_model_key_id() {
    let cache = tg_cache::cache();
    cache
        .set("tg:queryset:Merit:id=1", &1, MEDIUM)
        .await
        .unwrap();
    Merit { id: 1 }.saved().await.unwrap();
    assert!(!cache.has_key("tg:queryset:Merit:id=1").await.unwrap());
    assert_eq!(Merit::EVENTS, [Event::Save, Event::Delete]);
}

// ---- receivers ----

#[derive(Clone, Invalidate)]
#[invalidate_on(save)]
pub struct Location {
    pub id: i64,
    pub name: String,
}

pub async fn custom_receivers() {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let id = tg_cache::connect::<Location>(&[Event::Save, Event::Delete], |loc, ev| {
        SEEN.lock().unwrap().push(format!("{ev:?} {}", loc.name));
        tg_cache::cache().blocking().delete("tg:view:map:")?;
        Ok(())
    });
    let cache = tg_cache::cache();
    cache.set("tg:view:map:", &1, MEDIUM).await.unwrap();
    let loc = Location {
        id: 1,
        name: "Elysium".into(),
    };
    loc.saved().await.unwrap();
    assert!(
        !cache.has_key("tg:view:map:").await.unwrap(),
        "the receiver ran"
    );
    // delete is not in invalidate_on, but the receiver asked for it
    loc.deleted_blocking().unwrap();
    assert_eq!(*SEEN.lock().unwrap(), ["Save Elysium", "Delete Elysium"]);
    assert!(tg_cache::disconnect(id));
    loc.saved().await.unwrap();
    assert_eq!(SEEN.lock().unwrap().len(), 2, "disconnected");
    assert!(!tg_cache::disconnect(id));
}

// ---- transactions on a real database ----

pub static NAME_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_function(key_prefix = "character_name", skip(pool))]
pub async fn character_name(pool: &sqlx::SqlitePool, id: i64) -> Result<String, String> {
    NAME_RUNS.fetch_add(1, SeqCst);
    sqlx::query_scalar::<_, String>("SELECT name FROM characters WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())
}

#[derive(Clone, Invalidate)]
#[invalidate(function = character_name(id))]
pub struct CharacterRow {
    pub id: i64,
    pub name: String,
}

pub async fn transactions_commit_and_rollback() {
    let dir = std::env::temp_dir().join(format!("tg-cache-tx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("chronicle.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS characters (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT OR REPLACE INTO characters (id, name) VALUES (1, 'Ada')")
        .execute(&pool)
        .await
        .unwrap();
    character_name_invalidate(&1).await.unwrap();
    assert_eq!(character_name(&pool, 1).await.unwrap(), "Ada");

    // Rolled back: nothing is invalidated, the cache still agrees with the row.
    let mut tx = pool.begin().await.unwrap();
    let mut batch = Batch::new();
    sqlx::query("UPDATE characters SET name = 'Bea' WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    CharacterRow {
        id: 1,
        name: "Bea".into(),
    }
    .saved_in(&mut batch)
    .unwrap();
    assert_eq!(batch.targets().len(), 1);
    tx.rollback().await.unwrap();
    batch.rollback();
    let runs = NAME_RUNS.load(SeqCst);
    assert_eq!(character_name(&pool, 1).await.unwrap(), "Ada");
    assert_eq!(
        NAME_RUNS.load(SeqCst),
        runs,
        "still a hit after the rollback"
    );

    // Committed: the invalidation runs after the commit; a read during the
    // transaction cannot put the uncommitted state back.
    let mut tx = pool.begin().await.unwrap();
    let mut batch = Batch::new();
    sqlx::query("UPDATE characters SET name = 'Cleo' WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    let row = CharacterRow {
        id: 1,
        name: "Cleo".into(),
    };
    row.saved_in(&mut batch).unwrap();
    row.saved_in(&mut batch).unwrap();
    assert_eq!(batch.targets().len(), 1, "duplicates are merged");
    tx.commit().await.unwrap();
    batch.commit().await.unwrap();
    assert_eq!(character_name(&pool, 1).await.unwrap(), "Cleo");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- model-wide invalidation ----

#[derive(Clone, Invalidate)]
#[invalidate(model_key(id), function = get_character_scenes(id))]
pub struct Npc {
    pub id: i64,
}

pub async fn invalidate_all_drops_every_entry() {
    let cache = tg_cache::cache();
    let items: Vec<(String, i64)> = (0..500)
        .map(|i| (G::make_model_key("Npc", &[("id", &i)]), i))
        .collect();
    cache.set_many(&items, MEDIUM).await.unwrap();
    cache
        .set("tg:queryset:Other:id=1", &1, MEDIUM)
        .await
        .unwrap();
    for (k, _) in &items {
        assert!(cache.has_key(k).await.unwrap());
    }
    let described: Vec<String> = Npc::all_targets()
        .unwrap()
        .iter()
        .map(|t| t.describe())
        .collect();
    assert_eq!(
        described,
        ["family tg:queryset:Npc", "family tg:fn:char_scenes"]
    );
    Npc::invalidate_all().await.unwrap();
    for (k, _) in &items {
        assert!(!cache.has_key(k).await.unwrap(), "{k}");
    }
    assert!(cache.has_key("tg:queryset:Other:id=1").await.unwrap());
    Npc::invalidate_all_blocking().unwrap();
}

// ---- set-after-invalidate ----

pub static GATE: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>> =
    Mutex::new(None);
pub static DB_VERSION: AtomicU64 = AtomicU64::new(0);

/// Reads the "database"; while a gate is installed, it reports that it has
/// read, then waits to be let go before returning what it read.
#[cache_function(key_prefix = "paused_read")]
pub fn paused_read(id: i64) -> u64 {
    let read = DB_VERSION.load(SeqCst);
    let gate = GATE.lock().unwrap().take();
    if let Some((started, resume)) = gate {
        started.send(()).unwrap();
        resume.recv().unwrap();
    }
    let _ = id; // the key; every id reads the same row version
    read
}

#[derive(Clone, Invalidate)]
#[invalidate(function = paused_read(id))]
pub struct Versioned {
    pub id: i64,
}

pub fn deterministic_interleaving_never_stores_stale() {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel();
    *GATE.lock().unwrap() = Some((started_tx, resume_rx));
    // 1. a reader misses and reads version 0 from the database
    let reader = std::thread::spawn(|| paused_read(1));
    started_rx.recv().unwrap();
    // 2. a writer commits version 1 and invalidates
    DB_VERSION.store(1, SeqCst);
    Versioned { id: 1 }.saved_blocking().unwrap();
    // 3. the reader finishes with its stale version 0
    resume_tx.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), 0);
    // 4. the next read must not see version 0
    assert_eq!(
        paused_read(1),
        1,
        "a stale fill was stored after the invalidation"
    );
}

pub static RACE_DB: AtomicU64 = AtomicU64::new(0);

#[cache_function(key_prefix = "racy_read")]
pub async fn racy_read(id: i64) -> u64 {
    let v = RACE_DB.load(SeqCst);
    let pause = rand::random_range(0..300u64);
    tokio::time::sleep(Duration::from_micros(pause)).await;
    let _ = id;
    v
}

#[derive(Clone, Invalidate)]
#[invalidate(function = racy_read(id))]
pub struct Racy {
    pub id: i64,
}

/// Writers bump the version and invalidate; readers check that after an
/// invalidation completed they never read an older version.
pub async fn randomized_race_has_no_stale_reads() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..6 {
        let (committed, stop, stale, reads) = (
            committed.clone(),
            stop.clone(),
            stale.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let floor = committed.load(SeqCst);
                if racy_read(1).await < floor {
                    stale.fetch_add(1, SeqCst);
                }
                reads.fetch_add(1, SeqCst);
                // A local hit has no await point, so give the writer a turn.
                tokio::task::yield_now().await;
            }
        }));
    }
    // At least 200 invalidations, and on until the readers have raced them
    // 400 times: a loaded machine slows the readers, never the verdict.
    let started = std::time::Instant::now();
    let mut writes = 0;
    while writes < 200 || reads.load(SeqCst) < 400 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the readers ran only {} times in 120 s",
            reads.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_micros(rand::random_range(0..500u64))).await;
        let v = RACE_DB.fetch_add(1, SeqCst) + 1;
        Racy { id: 1 }.saved().await.unwrap();
        committed.store(v, SeqCst);
        writes += 1;
    }
    stop.store(true, SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(stale.load(SeqCst), 0, "stale reads after an invalidation");
}

/// One `#[tokio::test]` per test above.
#[macro_export]
macro_rules! model_tests {
    ($setup:path) => {
        $crate::model_tests!(@async $setup; seed_example_end_to_end, every_target_kind,
            default_target_is_model_key_id, custom_receivers, transactions_commit_and_rollback,
            invalidate_all_drops_every_entry, randomized_race_has_no_stale_reads);
        #[test]
        fn deterministic_interleaving_never_stores_stale() {
            $setup();
            models::deterministic_interleaving_never_stores_stale()
        }
    };
    (@async $setup:path; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            $setup();
            models::$name().await
        }
    )*};
}
