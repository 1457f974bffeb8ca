//! Compile-time checks of the macros: each `tests/ui/fail/*.rs` must fail
//! with its committed `.stderr`; each `tests/ui/pass/*.rs` must compile.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
