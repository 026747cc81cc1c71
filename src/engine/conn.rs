//! The connection to Redis: one server at `redis.url`, or a Redis Cluster
//! from `redis.cluster_nodes`. Everything above speaks `ConnectionLike`, and
//! every script's keys share the sale's hash tag, so the same calls run on
//! both; what differs (a pipeline must stay in one slot, a command for every
//! primary, WAIT on the sale's own primary) is decided here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::{Engine, EngineError, EngineResult};
use crate::config::Settings;

/// A cheap handle, cloned per call.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Connects lazily: a gateway starts while Redis is down and answers
    /// 503 until it is back, reconnecting by itself.
    pub fn open(settings: &Settings) -> RedisResult<Conn> {
        let timeout = settings.redis_timeout();
        if settings.redis.cluster_nodes.is_empty() {
            let client = redis::Client::open(settings.redis.url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            return Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?));
        }
        // Retries cover a MOVED or ASK while a slot migrates and a primary's
        // replica taking over; the engine's own bound (`redis.timeout_ms`)
        // still ends every call in time, as a 503.
        let client = ClusterClientBuilder::new(settings.redis.cluster_nodes.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(200)
            .build()?;
        Ok(Conn::Cluster(
            client.get_pending_async_connection_with_config(
                redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout),
            ),
        ))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// The primaries, as `host:port`: the one server, or the cluster's
    /// primaries as any node that answers sees them (one that failed but
    /// still owns its slots included, so a report names it).
    pub async fn primaries(&mut self) -> RedisResult<Vec<String>> {
        match self {
            Conn::Single(_) => Ok(vec!["redis".into()]),
            Conn::Cluster(c) => {
                let nodes = c
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                let nodes: String = redis::from_redis_value(nodes)?;
                Ok(primaries_of(&nodes))
            }
        }
    }

    /// Runs `cmd` on one primary (`host:port` from [`Conn::primaries`]).
    pub async fn on_primary(&mut self, primary: &str, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let (host, port) = primary
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
                    .ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "not a host:port",
                            primary.to_string(),
                        ))
                    })?;
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                )
                .await
            }
        }
    }
}

/// The primaries of a `CLUSTER NODES` reply: `<id> <ip:port@bus> <flags> …`.
fn primaries_of(nodes: &str) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (f.get(1)?, f.get(2)?.split(',').collect::<Vec<_>>());
            // Slots from the ninth field on: a primary that failed and was
            // replaced owns none, and is no longer one to report.
            (flags.contains(&"master") && !flags.contains(&"noaddr") && f.len() > 8)
                .then(|| addr.split('@').next().unwrap_or(addr).to_string())
        })
        .collect();
    out.sort();
    out
}

/// Waits until replicas hold every write made so far to a sale's primary
/// (`redis.confirm_replicas`).
///
/// WAIT counts the replicas that acknowledged the last write made on the
/// connection it is sent on, and blocks that connection while it waits. So
/// the wait goes on connections of its own, after a write of its own: a
/// fence (INCR of the sale's fence key, in the sale's slot) followed by WAIT
/// in one pipeline on the sale's primary. Redis applies writes in order, so
/// the fence's offset is past the order's, whoever wrote the order and even
/// if the script that confirmed it wrote nothing (a replayed confirm): a
/// reached fence means a replicated order.
pub struct Replication {
    replicas: u32,
    waiters: Vec<Conn>,
    next: AtomicUsize,
    timeout: Duration,
}

/// The waits in flight at once, each on its own connection (a WAIT blocks
/// its connection until the replicas answer).
const WAITERS: usize = 4;

impl Replication {
    pub fn new(settings: &Settings) -> RedisResult<Option<Arc<Replication>>> {
        let replicas = settings.redis.confirm_replicas;
        if replicas == 0 {
            return Ok(None);
        }
        let waiters = (0..WAITERS)
            .map(|_| Conn::open(settings))
            .collect::<RedisResult<_>>()?;
        Ok(Some(Arc::new(Replication {
            replicas,
            waiters,
            next: AtomicUsize::new(0),
            timeout: settings.redis_timeout(),
        })))
    }

    /// Ok once `replicas` replicas have everything written so far to the
    /// primary of `fence`'s slot; the number that had it otherwise.
    pub async fn wait(&self, fence: &str) -> RedisResult<Result<(), u32>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.waiters.len();
        let mut conn = self.waiters[i].clone();
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(fence).ignore();
        // Half the call's bound: the answer (and a 503) still comes in time.
        let ms = (self.timeout.as_millis() / 2).max(1) as u64;
        pipe.cmd("WAIT").arg(self.replicas).arg(ms);
        let (reached,): (u32,) = pipe.query_async(&mut conn).await?;
        Ok(if reached >= self.replicas {
            Ok(())
        } else {
            Err(reached)
        })
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }
}

impl Engine {
    /// Redis's `used_memory`, from `INFO memory`: of the one Redis, or the
    /// sum over the cluster's primaries.
    pub async fn memory_used(&self) -> EngineResult<u64> {
        let mut conn = self.conn.clone();
        let primaries = self.bounded(conn.primaries()).await?;
        let mut total = 0;
        for node in primaries {
            let mut conn = self.conn.clone();
            let info = self
                .bounded(conn.on_primary(&node, redis::cmd("INFO").arg("memory").clone()))
                .await?;
            let info: String = redis::from_redis_value(info)
                .map_err(|e| EngineError::Corrupt(format!("INFO memory: {e}")))?;
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| EngineError::Corrupt("INFO memory without used_memory".into()))?;
        }
        Ok(total)
    }

    /// Each primary and whether it answers a PING: the one Redis, or every
    /// primary of the cluster (none when no node answers at all).
    pub async fn primaries_up(&self) -> Vec<(String, bool)> {
        if !self.conn.is_cluster() {
            return vec![("redis".into(), self.ping().await.is_ok())];
        }
        let mut conn = self.conn.clone();
        let Ok(primaries) = self.bounded(conn.primaries()).await else {
            return Vec::new();
        };
        let pings = primaries.into_iter().map(|node| async move {
            let mut conn = self.conn.clone();
            let up = self
                .bounded(conn.on_primary(&node, redis::cmd("PING")))
                .await
                .is_ok();
            (node, up)
        });
        futures::future::join_all(pings).await
    }

    pub async fn ping(&self) -> EngineResult<()> {
        let mut conn = self.conn.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "a 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:30004@40004 slave a 0 0 1 connected\n\
                     c 127.0.0.1:30002@40002 master,fail - 0 0 2 connected 5461-10922\n\
                     d 127.0.0.1:30003@40003 master,fail - 0 0 2 connected\n";
        assert_eq!(
            primaries_of(nodes),
            vec!["127.0.0.1:30001".to_string(), "127.0.0.1:30002".to_string()]
        );
    }
}
