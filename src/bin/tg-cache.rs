//! `tg-cache`: look at and repair a tg-cache Redis from a shell (the seed's
//! "Debugging" section: `get_redis_connection`, `keys('*')`, pattern
//! deletes, `clear()`, `redis-cli FLUSHDB`).
//!
//! It reads the same `TG_CACHE_*` configuration as applications (so it sees
//! the same namespace and key function), or `--url`/`--nodes`.
//!
//! Exit codes: 0 done; 1 not found (a key, a family); 2 usage or
//! configuration errors (a bad URL, a bad pattern, a refused `clear`); 3
//! Redis unreachable or failing. Errors are one line on stderr; passwords
//! never appear.

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use tg_cache::{Cache, CacheConfig, Error, Ttl};

/// Look at and repair a tg-cache Redis.
#[derive(Parser)]
#[command(name = "tg-cache", version, about)]
struct Cli {
    /// The Redis server (`redis://[:password@]host[:port][/db]`), instead
    /// of TG_CACHE_REDIS_URL / REDIS_URL.
    #[arg(long, global = true, conflicts_with = "nodes")]
    url: Option<String>,
    /// A Redis Cluster's seed nodes, comma-separated, instead of
    /// TG_CACHE_REDIS_NODES.
    #[arg(long, global = true)]
    nodes: Option<String>,
    /// Machine-readable output (one JSON document).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Health, round trip, server memory, keys per family, near cache.
    Status,
    /// The keys a pattern matches (`SCAN`, never `KEYS`), as the
    /// application names them.
    Keys {
        /// A glob under the cache's namespace: `tg:queryset:Character:*`.
        pattern: String,
        /// Only how many.
        #[arg(long)]
        count: bool,
        /// tg-cache's own keys too (family epochs, refresh sidecars).
        #[arg(long)]
        internal: bool,
    },
    /// A key's value, decoded (and decompressed), if it is live.
    Get { key: String },
    /// A key's remaining lifetime.
    Ttl { key: String },
    /// Deletes a key (and defeats a fill of it in progress).
    Delete { key: String },
    /// Invalidates a key family (`tg:fn:char_scenes`) in every process.
    Invalidate { family: String },
    /// Removes every key of the cache's namespace (every key of the
    /// database for a cache without one).
    Clear {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// `FLUSHDB`: removes every key of the Redis database, tg-cache's and
    /// every other application's.
    FlushDb {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// `println!` that ends the program quietly when stdout is closed early
/// (`tg-cache keys '*' | head -1`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("tg-cache: cannot write the output: {e}");
            std::process::exit(3);
        }
    }};
}

/// A failure, with its exit code.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Config(_) | Error::InvalidKey { .. } => 2,
            _ => 3,
        };
        Failure(code, e.to_string())
    }
}

fn config(cli: &Cli) -> Result<CacheConfig, Failure> {
    let overrides: BTreeMap<&str, String> = match (&cli.url, &cli.nodes) {
        (Some(url), _) => [
            ("TG_CACHE_BACKEND", "redis".to_owned()),
            ("TG_CACHE_REDIS_URL", url.clone()),
        ]
        .into(),
        (None, Some(nodes)) => [
            ("TG_CACHE_BACKEND", "redis-cluster".to_owned()),
            ("TG_CACHE_REDIS_NODES", nodes.clone()),
        ]
        .into(),
        (None, None) => BTreeMap::new(),
    };
    let cfg = CacheConfig::from_lookup(|name| {
        overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })
    .map_err(|e| Failure(2, e.to_string()))?;
    if cfg.redis_url().is_none() {
        return Err(Failure(
            2,
            format!(
                "the configured cache ({}) has no Redis: pass --url redis://host:6379/0 or --nodes, or set TG_CACHE_BACKEND=redis and REDIS_URL",
                cfg.backend()
            ),
        ));
    }
    Ok(cfg)
}

/// How long a raw command of the tool (outside the cache's own deadlines)
/// may take.
const RAW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// A raw redis-rs call, bounded by [`RAW_DEADLINE`].
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(RAW_DEADLINE, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure(3, format!("{what}: {e}"))),
        Err(_) => Err(Failure(
            3,
            format!("{what}: no answer within {RAW_DEADLINE:?}"),
        )),
    }
}

