//! Template fragment caching: on a hit the block is not rendered at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use tg_cache::CacheConfig;
use tg_cache::template::{add_to_environment, make_template_fragment_key};

fn env(renders: Arc<AtomicUsize>) -> minijinja::Environment<'static> {
    env_on(CacheConfig::local(), renders)
}

/// The test templates, their fragments cached on a cache built from
/// `config`.
fn env_on(config: CacheConfig, renders: Arc<AtomicUsize>) -> minijinja::Environment<'static> {
    let cache: &'static tg_cache::Cache = Box::leak(Box::new(config.build().unwrap()));
    let mut env = minijinja::Environment::new();
    add_to_environment(&mut env, cache);
    env.add_function("rendered", move || {
        renders.fetch_add(1, SeqCst);
        String::new()
    });
    env.add_template(
        "detail.html",
        r#"<p>{% call cache("character_details", 900, character.id) %}{{ rendered() }}<div>{{ character.name }}</div>{% endcall %}</p>"#,
    )
    .unwrap();
    env.add_template(
        "vary",
        r#"{% call cache("v", 900, value) %}{{ rendered() }}[{{ value }}]{% endcall %}"#,
    )
    .unwrap();
    env.add_template(
        "nocache",
        r#"{% call cache("n", 0, 1) %}{{ rendered() }}x{% endcall %}"#,
    )
    .unwrap();
    env
}

#[test]
fn a_hit_does_not_render_the_block() {
    let renders = Arc::new(AtomicUsize::new(0));
    hits_do_not_render(&env(renders.clone()), &renders);
}

#[test]
fn a_hit_does_not_render_the_block_on_redis_and_on_a_cluster() {
    let server = tg_cache::testing::RedisServer::start();
    let cluster = tg_cache::testing::RedisCluster::start();
    for config in [
        CacheConfig::redis(&server.url()),
        CacheConfig::redis_cluster(cluster.urls()),
    ] {
        let renders = Arc::new(AtomicUsize::new(0));
        hits_do_not_render(&env_on(config, renders.clone()), &renders);
    }
}

/// Renders one character's block once, then hits; another's renders its
/// own.
fn hits_do_not_render(env: &minijinja::Environment<'static>, renders: &AtomicUsize) {
    let t = env.get_template("detail.html").unwrap();
    let ada =
        minijinja::context! { character => minijinja::context! { id => 5, name => "Ada <3" } };
    let first = t.render(&ada).unwrap();
    assert_eq!(first, "<p><div>Ada &lt;3</div></p>");
    let second = t.render(&ada).unwrap();
    assert_eq!(
        second, first,
        "the fragment is inserted as is, not escaped twice"
    );
    assert_eq!(renders.load(SeqCst), 1);
    // another character renders its own block
    let bea = minijinja::context! { character => minijinja::context! { id => 6, name => "Bea" } };
    assert_eq!(t.render(&bea).unwrap(), "<p><div>Bea</div></p>");
    assert_eq!(renders.load(SeqCst), 2);
}

#[test]
fn vary_on_values_keep_their_types_apart() {
    let renders = Arc::new(AtomicUsize::new(0));
    let env = env(renders.clone());
    let t = env.get_template("vary").unwrap();
    let values = [
        minijinja::Value::from(1),
        minijinja::Value::from("1"),
        minijinja::Value::from("a:b"),
        minijinja::Value::from("a"),
        minijinja::Value::from(true),
        minijinja::Value::from(()),
    ];
    for v in &values {
        let out = t.render(minijinja::context! { value => v }).unwrap();
        assert_eq!(out, format!("[{v}]"));
    }
    assert_eq!(
        renders.load(SeqCst),
        values.len(),
        "no two values shared an entry"
    );
    for v in &values {
        t.render(minijinja::context! { value => v }).unwrap();
    }
    assert_eq!(renders.load(SeqCst), values.len(), "each is cached");
}

#[test]
fn zero_timeout_does_not_cache() {
    let renders = Arc::new(AtomicUsize::new(0));
    let env = env(renders.clone());
    let t = env.get_template("nocache").unwrap();
    t.render(()).unwrap();
    t.render(()).unwrap();
    assert_eq!(renders.load(SeqCst), 2);
}

