//! The `sales` table: what marketing scheduled, whether Redis has it, and
//! its final figures once archived.

use sqlx::postgres::PgPool;
use sqlx::Row;
use std::time::Duration;
use time::OffsetDateTime;

use super::{StoreError, StoreResult};
use crate::domain::{SaleDef, WaitingRoomDef};

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
            .try_get::<Option<sqlx::types::Json<WaitingRoomDef>>, _>("queue")?
            .map(|q| q.0),
    })
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