/// Asks before a destructive command, on a terminal; refuses otherwise.
fn confirm(what: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure(
            2,
            format!("refusing to {what} without --yes (stdin is not a terminal)"),
        ));
    }
    eprint!("{what}? Type `yes` to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure(2, "not confirmed; nothing removed".to_owned()))
    }
}

/// Prints `text`, or `value` with `--json`.
fn out(cli: &Cli, text: impl std::fmt::Display, value: Value) {
    if cli.json {
        say!("{value}");
    } else {
        say!("{text}");
    }
}

async fn run(cli: &Cli) -> Result<u8, Failure> {
    let cfg = config(cli)?;
    let cache = cfg.build()?;
    match &cli.command {
        Command::Status => status(cli, &cfg, &cache).await,
        Command::Keys {
            pattern,
            count,
            internal,
        } => keys(cli, &cache, pattern, *count, *internal).await,
        Command::Get { key } => get(cli, &cache, key).await,
        Command::Ttl { key } => {
            let (text, value, code) = match cache.ttl(key).await? {
                Some(Ttl::Forever) => (
                    "never expires".to_owned(),
                    json!({"key": key, "ttl": null}),
                    0,
                ),
                Some(Ttl::Remaining(d)) => (
                    format!("{:.3} s", d.as_secs_f64()),
                    json!({"key": key, "ttl_ms": d.as_millis() as u64}),
                    0,
                ),
                None => (
                    "not found".to_owned(),
                    json!({"key": key, "found": false}),
                    1,
                ),
            };
            out(cli, text, value);
            Ok(code)
        }
        Command::Delete { key } => {
            let deleted = cache.delete(key).await?;
            out(
                cli,
                if deleted { "deleted" } else { "not found" },
                json!({"key": key, "deleted": deleted}),
            );
            Ok(if deleted { 0 } else { 1 })
        }
        Command::Invalidate { family } => {
            let stored = cache.count_keys(format!("{family}:*")).await? > 0
                || cache.has_key(family).await.unwrap_or(false);
            if !stored {
                // Checked first, so that a typo is not a silent success.
                if tg_cache::key::family_of(family) != Some(family.as_str()) {
                    return Err(Failure(
                        2,
                        format!(
                            "`{family}` is not a key family: tg:<kind>:<name>, e.g. tg:fn:char_scenes"
                        ),
                    ));
                }
                out(
                    cli,
                    format!(
                        "unknown family `{family}`: no key of it is stored; nothing invalidated"
                    ),
                    json!({"family": family, "invalidated": false}),
                );
                return Ok(1);
            }
            cache.invalidate_family(family).await?;
            out(
                cli,
                format!("invalidated {family} in every process"),
                json!({"family": family, "invalidated": true}),
            );
            Ok(0)
        }
        Command::Clear { yes } => {
            let scope = match cache.make_key("k")?.strip_suffix(":k") {
                Some(ns) => format!("every key under `{ns}:`"),
                None => "every key of the database".to_owned(),
            };
            if !yes {
                confirm(&format!("remove {scope}"))?;
            }
            cache.clear().await?;
            out(cli, format!("removed {scope}"), json!({"cleared": true}));
            Ok(0)
        }
        Command::FlushDb { yes } => {
            if !yes {
                confirm(
                    "FLUSHDB: remove every key of this Redis database, tg-cache's and every other application's",
                )?;
            }
            cache.flush_database().await?;
            out(
                cli,
                "flushed: every key of the database was removed",
                json!({"flushed": true}),
            );
            Ok(0)
        }
    }
}

