//! `#[derive(Invalidate)]` on the local store.

mod models;

fn setup() {
    assert_eq!(tg_cache::cache().backend(), tg_cache::Backend::Local);
}

model_tests!(setup);
