//! Postgres: the durable record. `sales` is what marketing scheduled (and the
//! base for rebuilding Redis), `orders` what customers bought,
//! `sale_adjustments` the audit of admin changes.
//!
//! Nothing on the reserve path touches Postgres: a spike lands on Redis only.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::Settings;
pub use crate::domain::NewOrder;
use crate::domain::{QueueDef, SaleDef};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres did not answer, or answered with an error (the source says
    /// which; callers that care ask `is_permanent`).
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    BadUrl(#[source] sqlx::Error),
    /// A sale's row conflicted on insert, then was gone when read: it was
    /// deleted in between (by hand; flashsale never deletes sales).
    #[error("sale `{0}` vanished after a conflicting insert")]
    SaleVanished(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A pool that connects lazily: the gateway starts (and serves the hot path)
/// while Postgres is down.
pub fn pool(settings: &Settings) -> StoreResult<PgPool> {
    let opts = connect_options(settings.database.url.expose_secret())?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(settings.database_timeout())
        .connect_lazy_with(opts))
}

fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(StoreError::BadUrl)
}

/// Creates the database if missing, then applies the migrations. Idempotent.
pub async fn migrate(url: &str) -> StoreResult<()> {
    if !Postgres::database_exists(url).await? {
        // Two migrators racing: the loser's CREATE fails, the database exists.
        if let Err(e) = Postgres::create_database(url).await {
            if !Postgres::database_exists(url).await? {
                return Err(e.into());
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options(url)?)
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// The outcome of scheduling a sale in Postgres.
#[derive(Debug)]
pub enum Scheduled {
    Inserted,
    /// A sale with this id exists; here is its definition.
    Existing(SaleDef),
}

/// The sale and, if it has one, its waiting room, in one transaction.
pub async fn insert_sale(db: &PgPool, def: &SaleDef) -> StoreResult<Scheduled> {
    let queue = def.queue.as_ref().map(sqlx::types::Json);
    let mut tx = db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO sales (id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                            per_customer_limit, hold_seconds, queue)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&def.id)
    .bind(&def.sku)
    .bind(&def.name)
    .bind(def.price_cents)
    .bind(&def.currency)
    .bind(def.stock)
    .bind(def.starts_at)
    .bind(def.ends_at)
    .bind(def.per_customer_limit as i32)
    .bind(def.hold_seconds as i32)
    .bind(queue)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        if let Some(queue) = queue {
            sqlx::query("INSERT INTO sale_queues (sale_id, config) VALUES ($1, $2)")
                .bind(&def.id)
                .bind(queue)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        return Ok(Scheduled::Inserted);
    }
    tx.rollback().await?;
    let existing = sale(db, &def.id)
        .await?
        .ok_or_else(|| StoreError::SaleVanished(def.id.clone()))?;
    Ok(Scheduled::Existing(existing))
}

const SALE_COLUMNS: &str = "id, sku, name, price_cents, currency, stock, starts_at, ends_at,
     per_customer_limit, hold_seconds, queue";

fn sale_from_row(row: &sqlx::postgres::PgRow) -> Result<SaleDef, sqlx::Error> {
    Ok(SaleDef {
        id: row.try_get("id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
        currency: row.try_get("currency")?,
        stock: row.try_get("stock")?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        per_customer_limit: row.try_get::<i32, _>("per_customer_limit")? as u32,
        hold_seconds: row.try_get::<i32, _>("hold_seconds")? as u32,
        queue: row
            .try_get::<Option<sqlx::types::Json<QueueDef>>, _>("queue")?
            .map(|q| q.0),
    })
}

/// A waiting room as Postgres keeps it.
#[derive(Debug, Clone)]
pub struct Room {
    pub sale_id: String,
    pub config: QueueDef,
    /// With its SHA-256 (hex); committed when the room opened.
    pub seed: Option<(String, String)>,
    /// Fixed at the seal.
    pub members: Option<u64>,
    /// The positions admitted, kept when the sale is archived.
    pub admitted: Option<u64>,
}

fn room_from_row(row: &sqlx::postgres::PgRow) -> Result<Room, sqlx::Error> {
    let seed: Option<String> = row.try_get("seed")?;
    let sha: Option<String> = row.try_get("seed_sha256")?;
    Ok(Room {
        sale_id: row.try_get("sale_id")?,
        config: row.try_get::<sqlx::types::Json<QueueDef>, _>("config")?.0,
        seed: seed.zip(sha),
        members: row
            .try_get::<Option<i64>, _>("members")?
            .and_then(|m| u64::try_from(m).ok()),
        admitted: row
            .try_get::<Option<i64>, _>("admitted")?
            .and_then(|m| u64::try_from(m).ok()),
    })
}

const ROOM_COLUMNS: &str = "sale_id, config, seed, seed_sha256, members, admitted";

pub async fn room(db: &PgPool, sale_id: &str) -> StoreResult<Option<Room>> {
    let row = sqlx::query(&format!(
        "SELECT {ROOM_COLUMNS} FROM sale_queues WHERE sale_id = $1"
    ))
    .bind(sale_id)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(room_from_row).transpose()?)
}

/// The rooms the worker tends: those of sales not archived that have not
/// ended a day ago (their admissions may still be running late).
pub async fn rooms_to_tend(db: &PgPool) -> StoreResult<Vec<Room>> {
    let rows = sqlx::query(&format!(
        "SELECT {ROOM_COLUMNS} FROM sale_queues q JOIN sales s ON s.id = q.sale_id
         WHERE s.archived_at IS NULL AND s.ends_at > now() - interval '1 day'
         ORDER BY q.sale_id"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(room_from_row)
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Commits a seed for the room if it has none; returns the room as kept
/// (with whichever seed won).
pub async fn commit_seed(
    db: &PgPool,
    sale_id: &str,
    seed: &str,
    sha: &str,
) -> StoreResult<Option<Room>> {
    sqlx::query(
        "UPDATE sale_queues SET seed = $2, seed_sha256 = $3, opened_at = now()
         WHERE sale_id = $1 AND seed IS NULL",
    )
    .bind(sale_id)
    .bind(seed)
    .bind(sha)
    .execute(db)
    .await?;
    room(db, sale_id).await
}

/// Keeps the sealed member count if none is kept; returns the room as
/// kept (with whichever count won).
pub async fn keep_members(db: &PgPool, sale_id: &str, members: u64) -> StoreResult<Option<Room>> {
    let members = i64::try_from(members).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE sale_queues SET members = $2, sealed_at = now()
         WHERE sale_id = $1 AND members IS NULL AND seed IS NOT NULL",
    )
    .bind(sale_id)
    .bind(members)
    .execute(db)
    .await?;
    room(db, sale_id).await
}

/// Sets the room of a sale (adding one, or changing one not yet open).
/// `false`: the room has opened and keeps its configuration. The same
/// configuration again is a success, so a retried PATCH passes.
pub async fn set_room(db: &PgPool, sale_id: &str, config: &QueueDef) -> StoreResult<bool> {
    let changed = sqlx::query(
        "INSERT INTO sale_queues (sale_id, config) VALUES ($1, $2)
         ON CONFLICT (sale_id) DO UPDATE SET config = EXCLUDED.config
         WHERE sale_queues.seed IS NULL OR sale_queues.config = EXCLUDED.config",
    )
    .bind(sale_id)
    .bind(sqlx::types::Json(config))
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

pub async fn sale(db: &PgPool, id: &str) -> StoreResult<Option<SaleDef>> {
    let row = sqlx::query(&format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(sale_from_row).transpose()?)
}

/// Sales written to Postgres that no gateway has confirmed loaded into Redis,
/// with the reason the last load failed. Sales that never failed come first,
/// so a batch of failing ones cannot keep the others waiting.
pub async fn sales_not_loaded(db: &PgPool) -> StoreResult<Vec<(SaleDef, Option<String>)>> {
    let rows = sqlx::query(&format!(
        "SELECT {SALE_COLUMNS}, load_error FROM sales WHERE loaded_at IS NULL
         ORDER BY load_error IS NOT NULL, created_at LIMIT 100"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|row| Ok((sale_from_row(row)?, row.try_get("load_error")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

pub async fn mark_loaded(db: &PgPool, id: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE sales SET loaded_at = now(), load_error = NULL WHERE id = $1 AND loaded_at IS NULL",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records why a sale could not be loaded (shown by reconcile).
pub async fn mark_load_failed(db: &PgPool, id: &str, why: &str) -> StoreResult<()> {
    sqlx::query("UPDATE sales SET load_error = $2 WHERE id = $1 AND loaded_at IS NULL")
        .bind(id)
        .bind(why)
        .execute(db)
        .await?;
    Ok(())
}

/// Why the sale's load failed, while it is not loaded.
pub async fn load_error(db: &PgPool, id: &str) -> StoreResult<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT load_error FROM sales WHERE id = $1 AND loaded_at IS NULL")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.and_then(|(e,)| e))
}

/// An admin's change, recorded before Redis is touched.
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub id: Uuid,
    pub sale_id: String,
    pub actor: String,
    pub stock_delta: i64,
    pub ends_at: Option<OffsetDateTime>,
    pub paused: Option<bool>,
}

/// The `Idempotency-Key` of a PATCH and the fingerprint of its change.
#[derive(Debug, Clone)]
pub struct AdjustmentKey<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
}

/// An adjustment as a retry with its key finds it.
#[derive(Debug, Clone)]
pub struct KeyedAdjustment {
    pub id: Uuid,
    pub fingerprint: String,
    pub state: AdjustmentState,
    /// The contract code it was refused with (`voided`: a repair found it
    /// never applied).
    pub outcome: Option<String>,
    /// The answer of the call that applied it.
    pub response: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentState {
    Pending,
    Applied,
    Rejected,
}

impl AdjustmentState {
    fn parse(s: &str) -> AdjustmentState {
        match s {
            "applied" => AdjustmentState::Applied,
            "rejected" => AdjustmentState::Rejected,
            _ => AdjustmentState::Pending,
        }
    }
}

/// The outcome code a repair gives an adjustment it settled as never applied.
pub const VOIDED: &str = "voided";

/// Records an adjustment as pending. With a key, the row carries it; a row
/// with the same key already there wins, and is returned instead.
pub async fn record_adjustment(
    db: &PgPool,
    adj: &Adjustment,
    key: Option<&AdjustmentKey<'_>>,
) -> StoreResult<Option<KeyedAdjustment>> {
    let inserted = insert_adjustment(db, adj, key).await?;
    match key {
        Some(key) if !inserted => keyed_adjustment(db, &adj.sale_id, &adj.actor, key.key).await,
        _ => Ok(None),
    }
}

async fn insert_adjustment(
    db: impl sqlx::PgExecutor<'_>,
    adj: &Adjustment,
    key: Option<&AdjustmentKey<'_>>,
) -> StoreResult<bool> {
    let inserted = sqlx::query(
        "INSERT INTO sale_adjustments
             (id, sale_id, actor, stock_delta, ends_at, paused, state, idempotency_key, fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)
         ON CONFLICT (sale_id, actor, idempotency_key) WHERE idempotency_key IS NOT NULL
         DO NOTHING",
    )
    .bind(adj.id)
    .bind(&adj.sale_id)
    .bind(&adj.actor)
    .bind(adj.stock_delta)
    .bind(adj.ends_at)
    .bind(adj.paused)
    .bind(key.map(|k| k.key))
    .bind(key.map(|k| k.fingerprint))
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The adjustment an admin's key names on a sale.
pub async fn keyed_adjustment(
    db: &PgPool,
    sale_id: &str,
    actor: &str,
    key: &str,
) -> StoreResult<Option<KeyedAdjustment>> {
    let row = sqlx::query(
        "SELECT id, fingerprint, state, outcome, response FROM sale_adjustments
         WHERE sale_id = $1 AND actor = $2 AND idempotency_key = $3",
    )
    .bind(sale_id)
    .bind(actor)
    .bind(key)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(KeyedAdjustment {
        id: row.try_get("id")?,
        fingerprint: row
            .try_get::<Option<String>, _>("fingerprint")?
            .unwrap_or_default(),
        state: AdjustmentState::parse(row.try_get("state")?),
        outcome: row.try_get("outcome")?,
        response: row.try_get("response")?,
    }))
}

/// Moves a key from an adjustment a repair voided to a new pending one, so
/// the retry applies the change once after all. `false`: another retry
/// moved it first (read the key again).
pub async fn rekey_adjustment(
    db: &PgPool,
    voided: Uuid,
    adj: &Adjustment,
    key: &AdjustmentKey<'_>,
) -> StoreResult<bool> {
    let mut tx = db.begin().await?;
    let moved = sqlx::query(
        "UPDATE sale_adjustments SET idempotency_key = NULL
         WHERE id = $1 AND idempotency_key = $2 AND state = 'rejected' AND outcome = $3",
    )
    .bind(voided)
    .bind(key.key)
    .bind(VOIDED)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(false);
    }
    // The key was just freed inside this transaction, so the insert finds
    // no row holding it; if it ever did, nothing is committed.
    if !insert_adjustment(&mut *tx, adj, Some(key)).await? {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// How an adjustment ended.
#[derive(Debug, Clone)]
pub enum Settlement<'a> {
    /// Applied, with the figures before and after when known (a repair that
    /// settles a pending row does not know them).
    Applied {
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    },
    /// Refused with a contract code, or `VOIDED`.
    Rejected { outcome: &'a str },
}

/// Closes a pending adjustment. A row already settled keeps its state: Redis
/// decided once, and both the PATCH and a repair only ever report it.
pub async fn settle_adjustment(
    db: &PgPool,
    id: Uuid,
    settlement: &Settlement<'_>,
) -> StoreResult<()> {
    let (state, before, after, outcome) = match settlement {
        Settlement::Applied { before, after } => ("applied", before.clone(), after.clone(), None),
        Settlement::Rejected { outcome } => ("rejected", None, None, Some(*outcome)),
    };
    sqlx::query(
        "UPDATE sale_adjustments SET state = $2, before = $3, after = $4, outcome = $5
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(state)
    .bind(before)
    .bind(after)
    .bind(outcome)
    .execute(db)
    .await?;
    Ok(())
}

/// Keeps the answer of the call that applied a keyed adjustment, for its
/// retries.
pub async fn keep_response(db: &PgPool, id: Uuid, response: &serde_json::Value) -> StoreResult<()> {
    sqlx::query("UPDATE sale_adjustments SET response = $2 WHERE id = $1 AND response IS NULL")
        .bind(id)
        .bind(response)
        .execute(db)
        .await?;
    Ok(())
}

/// Pending adjustments of a sale recorded at least `min_age` ago.
pub async fn pending_adjustments(
    db: &PgPool,
    sale_id: &str,
    min_age: Duration,
) -> StoreResult<Vec<Uuid>> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM sale_adjustments
         WHERE sale_id = $1 AND state = 'pending' AND at <= now() - $2 * interval '1 millisecond'
         ORDER BY at",
    )
    .bind(sale_id)
    .bind(min_age.as_millis() as f64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Ids of a sale's adjustments settled as applied, and as rejected.
pub async fn settled_adjustments(
    db: &PgPool,
    sale_id: &str,
) -> StoreResult<(Vec<String>, Vec<String>)> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM sale_adjustments WHERE sale_id = $1 AND state <> 'pending'",
    )
    .bind(sale_id)
    .fetch_all(db)
    .await?;
    let (mut applied, mut rejected) = (Vec::new(), Vec::new());
    for (id, state) in rows {
        match AdjustmentState::parse(&state) {
            AdjustmentState::Applied => applied.push(id.to_string()),
            _ => rejected.push(id.to_string()),
        }
    }
    Ok((applied, rejected))
}

pub async fn ping(db: &PgPool) -> StoreResult<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// Writes a batch of orders in one round trip. An order already there (same
/// reservation id: a batch flushed twice after a crash) is skipped, so a
/// retry never writes a second row. Returns the rows actually inserted.
pub async fn insert_orders(db: &PgPool, orders: &[NewOrder]) -> Result<u64, sqlx::Error> {
    let col = |f: fn(&NewOrder) -> String| orders.iter().map(f).collect::<Vec<_>>();
    let result = sqlx::query(
        "INSERT INTO orders (order_id, reservation_id, sale_id, customer_id, quantity,
                             price_cents, currency, payment_ref, confirmed_at, expires_at,
                             confirmed_by)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],
                              $6::bigint[], $7::text[], $8::text[], $9::timestamptz[],
                              $10::timestamptz[], $11::text[])
         ON CONFLICT (reservation_id) DO NOTHING",
    )
    .bind(orders.iter().map(|o| o.order_id).collect::<Vec<_>>())
    .bind(col(|o| o.reservation_id.clone()))
    .bind(col(|o| o.sale_id.clone()))
    .bind(col(|o| o.customer_id.clone()))
    .bind(orders.iter().map(|o| o.quantity).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.price_cents).collect::<Vec<_>>())
    .bind(col(|o| o.currency.clone()))
    .bind(col(|o| o.payment_ref.clone()))
    .bind(orders.iter().map(|o| o.confirmed_at).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.expires_at).collect::<Vec<_>>())
    .bind(
        orders
            .iter()
            .map(|o| o.confirmed_by.clone())
            .collect::<Vec<_>>(),
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Whether Postgres refused the data itself (it will refuse it again) rather
/// than failing to answer: integrity (class 23) and data (class 22) errors.
pub fn is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// Every scheduled sale, by start time.
pub async fn sales(db: &PgPool) -> StoreResult<Vec<SaleDef>> {
    let rows = sqlx::query(&format!(
        "SELECT {SALE_COLUMNS} FROM sales ORDER BY starts_at, id"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(sale_from_row).collect::<Result<_, _>>()?)
}

/// A sale as Postgres knows it: the scheduled stock plus applied
/// adjustments, the latest `ends_at` and pause, and its orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ledger {
    pub scheduled_total: i64,
    #[serde(skip)]
    pub ends_at: OffsetDateTime,
    #[serde(skip)]
    pub paused: bool,
    pub orders: i64,
    pub order_units: i64,
}

pub async fn ledger(db: &PgPool, sale: &SaleDef) -> StoreResult<Ledger> {
    let (delta, ends_at, paused): (i64, Option<OffsetDateTime>, Option<bool>) = sqlx::query_as(
        "SELECT coalesce(sum(stock_delta), 0)::bigint,
                (SELECT ends_at FROM sale_adjustments
                  WHERE sale_id = $1 AND state = 'applied' AND ends_at IS NOT NULL
                  ORDER BY at DESC, id DESC LIMIT 1),
                (SELECT paused FROM sale_adjustments
                  WHERE sale_id = $1 AND state = 'applied' AND paused IS NOT NULL
                  ORDER BY at DESC, id DESC LIMIT 1)
         FROM sale_adjustments WHERE sale_id = $1 AND state = 'applied'",
    )
    .bind(&sale.id)
    .fetch_one(db)
    .await?;
    let (orders, order_units): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
    )
    .bind(&sale.id)
    .fetch_one(db)
    .await?;
    Ok(Ledger {
        scheduled_total: sale.stock + delta,
        ends_at: ends_at.unwrap_or(sale.ends_at),
        paused: paused.unwrap_or(false),
        orders,
        order_units,
    })
}

/// Units ordered per customer (their confirmed purchases count against the
/// per-customer limit after a rebuild).
pub async fn units_per_customer(db: &PgPool, sale_id: &str) -> StoreResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT customer_id, sum(quantity)::bigint FROM orders WHERE sale_id = $1 GROUP BY 1",
    )
    .bind(sale_id)
    .fetch_all(db)
    .await?)
}

/// Sales not yet archived whose scheduled end is at least `retention` ago
/// (a moved end is judged by the caller, from the ledger).
pub async fn sales_to_archive(db: &PgPool, retention: Duration) -> StoreResult<Vec<SaleDef>> {
    let rows = sqlx::query(&format!(
        "SELECT {SALE_COLUMNS} FROM sales
         WHERE archived_at IS NULL AND ends_at <= now() - $1 * interval '1 second'
         ORDER BY ends_at LIMIT 100"
    ))
    .bind(retention.as_secs_f64())
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(sale_from_row).collect::<Result<_, _>>()?)
}

