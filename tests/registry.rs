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

/// As Django refuses to start on a bad setting: the first use of the
/// default cache stops the program with the message naming the variable
/// (and never a password).
#[test]
fn a_bad_env_stops_the_program_at_first_use_with_the_message() {
    for (env, message) in [
        (
            &[("TG_CACHE_BACKEND", "memcached")][..],
            "TG_CACHE_BACKEND=memcached: unknown backend; expected one of local, redis, redis-cluster, dummy",
        ),
        (
            &[("TG_CACHE_MAX_ENTRIES", "-1")],
            "TG_CACHE_MAX_ENTRIES=-1: must not be negative",
        ),
        (
            &[("TG_CACHE_KEY_PREFIX", "my:app")],
            "TG_CACHE_KEY_PREFIX=my:app: must not contain `:`",
        ),
        (
            &[
                ("TG_CACHE_BACKEND", "redis"),
                ("REDIS_URL", "redis://:s3cret@127.0.0.1:639O/0"),
            ],
            "REDIS_URL=redis://:***@127.0.0.1:639O/0: the port `639O` is not a number",
        ),
        (
            &[
                ("TG_CACHE_BACKEND", "redis"),
                ("REDIS_URL", "redis://:s3/cr#et@127.0.0.1/0"),
            ],
            "REDIS_URL=redis://:***@127.0.0.1/0: the password (or user name) holds a raw",
        ),
    ] {
        let out = child("child_reports_default_backend", env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            out.status.code(),
            Some(tg_cache::EX_CONFIG),
            "{env:?}: the program went on:\n{stdout}"
        );
        assert!(
            !stdout.contains("computed="),
            "{env:?}: cached code ran on a bad configuration: {stdout}"
        );
        assert!(
            stderr.contains(message) && stderr.contains("init_from_env"),
            "{env:?}:\n{stderr}"
        );
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("cr#et"),
            "password leaked: {stderr}"
        );
    }
}

#[test]
#[ignore = "runs only as a child process of the tests above"]
fn child_reports_default_backend() {
    if !in_child() {
        return;
    }
    // The first use is on another thread: a bad configuration must stop
    // the whole process, not just that thread.
    let first = std::thread::spawn(|| {
        let cache = tg_cache::cache();
        match cache.blocking().set("k", &1, MEDIUM) {
            Ok(()) => println!("backend={}", cache.backend()),
            Err(e) => println!("error={e}"),
        }
    });
    let _ = first.join();
    let v = tg_cache::cache().blocking().get_or_set("k", MEDIUM, || 42);
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

/// `init_from_env()` checks the server once: a wrong password or a
/// database index out of range stops startup with a message naming the
/// server (never the password); a server that does not answer is logged,
/// and the program goes on uncached; call-time errors name the server too.
#[test]
fn init_from_env_checks_the_server_and_says_what_is_wrong() {
    let server = tg_cache::testing::RedisServer::start_with_password("right-pw");
    let addr = format!("127.0.0.1:{}", server.port());
    let cases = [
        (format!("redis://:wrong-pw@{addr}/0"), "startup=error"),
        (format!("redis://:right-pw@{addr}/99"), "startup=error"),
        ("redis://127.0.0.1:1/0".to_owned(), "startup=ok"),
        (format!("redis://:right-pw@{addr}/3"), "startup=ok"),
    ];
    for (url, want) in cases {
        let out = child(
            "child_inits_from_env",
            &[("TG_CACHE_BACKEND", "redis"), ("REDIS_URL", &url)],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{url}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(want), "{url}: {stdout}");
        assert!(
            !stdout.contains("wrong-pw") && !stdout.contains("right-pw"),
            "password leaked: {stdout}"
        );
        let named = if url.contains(":1/") {
            "127.0.0.1:1"
        } else {
            addr.as_str()
        };
        if want == "startup=error" {
            assert!(
                stdout.contains(named),
                "the error does not name the server: {stdout}"
            );
        } else if url.contains(":1/") {
            // Unreachable: the calls fail open, and their errors name the server.
            assert!(stdout.contains("computed=42"), "{stdout}");
            assert!(
                stdout.contains(&format!("call_error=redis at {named}")),
                "{stdout}"
            );
        } else {
            assert!(
                stdout.contains("computed=42") && stdout.contains("call=ok"),
                "{stdout}"
            );
        }
    }
    let wrong = child(
        "child_inits_from_env",
        &[
            ("TG_CACHE_BACKEND", "redis"),
            ("REDIS_URL", &format!("redis://:wrong-pw@{addr}/0")),
        ],
    );
    let stdout = String::from_utf8_lossy(&wrong.stdout);
    assert!(
        stdout.to_lowercase().contains("pass"),
        "the error does not say the password is wrong: {stdout}"
    );
    let far = child(
        "child_inits_from_env",
        &[
            ("TG_CACHE_BACKEND", "redis"),
            ("REDIS_URL", &format!("redis://:right-pw@{addr}/99")),
        ],
    );
    let stdout = String::from_utf8_lossy(&far.stdout);
    assert!(
        stdout.contains("DB index"),
        "the error does not say the database is wrong: {stdout}"
    );
}

#[test]
#[ignore = "runs only as a child process of the tests above"]
fn child_inits_from_env() {
    if !in_child() {
        return;
    }
    match tg_cache::init_from_env() {
        Ok(()) => println!("startup=ok"),
        Err(e) => {
            println!("startup=error {e}");
            return;
        }
    }
    let cache = tg_cache::cache();
    match cache.blocking().set("k", &1, MEDIUM) {
        Ok(()) => println!("call=ok"),
        Err(e) => println!("call_error={e}"),
    }
    let v = cache.blocking().get_or_set("k2", MEDIUM, || 42);
    println!("computed={v}");
}
