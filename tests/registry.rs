//! The process-wide caches. Environment-driven cases run in child processes
//! (this same test binary), since the registry is set once per process.

use std::process::Command;
use tg_cache::timeout::MEDIUM;
use tg_cache::{Backend, CacheConfig, Caches, Error};

/// Re-runs this binary's test `name` with `env` set, and returns its output.
fn child(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--include-ignored"]);
    for var in ["TG_CACHE_BACKEND", "REDIS_URL", "TG_CACHE_MAX_ENTRIES"] {
        cmd.env_remove(var);
    }
    cmd.env("TG_CACHE_CHILD", "1");
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn in_child() -> bool {
    std::env::var_os("TG_CACHE_CHILD").is_some()
}

#[test]
fn zero_configuration_gives_the_local_store() {
    let out = child("child_reports_default_backend", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend=local"));
}

#[test]
fn env_selects_the_backend() {
    let out = child(
        "child_reports_default_backend",
        &[("TG_CACHE_BACKEND", "dummy")],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend=dummy"));
}

#[test]
fn bad_env_is_a_clear_error_not_a_panic() {
    let out = child(
        "child_reports_default_backend",
        &[("TG_CACHE_BACKEND", "memcached")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "error=TG_CACHE_BACKEND=memcached: unknown backend; expected one of local, redis, dummy"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("computed=42"),
        "cached code must still run: {stdout}"
    );

    let out = child(
        "child_reports_default_backend",
        &[("TG_CACHE_MAX_ENTRIES", "-1")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("error=TG_CACHE_MAX_ENTRIES=-1: must not be negative"),
        "{stdout}"
    );

    let out = child(
        "child_reports_default_backend",
        &[
            ("TG_CACHE_BACKEND", "redis"),
            ("REDIS_URL", "redis://:s3cret@host:port/x"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error=REDIS_URL="), "{stdout}");
    assert!(!stdout.contains("s3cret"), "password leaked: {stdout}");
}

#[test]
#[ignore = "runs only as a child process of the tests above"]
fn child_reports_default_backend() {
    if !in_child() {
        return;
    }
    let cache = tg_cache::cache();
    match tg_cache::cache().blocking().set("k", &1, MEDIUM) {
        Ok(()) => println!("backend={}", cache.backend()),
        Err(e) => println!("error={e}"),
    }
    let v = cache.blocking().get_or_set("k", MEDIUM, || 42);
    println!("computed={v}");
}

#[test]
fn configure_named_caches() {
    let out = child("child_configures", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "runs only as a child process of the tests above"]
fn child_configures() {
    if !in_child() {
        return;
    }
    tg_cache::configure(Caches::new(CacheConfig::local()).with("reference", CacheConfig::dummy()))
        .unwrap();
    assert!(matches!(
        tg_cache::configure(Caches::new(CacheConfig::local())),
        Err(Error::AlreadyConfigured)
    ));
    assert_eq!(
        tg_cache::caches("reference").unwrap().backend(),
        Backend::Dummy
    );
    assert_eq!(
        tg_cache::caches("default").unwrap().backend(),
        Backend::Local
    );
    let e = tg_cache::caches("sessions").unwrap_err();
    assert_eq!(
        e.to_string(),
        "no cache named `sessions` is configured (configured: default, reference)"
    );
    assert_eq!(tg_cache::all_caches().len(), 2);
    println!("ok");
}
