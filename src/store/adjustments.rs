//! The `sale_adjustments` table: the audit of admin changes, recorded before
//! Redis is touched and settled after.

use sqlx::postgres::PgPool;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreResult;
use crate::domain::SaleId;

/// An admin's change, recorded before Redis is touched.
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub id: Uuid,
    pub sale_id: SaleId,
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
    let inserted = sqlx::query!(
        "INSERT INTO sale_adjustments
             (id, sale_id, actor, stock_delta, ends_at, paused, state, idempotency_key, fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)
         ON CONFLICT (sale_id, actor, idempotency_key) WHERE idempotency_key IS NOT NULL
         DO NOTHING",
        adj.id,
        adj.sale_id.as_str(),
        adj.actor,
        adj.stock_delta,
        adj.ends_at,
        adj.paused,
        key.map(|k| k.key),
        key.map(|k| k.fingerprint),
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The adjustment an admin's key names on a sale.
pub async fn keyed_adjustment(
    db: &PgPool,
    sale_id: &SaleId,
    actor: &str,
    key: &str,
) -> StoreResult<Option<KeyedAdjustment>> {
    let row = sqlx::query!(
        "SELECT id, fingerprint, state, outcome, response FROM sale_adjustments
         WHERE sale_id = $1 AND actor = $2 AND idempotency_key = $3",
        sale_id.as_str(),
        actor,
        key,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| KeyedAdjustment {
        id: row.id,
        fingerprint: row.fingerprint.unwrap_or_default(),
        state: AdjustmentState::parse(&row.state),
        outcome: row.outcome,
        response: row.response,
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
    let mut tx = super::begin(db).await?;
    let moved = sqlx::query!(
        "UPDATE sale_adjustments SET idempotency_key = NULL
         WHERE id = $1 AND idempotency_key = $2 AND state = 'rejected' AND outcome = $3",
        voided,
        key.key,
        VOIDED,
    )
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
    sqlx::query!(
        "UPDATE sale_adjustments SET state = $2, before = $3, after = $4, outcome = $5
         WHERE id = $1 AND state = 'pending'",
        id,
        state,
        before,
        after,
        outcome,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Keeps the answer of the call that applied a keyed adjustment, for its
/// retries.
pub async fn keep_response(db: &PgPool, id: Uuid, response: &serde_json::Value) -> StoreResult<()> {
    sqlx::query!(
        "UPDATE sale_adjustments SET response = $2 WHERE id = $1 AND response IS NULL",
        id,
        response,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Pending adjustments of a sale recorded at least `min_age` ago.
pub async fn pending_adjustments(
    db: &PgPool,
    sale_id: &SaleId,
    min_age: Duration,
) -> StoreResult<Vec<Uuid>> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM sale_adjustments
         WHERE sale_id = $1 AND state = 'pending' AND at <= now() - $2 * interval '1 millisecond'
         ORDER BY at",
        sale_id.as_str(),
        min_age.as_millis() as f64,
    )
    .fetch_all(db)
    .await?)
}

/// Ids of a sale's adjustments settled as applied, and as rejected.
pub async fn settled_adjustments(
    db: &PgPool,
    sale_id: &SaleId,
) -> StoreResult<(Vec<String>, Vec<String>)> {
    let rows = sqlx::query!(
        "SELECT id, state FROM sale_adjustments WHERE sale_id = $1 AND state <> 'pending'",
        sale_id.as_str(),
    )
    .fetch_all(db)
    .await?;
    let (mut applied, mut rejected) = (Vec::new(), Vec::new());
    for row in rows {
        match AdjustmentState::parse(&row.state) {
            AdjustmentState::Applied => applied.push(row.id.to_string()),
            _ => rejected.push(row.id.to_string()),
        }
    }
    Ok((applied, rejected))
}
