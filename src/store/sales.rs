//! The `sales` table: what marketing scheduled, whether Redis has it, and
//! its final figures once archived.

use sqlx::postgres::PgPool;
use sqlx::types::Json;
use std::time::Duration;
use time::OffsetDateTime;

use super::{StoreError, StoreResult};
use crate::domain::{SaleDef, SaleId, WaitingRoomDef};

/// The outcome of scheduling a sale in Postgres.
#[derive(Debug)]
pub enum Scheduled {
    Inserted,
    /// A sale with this id exists; here is its definition.
    Existing(SaleDef),
}

/// The sale and, if it has one, its waiting room, in one transaction.
pub async fn insert_sale(db: &PgPool, def: &SaleDef) -> StoreResult<Scheduled> {
    let queue = def.queue.as_ref().map(Json);
    let mut tx = super::begin(db).await?;
    // `as _`: the macros expect a JSONB parameter as a `serde_json::Value`;
    // the room goes in as the same JSON through its own `Json` encoding.
    let inserted = sqlx::query!(
        "INSERT INTO sales (id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                            per_customer_limit, hold_seconds, queue)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO NOTHING",
        def.id.as_str(),
        def.sku,
        def.name,
        def.price_cents,
        def.currency,
        def.stock,
        def.starts_at,
        def.ends_at,
        def.per_customer_limit as i32,
        def.hold_seconds as i32,
        queue as _,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        if let Some(queue) = queue {
            sqlx::query!(
                "INSERT INTO sale_queues (sale_id, config) VALUES ($1, $2)",
                def.id.as_str(),
                queue as _,
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        return Ok(Scheduled::Inserted);
    }
    tx.rollback().await?;
    let existing = sale(db, &def.id)
        .await?
        .ok_or_else(|| StoreError::SaleVanished(def.id.to_string()))?;
    Ok(Scheduled::Existing(existing))
}

/// A sale's row. The macros take their SQL as a literal, so each query that
/// reads a sale spells out these columns (with the room's type override:
/// `queue AS "queue: Json<WaitingRoomDef>"`).
struct SaleRow {
    id: String,
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
    stock: i64,
    starts_at: OffsetDateTime,
    ends_at: OffsetDateTime,
    per_customer_limit: i32,
    hold_seconds: i32,
    queue: Option<Json<WaitingRoomDef>>,
}

impl TryFrom<SaleRow> for SaleDef {
    type Error = StoreError;
    fn try_from(row: SaleRow) -> StoreResult<SaleDef> {
        Ok(SaleDef {
            id: SaleId::try_from(row.id).map_err(|id| StoreError::bad_id("sales", id))?,
            sku: row.sku,
            name: row.name,
            price_cents: row.price_cents,
            currency: row.currency,
            stock: row.stock,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            per_customer_limit: row.per_customer_limit as u32,
            hold_seconds: row.hold_seconds as u32,
            queue: row.queue.map(|q| q.0),
        })
    }
}

/// The sale columns of a row a `query!` returned with more of them (its
/// record type is the macro's own, one per query).
macro_rules! sale_row {
    ($row:expr) => {
        SaleRow {
            id: $row.id,
            sku: $row.sku,
            name: $row.name,
            price_cents: $row.price_cents,
            currency: $row.currency,
            stock: $row.stock,
            starts_at: $row.starts_at,
            ends_at: $row.ends_at,
            per_customer_limit: $row.per_customer_limit,
            hold_seconds: $row.hold_seconds,
            queue: $row.queue,
        }
    };
}

pub async fn sale(db: &PgPool, id: &SaleId) -> StoreResult<Option<SaleDef>> {
    let row = sqlx::query_as!(
        SaleRow,
        r#"SELECT id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                  per_customer_limit, hold_seconds, queue AS "queue: Json<WaitingRoomDef>"
           FROM sales WHERE id = $1"#,
        id.as_str(),
    )
    .fetch_optional(db)
    .await?;
    row.map(SaleDef::try_from).transpose()
}

/// Sales written to Postgres that no gateway has confirmed loaded into Redis,
/// with the reason the last load failed. Sales that never failed come first,
/// so a batch of failing ones cannot keep the others waiting.
pub async fn sales_not_loaded(db: &PgPool) -> StoreResult<Vec<(SaleDef, Option<String>)>> {
    let rows = sqlx::query!(
        r#"SELECT id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                  per_customer_limit, hold_seconds, queue AS "queue: Json<WaitingRoomDef>",
                  load_error
           FROM sales WHERE loaded_at IS NULL
           ORDER BY load_error IS NOT NULL, created_at LIMIT 100"#
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| Ok((SaleDef::try_from(sale_row!(row))?, row.load_error)))
        .collect()
}

pub async fn mark_loaded(db: &PgPool, id: &SaleId) -> StoreResult<()> {
    sqlx::query!(
        "UPDATE sales SET loaded_at = now(), load_error = NULL WHERE id = $1 AND loaded_at IS NULL",
        id.as_str(),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records why a sale could not be loaded (shown by reconcile).
pub async fn mark_load_failed(db: &PgPool, id: &SaleId, why: &str) -> StoreResult<()> {
    sqlx::query!(
        "UPDATE sales SET load_error = $2 WHERE id = $1 AND loaded_at IS NULL",
        id.as_str(),
        why,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Why the sale's load failed, while it is not loaded.
pub async fn load_error(db: &PgPool, id: &SaleId) -> StoreResult<Option<String>> {
    let row = sqlx::query_scalar!(
        "SELECT load_error FROM sales WHERE id = $1 AND loaded_at IS NULL",
        id.as_str(),
    )
    .fetch_optional(db)
    .await?;
    Ok(row.flatten())
}

/// Every scheduled sale, by start time.
pub async fn sales(db: &PgPool) -> StoreResult<Vec<SaleDef>> {
    let rows = sqlx::query_as!(
        SaleRow,
        r#"SELECT id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                  per_customer_limit, hold_seconds, queue AS "queue: Json<WaitingRoomDef>"
           FROM sales ORDER BY starts_at, id"#
    )
    .fetch_all(db)
    .await?;
    rows.into_iter().map(SaleDef::try_from).collect()
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
    // An aggregate without GROUP BY answers one row, its sums coalesced;
    // the subqueries find no applied change when there is none.
    let applied = sqlx::query!(
        r#"SELECT coalesce(sum(stock_delta), 0)::bigint AS "delta!",
                (SELECT ends_at FROM sale_adjustments
                  WHERE sale_id = $1 AND state = 'applied' AND ends_at IS NOT NULL
                  ORDER BY at DESC, id DESC LIMIT 1) AS "ends_at?",
                (SELECT paused FROM sale_adjustments
                  WHERE sale_id = $1 AND state = 'applied' AND paused IS NOT NULL
                  ORDER BY at DESC, id DESC LIMIT 1) AS "paused?"
         FROM sale_adjustments WHERE sale_id = $1 AND state = 'applied'"#,
        sale.id.as_str(),
    )
    .fetch_one(db)
    .await?;
    let ordered = sqlx::query!(
        r#"SELECT count(*) AS "orders!", coalesce(sum(quantity), 0)::bigint AS "units!"
           FROM orders WHERE sale_id = $1"#,
        sale.id.as_str(),
    )
    .fetch_one(db)
    .await?;
    Ok(Ledger {
        scheduled_total: sale.stock + applied.delta,
        ends_at: applied.ends_at.unwrap_or(sale.ends_at),
        paused: applied.paused.unwrap_or(false),
        orders: ordered.orders,
        order_units: ordered.units,
    })
}

/// Sales not yet archived whose scheduled end is at least `retention` ago
/// (a moved end is judged by the caller, from the ledger).
pub async fn sales_to_archive(db: &PgPool, retention: Duration) -> StoreResult<Vec<SaleDef>> {
    let rows = sqlx::query_as!(
        SaleRow,
        r#"SELECT id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                  per_customer_limit, hold_seconds, queue AS "queue: Json<WaitingRoomDef>"
           FROM sales
           WHERE archived_at IS NULL AND ends_at <= now() - $1 * interval '1 second'
           ORDER BY ends_at LIMIT 100"#,
        retention.as_secs_f64(),
    )
    .fetch_all(db)
    .await?;
    rows.into_iter().map(SaleDef::try_from).collect()
}

/// Keeps a closed sale's final figures, before its Redis keys go.
pub async fn keep_final(db: &PgPool, id: &SaleId, total: i64, sold: i64) -> StoreResult<()> {
    sqlx::query!(
        "UPDATE sales SET final_total = $2, final_sold = $3 WHERE id = $1",
        id.as_str(),
        total,
        sold,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Marks a sale archived: its Redis keys are gone.
pub async fn mark_archived(db: &PgPool, id: &SaleId) -> StoreResult<()> {
    sqlx::query!(
        "UPDATE sales SET archived_at = now() WHERE id = $1 AND archived_at IS NULL",
        id.as_str(),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Which of `ids` are archived.
pub async fn archived_among(db: &PgPool, ids: &[SaleId]) -> StoreResult<Vec<SaleId>> {
    let ids: Vec<&str> = ids.iter().map(SaleId::as_str).collect();
    let archived = sqlx::query_scalar!(
        "SELECT id FROM sales WHERE id = ANY($1) AND archived_at IS NOT NULL",
        &ids as &[&str],
    )
    .fetch_all(db)
    .await?;
    archived
        .into_iter()
        .map(|id| SaleId::try_from(id).map_err(|id| StoreError::bad_id("sales", id)))
        .collect()
}

/// A sale closed for archiving (final figures kept): its definition, final
/// total and sold, and its end as last moved.
pub async fn closed_sale(db: &PgPool, id: &SaleId) -> StoreResult<Option<(SaleDef, i64, i64)>> {
    // `!`: both figures are kept together (keep_final); a row with one
    // missing fails to decode, as it did when read by name.
    let row = sqlx::query!(
        r#"SELECT id, sku, name, price_cents, currency, stock, starts_at, ends_at,
                  per_customer_limit, hold_seconds, queue AS "queue: Json<WaitingRoomDef>",
                  final_total AS "final_total!", final_sold AS "final_sold!"
           FROM sales WHERE id = $1 AND final_total IS NOT NULL"#,
        id.as_str(),
    )
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        let (total, sold) = (row.final_total, row.final_sold);
        Ok((SaleDef::try_from(sale_row!(row))?, total, sold))
    })
    .transpose()
}
