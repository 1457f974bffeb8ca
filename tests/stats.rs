//! Hit and miss counters stay exact under many threads (more threads than
//! the counter has owned slots, so the shared slot is exercised too).

use tg_cache::CacheConfig;
use tg_cache::timeout::MEDIUM;

#[test]
fn counters_are_exact_under_many_threads() {
    let cache = CacheConfig::local().build().unwrap();
    cache.blocking().set("k", &1u32, MEDIUM).unwrap();
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    assert_eq!(cache.blocking().get::<u32>("k").unwrap(), Some(1));
                    assert_eq!(cache.blocking().get::<u32>("missing").unwrap(), None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (100_000, 100_000));
    assert_eq!(s.hit_ratio(), Some(0.5));
}

#[test]
fn counters_per_key_family() {
    let cache = CacheConfig::local().build().unwrap();
    let b = cache.blocking();
    b.set("tg:queryset:Character:id=1", &1u32, MEDIUM).unwrap();
    b.get::<u32>("tg:queryset:Character:id=1").unwrap();
    b.get::<u32>("tg:queryset:Character:id=2").unwrap();
    b.get::<u32>("tg:view:home:").unwrap();
    b.get::<u32>("my_key").unwrap();
    b.get_or_set("tg:fn:scenes:id=1", MEDIUM, || 1u32);
    b.get_or_set("tg:fn:scenes:id=1", MEDIUM, || 1u32);
    let fams = cache.family_stats();
    let get = |f: &str| {
        fams.iter()
            .find(|(n, _)| n == f)
            .map(|(_, s)| (s.hits, s.misses))
            .unwrap()
    };
    assert_eq!(get("tg:queryset:Character"), (1, 1));
    assert_eq!(get("tg:view:home"), (0, 1));
    assert_eq!(get("other"), (0, 1));
    assert_eq!(get("tg:fn:scenes"), (1, 1));
    let names: Vec<&str> = fams.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "other",
            "tg:fn:scenes",
            "tg:queryset:Character",
            "tg:view:home"
        ]
    );
}
