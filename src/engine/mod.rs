//! The reservation engine: the Lua scripts in `lua/` and their typed calls.
//!
//! Every operation that changes stock is one EVALSHA of one script, so the
//! checks and the writes of a reserve, confirm, release or expiry happen in
//! one atomic step inside Redis. Rust builds keys, validates input and turns
//! replies into types; it never reads a counter and writes it back.
//!
//! The hot path uses one multiplexed connection (`redis::aio::ConnectionManager`,
//! or the cluster client's one per node, [`conn::Conn`]): every request's
//! EVALSHA is pipelined onto the same socket, which measured faster than a
//! pool of connections (docs/operations.md#the-redis-connection).
//! Concurrent reserves, confirms and releases of one sale share one call of
//! a batch script (group commit, [`batch`]; the requests themselves in
//! `ops/hold_jobs.rs`).
//!
//! Here: the script registry, the errors and the handle. Each family of
//! scripts has a file in [`ops`] beside the `lua/` scripts it calls, owning
//! their keys, arguments and typed replies; [`refusal`] says which words
//! are refusals, [`reply`] reads what the scripts return. Nothing here
//! knows HTTP or Postgres.

pub(crate) mod batch;
pub mod conn;
pub mod keys;
pub(crate) mod live;
pub mod ops;
mod refusal;
mod reply;
pub(crate) mod soldout;

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};

use crate::config::Settings;
pub use batch::{BatchStats, Sizes};
pub use conn::Conn;
pub use keys::SaleKeys;
pub use ops::adjust::{Adjusted, Change, Figures};
pub use ops::hold::{
    ConfirmRequest, Confirmed, Expired, Extension, ReserveRequest, ServiceConfirm,
};
pub use ops::repair::{Inspection, Known, Rebuilt, Recounted, Restore};
pub use ops::sale::Created;
pub use refusal::Refusal;
use reply::Reply;
pub(crate) use reply::{int, text};

const PRELUDE: &str = include_str!("../../lua/prelude.lua");

/// One script of `lua/`, built once with the shared prelude, and its name
/// for logs and metrics.
struct Lua {
    name: &'static str,
    script: Script,
}

impl Lua {
    fn new(name: &'static str, body: &str) -> Lua {
        Lua {
            name,
            script: Script::new(&format!("{PRELUDE}\n{body}")),
        }
    }

    fn key<T: redis::ToRedisArgs>(&self, key: T) -> Call<'_> {
        Call {
            name: self.name,
            inv: self.script.key(key),
        }
    }
}

/// One call of a script being built: its keys and arguments, and whose it is.
struct Call<'a> {
    name: &'static str,
    inv: redis::ScriptInvocation<'a>,
}

impl Call<'_> {
    fn key<T: redis::ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.inv.key(key);
        self
    }

    fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.inv.arg(arg);
        self
    }
}

/// The scripts, each built once at start-up.
struct Scripts {
    create_sale: Lua,
    sale_state: Lua,
    reserve: Lua,
    confirm: Lua,
    extend: Lua,
    release: Lua,
    reserve_batch: Lua,
    confirm_batch: Lua,
    release_batch: Lua,
    expire: Lua,
    adjust_sale: Lua,
    settle_adjustment: Lua,
    inspect: Lua,
    recount: Lua,
    floor_customers: Lua,
    rebuild: Lua,
    archive: Lua,
    retire: Lua,
    waiting_room_join: Lua,
    waiting_room_open: Lua,
    waiting_room_seal: Lua,
    waiting_room_admit: Lua,
    waiting_room_set: Lua,
    waiting_room_view: Lua,
}

