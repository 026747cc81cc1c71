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
//! pool of connections (see README, "Redis connection").
//! Concurrent reserves, confirms and releases of one sale share one call of
//! a batch script (group commit, [`batch`]; the requests themselves in
//! `holds.rs`).

pub(crate) mod batch;
pub mod conn;
mod holds;
pub mod keys;
pub(crate) mod live;
pub mod outbox;
pub(crate) mod soldout;
pub mod waiting_room;

use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, Script, Value};
use serde::Deserialize;

use crate::config::Settings;
use crate::domain::{
    from_ms, rfc3339_ms, Order, Reservation, ReservationStatus, Sale, SaleDef, Stock,
};
pub use batch::{BatchStats, Sizes};
pub use conn::Conn;
pub use keys::SaleKeys;

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

/// Idempotency keys removed per call when a sale is archived.
const REMOVE_CHUNK: usize = 500;

/// Customers per call when their counts are raised to their orders: a
/// thousand keeps each call well under a millisecond.
const FLOOR_CHUNK: usize = 1000;

/// Why the engine said no: each maps to one contract error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    SaleNotFound,
    SaleNotLive,
    LimitExceeded,
    SoldOut,
    InsufficientStock,
    IdempotencyKeyReused,
    ReservationNotFound,
    ReservationNotHeld,
    HoldExpired,
    SaleConflict,
    AdmissionRequired,
    AdmissionInvalid,
    WaitingRoomNotOpen,
    WaitingRoomNotFound,
    NotInWaitingRoom,
    /// A PATCH of a room that has opened (not a word of the scripts).
    WaitingRoomOpened,
}

/// Every refusal, once: the word the scripts answer with (also the
/// contract's code), the HTTP status the contract gives it, and what it
/// tells the client.
const REFUSALS: [(Refusal, &str, u16, &str); 16] = [
    (Refusal::SaleNotFound, "sale_not_found", 404, "no such sale"),
    (
        Refusal::SaleNotLive,
        "sale_not_live",
        409,
        "the sale is not live (not started, ended or paused)",
    ),
    (
        Refusal::LimitExceeded,
        "limit_exceeded",
        409,
        "this would take the customer past the sale's per-customer limit",
    ),
    (Refusal::SoldOut, "sold_out", 409, "the sale is sold out"),
    (
        Refusal::InsufficientStock,
        "insufficient_stock",
        409,
        "fewer units are available than asked for",
    ),
    (
        Refusal::IdempotencyKeyReused,
        "idempotency_key_reused",
        422,
        "this Idempotency-Key was used with a different request",
    ),
    (
        Refusal::ReservationNotFound,
        "reservation_not_found",
        404,
        "no such reservation",
    ),
    (
        Refusal::ReservationNotHeld,
        "reservation_not_held",
        409,
        "the reservation is not held (already released, confirmed or expired)",
    ),
    (
        Refusal::HoldExpired,
        "hold_expired",
        410,
        "the hold expired before it was confirmed",
    ),
    (
        Refusal::SaleConflict,
        "sale_conflict",
        409,
        "a sale with this id exists with a different definition",
    ),
    (
        Refusal::AdmissionRequired,
        "admission_required",
        409,
        "the sale is behind a waiting room: join it, and reserve with the admission token (header Admission-Token) once admitted",
    ),
    (
        Refusal::AdmissionInvalid,
        "admission_invalid",
        409,
        "the admission token is not yours, not this sale's, expired or already used",
    ),
    (
        Refusal::WaitingRoomNotOpen,
        "queue_not_open",
        409,
        "the waiting room is not open (before its opening, or after the sale)",
    ),
    (
        Refusal::WaitingRoomNotFound,
        "queue_not_found",
        404,
        "the sale has no waiting room",
    ),
    (
        Refusal::NotInWaitingRoom,
        "not_in_queue",
        404,
        "you have not joined this sale's waiting room",
    ),
    (
        Refusal::WaitingRoomOpened,
        "invalid_request",
        422,
        "the waiting room has opened: it keeps its configuration",
    ),
];