/// Keeps a closed sale's final figures, before its Redis keys go.
pub async fn keep_final(db: &PgPool, id: &str, total: i64, sold: i64) -> StoreResult<()> {
    sqlx::query("UPDATE sales SET final_total = $2, final_sold = $3 WHERE id = $1")
        .bind(id)
        .bind(total)
        .bind(sold)
        .execute(db)
        .await?;
    Ok(())
}

/// Keeps how many positions a room admitted, before Redis forgets it.
pub async fn keep_admitted(db: &PgPool, sale_id: &str, admitted: u64) -> StoreResult<()> {
    sqlx::query("UPDATE sale_queues SET admitted = $2 WHERE sale_id = $1")
        .bind(sale_id)
        .bind(i64::try_from(admitted).unwrap_or(i64::MAX))
        .execute(db)
        .await?;
    Ok(())
}

/// Marks a sale archived: its Redis keys are gone.
pub async fn mark_archived(db: &PgPool, id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE sales SET archived_at = now() WHERE id = $1 AND archived_at IS NULL")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Which of `ids` are archived.
pub async fn archived_among(db: &PgPool, ids: &[String]) -> StoreResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM sales WHERE id = ANY($1) AND archived_at IS NOT NULL")
            .bind(ids)
            .fetch_all(db)
            .await?,
    )
}

