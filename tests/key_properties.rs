//! Property tests of the escaping rules: distinct inputs give distinct keys,
//! and no value can put a glob metacharacter, whitespace or a separator into a key.

use proptest::prelude::*;
use tg_cache::key::{KeyPart, glob_match};
use tg_cache::{CacheKeyGenerator as G, KeyBuilder, KeyPattern};

/// A value of one of several types, to check cross-type distinctness.
#[derive(Debug, Clone)]
enum V {
    S(String),
    I(i64),
    F(f64),
    B(bool),
    N(Option<String>),
    L(Vec<String>),
}

impl KeyPart for V {
    fn write_key_part(&self, out: &mut String) {
        match self {
            V::S(s) => s.write_key_part(out),
            V::I(i) => i.write_key_part(out),
            V::F(f) => f.write_key_part(out),
            V::B(b) => b.write_key_part(out),
            V::N(n) => n.write_key_part(out),
            V::L(l) => l.write_key_part(out),
        }
    }
}

fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:=*?%\\[\\]\\\\' ~,()\t\n-]{0,8}",
        any::<String>(),
        "[0-9]{1,3}(\\.[0-9])?",
    ]
}

fn value() -> impl Strategy<Value = V> {
    prop_oneof![
        tricky_string().prop_map(V::S),
        any::<i64>().prop_map(V::I),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(V::F),
        any::<bool>().prop_map(V::B),
        proptest::option::of(tricky_string()).prop_map(V::N),
        proptest::collection::vec(tricky_string(), 0..3).prop_map(V::L),
    ]
}

/// Canonical identity of a value: distinct values must give distinct keys.
fn identity(v: &V) -> String {
    match v {
        // An Option's Some(s) is the same key as s by design (same parameter type).
        V::N(Some(s)) => format!("S{s:?}"),
        V::N(None) => "None".into(),
        V::S(s) => format!("S{s:?}"),
        V::I(i) => format!("I{i}"),
        V::F(f) if *f == 0.0 => format!("F{}", if f.is_sign_negative() { "-0" } else { "0" }),
        V::F(f) => format!("F{f:?}"),
        V::B(b) => format!("B{b}"),
        V::L(l) => format!("L{l:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn distinct_values_give_distinct_keys(a in value(), b in value()) {
        let ka = a.to_key_part();
        let kb = b.to_key_part();
        if identity(&a) != identity(&b) {
            prop_assert_ne!(ka, kb, "{:?} and {:?} collide", a, b);
        } else {
            prop_assert_eq!(ka, kb);
        }
    }

    #[test]
    fn distinct_filter_sets_give_distinct_model_keys(
        a in proptest::collection::vec((tricky_string(), tricky_string()), 1..3),
        b in proptest::collection::vec((tricky_string(), tricky_string()), 1..3),
    ) {
        let mut sa = a.clone(); sa.sort(); sa.dedup_by(|x, y| x.0 == y.0);
        let mut sb = b.clone(); sb.sort(); sb.dedup_by(|x, y| x.0 == y.0);
        let ka = G::make_model_key("M", &sa.iter().map(|(k, v)| (k.as_str(), v as &dyn KeyPart)).collect::<Vec<_>>());
        let kb = G::make_model_key("M", &sb.iter().map(|(k, v)| (k.as_str(), v as &dyn KeyPart)).collect::<Vec<_>>());
        if sa != sb {
            prop_assert_ne!(ka, kb);
        }
    }

    #[test]
    fn keys_never_contain_glob_separators_or_whitespace(v in value(), name in tricky_string()) {
        let key = KeyBuilder::new("tg:fn:p").param(&name, &v).finish();
        prop_assert!(!key.contains(['*', '?', '[', ']', '\\']), "{}", key);
        if !key.contains(":#") {
            // not shortened: exactly the prefix, one name and one value
            let tail = &key["tg:fn:p:".len()..];
            let (n, val) = tail.split_once('=').expect("one '=' separates name and value");
            for part in [n, val] {
                prop_assert!(!part.contains([':', '=']), "{}", key);
            }
        }
        prop_assert!(!key.chars().any(|c| c.is_whitespace() || c.is_control()), "{}", key);
        prop_assert!(key.len() <= tg_cache::key::MAX_KEY_LEN);
    }

    #[test]
    fn a_pattern_from_user_data_matches_only_that_value(a in tricky_string(), b in tricky_string()) {
        let pattern = KeyPattern::prefix("tg:queryset:Character").param("name", &a).any();
        let key_b = format!("{}:x", G::make_model_key("Character", &[("name", &b)]).trim_end_matches(':'));
        prop_assert_eq!(glob_match(pattern.as_str(), &key_b), a == b, "{} vs {}", pattern, key_b);
    }
}
