//! The `sale_queues` table: each waiting room's configuration, its committed
//! seed and the counts kept past the sale.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::StoreResult;
use crate::domain::WaitingRoomDef;

/// A waiting room as Postgres keeps it.
#[derive(Debug, Clone)]
pub struct WaitingRoom {
    pub sale_id: String,
    pub config: WaitingRoomDef,
    /// With its SHA-256 (hex); committed when the room opened.
    pub seed: Option<(String, String)>,
    /// Fixed at the seal.
    pub members: Option<u64>,
    /// The positions admitted, kept when the sale is archived.
    pub admitted: Option<u64>,
}

fn room_from_row(row: &sqlx::postgres::PgRow) -> Result<WaitingRoom, sqlx::Error> {
    let seed: Option<String> = row.try_get("seed")?;
    let sha: Option<String> = row.try_get("seed_sha256")?;
    Ok(WaitingRoom {
        sale_id: row.try_get("sale_id")?,
        config: row
            .try_get::<sqlx::types::Json<WaitingRoomDef>, _>("config")?
            .0,
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

pub async fn waiting_room(db: &PgPool, sale_id: &str) -> StoreResult<Option<WaitingRoom>> {
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
pub async fn waiting_rooms_to_tend(db: &PgPool) -> StoreResult<Vec<WaitingRoom>> {
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
) -> StoreResult<Option<WaitingRoom>> {
    sqlx::query(
        "UPDATE sale_queues SET seed = $2, seed_sha256 = $3, opened_at = now()
         WHERE sale_id = $1 AND seed IS NULL",
    )
    .bind(sale_id)
    .bind(seed)
    .bind(sha)
    .execute(db)
    .await?;
    waiting_room(db, sale_id).await
}

/// Keeps the sealed member count if none is kept; returns the room as
/// kept (with whichever count won).
pub async fn keep_members(
    db: &PgPool,
    sale_id: &str,
    members: u64,
) -> StoreResult<Option<WaitingRoom>> {
    let members = i64::try_from(members).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE sale_queues SET members = $2, sealed_at = now()
         WHERE sale_id = $1 AND members IS NULL AND seed IS NOT NULL",
    )
    .bind(sale_id)
    .bind(members)
    .execute(db)
    .await?;
    waiting_room(db, sale_id).await
}

/// Sets the room of a sale (adding one, or changing one not yet open).
/// `false`: the room has opened and keeps its configuration. The same
/// configuration again is a success, so a retried PATCH passes.
pub async fn set_waiting_room(
    db: &PgPool,
    sale_id: &str,
    config: &WaitingRoomDef,
) -> StoreResult<bool> {
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

/// Keeps how many positions a room admitted, before Redis forgets it.
pub async fn keep_admitted(db: &PgPool, sale_id: &str, admitted: u64) -> StoreResult<()> {
    sqlx::query("UPDATE sale_queues SET admitted = $2 WHERE sale_id = $1")
        .bind(sale_id)
        .bind(i64::try_from(admitted).unwrap_or(i64::MAX))
        .execute(db)
        .await?;
    Ok(())
}