impl Refusal {
    fn entry(self) -> (Refusal, &'static str, u16, &'static str) {
        REFUSALS
            .iter()
            .copied()
            .find(|(r, ..)| *r == self)
            .unwrap_or((self, "internal", 500, "internal error"))
    }

    /// The refusal a script's outcome word (or a stored contract code) names.
    pub fn from_word(word: &str) -> Option<Refusal> {
        REFUSALS
            .iter()
            .find(|(_, w, ..)| *w == word)
            .map(|(r, ..)| *r)
    }

    /// The contract's code for it.
    pub fn code(self) -> &'static str {
        self.entry().1
    }

    /// The HTTP status the contract answers it with.
    pub fn status(self) -> u16 {
        self.entry().2
    }

    /// What it tells the client.
    pub fn message(self) -> &'static str {
        self.entry().3
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

/// One reserve call, as the API validated it.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub sale_id: &'a str,
    pub customer: &'a str,
    pub quantity: u32,
    /// `(Idempotency-Key, fingerprint of the request)`.
    pub idempotency: Option<(&'a str, String)>,
    /// The `Admission-Token` of a sale behind a waiting room.
    pub admission: Option<&'a str>,
}

/// One confirm call, as the API validated it.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmRequest<'a> {
    pub sale_id: &'a str,
    pub reservation_id: &'a str,
    /// Must own the hold.
    pub customer: &'a str,
    pub payment_ref: &'a str,
}

/// A service's confirm of any customer's hold, as the API validated it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfirm<'a> {
    pub sale_id: &'a str,
    pub reservation_id: &'a str,
    /// The service's subject, kept in the order as `confirmed_by`.
    pub service: &'a str,
    pub payment_ref: &'a str,
}

/// What an extension did.
#[derive(Debug, Clone)]
pub enum Extension {
    /// The hold, with its new `expires_at`.
    Extended(Reservation),
    /// The new deadline would pass twice the sale's `hold_seconds` from the
    /// hold's creation; nothing changed. `latest` is the furthest allowed.
    PastLimit { latest: time::OffsetDateTime },
}

/// A sale as the gateway created it: new, or the same one again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// What an admin adjustment did: the figures before and after.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Figures {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub ends_ms: i64,
    pub paused: bool,
}

/// A sale's figures in Redis at one moment, for reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Inspection {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    /// Holds past their deadline by more than the grace period.
    pub overdue_holds: i64,
    /// Confirmed orders in the outbox, not yet flushed to Postgres.
    pub outbox: i64,
    pub dead_letters: i64,
    /// How long the oldest outbox entry has waited (0 when empty).
    pub oldest_outbox_age_ms: i64,
}

/// What Postgres knows of a sale's stock, for the repairs: they take no
/// figure below it.
#[derive(Debug, Clone)]
pub struct Known<'a> {
    /// The scheduled stock plus the applied adjustments.
    pub total: i64,
    /// Units of the sale's orders.
    pub sold: i64,
    /// Ids of the adjustments settled as applied.
    pub applied: &'a [String],
    /// Units ordered per customer.
    pub per_customer: &'a [(String, i64)],
}

/// What a rebuild restores: the sale as Postgres knows it.
#[derive(Debug, Clone)]
pub struct Restore<'a> {
    pub def: &'a SaleDef,
    pub known: Known<'a>,
    pub ends_ms: i64,
    pub paused: bool,
    /// Ids of the adjustments settled as rejected: they stay refused.
    pub rejected: &'a [String],
}

/// What one reaper step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub holds: u64,
    /// More holds were already due: go again.
    pub more_due: bool,
    /// The sale has ended with nothing held and nothing in its outbox.
    pub over: bool,
}

/// An admin's change to a live sale; `id` makes applying it idempotent.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub id: &'a str,
    pub stock_delta: i64,
    pub ends_ms: Option<i64>,
    pub paused: Option<bool>,
}

