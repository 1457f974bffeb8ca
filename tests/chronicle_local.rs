//! The chronicle example over HTTP, on the local store (zero configuration).

mod chronicle;

fn setup() {
    assert_eq!(tg_cache::cache().backend(), tg_cache::Backend::Local);
}

chronicle_tests!(setup);
