//! The reservation engine: the Lua scripts in `lua/` and their typed calls.
//!
//! Every operation that changes stock is one EVALSHA of one script, so the
//! checks and the writes of a reserve, confirm, release or expiry happen in
//! one atomic step inside Redis. Rust builds keys, validates input and turns
//! replies into types; it never reads a counter and writes it back.
//!
//! The hot path uses one multiplexed connection ([`ConnectionManager`]):
//! every request's EVALSHA is pipelined onto the same socket, which measured
//! faster than a pool of connections (see README, "Redis connection").

pub mod keys;
pub mod live;
pub mod soldout;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};
use serde::Deserialize;

use crate::config::Settings;
use crate::domain::{
    from_ms, rfc3339_ms, Order, Reservation, ReservationStatus, Sale, SaleDef, Stock,
};
pub use keys::SaleKeys;

const PRELUDE: &str = include_str!("../../lua/prelude.lua");

/// The scripts, each built once at start-up with the shared prelude.
struct Scripts {
    create_sale: Script,
    sale_state: Script,
    reserve: Script,
    confirm: Script,
    release: Script,
    expire: Script,
    adjust_sale: Script,
    inspect: Script,
    recount: Script,
    rebuild: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            create_sale: with_prelude(include_str!("../../lua/create_sale.lua")),
            sale_state: with_prelude(include_str!("../../lua/sale_state.lua")),
            reserve: with_prelude(include_str!("../../lua/reserve.lua")),
            confirm: with_prelude(include_str!("../../lua/confirm.lua")),
            release: with_prelude(include_str!("../../lua/release.lua")),
            expire: with_prelude(include_str!("../../lua/expire.lua")),
            adjust_sale: with_prelude(include_str!("../../lua/adjust_sale.lua")),
            inspect: with_prelude(include_str!("../../lua/inspect.lua")),
            recount: with_prelude(include_str!("../../lua/recount.lua")),
            rebuild: with_prelude(include_str!("../../lua/rebuild.lua")),
        }
    }
}

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
}

