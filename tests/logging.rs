//! What tg-cache logs, from a subscriber that captures every event: a new
//! user's first calls on a fresh Redis log no warning; a malformed epoch
//! (something wrote junk at it) does.

use std::sync::Mutex;
use std::time::Duration;
use tg_cache::testing::RedisServer;

static LOG: Mutex<Vec<(tracing::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = String::new();
        event.record(&mut Message(&mut line));
        LOG.lock().unwrap().push((*event.metadata().level(), line));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn warnings() -> Vec<String> {
    LOG.lock()
        .unwrap()
        .iter()
        .filter(|(l, _)| *l <= tracing::Level::WARN)
        .map(|(_, m)| m.clone())
        .collect()
}

#[tokio::test]
async fn a_first_epoch_is_no_warning_and_a_malformed_one_is() {
    tracing::subscriber::set_global_default(Capture).unwrap();
    let server = RedisServer::start();
    let cache = tg_cache::CacheConfig::redis(&server.url()).build().unwrap();
    // A new user's first calls, on every path that makes an epoch.
    let ttl = Duration::from_secs(60);
    cache
        .set("tg:queryset:Character:id=1", &1, ttl)
        .await
        .unwrap();
    assert_eq!(
        cache
            .get_or_set("tg:fn:char_scenes:character_id=1", ttl, || async { 2 })
            .await,
        2
    );
    assert!(cache.add("tg:view:home:", &3, ttl).await.unwrap());
    let w = warnings();
    assert!(w.is_empty(), "a fresh Redis logged warnings: {w:?}");
    // Junk at an epoch is worth one.
    let () = server.cmd(&["SET", "#epoch:tg:fn:char_scenes", "not a token!"]);
    assert_eq!(
        cache
            .get_or_set("tg:fn:char_scenes:character_id=2", ttl, || async { 4 })
            .await,
        4
    );
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("malformed"), "{w:?}");

    // A value written by Python pickle (django-redis' default serializer):
    // one warning per key family and minute, however often it is read.
    LOG.lock().unwrap().clear();
    let pickle = b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";
    let mut con = server.connection();
    for key in [
        "tg:queryset:Pickled:id=1",
        "tg:queryset:Pickled:id=2",
        "tg:fn:pickled:x=1",
    ] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(&pickle[..])
            .query(&mut con)
            .unwrap();
    }
    let plain = tg_cache::CacheConfig::redis(&server.url()).build().unwrap();
    for _ in 0..3 {
        for key in [
            "tg:queryset:Pickled:id=1",
            "tg:queryset:Pickled:id=2",
            "tg:fn:pickled:x=1",
        ] {
            assert_eq!(plain.get::<serde_json::Value>(key).await.unwrap(), None);
        }
    }
    assert_eq!(plain.stats().pickled, 9);
    let w = warnings();
    assert_eq!(w.len(), 2, "one per family: {w:?}");
    for line in &w {
        assert!(
            line.contains(
                "written by Python pickle: set django-redis' SERIALIZER to JSONSerializer"
            ),
            "{line}"
        );
    }
    assert!(w.iter().any(|l| l.contains("tg:queryset:Pickled")), "{w:?}");
    assert!(w.iter().any(|l| l.contains("tg:fn:pickled")), "{w:?}");

    // A key Django warns about, on a cache shared with Django: Django's
    // warning, once per family and minute; the key itself is not logged.
    LOG.lock().unwrap().clear();
    let django = tg_cache::CacheConfig::redis(&server.url())
        .key_function(tg_cache::KeyFunction::Django)
        .build()
        .unwrap();
    for _ in 0..3 {
        django
            .set("tg:view:search:q=two words", &1, ttl)
            .await
            .unwrap();
    }
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("memcached") && !w[0].contains("two words"),
        "{w:?}"
    );
}