/// What became of an adjustment in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjusted {
    /// Applied now (or, for a retry of the same id, earlier): the figures
    /// before and after it.
    Applied { before: Figures, after: Figures },
    /// Found applied by an earlier call (settling a pending row).
    AppliedEarlier,
    /// A repair settled it as never applied; it never will be.
    Voided,
}

/// What a recount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recounted {
    Done(Stock),
    /// More units held and sold than the total: nothing changed.
    Overcommitted {
        held: i64,
        sold: i64,
    },
    /// Redis applied an adjustment Postgres does not count yet: nothing
    /// changed (the total would have reversed it).
    AdjustmentUnsettled(String),
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    Done(Stock),
    /// The sale is gone but its outbox still holds orders: flush first.
    OutboxNotEmpty(i64),
    /// As for a recount.
    AdjustmentUnsettled(String),
    /// Postgres has more units sold than the total.
    Oversold,
}

/// A reservation as the scripts store it (one field of the reservations hash).
#[derive(Debug, Clone, Deserialize)]
struct Record {
    c: String,
    q: u32,
    s: ReservationStatus,
    e: i64,
    pc: i64,
    cu: String,
    o: Option<String>,
    ct: Option<i64>,
    /// The service that confirmed it (absent: the customer did).
    #[serde(default)]
    cb: Option<String>,
}

impl Record {
    fn reservation(&self, id: &str, sale_id: &str) -> Reservation {
        Reservation {
            id: id.to_string(),
            sale_id: sale_id.to_string(),
            customer_id: self.c.clone(),
            quantity: self.q,
            status: self.s,
            expires_at: rfc3339_ms(from_ms(self.e)),
        }
    }

    fn order(&self, id: &str, sale_id: &str) -> Option<Order> {
        Some(Order {
            order_id: self.o.clone()?,
            reservation_id: id.to_string(),
            sale_id: sale_id.to_string(),
            customer_id: self.c.clone(),
            quantity: self.q,
            price_cents: self.pc,
            currency: self.cu.clone(),
            confirmed_at: rfc3339_ms(from_ms(self.ct?)),
            confirmed_by: self.cb.clone().filter(|c| !c.is_empty()),
        })
    }

    fn owned_by(&self, customer: &str) -> bool {
        self.c == customer
    }
}

/// A script's reply: the outcome word, Redis TIME in ms, then the payload.
struct Reply {
    word: String,
    now_ms: i64,
    rest: Vec<Value>,
}

impl Reply {
    fn parse(value: Value) -> EngineResult<Reply> {
        let Value::Array(items) = value else {
            return Err(EngineError::Corrupt(format!("not an array: {value:?}")));
        };
        let mut it = items.into_iter();
        let word = it.next().as_ref().and_then(text).unwrap_or_default();
        let now_ms = it.next().as_ref().and_then(int).unwrap_or_default();
        if word.is_empty() || now_ms == 0 {
            return Err(EngineError::Corrupt("missing outcome or time".into()));
        }
        Ok(Reply {
            word,
            now_ms,
            rest: it.collect(),
        })
    }

    /// Maps a refusal word to an error; `accept` lists the words that are
    /// the caller's to handle.
    fn expect(self, accept: &[&str]) -> EngineResult<Reply> {
        if accept.contains(&self.word.as_str()) {
            return Ok(self);
        }
        match Refusal::from_word(&self.word) {
            Some(r) => Err(EngineError::Refused(r)),
            None => Err(EngineError::Corrupt(format!("outcome {}", self.word))),
        }
    }

    fn text(&self, i: usize) -> EngineResult<String> {
        self.rest
            .get(i)
            .and_then(text)
            .ok_or_else(|| EngineError::Corrupt(format!("field {i} of {}", self.word)))
    }

    fn int(&self, i: usize) -> EngineResult<i64> {
        self.rest
            .get(i)
            .and_then(int)
            .ok_or_else(|| EngineError::Corrupt(format!("field {i} of {}", self.word)))
    }

