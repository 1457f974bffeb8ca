//! A real Redis Cluster for tests: six `redis-server --cluster-enabled yes`
//! processes on free loopback ports (each port's cluster bus port, port +
//! 10000, free too), joined by `redis-cli --cluster create ...
//! --cluster-replicas 1`: three primaries, each with one replica.
//!
//! ```no_run
//! let cluster = tg_cache_runtime::testing::RedisCluster::start();
//! assert_eq!(cluster.primaries().len(), 3);
//! let nodes: Vec<String> = cluster.urls();
//! ```

use super::{RedisServer, free_port};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may be unreachable before the cluster fails it over
/// (`cluster-node-timeout`): short, so that failover tests are quick, but
/// long enough that a node starved on a loaded 2-core machine is not
/// failed over by mistake.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(5000);

/// Six `redis-server` processes joined into one cluster (3 primaries, 3
/// replicas), stopped by pid when dropped. A node restarted with
/// [`RedisServer::restart`] keeps its `nodes.conf`, so it rejoins with its
/// old id (as a replica, after a failover). A node frozen with
/// [`RedisServer::pause`] still counts as running for
/// [`RedisCluster::wait_until_ok`].
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The password every node requires, if any.
    password: Option<String>,
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id.
    pub id: String,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a primary (else a replica).
    pub primary: bool,
    /// For a replica, the id of its primary.
    pub replica_of: Option<String>,
    /// Whether the cluster considers it failed (`fail` or `fail?`).
    pub failed: bool,
    /// The slot ranges it serves (primaries only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// `redis-cli` comes with Debian's `redis-tools` (a dependency of
/// `redis-server`).
const CLI_HINT: &str = "redis-cli was not found on PATH. Install it (Debian/Ubuntu: `apt-get install -y redis-tools`), or run the README's test command, which installs it.";

/// A free port whose cluster bus port (port + 10000) is free as well.
fn free_cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port > 55535 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port with a free bus port (port + 10000) in 1000 tries");
}