/// A sale closed for archiving (final figures kept): its definition, final
/// total and sold, and its end as last moved.
pub async fn closed_sale(db: &PgPool, id: &str) -> StoreResult<Option<(SaleDef, i64, i64)>> {
    let row = sqlx::query(&format!(
        "SELECT {SALE_COLUMNS}, final_total, final_sold FROM sales
         WHERE id = $1 AND final_total IS NOT NULL"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((
        sale_from_row(&row)?,
        row.try_get("final_total")?,
        row.try_get("final_sold")?,
    )))
}

/// The order of a reservation, from Postgres.
pub async fn order_of(db: &PgPool, reservation_id: &str) -> StoreResult<Option<NewOrder>> {
    let row = sqlx::query(
        "SELECT order_id, reservation_id, sale_id, customer_id, quantity, price_cents, currency,
                payment_ref, confirmed_at, expires_at, confirmed_by
         FROM orders WHERE reservation_id = $1",
    )
    .bind(reservation_id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(NewOrder {
        order_id: row.try_get("order_id")?,
        reservation_id: row.try_get("reservation_id")?,
        sale_id: row.try_get("sale_id")?,
        customer_id: row.try_get("customer_id")?,
        quantity: row.try_get("quantity")?,
        price_cents: row.try_get("price_cents")?,
        currency: row.try_get("currency")?,
        payment_ref: row.try_get("payment_ref")?,
        confirmed_at: row.try_get("confirmed_at")?,
        expires_at: row.try_get("expires_at")?,
        confirmed_by: row.try_get("confirmed_by")?,
    }))
}

/// Copies dead letters of a sale to Postgres (again is a no-op).
pub async fn keep_dead_letters(
    db: &PgPool,
    sale_id: &str,
    letters: &[(String, serde_json::Value)],
) -> StoreResult<()> {
    for (entry_id, fields) in letters {
        sqlx::query(
            "INSERT INTO dead_letters (sale_id, entry_id, fields) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(sale_id)
        .bind(entry_id)
        .bind(fields)
        .execute(db)
        .await?;
    }
    Ok(())
}
