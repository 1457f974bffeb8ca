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