impl Scripts {
    fn load() -> Scripts {
        macro_rules! lua {
            ($name:literal) => {
                Lua::new($name, include_str!(concat!("../../lua/", $name, ".lua")))
            };
        }
        Scripts {
            create_sale: lua!("create_sale"),
            sale_state: lua!("sale_state"),
            reserve: lua!("reserve"),
            confirm: lua!("confirm"),
            extend: lua!("extend"),
            release: lua!("release"),
            reserve_batch: lua!("reserve_batch"),
            confirm_batch: lua!("confirm_batch"),
            release_batch: lua!("release_batch"),
            expire: lua!("expire"),
            adjust_sale: lua!("adjust_sale"),
            settle_adjustment: lua!("settle_adjustment"),
            inspect: lua!("inspect"),
            recount: lua!("recount"),
            floor_customers: lua!("floor_customers"),
            rebuild: lua!("rebuild"),
            archive: lua!("archive"),
            retire: lua!("retire"),
            waiting_room_join: lua!("waiting_room_join"),
            waiting_room_open: lua!("waiting_room_open"),
            waiting_room_seal: lua!("waiting_room_seal"),
            waiting_room_admit: lua!("waiting_room_admit"),
            waiting_room_set: lua!("waiting_room_set"),
            waiting_room_view: lua!("waiting_room_view"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// Redis cannot serve for now: unreachable, timed out, or answering
    /// with an error that passes (BUSY, LOADING, READONLY, TRYAGAIN,
    /// CLUSTERDOWN, MASTERDOWN, OOM). A retry may succeed.
    #[error("redis unavailable: {0}")]
    Unavailable(Unavailable),
    /// A script (or a plain command, `op` "command") failed inside Redis: a
    /// runtime error, a wrong type. A bug of ours or tampered data; retrying
    /// never helps.
    #[error("{op} failed: {source}")]
    Fault {
        op: &'static str,
        source: redis::RedisError,
    },
    /// Redis answered something the scripts never return: a bug or tampering.
    #[error("unexpected reply from redis: {0}")]
    Corrupt(String),
}

/// Why Redis could not serve, with the source kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("no answer within {0} ms")]
    TimedOut(u128),
    /// The batch this request waited in was dropped before it ran (the
    /// gateway is stopping); it did not run.
    #[error("the batch carrying this call was dropped")]
    Abandoned,
    #[error(transparent)]
    Redis(redis::RedisError),
    /// `redis.confirm_replicas` not reached in time: the order is on the
    /// primary but not yet on enough replicas to survive its loss.
    #[error("{reached} of {wanted} replicas acknowledged in time")]
    Replicas { wanted: u32, reached: u32 },
}

impl EngineError {
    /// The Redis error code (`NOGROUP`, `BUSYGROUP`, …) of a command's
    /// failure, for callers that handle one code themselves.
    pub fn redis_code(&self) -> Option<&str> {
        match self {
            EngineError::Unavailable(Unavailable::Redis(e))
            | EngineError::Fault { source: e, .. } => e.code(),
            _ => None,
        }
    }
}

/// Whether a Redis failure passes by itself (a retry may succeed) rather
/// than being a fault that will repeat. Judged by the error's kind and
/// code, never by its text.
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound | ErrorKind::AuthenticationFailed => {
            true
        }
        ErrorKind::Server(
            S::BusyLoading
            | S::TryAgain
            | S::ClusterDown
            | S::MasterDown
            | S::ReadOnly
            | S::Moved
            | S::Ask,
        ) => true,
        ErrorKind::Extension => matches!(e.code(), Some("BUSY" | "OOM" | "NOREPLICAS")),
        _ => false,
    }
}

impl EngineError {
    /// Classifies a failure of `op` (a script's name, or "command").
    fn redis(op: &'static str, e: redis::RedisError) -> EngineError {
        if is_transient(&e) {
            EngineError::Unavailable(Unavailable::Redis(e))
        } else {
            crate::metrics::redis_fault(op);
            EngineError::Fault { op, source: e }
        }
    }
}