    /// `{word, now, reservation_id, record}` replies.
    fn record(&self) -> EngineResult<(String, Record)> {
        let rid = self.text(0)?;
        let rec = serde_json::from_str(&self.text(1)?)
            .map_err(|e| EngineError::Corrupt(format!("reservation record: {e}")))?;
        Ok((rid, rec))
    }
}

/// A reply value as text (bulk, simple or integer).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A confirmed reservation and its order.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub reservation: Reservation,
    pub order: Order,
}

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
    batches: Arc<holds::Batches>,
}

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
            batches: Arc::new(holds::Batches::new(settings.engine.max_batch)),
        })
    }

    pub fn keys(&self, sale_id: &str) -> SaleKeys {
        SaleKeys::new(&self.prefix, sale_id)
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
        let fence = self.keys(sale_id).fence;
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

    /// Starts a call of one of the hold scripts (reserve, confirm, release,
    /// expire): they all take the sale, its reservations, its customers and
    /// its deadline index as their first four keys.
    fn hold_call<'a>(script: &'a Lua, k: &SaleKeys) -> Call<'a> {
        let mut call = script.key(&k.sale);
        call.key(&k.reservations).key(&k.customers).key(&k.due);
        call
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

    /// Closes a sale that is over (see `lua/archive.lua`): its final
    /// figures, or `None` while it is not over.
    /// `dead_copied`: the dead letters already copied to Postgres; the sale
    /// closes only if that is all of them.
    pub async fn archive(&self, sale_id: &str, dead_copied: usize) -> EngineResult<Option<Stock>> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .archive
                    .key(&k.sale)
                    .key(&k.outbox)
                    .key(&k.dead_letters)
                    .arg(dead_copied),
            )
            .await?;
        match r.word.as_str() {
            "not_over" | "sale_not_found" => Ok(None),
            _ => {
                let r = r.expect(&["archived"])?;
                let (total, sold) = (r.int(0)?, r.int(1)?);
                Ok(Some(Stock {
                    total,
                    available: total - sold,
                    held: 0,
                    sold,
                }))
            }
        }
    }

    /// Removes every Redis key of a closed sale: its idempotency keys a
    /// chunk at a time (from the sale's index of them), then its own keys,
    /// UNLINKed so that even a sale of millions of holds is freed in the
    /// background and no call blocks Redis; then the registries forget it.
    pub async fn remove_sale(&self, sale_id: &str) -> EngineResult<()> {
        let k = self.keys(sale_id);
        loop {
            let mut conn = self.conn.clone();
            let index = k.idempotency_index.clone();
            let names: Vec<String> = self
                .bounded(async move {
                    redis::cmd("SRANDMEMBER")
                        .arg(&index)
                        .arg(REMOVE_CHUNK)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if names.is_empty() {
                break;
            }
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(&names).ignore();
            pipe.cmd("SREM")
                .arg(&k.idempotency_index)
                .arg(&names)
                .ignore();
            self.bounded(async move { pipe.query_async::<()>(&mut conn).await })
                .await?;
        }
        // One call per slot: on a cluster the sale's keys and the two
        // registries live on different primaries.
        let mut conn = self.conn.clone();
        let all = k.all();
        self.bounded(async move {
            redis::cmd("UNLINK")
                .arg(&all[..])
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        for set in [keys::active(&self.prefix), keys::registry(&self.prefix)] {
            let mut conn = self.conn.clone();
            self.bounded(async move { conn.srem::<_, _, ()>(set, sale_id).await })
                .await?;
        }
        self.soldout.forget(sale_id);
        Ok(())
    }

    /// How many Redis keys the sale has now: its own (those that exist) and
    /// its idempotency keys (by its index of them; some may have expired).
    pub async fn key_count(&self, sale_id: &str) -> EngineResult<u64> {
        let k = self.keys(sale_id);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&k.all()[..]);
        pipe.cmd("SCARD").arg(&k.idempotency_index);
        let (own, idem): (u64, u64) = self
            .bounded(async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(own + idem)
    }

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

    /// Loads a sale scheduled in Postgres. Safe to repeat: an existing sale
    /// with the same definition is left as it is (its counters untouched).
    pub async fn create_sale(&self, def: &SaleDef) -> EngineResult<Created> {
        let k = self.keys(&def.id);
        let json = serde_json::to_string(def)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        // The registry first: a crash after it leaves an id the reaper skips,
        // never a sale the reaper cannot find.
        self.register(&def.id).await?;
        let reply = self
            .run(
                self.scripts
                    .create_sale
                    .key(&k.sale)
                    .key(&k.waiting_room)
                    .arg(json)
                    .arg(def.stock)
                    .arg(crate::domain::to_ms(def.starts_at))
                    .arg(crate::domain::to_ms(def.ends_at))
                    .arg(def.per_customer_limit)
                    .arg(i64::from(def.hold_seconds) * 1000)
                    .arg(def.price_cents)
                    .arg(&def.currency)
                    .arg(def.queue.as_ref().map(waiting_room::config_args)),
            )
            .await?
            .expect(&["created", "exists"])?;
        Ok(if reply.word == "created" {
            Created::New
        } else {
            Created::Existing
        })
    }

    /// The sale with its live figures, or `SaleNotFound`.
    pub async fn sale(&self, sale_id: &str) -> EngineResult<Sale> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.sale_state.key(&k.sale);
        call.key(&k.waiting_room);
        let r = self.run(&call).await?.expect(&["ok"])?;
        let def: SaleDef = serde_json::from_str(&r.text(0)?)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        let stock = Stock {
            total: r.int(1)?,
            available: r.int(2)?,
            held: r.int(3)?,
            sold: r.int(4)?,
        };
        let ends_at = from_ms(r.int(5)?);
        let paused = r.int(6)? == 1;
        let mut sale = Sale::new(def, stock, ends_at, paused, from_ms(r.now_ms));
        // The room as it stands (an admin may have set it after the start
        // of the sale's definition).
        if r.rest.len() > 7 {
            sale.queue = Some(waiting_room::config_of(&r, 7)?);
        }
        Ok(sale)
    }

    pub async fn sale_ids(&self) -> EngineResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let registry = keys::registry(&self.prefix);
        self.bounded(async move { conn.smembers(registry).await })
            .await
    }

    /// The sales the worker's loops visit: every sale not retired.
    pub async fn active_ids(&self) -> EngineResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let active = keys::active(&self.prefix);
        self.bounded(async move { conn.smembers(active).await })
            .await
    }

    /// Puts a sale in the registry and in the worker's loops.
    async fn register(&self, sale_id: &str) -> EngineResult<()> {
        // Two calls: on a cluster the two sets live on different primaries.
        for set in [keys::registry(&self.prefix), keys::active(&self.prefix)] {
            let mut conn = self.conn.clone();
            self.bounded(async move { conn.sadd::<_, _, ()>(set, sale_id).await })
                .await?;
        }
        Ok(())
    }

    /// Takes every registered sale back into the worker's loops: a worker
    /// starting on a Redis written by a version without the active set, or
    /// after on-call deleted it, finds every sale again. Sales that are over
    /// retire again on the next pass.
    pub async fn activate_all(&self) -> EngineResult<()> {
        // Read, then add (not SUNIONSTORE): on a cluster the two sets live on
        // different primaries. A sale registered in between is added by its
        // own registration.
        let ids = self.sale_ids().await?;
        for chunk in ids.chunks(1000) {
            let mut conn = self.conn.clone();
            let active = keys::active(&self.prefix);
            self.bounded(async move { conn.sadd::<_, _, ()>(active, chunk).await })
                .await?;
        }
        Ok(())
    }

    /// Takes a sale out of the worker's loops if it is over (ended, nothing
    /// held, outbox empty). Returns whether it left.
    ///
    /// The sale is marked retired in its own hash first (one script, so the
    /// check and the mark are atomic), then removed from the active set, then
    /// the mark is read again: an adjustment that reopened the sale in
    /// between cleared the mark before it re-added the sale, so whichever
    /// order the two removals and additions take, a reopened sale ends up in
    /// the set.
    pub async fn retire_if_over(&self, sale_id: &str) -> EngineResult<bool> {
        let k = self.keys(sale_id);
        let r = self
            .run(self.scripts.retire.key(&k.sale).key(&k.outbox))
            .await?;
        match r.word.as_str() {
            "retired" => {}
            "sale_not_found" => {
                // Registered but gone (Redis lost it): a rebuild registers
                // it again; until then nothing of it is left to visit.
            }
            _ => {
                r.expect(&["active"])?;
                return Ok(false);
            }
        }
        let mut conn = self.conn.clone();
        let active = keys::active(&self.prefix);
        let id = sale_id.to_string();
        self.bounded(async move { conn.srem::<_, _, ()>(active, id).await })
            .await?;
        let mut conn = self.conn.clone();
        let sale = k.sale.clone();
        let retired: Option<i64> = self
            .bounded(async move { conn.hget(sale, "retired").await })
            .await?;
        if retired == Some(0) {
            self.register(sale_id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Takes `quantity` units for the customer and returns the hold.
    ///
    /// A sale this gateway knows to be sold out (or not live) is refused from
    /// memory, with no Redis call, unless the request carries an
    /// Idempotency-Key: its first attempt may have succeeded, and only the
    /// script can replay it. Otherwise the reserve shares a call with the
    /// other reserves of its sale that wait for one ([`batch`]).
    pub async fn reserve(&self, req: &ReserveRequest<'_>) -> EngineResult<Reservation> {
        if req.idempotency.is_none() {
            if let Some(refusal) = self.soldout.get(req.sale_id) {
                return Err(EngineError::Refused(refusal));
            }
        }
        let job = holds::ReserveJob::new(req);
        let held = self.batches.reserve.submit(self, req.sale_id, job).await;
        if let Err(EngineError::Refused(refusal)) = &held {
            self.soldout.learn(req.sale_id, *refusal);
        }
        held
    }

    /// Confirms the customer's hold; confirming again returns the same order.
    pub async fn confirm(&self, req: &ConfirmRequest<'_>) -> EngineResult<Confirmed> {
        let job = holds::ConfirmJob::new(req);
        self.batches.confirm.submit(self, req.sale_id, job).await
    }

    /// Confirms any customer's hold for a service (the store's backend),
    /// recording its subject in the order as `confirmed_by`.
    pub async fn confirm_as_service(&self, req: &ServiceConfirm<'_>) -> EngineResult<Confirmed> {
        let job = holds::ConfirmJob::for_service(req);
        self.batches.confirm.submit(self, req.sale_id, job).await
    }

    /// Moves a held reservation's deadline `seconds` later, for a service
    /// whose payment is slower than the hold (see `lua/extend.lua`).
    pub async fn extend(
        &self,
        sale_id: &str,
        reservation_id: &str,
        seconds: u32,
    ) -> EngineResult<Extension> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                Self::hold_call(&self.scripts.extend, &k)
                    .arg(reservation_id)
                    .arg(i64::from(seconds) * 1000),
            )
            .await?;
        if r.word == "too_long" {
            return Ok(Extension::PastLimit {
                latest: from_ms(r.int(0)?),
            });
        }
        let r = r.expect(&["extended"])?;
        let (rid, rec) = r.record()?;
        Ok(Extension::Extended(rec.reservation(&rid, sale_id)))
    }

    /// Releases a hold. `customer` is `None` when an admin releases.
    pub async fn release(
        &self,
        sale_id: &str,
        reservation_id: &str,
        customer: Option<&str>,
    ) -> EngineResult<Reservation> {
        let job = holds::ReleaseJob::new(reservation_id, customer);
        let released = self.batches.release.submit(self, sale_id, job).await?;
        self.soldout.forget(sale_id);
        Ok(released)
    }

    /// Reads a reservation (and its order once confirmed). `customer` is
    /// `None` for an admin; another customer's reservation is not found.
    pub async fn reservation(
        &self,
        sale_id: &str,
        reservation_id: &str,
        customer: Option<&str>,
    ) -> EngineResult<(Reservation, Option<Order>)> {
        let k = self.keys(sale_id);
        let mut conn = self.conn.clone();
        let field = reservation_id.to_string();
        let raw: Option<String> = self
            .bounded(async move { conn.hget(&k.reservations, field).await })
            .await?;
        let raw = raw.ok_or(EngineError::Refused(Refusal::ReservationNotFound))?;
        let rec: Record = serde_json::from_str(&raw)
            .map_err(|e| EngineError::Corrupt(format!("reservation record: {e}")))?;
        if customer.is_some_and(|c| !rec.owned_by(c)) {
            return Err(EngineError::Refused(Refusal::ReservationNotFound));
        }
        Ok((
            rec.reservation(reservation_id, sale_id),
            rec.order(reservation_id, sale_id),
        ))
    }

    /// One reaper step for one sale: expires up to `batch` holds past their
    /// deadline.
    pub async fn expire_due(&self, sale_id: &str, batch: u32) -> EngineResult<Expired> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                Self::hold_call(&self.scripts.expire, &k)
                    .key(&k.outbox)
                    .arg(batch),
            )
            .await?
            .expect(&["ok"])?;
        Ok(Expired {
            holds: r.int(0)?.max(0) as u64,
            more_due: r.int(1)? == 1,
            over: r.int(2)? == 1,
        })
    }

    /// Applies an admin adjustment once (by its id).
    pub async fn adjust_sale(&self, sale_id: &str, change: &Change<'_>) -> EngineResult<Adjusted> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .adjust_sale
                    .key(&k.sale)
                    .key(&k.adjustments)
                    .key(&k.voided)
                    .arg(change.id)
                    .arg(change.stock_delta)
                    .arg(change.ends_ms.map(|v| v.to_string()).unwrap_or_default())
                    .arg(
                        change
                            .paused
                            .map(|p| if p { "1" } else { "0" })
                            .unwrap_or(""),
                    ),
            )
            .await?;
        if r.word == "voided" {
            return Ok(Adjusted::Voided);
        }
        let r = r.expect(&["applied", "already_applied"])?;
        self.soldout.forget(sale_id);
        // A new end may reopen a retired sale: the loops take it back.
        self.register(sale_id).await?;
        let figures = |i| {
            serde_json::from_str::<Figures>(&r.text(i)?)
                .map_err(|e| EngineError::Corrupt(format!("figures: {e}")))
        };
        Ok(Adjusted::Applied {
            before: figures(0)?,
            after: figures(1)?,
        })
    }

    /// Decides whether an adjustment Postgres has as pending was applied;
    /// one not applied is voided in the same step, so it never will be.
    pub async fn settle_adjustment(&self, sale_id: &str, id: &str) -> EngineResult<Adjusted> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .settle_adjustment
                    .key(&k.adjustments)
                    .key(&k.voided)
                    .arg(id),
            )
            .await?
            .expect(&["applied", "voided"])?;
        Ok(if r.word == "applied" {
            Adjusted::AppliedEarlier
        } else {
            Adjusted::Voided
        })
    }

    /// A consistent snapshot of the sale's figures; `None` when Redis does
    /// not hold the sale.
    pub async fn inspect(&self, sale_id: &str, grace_ms: i64) -> EngineResult<Option<Inspection>> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .inspect
                    .key(&k.sale)
                    .key(&k.due)
                    .key(&k.outbox)
                    .key(&k.dead_letters)
                    .arg(grace_ms),
            )
            .await?;
        if r.word == "sale_not_found" {
            return Ok(None);
        }
        let r = r.expect(&["ok"])?;
        Ok(Some(Inspection {
            total: r.int(0)?,
            available: r.int(1)?,
            held: r.int(2)?,
            sold: r.int(3)?,
            overdue_holds: r.int(4)?,
            outbox: r.int(5)?,
            dead_letters: r.int(6)?,
            oldest_outbox_age_ms: r.int(7)?,
        }))
    }

    /// Recomputes held and sold from every source that knows them (see
    /// `lua/recount.lua`), with `total` from Postgres, after raising each
    /// customer's count to their orders. Every call is short, however large
    /// the sale.
    pub async fn recount(&self, sale_id: &str, known: &Known<'_>) -> EngineResult<Recounted> {
        let k = self.keys(sale_id);
        self.floor_customers(&k, known.per_customer).await?;
        let mut call = self.scripts.recount.key(&k.sale);
        call.key(&k.reservations)
            .key(&k.adjustments)
            .arg(known.total)
            .arg(known.sold);
        for id in known.applied {
            call.arg(id);
        }
        let r = self.run(&call).await?;
        self.soldout.forget(sale_id);
        Ok(match r.word.as_str() {
            "overcommitted" => Recounted::Overcommitted {
                held: r.int(0)?,
                sold: r.int(1)?,
            },
            "adjustment_unsettled" => Recounted::AdjustmentUnsettled(r.text(0)?),
            _ => {
                let r = r.expect(&["recounted"])?;
                Recounted::Done(Stock {
                    total: r.int(0)?,
                    available: r.int(1)?,
                    held: r.int(2)?,
                    sold: r.int(3)?,
                })
            }
        })
    }

    /// Raises customers' counts to their units in Postgres, a chunk per
    /// call, so that no call grows with the number of buyers.
    async fn floor_customers(
        &self,
        k: &SaleKeys,
        per_customer: &[(String, i64)],
    ) -> EngineResult<()> {
        for chunk in per_customer.chunks(FLOOR_CHUNK) {
            let mut call = self.scripts.floor_customers.key(&k.customers);
            for (customer, units) in chunk {
                call.arg(customer).arg(*units);
            }
            self.run(&call).await?.expect(&["ok"])?;
        }
        Ok(())
    }

    /// Replaces the sale's Redis state with `restore`, atomically (see
    /// `lua/rebuild.lua` for when it refuses).
    pub async fn rebuild(&self, restore: &Restore<'_>) -> EngineResult<Rebuilt> {
        let def = restore.def;
        let k = self.keys(&def.id);
        let json = serde_json::to_string(def)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        self.register(&def.id).await?;
        let known = &restore.known;
        self.floor_customers(&k, known.per_customer).await?;
        let mut call = self.scripts.rebuild.key(&k.sale);
        call.key(&k.reservations)
            .key(&k.due)
            .key(&k.outbox)
            .key(&k.adjustments)
            .key(&k.voided)
            .arg(json)
            .arg(known.total)
            .arg(crate::domain::to_ms(def.starts_at))
            .arg(restore.ends_ms)
            .arg(def.per_customer_limit)
            .arg(i64::from(def.hold_seconds) * 1000)
            .arg(def.price_cents)
            .arg(&def.currency)
            .arg(if restore.paused { "1" } else { "0" })
            .arg(known.sold)
            .arg(known.applied.len());
        for id in known.applied.iter().chain(restore.rejected) {
            call.arg(id);
        }
        let r = self.run(&call).await?;
        self.soldout.forget(&def.id);
        Ok(match r.word.as_str() {
            "outbox_not_empty" => Rebuilt::OutboxNotEmpty(r.int(0)?),
            "adjustment_unsettled" => Rebuilt::AdjustmentUnsettled(r.text(0)?),
            "oversold" => Rebuilt::Oversold,
            _ => {
                let r = r.expect(&["rebuilt"])?;
                Rebuilt::Done(Stock {
                    total: r.int(0)?,
                    available: r.int(1)?,
                    held: 0,
                    sold: r.int(2)?,
                })
            }
        })
    }
}