async fn keys(
    cli: &Cli,
    cache: &Cache,
    pattern: &str,
    count: bool,
    internal: bool,
) -> Result<u8, Failure> {
    let mut stream = if internal {
        cache.iter_keys_including_internal(pattern).boxed()
    } else {
        cache.iter_keys(pattern).boxed()
    };
    let progress = std::io::stderr().is_terminal();
    let (mut n, mut listed) = (0u64, Vec::new());
    while let Some(k) = stream.next().await {
        let k = k?;
        n += 1;
        if progress && n % 10_000 == 0 {
            eprint!("\rscanned {n} keys...");
        }
        if !count {
            if cli.json {
                listed.push(k);
            } else {
                say!("{k}");
            }
        }
    }
    if progress && n >= 10_000 {
        eprintln!();
    }
    if count {
        out(cli, n, json!({"pattern": pattern, "count": n}));
    } else if cli.json {
        say!("{}", json!({"pattern": pattern, "keys": listed}));
    }
    Ok(0)
}

async fn get(cli: &Cli, cache: &Cache, key: &str) -> Result<u8, Failure> {
    if let Some(v) = cache.get::<Value>(key).await? {
        let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
        out(
            cli,
            pretty,
            json!({"key": key, "state": "live", "value": v}),
        );
        return Ok(0);
    }
    // Not live: is something stored there at all?
    let stored = cache.make_key(key)?.into_owned();
    let mut con = cache.redis_connection().await?;
    let exists: i64 = bounded(
        &format!("EXISTS {stored}"),
        redis::cmd("EXISTS").arg(&stored).query_async(&mut con),
    )
    .await?;
    let (state, text) = if exists == 1 {
        (
            "outdated",
            "outdated: the key holds no live value (its family was invalidated, a fill is in progress, or the bytes are not tg-cache's JSON)",
        )
    } else {
        ("missing", "not found")
    };
    out(cli, text, json!({"key": key, "state": state}));
    Ok(1)
}

async fn status(cli: &Cli, cfg: &CacheConfig, cache: &Cache) -> Result<u8, Failure> {
    let round_trip = cache.health().await?;
    let mut con = cache.redis_connection().await?;
    // One server's INFO, or on a cluster every primary's (a map by node).
    let info: redis::Value = bounded(
        "INFO memory",
        redis::cmd("INFO").arg("memory").query_async(&mut con),
    )
    .await?;
    let texts: Vec<String> = match info {
        redis::Value::Map(nodes) => nodes
            .into_iter()
            .filter_map(|(_, v)| redis::from_redis_value::<String>(v).ok())
            .collect(),
        v => redis::from_redis_value::<String>(v).into_iter().collect(),
    };
    let used: u64 = texts
        .iter()
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum();
    let memory = format!(
        "{:.2} MiB{}",
        used as f64 / (1u64 << 20) as f64,
        if texts.len() > 1 {
            format!(" over {} primaries", texts.len())
        } else {
            String::new()
        }
    );
    let mut families: BTreeMap<String, u64> = BTreeMap::new();
    let mut stream = cache.iter_keys("*").boxed();
    let mut total = 0u64;
    while let Some(k) = stream.next().await {
        let k = k?;
        total += 1;
        let family = tg_cache::key::family_of(&k).unwrap_or("other").to_owned();
        *families.entry(family).or_default() += 1;
    }
    let url = cfg.redis_url().map(ToString::to_string).unwrap_or_default();
    let near = cfg.near_cache_entries();
    if cli.json {
        say!(
            "{}",
            json!({
                "backend": cfg.backend().to_string(),
                "url": url,
                "healthy": true,
                "round_trip_ms": round_trip.as_secs_f64() * 1e3,
                "used_memory": memory,
                "keys": total,
                "families": families,
                "near_cache_entries": near,
                "key_function": format!("{:?}", cfg.key_function_kind()),
            })
        );
        return Ok(0);
    }
    say!("backend      {} ({url})", cfg.backend());
    say!(
        "health       ok, round trip {:.2} ms",
        round_trip.as_secs_f64() * 1e3
    );
    say!("memory       {memory}");
    say!(
        "key function {:?}; near cache {}",
        cfg.key_function_kind(),
        near.map_or("off".to_owned(), |n| format!(
            "{n} entries per process (TG_CACHE_NEAR_CACHE)"
        ))
    );
    say!("keys         {total}");
    for (family, n) in &families {
        say!("  {n:>10}  {family}");
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tg-cache: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, message)) => {
            eprintln!("tg-cache: {message}");
            ExitCode::from(code)
        }
    }
}