impl From<redis::RedisError> for EngineError {
    /// A failure of a plain command. Errors of our scripts go through
    /// `Engine::run`, which names the script.
    fn from(e: redis::RedisError) -> Self {
        EngineError::redis("command", e)
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// The engine handle: cheap to clone, one per gateway.
#[derive(Clone)]
pub struct Engine {
    conn: Conn,
    /// `redis.confirm_replicas > 0`: the waits for replicas.
    replication: Option<Arc<conn::Replication>>,
    scripts: Arc<Scripts>,
    prefix: Arc<str>,
    timeout: Duration,
    idempotency_ttl: u64,
    soldout: Arc<soldout::SoldOut>,
    batches: Arc<ops::hold_jobs::Batches>,
    keys: Arc<KeyCache>,
}

/// Each sale's key names, built once: a hot sale's requests would otherwise
/// format the same dozen strings per call. Bounded, since a sale id in a
/// request need not name a sale: when full it starts over.
#[derive(Default)]
struct KeyCache(std::sync::RwLock<std::collections::HashMap<Arc<str>, Arc<SaleKeys>>>);

/// Sales whose keys [`KeyCache`] keeps at most.
const KEY_CACHE: usize = 4096;

impl Engine {
    /// Connects lazily: a gateway starts while Redis is down and answers 503
    /// until Redis is back, reconnecting by itself.
    pub fn new(settings: &Settings) -> Result<Engine, redis::RedisError> {
        let timeout = settings.redis_timeout();
        Ok(Engine {
            conn: Conn::open(settings)?,
            replication: conn::Replication::new(settings)?,
            scripts: Arc::new(Scripts::load()),
            prefix: Arc::from(settings.redis.key_prefix.as_str()),
            timeout,
            idempotency_ttl: settings.engine.idempotency_ttl_seconds,
            soldout: Arc::default(),
            batches: Arc::new(ops::hold_jobs::Batches::new(settings.engine.max_batch)),
            keys: Arc::default(),
        })
    }

    pub fn keys(&self, sale_id: &str) -> Arc<SaleKeys> {
        if let Some(k) = self
            .keys
            .0
            .read()
            .ok()
            .and_then(|m| m.get(sale_id).cloned())
        {
            return k;
        }
        let k = Arc::new(SaleKeys::new(&self.prefix, sale_id));
        if let Ok(mut m) = self.keys.0.write() {
            if m.len() >= KEY_CACHE {
                m.clear();
            }
            m.insert(Arc::from(sale_id), k.clone());
        }
        k
    }

    /// A connection handle for commands outside the scripts (tests, tools).
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// Whether the engine runs on a Redis Cluster (reports name each primary).
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Bounds every Redis call: a slow or dead Redis becomes a prompt
    /// `Unavailable`, never a request that hangs.
    pub(crate) async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> EngineResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(EngineError::Unavailable(Unavailable::TimedOut(
                self.timeout.as_millis(),
            ))),
        }
    }

    /// Ok once `redis.confirm_replicas` replicas hold everything written
    /// so far to the sale's primary (at once when it is 0). A confirm is
    /// answered, and the worker writes an order to Postgres, only after it.
    pub async fn replicated(&self, sale_id: &str) -> EngineResult<()> {
        let Some(replication) = &self.replication else {
            return Ok(());
        };
        let fence = self.keys(sale_id).fence.clone();
        match self.bounded(replication.wait(&fence)).await? {
            Ok(()) => Ok(()),
            Err(reached) => {
                crate::metrics::replicas_missed();
                Err(EngineError::Unavailable(Unavailable::Replicas {
                    wanted: replication.replicas(),
                    reached,
                }))
            }
        }
    }

    async fn run(&self, call: &Call<'_>) -> EngineResult<Reply> {
        Reply::parse(self.invoke(call).await?)
    }

    /// One script call, bounded by `redis.timeout_ms`, its reply unparsed.
    async fn invoke(&self, call: &Call<'_>) -> EngineResult<Value> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, call.inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EngineError::redis(call.name, e)),
            Err(_) => Err(EngineError::Unavailable(Unavailable::TimedOut(
                self.timeout.as_millis(),
            ))),
        }
    }

    /// How the reserves, confirms and releases went to Redis (how many
    /// calls, how many requests they carried) since this engine started.
    pub fn batch_stats(&self) -> BatchStats {
        self.batches.stats()
    }
}
