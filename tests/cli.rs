//! The `tg-cache` command-line tool, run as a process against real
//! redis-servers (one node, a password-protected one, none at all) and the
//! test cluster: every subcommand, `--json`, the exit codes, and errors
//! that are one line and never show a password.
#![cfg(feature = "cli")]

use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tg_cache::testing::{RedisCluster, RedisServer};
use tg_cache::{CacheConfig, timeout::MEDIUM};

/// Runs the tool with `args` (and `env`), stdin closed.
fn tool<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-cache"));
    cmd.args(args).stdin(Stdio::null());
    for var in [
        "TG_CACHE_BACKEND",
        "TG_CACHE_REDIS_URL",
        "REDIS_URL",
        "TG_CACHE_REDIS_NODES",
        "TG_CACHE_KEY_FUNCTION",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the tg-cache binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

/// A one-line error, no panic, no backtrace.
fn one_line_error(o: &Output) -> String {
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.starts_with("tg-cache: ") && !e.contains("panicked") && !e.contains("backtrace"),
        "{e}"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_on_one_server() {
    let server = RedisServer::start();
    let url = server.url();
    let cache = CacheConfig::redis(&url)
        .compress_min_bytes(Some(64))
        .build()
        .unwrap();
    for id in 1..=3 {
        cache
            .set(
                &format!("tg:queryset:Character:id={id}"),
                &serde_json::json!({"id": id, "name": "Ada"}),
                MEDIUM,
            )
            .await
            .unwrap();
    }
    cache
        .set(
            "tg:fn:char_scenes:character_id=1",
            &vec!["x".repeat(500)],
            MEDIUM,
        )
        .await
        .unwrap();
    cache.set("plain", &7u64, MEDIUM).await.unwrap();
    let with = |rest: &[&'static str]| -> Vec<String> {
        let mut args = vec!["--url".to_owned(), url.clone()];
        args.extend(rest.iter().map(|a| (*a).to_owned()));
        args
    };

    // keys, --count, --json
    let o = tool(&with(&["keys", "tg:queryset:*"]), &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut listed: Vec<&str> = stdout(&o).leak().lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "tg:queryset:Character:id=1",
            "tg:queryset:Character:id=2",
            "tg:queryset:Character:id=3"
        ]
    );
    let o = tool(&with(&["keys", "*", "--count"]), &[]);
    assert_eq!(stdout(&o).trim(), "5", "no internal key counted");
    let o = tool(&with(&["keys", "*", "--count", "--internal"]), &[]);
    assert!(
        stdout(&o).trim().parse::<u64>().unwrap() > 5,
        "epochs listed when asked"
    );
    let o = tool(&with(&["--json", "keys", "tg:fn:*"]), &[]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["keys"],
        serde_json::json!(["tg:fn:char_scenes:character_id=1"])
    );

    // get: decoded, decompressed, live; missing; --json
    let o = tool(&with(&["get", "tg:queryset:Character:id=2"]), &[]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, serde_json::json!({"id": 2, "name": "Ada"}));
    assert!(stdout(&o).contains("\n  \"id\""), "pretty: {}", stdout(&o));
    let o = tool(
        &with(&["--json", "get", "tg:fn:char_scenes:character_id=1"]),
        &[],
    );
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["state"], "live");
    assert_eq!(v["value"][0].as_str().unwrap().len(), 500, "decompressed");
    let o = tool(&with(&["get", "nope"]), &[]);
    assert_eq!((code(&o), stdout(&o).trim()), (1, "not found"));

    // ttl
    let o = tool(&with(&["ttl", "plain"]), &[]);
    assert_eq!(code(&o), 0);
    let secs: f64 = stdout(&o).trim().trim_end_matches(" s").parse().unwrap();
    assert!((290.0..=300.0).contains(&secs), "{secs}");
    assert_eq!(code(&tool(&with(&["ttl", "nope"]), &[])), 1);

    // invalidate: then `get` says outdated; an unknown family; not a family
    let o = tool(&with(&["invalidate", "tg:queryset:Character"]), &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        cache
            .get::<Value>("tg:queryset:Character:id=1")
            .await
            .unwrap(),
        None
    );
    let o = tool(&with(&["--json", "get", "tg:queryset:Character:id=1"]), &[]);
    assert_eq!(code(&o), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()["state"],
        "outdated"
    );
    let o = tool(&with(&["invalidate", "tg:fn:no_such_thing"]), &[]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("unknown family"), "{}", stdout(&o));
    let o = tool(&with(&["invalidate", "char_scenes"]), &[]);
    assert_eq!(code(&o), 2);
    one_line_error(&o);

    // delete
    assert_eq!(code(&tool(&with(&["delete", "plain"]), &[])), 0);
    assert_eq!(cache.get::<u64>("plain").await.unwrap(), None);
    assert_eq!(code(&tool(&with(&["delete", "plain"]), &[])), 1);

    // status
    let o = tool(&with(&["--json", "status"]), &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["families"]["tg:fn:char_scenes"], 1);
    assert!(v["round_trip_ms"].as_f64().unwrap() > 0.0);
    let o = tool(&with(&["status"]), &[]);
    assert!(stdout(&o).contains("health       ok"), "{}", stdout(&o));

    // clear asks; --yes clears; flush-db
    let o = tool(&with(&["clear"]), &[]);
    assert_eq!(code(&o), 2);
    assert!(one_line_error(&o).contains("--yes"));
    assert!(server.cmd::<i64>(&["DBSIZE"]) > 0, "nothing removed");
    assert_eq!(code(&tool(&with(&["clear", "--yes"]), &[])), 0);
    assert_eq!(tool(&with(&["keys", "*", "--count"]), &[]).stdout, b"0\n");
    let () = server.cmd(&["SET", "foreign", "1"]);
    let o = tool(&with(&["flush-db"]), &[]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("every other application"),
        "{}",
        stderr(&o)
    );
    assert_eq!(code(&tool(&with(&["flush-db", "--yes"]), &[])), 0);
    assert_eq!(server.cmd::<i64>(&["DBSIZE"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_closed_early_ends_it_quietly() {
    // `tg-cache keys '*' | head -1`: more than a pipe's buffer of keys.
    let server = RedisServer::start();
    let cache = CacheConfig::redis(&server.url()).build().unwrap();
    let items: Vec<(String, u64)> = (0..5000)
        .map(|i| (format!("tg:fn:many:id={i:08}"), i))
        .collect();
    cache.set_many(&items, MEDIUM).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tg-cache"))
        .args(["--url", &server.url(), "keys", "*"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn a_stalled_server_never_hangs_it() {
    let server = RedisServer::start();
    server.pause();
    for args in [
        &["status"][..],
        &["get", "k"],
        &["keys", "*", "--count"],
        &["delete", "k"],
    ] {
        let start = Instant::now();
        let mut all = vec!["--url", server.url().leak() as &str];
        all.extend_from_slice(args);
        let o = tool(&all, &[]);
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{args:?}: {:?}",
            start.elapsed()
        );
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        one_line_error(&o);
    }
    server.resume();
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    assert_eq!(code(&tool(&["bogus"], &[])), 2);
    assert_eq!(code(&tool::<&str>(&[], &[])), 2);
    let o = tool(&["--url", "nope", "status"], &[]);
    assert_eq!(code(&o), 2);
    one_line_error(&o);
    let o = tool(&["status"], &[]);
    assert_eq!(code(&o), 2, "no Redis configured");
    assert!(one_line_error(&o).contains("--url"));
    let o = tool(&["status"], &[("TG_CACHE_BACKEND", "memcached")]);
    assert_eq!(code(&o), 2);
    assert!(one_line_error(&o).contains("TG_CACHE_BACKEND"));
}

#[test]
fn a_wrong_password_and_an_unreachable_server_are_one_line_and_bounded() {
    let server = RedisServer::start_with_password("right-pw-123");
    let url = format!("redis://:wrong-pw-456@127.0.0.1:{}/0", server.port());
    let o = tool(&["--url", &url, "status"], &[]);
    assert_eq!(code(&o), 3);
    let e = one_line_error(&o);
    assert!(
        !e.contains("wrong-pw-456") && !e.contains("right-pw-123"),
        "{e}"
    );
    // The right one, from the environment.
    let o = tool(
        &["keys", "*", "--count"],
        &[("TG_CACHE_BACKEND", "redis"), ("REDIS_URL", &server.url())],
    );
    assert_eq!((code(&o), stdout(&o).trim()), (0, "0"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("right-pw-123") && !stderr(&o).contains("right-pw-123"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let o = tool(
        &[
            "--url",
            &format!("redis://:pw@127.0.0.1:{port}/0"),
            "status",
        ],
        &[],
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(code(&o), 3);
    let e = one_line_error(&o);
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && !e.contains(":pw@"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_shared_with_django_and_a_cluster() {
    // Django's key function from the environment: keys as the app names them.
    let server = RedisServer::start();
    let env = [
        ("TG_CACHE_BACKEND", "redis"),
        ("REDIS_URL", server.url().leak() as &str),
        ("TG_CACHE_KEY_FUNCTION", "django"),
    ];
    let cache = CacheConfig::redis(&server.url())
        .key_function(tg_cache::KeyFunction::Django)
        .build()
        .unwrap();
    cache
        .set("tg:view:home:page=1", &1u64, MEDIUM)
        .await
        .unwrap();
    let o = tool(&["keys", "tg:view:*"], &env);
    assert_eq!(stdout(&o).trim(), "tg:view:home:page=1", "{}", stderr(&o));
    assert_eq!(server.cmd::<i64>(&["EXISTS", ":1:tg:view:home:page=1"]), 1);
    let o = tool(&["clear"], &env);
    assert!(stderr(&o).contains("`:1:`"), "{}", stderr(&o));

    let cluster = RedisCluster::start();
    let nodes = cluster.urls().join(",");
    let cache = CacheConfig::redis_cluster(cluster.urls()).build().unwrap();
    let items: Vec<(String, u64)> = (0..300).map(|i| (format!("tg:fn:cl:id={i}"), i)).collect();
    cache.set_many(&items, MEDIUM).await.unwrap();
    let o = tool(&["--nodes", &nodes, "keys", "tg:fn:cl:*", "--count"], &[]);
    assert_eq!(
        stdout(&o).trim(),
        "300",
        "every primary scanned: {}",
        stderr(&o)
    );
    let o = tool(&["--nodes", &nodes, "get", "tg:fn:cl:id=42"], &[]);
    assert_eq!((code(&o), stdout(&o).trim()), (0, "42"));
    let o = tool(&["--nodes", &nodes, "--json", "status"], &[]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "redis-cluster");
    let memory = v["used_memory"].as_str().unwrap();
    assert!(memory.ends_with("over 3 primaries"), "{memory}");
    assert_eq!(v["families"]["tg:fn:cl"], 300);
    assert_eq!(
        code(&tool(&["--nodes", &nodes, "invalidate", "tg:fn:cl"], &[])),
        0
    );
    assert_eq!(cache.get::<u64>("tg:fn:cl:id=42").await.unwrap(), None);
}
