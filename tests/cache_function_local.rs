//! `#[cache_function]` on the local store (zero configuration).

mod shapes;

fn setup() {
    assert_eq!(tg_cache::cache().backend(), tg_cache::Backend::Local);
}

shape_tests!(setup);

#[test]
fn prefixes_are_unique_in_this_program() {
    tg_cache::check_cache_functions().unwrap();
    assert!(tg_cache::cached_functions().any(|f| f.key_prefix == "char_scenes"));
}
