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
        // exactly the prefix, one name and one value, at any length
        let tail = &key["tg:fn:p:".len()..];
        let (n, val) = tail.split_once('=').expect("one '=' separates name and value");
        for part in [n, val] {
            prop_assert!(!part.contains([':', '=']), "{}", key);
        }
        prop_assert!(!key.chars().any(|c| c.is_whitespace() || c.is_control()), "{}", key);
    }

    #[test]
    fn a_pattern_from_user_data_matches_only_that_value(a in tricky_string(), b in tricky_string()) {
        let pattern = KeyPattern::prefix("tg:queryset:Character").param("name", &a).any();
        let key_b = format!("{}:x", G::make_model_key("Character", &[("name", &b)]).trim_end_matches(':'));
        prop_assert_eq!(glob_match(pattern.as_str(), &key_b), a == b, "{} vs {}", pattern, key_b);
    }
}

// ---- templates: distinct arguments give distinct keys ----

use tg_cache::cache_function;

#[allow(dead_code)]
#[cache_function(key_prefix = "kp_colon", key = "{a}:{b}")]
fn colon(a: String, b: String) -> u8 {
    0
}

#[allow(dead_code)]
#[cache_function(key_prefix = "kp_eq", key = "{a}={b}:{c}")]
fn eq_colon(a: String, b: i64, c: Option<String>) -> u8 {
    0
}

#[allow(dead_code)]
#[cache_function(key_prefix = "kp_mixed", key = "x{a}-y:{b}z")]
fn mixed(a: Option<i32>, b: String) -> u8 {
    0
}

#[allow(dead_code)]
#[cache_function(key_prefix = "kp_nested", key = "{a}:{b}=.{c}")]
fn nested(a: Option<Option<i32>>, b: Option<Option<String>>, c: Vec<String>) -> u8 {
    0
}

struct Obj {
    id: String,
}

impl Obj {
    #[allow(dead_code)]
    #[cache_function(key_prefix = "kp_self", key = "{self.id}:n={n}")]
    fn method(&self, n: Option<i64>) -> u8 {
        0
    }
}

/// Short strings over separators and markers, so that equal values and
/// near-collisions come up often.
fn small_string() -> impl Strategy<Value = String> {
    prop_oneof!["[a1:=~'%!.-]{0,3}", tricky_string()]
}

fn nested_option<T: std::fmt::Debug>(
    inner: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Option<T>>> {
    proptest::option::of(proptest::option::of(inner))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn colon_template_is_injective(a1 in small_string(), b1 in small_string(), a2 in small_string(), b2 in small_string()) {
        let (k1, k2) = (colon_cache_key(&a1, &b1), colon_cache_key(&a2, &b2));
        prop_assert_eq!(k1 == k2, (&a1, &b1) == (&a2, &b2), "{} / {}", k1, k2);
        // the same string split differently
        let joined = format!("{a1}:{b1}");
        if let Some((x, y)) = joined.split_once(':') {
            let split_again = colon_cache_key(&x.to_owned(), &y.to_owned());
            prop_assert_eq!(split_again == k1, (x, y) == (a1.as_str(), b1.as_str()));
        }
    }

    #[test]
    fn eq_colon_template_is_injective(
        x in (small_string(), -11..11i64, proptest::option::of(small_string())),
        y in (small_string(), -11..11i64, proptest::option::of(small_string())),
    ) {
        let k1 = eq_colon_cache_key(&x.0, &x.1, &x.2);
        let k2 = eq_colon_cache_key(&y.0, &y.1, &y.2);
        prop_assert_eq!(k1 == k2, x == y, "{} / {}", k1, k2);
    }

    #[test]
    fn mixed_template_is_injective(
        x in (proptest::option::of(-11..11i32), small_string()),
        y in (proptest::option::of(-11..11i32), small_string()),
    ) {
        let k1 = mixed_cache_key(&x.0, &x.1);
        let k2 = mixed_cache_key(&y.0, &y.1);
        prop_assert_eq!(k1 == k2, x == y, "{} / {}", k1, k2);
    }

    #[test]
    fn nested_template_is_injective(
        x in (nested_option(-11..11i32), nested_option(small_string()), proptest::collection::vec(small_string(), 0..3)),
        y in (nested_option(-11..11i32), nested_option(small_string()), proptest::collection::vec(small_string(), 0..3)),
    ) {
        let k1 = nested_cache_key(&x.0, &x.1, &x.2);
        let k2 = nested_cache_key(&y.0, &y.1, &y.2);
        prop_assert_eq!(k1 == k2, x == y, "{} / {}", k1, k2);
    }

    #[test]
    fn self_template_is_injective(
        x in (small_string(), proptest::option::of(-11..11i64)),
        y in (small_string(), proptest::option::of(-11..11i64)),
    ) {
        let k1 = Obj { id: x.0.clone() }.method_cache_key(&x.1);
        let k2 = Obj { id: y.0.clone() }.method_cache_key(&y.1);
        prop_assert_eq!(k1 == k2, x == y, "{} / {}", k1, k2);
    }

    #[test]
    fn nested_options_give_distinct_parts(
        a in nested_option(-11..11i32),
        b in nested_option(-11..11i32),
        s in nested_option(small_string()),
        t in nested_option(small_string()),
    ) {
        prop_assert_eq!(a.to_key_part() == b.to_key_part(), a == b, "{:?} / {:?}", a, b);
        prop_assert_eq!(s.to_key_part() == t.to_key_part(), s == t, "{:?} / {:?}", s, t);
    }
}

#[test]
fn nested_option_edge_cases() {
    let all: [Option<Option<Option<i32>>>; 4] =
        [None, Some(None), Some(Some(None)), Some(Some(Some(5)))];
    let parts: Vec<String> = all.iter().map(KeyPart::to_key_part).collect();
    assert_eq!(parts, ["~", "!~", "!!~", "5"]);
    assert_eq!(Some(Some("~".to_owned())).to_key_part(), "%7E");
    assert_eq!(Some(Some("!".to_owned())).to_key_part(), "%21");
}
