//! The `sale_queues` table: each waiting room's configuration, its committed
//! seed and the counts kept past the sale.

use sqlx::postgres::PgPool;
use sqlx::types::Json;

use super::{StoreError, StoreResult};
use crate::domain::{SaleId, WaitingRoomDef};

/// A waiting room as Postgres keeps it.
#[derive(Debug, Clone)]
pub struct WaitingRoom {
    pub sale_id: SaleId,
    pub config: WaitingRoomDef,
    /// With its SHA-256 (hex); committed when the room opened.
    pub seed: Option<(String, String)>,
    /// Fixed at the seal.
    pub members: Option<u64>,
    /// The positions admitted, kept when the sale is archived.
    pub admitted: Option<u64>,
}

/// A room's row, as both queries that read rooms select it.
struct RoomRow {
    sale_id: String,
    config: Json<WaitingRoomDef>,
    seed: Option<String>,
    seed_sha256: Option<String>,
    members: Option<i64>,
    admitted: Option<i64>,
}

impl TryFrom<RoomRow> for WaitingRoom {
    type Error = StoreError;
    fn try_from(row: RoomRow) -> StoreResult<WaitingRoom> {
        Ok(WaitingRoom {
            sale_id: SaleId::try_from(row.sale_id)
                .map_err(|id| StoreError::bad_id("sale_queues", id))?,
            config: row.config.0,
            seed: row.seed.zip(row.seed_sha256),
            members: row.members.and_then(|m| u64::try_from(m).ok()),
            admitted: row.admitted.and_then(|m| u64::try_from(m).ok()),
        })
    }
}

pub async fn waiting_room(db: &PgPool, sale_id: &SaleId) -> StoreResult<Option<WaitingRoom>> {
    let row = sqlx::query_as!(
        RoomRow,
        r#"SELECT sale_id, config AS "config: Json<WaitingRoomDef>", seed, seed_sha256,
                  members, admitted
           FROM sale_queues WHERE sale_id = $1"#,
        sale_id.as_str(),
    )
    .fetch_optional(db)
    .await?;
    row.map(WaitingRoom::try_from).transpose()
}

/// The rooms the worker tends: those of sales not archived that have not
/// ended a day ago (their admissions may still be running late).
pub async fn waiting_rooms_to_tend(db: &PgPool) -> StoreResult<Vec<WaitingRoom>> {
    let rows = sqlx::query_as!(
        RoomRow,
        r#"SELECT sale_id, config AS "config: Json<WaitingRoomDef>", seed, seed_sha256,
                  members, admitted
           FROM sale_queues q JOIN sales s ON s.id = q.sale_id
           WHERE s.archived_at IS NULL AND s.ends_at > now() - interval '1 day'
           ORDER BY q.sale_id"#
    )
    .fetch_all(db)
    .await?;
    rows.into_iter().map(WaitingRoom::try_from).collect()
}

/// Commits a seed for the room if it has none; returns the room as kept
/// (with whichever seed won).
pub async fn commit_seed(
    db: &PgPool,
    sale_id: &SaleId,
    seed: &str,
    sha: &str,
) -> StoreResult<Option<WaitingRoom>> {
    sqlx::query!(
        "UPDATE sale_queues SET seed = $2, seed_sha256 = $3, opened_at = now()
         WHERE sale_id = $1 AND seed IS NULL",
        sale_id.as_str(),
        seed,
        sha,
    )
    .execute(db)
    .await?;
    waiting_room(db, sale_id).await
}

/// Keeps the sealed member count if none is kept; returns the room as
/// kept (with whichever count won).
pub async fn keep_members(
    db: &PgPool,
    sale_id: &SaleId,
    members: u64,
) -> StoreResult<Option<WaitingRoom>> {
    let members = i64::try_from(members).unwrap_or(i64::MAX);
    sqlx::query!(
        "UPDATE sale_queues SET members = $2, sealed_at = now()
         WHERE sale_id = $1 AND members IS NULL AND seed IS NOT NULL",
        sale_id.as_str(),
        members,
    )
    .execute(db)
    .await?;
    waiting_room(db, sale_id).await
}

/// Sets the room of a sale (adding one, or changing one not yet open).
/// `false`: the room has opened and keeps its configuration. The same
/// configuration again is a success, so a retried PATCH passes.
pub async fn set_waiting_room(
    db: &PgPool,
    sale_id: &SaleId,
    config: &WaitingRoomDef,
) -> StoreResult<bool> {
    // `as _`: the room goes in through its own `Json` encoding, where the
    // macros expect a `serde_json::Value`.
    let changed = sqlx::query!(
        "INSERT INTO sale_queues (sale_id, config) VALUES ($1, $2)
         ON CONFLICT (sale_id) DO UPDATE SET config = EXCLUDED.config
         WHERE sale_queues.seed IS NULL OR sale_queues.config = EXCLUDED.config",
        sale_id.as_str(),
        Json(config) as _,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Keeps how many positions a room admitted, before Redis forgets it.
pub async fn keep_admitted(db: &PgPool, sale_id: &SaleId, admitted: u64) -> StoreResult<()> {
    sqlx::query!(
        "UPDATE sale_queues SET admitted = $2 WHERE sale_id = $1",
        sale_id.as_str(),
        i64::try_from(admitted).unwrap_or(i64::MAX),
    )
    .execute(db)
    .await?;
    Ok(())
}