#[test]
fn fragment_keys_are_escaped() {
    assert_eq!(
        make_template_fragment_key("character_details", &[&5]),
        "tg:fragment:character_details:5"
    );
    assert_eq!(make_template_fragment_key("x", &[&"5"]), "tg:fragment:x:'5");
    assert_ne!(
        make_template_fragment_key("x", &[&"a:b"]),
        make_template_fragment_key("x", &[&"a", &"b"])
    );
}

#[test]
fn misuse_is_a_clear_template_error() {
    let mut env = minijinja::Environment::new();
    add_to_environment(&mut env, tg_cache::cache());
    env.add_template("bad", r#"{{ cache("x", 900) }}"#).unwrap();
    let err = env.get_template("bad").unwrap().render(()).unwrap_err();
    assert!(err.to_string().contains("{% call cache("), "{err}");
    env.add_template("bad2", r#"{% call cache("x", "soon") %}y{% endcall %}"#)
        .unwrap();
    let err = env.get_template("bad2").unwrap().render(()).unwrap_err();
    assert!(err.to_string().contains("whole seconds"), "{err}");
}

#[test]
fn an_undefined_vary_argument_is_an_error_not_a_shared_key() {
    let renders = Arc::new(AtomicUsize::new(0));
    let mut env = env(renders.clone());
    env.add_template(
        "typo",
        r#"{% call cache("character_details", 900, "x", character.idd) %}{{ rendered() }}{{ character.name }}{% endcall %}"#,
    )
    .unwrap();
    env.add_template(
        "typo_in_list",
        r#"{% call cache("list", 900, [character.id, character.idd]) %}{{ rendered() }}{% endcall %}"#,
    )
    .unwrap();
    let t = env.get_template("typo").unwrap();
    for (id, name) in [(5, "Ada"), (6, "Bea")] {
        let ctx =
            minijinja::context! { character => minijinja::context! { id => id, name => name } };
        let err = t.render(&ctx).unwrap_err();
        assert_eq!(err.kind(), minijinja::ErrorKind::UndefinedError);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("\"character_details\"") && msg.contains("argument 2"),
            "{msg}"
        );
        let err = env
            .get_template("typo_in_list")
            .unwrap()
            .render(&ctx)
            .unwrap_err();
        assert!(format!("{err:#}").contains("\"list\""), "{err:#}");
    }
    assert_eq!(renders.load(SeqCst), 0, "no block was rendered or cached");
    // an explicit `none` is a value, and cached as one
    let t = env
        .template_from_str(r#"{% call cache("n", 900, none) %}{{ rendered() }}x{% endcall %}"#)
        .unwrap();
    t.render(()).unwrap();
    t.render(()).unwrap();
    assert_eq!(renders.load(SeqCst), 1);
}

#[test]
fn maps_and_wide_integers_never_share_a_fragment_with_other_values() {
    let renders = Arc::new(AtomicUsize::new(0));
    let env = env(renders.clone());
    let t = env.get_template("vary").unwrap();
    let map = minijinja::Value::from_serialize(std::collections::BTreeMap::from([("a", 1)]));
    let values = [
        map.clone(),
        // what the map renders as, and with the old `~` marker
        minijinja::Value::from(map.to_string()),
        minijinja::Value::from(format!("~{map}")),
        minijinja::Value::from(format!("!{map}")),
        // integers beyond i64 stay exact and distinct
        minijinja::Value::from(u64::MAX),
        minijinja::Value::from(u64::MAX - 1),
        minijinja::Value::from(i128::MAX),
        minijinja::Value::from(i128::MAX - 1),
    ];
    for v in &values {
        t.render(minijinja::context! { value => v }).unwrap();
    }
    assert_eq!(
        renders.load(SeqCst),
        values.len(),
        "every value renders its own fragment"
    );
    for v in &values {
        t.render(minijinja::context! { value => v }).unwrap();
    }
    assert_eq!(
        renders.load(SeqCst),
        values.len(),
        "and hits it the second time"
    );
}
