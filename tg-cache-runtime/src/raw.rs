//! The escape hatch: a redis-rs connection of the application's own, on
//! the Redis a cache uses ([`crate::Cache::redis_connection`]), for the
//! commands tg-cache does not wrap (django-redis' `get_redis_connection`).
//!
//! It **bypasses tg-cache's guards**: a value written through it carries no
//! family epoch, is not JSON unless you make it so, and is not known to
//! this process's near cache until Redis tracking reports the change; a
//! `DEL` through it does defeat a fill in progress (the fill's placeholder
//! is at the key). Keys are as stored: with the cache's namespace
//! (`:1:...` with Django's key function) and, on a cluster, routed by
//! their hash slot.

use std::fmt;

/// A redis-rs connection to a cache's Redis: a multiplexed connection to
/// the server, or a cluster connection that routes each command by its
/// key. Use it with any redis-rs command (`redis::cmd("INFO")
/// .query_async(&mut con)`, `AsyncCommands`). Cheap to clone: clones share
/// the connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server.
    Node(redis::aio::MultiplexedConnection),
    /// A Redis Cluster (redis-rs' `cluster-async`).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisConnection::Node(_) => "RedisConnection::Node",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConnection::Node(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConnection::Node(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Node(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}