impl RedisCluster {
    /// Starts six nodes, joins them, and waits until every node reports
    /// `cluster_state:ok` and knows all six.
    ///
    /// # Panics
    /// If `redis-server` or `redis-cli` is missing (with instructions), or
    /// if the cluster is not ready within 30 s (with the nodes' logs).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`RedisCluster::start`], every node requiring `password`
    /// (`--requirepass`, and `--masterauth` for its replica): its
    /// [`RedisCluster::urls`] carry it.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> Self {
        let timeout = NODE_TIMEOUT.as_millis().to_string();
        let mut nodes: Vec<RedisServer> = Vec::with_capacity(6);
        let mut attempts = 0;
        while nodes.len() < 6 {
            attempts += 1;
            assert!(
                attempts <= 30,
                "redis-server --cluster-enabled did not start after 30 attempts (is it built with cluster support?)"
            );
            let taken: Vec<u16> = nodes.iter().map(RedisServer::port).collect();
            let port = free_cluster_port(&taken);
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
            ];
            if let Some(pw) = password {
                args.extend(["--requirepass", pw, "--masterauth", pw]);
            }
            if let Some(s) = RedisServer::try_start(port, false, &args) {
                nodes.push(s);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut cli = Command::new("redis-cli");
        if let Some(pw) = password {
            // Through the environment: never on a command line.
            cli.env("REDISCLI_AUTH", pw);
        }
        let out = match cli
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{CLI_HINT}"),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            nodes,
            password: password.map(str::to_owned),
        };
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and knows
    /// every node, all 16384 slots are served by primaries that are not
    /// failed, and every other live node is a replica in sync with its
    /// primary.
    ///
    /// # Panics
    /// If that does not happen within `limit` (with the nodes' views).
    pub fn wait_until_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let running: Vec<&RedisServer> =
                self.nodes.iter().filter(|n| n.pid().is_some()).collect();
            let ok = running.iter().all(|n| {
                let info = n
                    .try_cmd::<String>(&["CLUSTER", "INFO"])
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
            }) && {
                let view = self.nodes();
                let served: u32 = view
                    .iter()
                    .filter(|n| n.primary && !n.failed)
                    .flat_map(|n| &n.slots)
                    .map(|(a, b)| u32::from(b - a) + 1)
                    .sum();
                // Every live node is a primary serving slots or a replica
                // in sync with its primary.
                let settled = view.iter().filter(|n| !n.failed).all(|n| {
                    if n.primary {
                        return !n.slots.is_empty();
                    }
                    n.replica_of.is_some()
                        && self.nodes.iter().any(|s| {
                            s.port() == n.port
                                && s.try_cmd::<String>(&["INFO", "replication"])
                                    .is_ok_and(|i| i.contains("master_link_status:up"))
                        })
                });
                served == 16384 && settled
            };
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let views: Vec<String> = running
                    .iter()
                    .map(|n| {
                        format!(
                            "--- node {} ---\n{}\n{}",
                            n.port(),
                            n.try_cmd::<String>(&["CLUSTER", "INFO"])
                                .unwrap_or_default(),
                            n.try_cmd::<String>(&["CLUSTER", "NODES"])
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                panic!(
                    "the Redis Cluster was not ready within {limit:?}:\n{}",
                    views.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The cluster as a running node sees it (`CLUSTER NODES`).
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let text = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .find_map(|n| n.try_cmd::<String>(&["CLUSTER", "NODES"]).ok())
            .expect("no running cluster node answers");
        parse_nodes(&text)
    }

    /// The primaries that are not failed, sorted by port.
    pub fn primaries(&self) -> Vec<ClusterNode> {
        let mut p: Vec<ClusterNode> = self
            .nodes()
            .into_iter()
            .filter(|n| n.primary && !n.failed)
            .collect();
        p.sort_by_key(|n| n.port);
        p
    }

    /// Starts a cluster ([`RedisCluster::start`]) and makes it the
    /// process-wide default cache ([`crate::configure`]), configured by
    /// `config` from [`crate::CacheConfig::redis_cluster`] of its nodes: the
    /// setup of a test binary whose suites run on a cluster.
    ///
    /// # Panics
    /// As [`RedisCluster::start`], or if the configuration is refused.
    pub fn start_as_default(config: impl FnOnce(crate::CacheConfig) -> crate::CacheConfig) -> Self {
        let cluster = Self::start();
        crate::configure(crate::Caches::new(config(
            crate::CacheConfig::redis_cluster(cluster.urls()),
        )))
        .expect("the cluster's configuration");
        cluster
    }

    /// Waits until `done` holds for the cluster, at most `limit`.
    ///
    /// # Panics
    /// After `limit`, with `what` and the cluster's view.
    pub fn wait_until(&self, limit: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; nodes: {:?}",
                self.nodes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node process listening on `port`.
    ///
    /// # Panics
    /// If no node of this cluster has that port.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// [`RedisCluster::server`], to kill or freeze it.
    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// Every node's `redis://127.0.0.1:<port>` URL (seeds for a cluster
    /// client), `redis://:<password>@...` when the nodes require one.
    pub fn urls(&self) -> Vec<String> {
        let auth = self
            .password
            .as_ref()
            .map_or_else(String::new, |pw| format!(":{pw}@"));
        self.nodes
            .iter()
            .map(|n| format!("redis://{auth}127.0.0.1:{}", n.port()))
            .collect()
    }

    /// The primary that serves `slot`.
    pub fn primary_of_slot(&self, slot: u16) -> Option<ClusterNode> {
        self.primaries()
            .into_iter()
            .find(|n| n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <primary> <ping>
/// <pong> <epoch> <link> <slot> ...`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                // `[slot->-id]` entries are migrations in progress.
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let one = s.parse().ok()?;
                        Some((one, one))
                    }
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                replica_of: (f[3] != "-").then(|| f[3].to_owned()),
                failed: flags.iter().any(|f| f.starts_with("fail")),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922 [10923->-292f]
292f 127.0.0.1:30003@40003 myself,master - 0 0 3 connected 10923-16383 17
9fd8 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238315000 5 disconnected
";
        let n = parse_nodes(text);
        assert_eq!(n.len(), 4);
        assert!(!n[0].primary && n[0].port == 30004 && n[0].slots.is_empty());
        assert_eq!(n[0].replica_of.as_deref(), Some("e7d1"));
        assert_eq!(n[1].replica_of, None);
        assert_eq!(n[1].slots, vec![(5461, 10922)]);
        assert_eq!(n[2].slots, vec![(10923, 16383), (17, 17)]);
        assert!(n[3].primary && n[3].failed);
    }
}