impl Refusal {
    fn from_word(word: &str) -> Option<Refusal> {
        Some(match word {
            "sale_not_found" => Refusal::SaleNotFound,
            "sale_not_live" => Refusal::SaleNotLive,
            "limit_exceeded" => Refusal::LimitExceeded,
            "sold_out" => Refusal::SoldOut,
            "insufficient_stock" => Refusal::InsufficientStock,
            "idempotency_key_reused" => Refusal::IdempotencyKeyReused,
            "reservation_not_found" => Refusal::ReservationNotFound,
            "reservation_not_held" => Refusal::ReservationNotHeld,
            "hold_expired" => Refusal::HoldExpired,
            "conflict" => Refusal::SaleConflict,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// Redis did not answer in time or the connection failed.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered something the scripts never return: a bug or tampering.
    #[error("unexpected reply from redis: {0}")]
    Corrupt(String),
}

impl From<redis::RedisError> for EngineError {
    fn from(e: redis::RedisError) -> Self {
        EngineError::Unavailable(e.to_string())
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

/// What a rebuild restores: the sale as Postgres knows it.
#[derive(Debug, Clone)]
pub struct Restore<'a> {
    pub def: &'a SaleDef,
    pub total: i64,
    pub ends_ms: i64,
    pub paused: bool,
    pub sold: i64,
    pub per_customer: &'a [(String, i64)],
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
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    prefix: Arc<str>,
    timeout: Duration,
    idempotency_ttl: u64,
    soldout: Arc<soldout::SoldOut>,
}

impl Engine {
    /// Connects lazily: a gateway starts while Redis is down and answers 503
    /// until Redis is back, reconnecting by itself.
    pub fn new(settings: &Settings) -> Result<Engine, redis::RedisError> {
        let client = redis::Client::open(settings.redis.url.as_str())?;
        let timeout = settings.redis_timeout();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Engine {
            conn,
            scripts: Arc::new(Scripts::load()),
            prefix: Arc::from(settings.redis.key_prefix.as_str()),
            timeout,
            idempotency_ttl: settings.engine.idempotency_ttl_seconds,
            soldout: Arc::default(),
        })
    }

    pub fn keys(&self, sale_id: &str) -> SaleKeys {
        SaleKeys::new(&self.prefix, sale_id)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection handle for commands outside the scripts (tests, tools).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Bounds every Redis call: a slow or dead Redis becomes a prompt
    /// `Unavailable`, never a request that hangs.
    pub(crate) async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> EngineResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(EngineError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Starts a call of one of the hold scripts (reserve, confirm, release,
    /// expire): they all take the sale, its reservations, its customers and
    /// its deadline index as their first four keys.
    fn hold_call<'a>(script: &'a Script, k: &SaleKeys) -> redis::ScriptInvocation<'a> {
        let mut inv = script.key(&k.sale);
        inv.key(&k.reservations).key(&k.customers).key(&k.due);
        inv
    }

    async fn run(&self, inv: &redis::ScriptInvocation<'_>) -> EngineResult<Reply> {
        let mut conn = self.conn.clone();
        let value: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        Reply::parse(value)
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
        let mut conn = self.conn.clone();
        let registry = keys::registry(&self.prefix);
        let id = def.id.clone();
        self.bounded(async move { conn.sadd::<_, _, ()>(registry, id).await })
            .await?;
        let reply = self
            .run(
                self.scripts
                    .create_sale
                    .key(&k.sale)
                    .arg(json)
                    .arg(def.stock)
                    .arg(crate::domain::to_ms(def.starts_at))
                    .arg(crate::domain::to_ms(def.ends_at))
                    .arg(def.per_customer_limit)
                    .arg(i64::from(def.hold_seconds) * 1000)
                    .arg(def.price_cents)
                    .arg(&def.currency),
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
        let r = self
            .run(&self.scripts.sale_state.key(&k.sale))
            .await?
            .expect(&["ok"])?;
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
        Ok(Sale::new(def, stock, ends_at, paused, from_ms(r.now_ms)))
    }

    /// Every sale in the registry that Redis holds, by start time then id.
    pub async fn sales(&self) -> EngineResult<Vec<Sale>> {
        let ids = self.sale_ids().await?;
        let found = futures::future::join_all(ids.iter().map(|id| self.sale(id))).await;
        let mut sales = Vec::with_capacity(found.len());
        for sale in found {
            match sale {
                Ok(s) => sales.push(s),
                Err(EngineError::Refused(Refusal::SaleNotFound)) => {}
                Err(e) => return Err(e),
            }
        }
        sales.sort_by(|a, b| (a.starts_at, &a.id).cmp(&(b.starts_at, &b.id)));
        Ok(sales)
    }

    pub async fn sale_ids(&self) -> EngineResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let registry = keys::registry(&self.prefix);
        self.bounded(async move { conn.smembers(registry).await })
            .await
    }

    /// Takes `quantity` units for the customer and returns the hold.
    ///
    /// A sale this gateway knows to be sold out (or not live) is refused from
    /// memory, with no Redis call, unless the request carries an
    /// Idempotency-Key: its first attempt may have succeeded, and only the
    /// script can replay it.
    pub async fn reserve(&self, req: &ReserveRequest<'_>) -> EngineResult<Reservation> {
        if req.idempotency.is_none() {
            if let Some(refusal) = self.soldout.get(req.sale_id) {
                return Err(EngineError::Refused(refusal));
            }
        }
        let held = self.reserve_in_redis(req).await;
        if let Err(EngineError::Refused(refusal)) = &held {
            self.soldout.learn(req.sale_id, *refusal);
        }
        held
    }

    async fn reserve_in_redis(&self, req: &ReserveRequest<'_>) -> EngineResult<Reservation> {
        let k = self.keys(req.sale_id);
        let rid = crate::domain::new_reservation_id(req.sale_id);
        let (idem_key, fingerprint) = match &req.idempotency {
            Some((key, fp)) => (k.idempotency(req.customer, key), fp.as_str()),
            // Never read without a fingerprint; passed so the key list is fixed.
            None => (k.idempotency(req.customer, ""), ""),
        };
        let r = self
            .run(
                Self::hold_call(&self.scripts.reserve, &k)
                    .key(idem_key)
                    .arg(rid)
                    .arg(req.customer)
                    .arg(req.quantity)
                    .arg(fingerprint)
                    .arg(self.idempotency_ttl),
            )
            .await?
            .expect(&["held"])?;
        let (rid, rec) = r.record()?;
        Ok(rec.reservation(&rid, req.sale_id))
    }

    /// Confirms the customer's hold; confirming again returns the same order.
    pub async fn confirm(
        &self,
        sale_id: &str,
        reservation_id: &str,
        customer: &str,
        payment_ref: &str,
    ) -> EngineResult<Confirmed> {
        let k = self.keys(sale_id);
        let order_id = uuid::Uuid::now_v7().to_string();
        let r = self
            .run(
                Self::hold_call(&self.scripts.confirm, &k)
                    .key(&k.outbox)
                    .arg(reservation_id)
                    .arg(customer)
                    .arg(order_id)
                    .arg(payment_ref)
                    .arg(sale_id),
            )
            .await?
            .expect(&["confirmed"])?;
        let (rid, rec) = r.record()?;
        let order = rec
            .order(&rid, sale_id)
            .ok_or_else(|| EngineError::Corrupt("confirmed record without order".into()))?;
        Ok(Confirmed {
            reservation: rec.reservation(&rid, sale_id),
            order,
        })
    }

    /// Releases a hold. `customer` is `None` when an admin releases.
    pub async fn release(
        &self,
        sale_id: &str,
        reservation_id: &str,
        customer: Option<&str>,
    ) -> EngineResult<Reservation> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                Self::hold_call(&self.scripts.release, &k)
                    .arg(reservation_id)
                    .arg(customer.unwrap_or("")),
            )
            .await?
            .expect(&["released"])?;
        self.soldout.forget(sale_id);
        let (rid, rec) = r.record()?;
        Ok(rec.reservation(&rid, sale_id))
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
    /// deadline. Returns how many it expired and whether more are due.
    pub async fn expire_due(&self, sale_id: &str, batch: u32) -> EngineResult<(u64, bool)> {
        let k = self.keys(sale_id);
        let r = self
            .run(Self::hold_call(&self.scripts.expire, &k).arg(batch))
            .await?
            .expect(&["ok"])?;
        Ok((r.int(0)?.max(0) as u64, r.int(1)? == 1))
    }

    /// Applies an admin adjustment once (by its id). Returns the figures
    /// before and after.
    pub async fn adjust_sale(
        &self,
        sale_id: &str,
        adjustment_id: &str,
        stock_delta: i64,
        ends_ms: Option<i64>,
        paused: Option<bool>,
    ) -> EngineResult<(Figures, Figures)> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .adjust_sale
                    .key(&k.sale)
                    .key(&k.adjustments)
                    .arg(adjustment_id)
                    .arg(stock_delta)
                    .arg(ends_ms.map(|v| v.to_string()).unwrap_or_default())
                    .arg(paused.map(|p| if p { "1" } else { "0" }).unwrap_or("")),
            )
            .await?
            .expect(&["applied", "already_applied"])?;
        self.soldout.forget(sale_id);
        let figures = |i| {
            serde_json::from_str::<Figures>(&r.text(i)?)
                .map_err(|e| EngineError::Corrupt(format!("figures: {e}")))
        };
        Ok((figures(0)?, figures(1)?))
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

    /// Recomputes held, sold and the customers' counts from the reservation
    /// records, with `total` from the schedule. `Ok(None)`: more units are
    /// held and sold than the total, and nothing was changed.
    pub async fn recount(&self, sale_id: &str, total: i64) -> EngineResult<Option<Stock>> {
        let k = self.keys(sale_id);
        let r = self
            .run(Self::hold_call(&self.scripts.recount, &k).arg(total))
            .await?
            .expect(&["recounted", "overcommitted"])?;
        self.soldout.forget(sale_id);
        if r.word == "overcommitted" {
            return Ok(None);
        }
        Ok(Some(Stock {
            total: r.int(0)?,
            available: r.int(1)?,
            held: r.int(2)?,
            sold: r.int(3)?,
        }))
    }

    /// Replaces the sale's Redis state with `restore`, atomically. Refused
    /// (`Err(outbox entries)`) while confirmed orders wait in the outbox.
    pub async fn rebuild(&self, restore: &Restore<'_>) -> EngineResult<Result<Stock, i64>> {
        let def = restore.def;
        let k = self.keys(&def.id);
        let json = serde_json::to_string(def)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        let mut conn = self.conn.clone();
        let (registry, id) = (keys::registry(&self.prefix), def.id.clone());
        self.bounded(async move { conn.sadd::<_, _, ()>(registry, id).await })
            .await?;
        let mut inv = Self::hold_call(&self.scripts.rebuild, &k);
        inv.key(&k.outbox)
            .arg(json)
            .arg(restore.total)
            .arg(crate::domain::to_ms(def.starts_at))
            .arg(restore.ends_ms)
            .arg(def.per_customer_limit)
            .arg(i64::from(def.hold_seconds) * 1000)
            .arg(def.price_cents)
            .arg(&def.currency)
            .arg(if restore.paused { "1" } else { "0" })
            .arg(restore.sold);
        for (customer, units) in restore.per_customer {
            inv.arg(customer).arg(*units);
        }
        let r = self.run(&inv).await?;
        self.soldout.forget(&def.id);
        match r.word.as_str() {
            "outbox_not_empty" => Ok(Err(r.int(0)?)),
            "oversold" => Err(EngineError::Corrupt(format!(
                "Postgres has more units sold than the total of sale {}",
                def.id
            ))),
            _ => {
                let r = r.expect(&["rebuilt"])?;
                Ok(Ok(Stock {
                    total: r.int(0)?,
                    available: r.int(1)?,
                    held: 0,
                    sold: r.int(2)?,
                }))
            }
        }
    }
}
