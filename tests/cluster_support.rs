//! The test support's Redis Cluster (`testing::RedisCluster`): six real
//! `redis-server` processes joined with `redis-cli --cluster create`, which
//! the cluster tests of issue 14 build on. Checked here with redis-rs' own
//! cluster client: keys are routed to every primary, a killed primary is
//! failed over to its replica, and dropping the cluster stops every node.
//!
//! Run: `cargo test --all-features --test cluster_support`.

use redis::AsyncCommands;
use std::time::{Duration, Instant};
use tg_cache::testing::{NODE_TIMEOUT, RedisCluster};

/// One cluster at a time: six servers each are enough for a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn client(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_cluster_has_three_primaries_serving_every_slot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = tg_cache::testing::watchdog("cluster support", Duration::from_secs(60));
    let cluster = RedisCluster::start();
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{nodes:?}");
    let served: u32 = primaries
        .iter()
        .flat_map(|n| &n.slots)
        .map(|(a, b)| u32::from(b - a) + 1)
        .sum();
    assert_eq!(served, 16384);
    assert!(cluster.primary_of_slot(0).is_some() && cluster.primary_of_slot(16383).is_some());

    // A cluster client routes 3,000 keys to all three primaries.
    let mut c = client(&cluster).await;
    for i in 0..3000 {
        let () = c.set(format!("k:{i}"), i).await.unwrap();
    }
    let sizes: Vec<u64> = primaries
        .iter()
        .map(|p| cluster.server(p.port).cmd::<u64>(&["DBSIZE"]))
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 3000, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n > 700), "uneven: {sizes:?}");

    // Dropping the cluster stops every node, by pid.
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| cluster.server(n.port).pid().unwrap())
        .collect();
    drop(c);
    drop(cluster);
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "a node outlived its cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_failed_over_to_its_replica() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = tg_cache::testing::watchdog("cluster failover", Duration::from_secs(90));
    let mut cluster = RedisCluster::start();
    let slot: u16 =
        cluster
            .server(cluster.primaries()[0].port)
            .cmd(&["CLUSTER", "KEYSLOT", "failover:k"]);
    let primary = cluster.primary_of_slot(slot).unwrap();
    // The write, and its acknowledgement by the replica, on one connection
    // to the primary (`WAIT` counts the replicas that have this client's
    // writes).
    let mut direct = cluster.server(primary.port).connection();
    let () = redis::cmd("SET")
        .arg("failover:k")
        .arg(1)
        .query(&mut direct)
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut direct)
        .unwrap();
    assert_eq!(acked, 1, "the replica did not acknowledge the write");
    drop(direct);
    let replica = cluster
        .nodes()
        .into_iter()
        .find(|n| n.replica_of.as_deref() == Some(primary.id.as_str()))
        .expect("the primary has a replica");
    let killed = Instant::now();
    cluster.server_mut(primary.port).kill9();
    // Failover takes the node timeout and an election.
    cluster.wait_until(NODE_TIMEOUT * 6, "the replica takes over the slot", |c| {
        c.primary_of_slot(slot).map(|n| n.port) == Some(replica.port)
    });
    cluster.wait_until_ok(NODE_TIMEOUT * 6);
    let took = killed.elapsed();
    let now = cluster.primary_of_slot(slot).unwrap();
    // A cluster client reads it from the new primary.
    let mut c = client(&cluster).await;
    let routed: i64 = c.get("failover:k").await.unwrap();
    assert_eq!(routed, 1);
    let v: i64 = cluster.server(now.port).cmd(&["GET", "failover:k"]);
    assert_eq!(v, 1, "the value survived the failover");
    eprintln!("failover: slot {slot} moved to {} in {took:?}", now.port);
}

/// `tg_cache::key::cluster_slot` agrees with the servers' `CLUSTER KEYSLOT`
/// on keys of every shape (hash tags, braces, bytes beyond ASCII).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_agrees_with_the_servers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _w = tg_cache::testing::watchdog("cluster slots", Duration::from_secs(60));
    let cluster = RedisCluster::start();
    let mut node = cluster.server(cluster.primaries()[0].port).connection();
    let mut keys: Vec<String> = vec![
        "somekey".into(),
        "{user1000}.following".into(),
        "foo{}{bar}".into(),
        "foo{{bar}}zap".into(),
        "a}b{".into(),
        "{".into(),
        "}{".into(),
        "tg:fn:char_scenes:id=5".into(),
        ":1:tg:queryset:Character:id=5".into(),
        "é{ü}ß".into(),
    ];
    for i in 0..300u32 {
        let r: u32 = rand::random();
        keys.push(format!("k{{{}}}:{i}:{r}", r % 97));
        keys.push(format!("tg:view:posts:/posts/{r}"));
    }
    for k in &keys {
        let server: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut node)
            .unwrap();
        assert_eq!(tg_cache::key::cluster_slot(k), server, "slot of {k:?}");
    }
}
