//! The one connection type the client's users see, over the three topologies: a multiplexed
//! connection (one node, or the master Sentinel named) or a cluster connection. Both implement
//! `redis::aio::ConnectionLike`, so users build the same commands, pipelines and scripts
//! whatever the topology.
//!
//! # Redirections in a cluster
//! The cluster connection is built with no retries of its own, and this wrapper follows `MOVED`
//! and `ASK` itself, counting each. That is not only for the metric: redis-rs would otherwise
//! also retry silently on a connection error and, once a replica has been promoted, answer
//! from it — and a promoted replica may lack the last invalidations. Here every connection error
//! reaches the client, which distrusts Redis until the outbox has been replayed
//! (`RedisClient::run_within`). A pipeline runs as its commands one after another (each routed
//! on its own): the invalidation bus relies on a `DEL` landing before the `PUBLISH` that
//! announces it, which a cluster pipeline sent to several nodes at once would not keep.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures_util::FutureExt;
use redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use super::ClientStats;

/// Redirections one command follows at most before its error is returned (a miss).
const MAX_REDIRECTS: usize = 4;

/// A connection to Redis, whatever the topology. Cheap to clone (both kinds multiplex).
#[derive(Clone)]
pub enum Conn {
    /// One node: `REDIS_URL`, or the master the Sentinels named.
    Node(MultiplexedConnection),
    /// A Redis Cluster, following redirections (and counting them).
    Cluster(ClusterConn),
}

/// A cluster connection that follows `MOVED` and `ASK` itself (see the module doc).
#[derive(Clone)]
pub struct ClusterConn {
    inner: ClusterConnection,
    stats: Arc<ClientStats>,
}

impl ClusterConn {
    /// Wraps `inner` (built with `retries(0)`), counting redirections into `stats`.
    pub fn new(inner: ClusterConnection, stats: Arc<ClientStats>) -> Self {
        ClusterConn { inner, stats }
    }

    /// Sends `cmd` where `routing` says (no redirections followed): for commands that ask one
    /// node about itself, such as `INFO`.
    pub async fn route(&mut self, cmd: &Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        self.inner.route_command(cmd, routing).await.and_then(Value::extract_error)
    }

    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let mut result = self.inner.req_packed_command(cmd).await.and_then(Value::extract_error);
        for _ in 0..MAX_REDIRECTS {
            let err = match &result {
                Err(e) if matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask) => e,
                _ => break,
            };
            if err.kind() == ErrorKind::Moved {
                self.stats.redirections_moved.fetch_add(1, Ordering::Relaxed);
                // The connection has started re-reading the slot map on this MOVED; give it a
                // moment, then send the command again by the map (a multi-slot MGET or DEL is
                // split again, which sending it whole to the named node would not do).
                tokio::time::sleep(Duration::from_millis(2)).await;
                result = self.inner.req_packed_command(cmd).await.and_then(Value::extract_error);
            } else {
                self.stats.redirections_ask.fetch_add(1, Ordering::Relaxed);
                let Some((host, port)) = err.redirect_node().and_then(|(n, _)| split_addr(n)) else { break };
                // ASK is for this one command, on the node that is importing the slot, after
                // ASKING on the same connection: a two-command pipeline routed to that node.
                let mut pipe = redis::pipe();
                pipe.cmd("ASKING").ignore();
                pipe.add_command(cmd.clone());
                let route = SingleNodeRoutingInfo::ByAddress { host, port };
                result = self
                    .inner
                    .route_pipeline(&pipe, 0, 2, route)
                    .await
                    .and_then(|mut values| values.pop().ok_or_else(|| io_error("no reply after ASKING")))
                    .and_then(Value::extract_error);
            }
        }
        result
    }
}

fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

fn io_error(what: &str) -> RedisError {
    RedisError::from(std::io::Error::other(what.to_string()))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.command(cmd).boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => async move {
                // In order, each on its own (module doc). `offset` and `count` select the
                // replies the caller reads; a non-atomic pipeline asks for all of them.
                let mut values = Vec::with_capacity(count);
                for cmd in pipeline.cmd_iter().skip(offset).take(count) {
                    values.push(c.command(cmd).await?);
                }
                Ok(values)
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}
