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
//!
//! # Multi-key commands are split here, per slot
//! A `DEL` or `MGET` whose keys hash to several slots is split into one command per slot by
//! this wrapper, each routed (and its redirections followed) on its own, and the answers are
//! put back together here. redis-rs would split them too, but it silently leaves out every part
//! whose node it holds no connection to at that moment — just after a failover, the promoted
//! replica — and still answers success: a replayed invalidation then skipped the promoted node,
//! which kept serving the old target. Here every part reaches its slot's master or fails.

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

    /// Sends `cmd`: a multi-key command whose keys span several slots as one command per slot
    /// (module doc), anything else as it is.
    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match split_by_slot(cmd) {
            None => self.single(cmd).await,
            Some(Split { kind, parts, keys }) => {
                let sends = parts.iter().map(|(sub, _)| {
                    let mut c = self.clone();
                    async move { c.single(sub).await }
                });
                let answers = futures_util::future::try_join_all(sends).await?;
                combine(kind, &parts, answers, keys)
            }
        }
    }

    /// Sends a command that touches at most one slot, following redirections.
    async fn single(&mut self, cmd: &Cmd) -> RedisResult<Value> {
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

/// How the answers of a split command go back together.
#[derive(Clone, Copy)]
enum Combine {
    /// `MGET`: one array, in the keys' order.
    Array,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: the sum of the counts.
    Sum,
}

/// A multi-key command split by slot: each part and the positions of its keys in the original.
struct Split {
    kind: Combine,
    parts: Vec<(Cmd, Vec<usize>)>,
    keys: usize,
}

/// Splits a multi-key command (every argument a key) whose keys span several slots; `None` for
/// any other command, and for one whose keys share a slot.
fn split_by_slot(cmd: &Cmd) -> Option<Split> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        redis::Arg::Cursor => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let kind = match name.as_slice() {
        b"MGET" => Combine::Array,
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Combine::Sum,
        _ => return None,
    };
    let keys: Vec<&[u8]> = args.collect();
    let first = keys.first().map(|k| key_slot(k))?;
    if keys.iter().all(|k| key_slot(k) == first) {
        return None;
    }
    let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let slot = key_slot(k);
        match by_slot.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, idx)) => idx.push(i),
            None => by_slot.push((slot, vec![i])),
        }
    }
    let parts = by_slot
        .into_iter()
        .map(|(_, idx)| {
            let mut sub = redis::cmd(std::str::from_utf8(&name).unwrap_or("DEL"));
            for &i in &idx {
                sub.arg(keys[i]);
            }
            (sub, idx)
        })
        .collect();
    Some(Split { kind, parts, keys: keys.len() })
}

/// Puts the answers of a split command's parts back together.
fn combine(kind: Combine, parts: &[(Cmd, Vec<usize>)], answers: Vec<Value>, keys: usize) -> RedisResult<Value> {
    match kind {
        Combine::Sum => {
            let mut total = 0i64;
            for a in answers {
                match a {
                    Value::Int(n) => total += n,
                    _ => return Err(io_error("a split count answered something else")),
                }
            }
            Ok(Value::Int(total))
        }
        Combine::Array => {
            let mut out = vec![Value::Nil; keys];
            for ((_, idx), a) in parts.iter().zip(answers) {
                let Value::Array(values) = a else { return Err(io_error("a split MGET answered something else")) };
                if values.len() != idx.len() {
                    return Err(io_error("a split MGET answered the wrong number of values"));
                }
                for (&i, v) in idx.iter().zip(values) {
                    out[i] = v;
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag — the part between the first `{`
/// and the next `}`, when not empty — or of the whole key, modulo 16,384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16_384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_redis_cluster_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16_384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn multi_key_commands_over_several_slots_are_split_per_slot_in_key_order() {
        let mut cmd = redis::cmd("MGET");
        cmd.arg("{a}1").arg("{b}1").arg("{a}2").arg("{c}1");
        let split = split_by_slot(&cmd).expect("three slots");
        assert_eq!(split.keys, 4);
        let idx: Vec<Vec<usize>> = split.parts.iter().map(|(_, i)| i.clone()).collect();
        assert_eq!(idx, vec![vec![0, 2], vec![1], vec![3]]);
        let answers = vec![
            Value::Array(vec![Value::BulkString(b"a1".to_vec()), Value::Nil]),
            Value::Array(vec![Value::BulkString(b"b1".to_vec())]),
            Value::Array(vec![Value::BulkString(b"c1".to_vec())]),
        ];
        let Value::Array(out) = combine(split.kind, &split.parts, answers, split.keys).unwrap() else { panic!() };
        assert_eq!(
            out,
            vec![
                Value::BulkString(b"a1".to_vec()),
                Value::BulkString(b"b1".to_vec()),
                Value::Nil,
                Value::BulkString(b"c1".to_vec())
            ]
        );

        let mut del = redis::cmd("del");
        del.arg("{a}1").arg("{b}1");
        let split = split_by_slot(&del).expect("two slots");
        let n = combine(split.kind, &split.parts, vec![Value::Int(1), Value::Int(0)], split.keys).unwrap();
        assert_eq!(n, Value::Int(1));
        // A part that answered short is an error, never a shifted answer.
        let split = split_by_slot(&cmd).unwrap();
        let short =
            vec![Value::Array(vec![Value::Nil]), Value::Array(vec![Value::Nil]), Value::Array(vec![Value::Nil])];
        assert!(combine(split.kind, &split.parts, short, split.keys).is_err());
    }

    #[test]
    fn one_slot_and_other_commands_are_sent_as_they_are() {
        let mut cmd = redis::cmd("MGET");
        cmd.arg("{a}1").arg("{a}2");
        assert!(split_by_slot(&cmd).is_none());
        let mut set = redis::cmd("SET");
        set.arg("{a}1").arg("x");
        assert!(split_by_slot(&set).is_none());
    }
}
