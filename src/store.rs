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
use crate::domain::SaleDef;
use crate::engine::Figures;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
    #[error("invalid database url: {0}")]
    BadUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
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
    PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl(e.to_string()))
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
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
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

pub async fn insert_sale(db: &PgPool, def: &SaleDef) -> StoreResult<Scheduled> {
    let inserted = sqlx::query(
        "INSERT INTO sales (id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                            per_customer_limit, hold_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
    .execute(db)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Scheduled::Inserted);
    }
    let existing = sale(db, &def.id)
        .await?
        .ok_or_else(|| StoreError::Unavailable("sale vanished after conflict".into()))?;
    Ok(Scheduled::Existing(existing))
}

const SALE_COLUMNS: &str = "id, sku, name, price_cents, currency, stock, starts_at, ends_at,
     per_customer_limit, hold_seconds";

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
    })
}

pub async fn sale(db: &PgPool, id: &str) -> StoreResult<Option<SaleDef>> {
    let row = sqlx::query(&format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(sale_from_row).transpose()?)
}

/// Sales written to Postgres that no gateway has confirmed loaded into Redis.
pub async fn sales_not_loaded(db: &PgPool) -> StoreResult<Vec<SaleDef>> {
    let rows = sqlx::query(&format!(
        "SELECT {SALE_COLUMNS} FROM sales WHERE loaded_at IS NULL ORDER BY created_at LIMIT 100"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(sale_from_row).collect::<Result<_, _>>()?)
}

pub async fn mark_loaded(db: &PgPool, id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE sales SET loaded_at = now() WHERE id = $1 AND loaded_at IS NULL")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
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

pub async fn record_adjustment(db: &PgPool, adj: &Adjustment) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO sale_adjustments (id, sale_id, actor, stock_delta, ends_at, paused, state)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
    )
    .bind(adj.id)
    .bind(&adj.sale_id)
    .bind(&adj.actor)
    .bind(adj.stock_delta)
    .bind(adj.ends_at)
    .bind(adj.paused)
    .execute(db)
    .await?;
    Ok(())
}

/// Closes an adjustment: applied with its figures, or rejected (`None`).
pub async fn settle_adjustment(
    db: &PgPool,
    id: Uuid,
    figures: Option<(&Figures, &Figures)>,
) -> StoreResult<()> {
    let (state, before, after) = match figures {
        Some((b, a)) => (
            "applied",
            serde_json::to_value(b).ok(),
            serde_json::to_value(a).ok(),
        ),
        None => ("rejected", None, None),
    };
    sqlx::query("UPDATE sale_adjustments SET state = $2, before = $3, after = $4 WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(before)
        .bind(after)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn ping(db: &PgPool) -> StoreResult<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// A confirmed order on its way from the outbox to the `orders` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub reservation_id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub quantity: i32,
    pub price_cents: i64,
    pub currency: String,
    pub payment_ref: String,
    pub confirmed_at: OffsetDateTime,
}

/// Writes a batch of orders in one round trip. An order already there (same
/// reservation id: a batch flushed twice after a crash) is skipped, so a
/// retry never writes a second row. Returns the rows actually inserted.
pub async fn insert_orders(db: &PgPool, orders: &[NewOrder]) -> Result<u64, sqlx::Error> {
    let col = |f: fn(&NewOrder) -> String| orders.iter().map(f).collect::<Vec<_>>();
    let result = sqlx::query(
        "INSERT INTO orders (order_id, reservation_id, sale_id, customer_id, quantity,
                             price_cents, currency, payment_ref, confirmed_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],
                              $6::bigint[], $7::text[], $8::text[], $9::timestamptz[])
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
