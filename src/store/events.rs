//! The `events` table (the events for the store, in the columns Debezium's
//! outbox event router reads) and the deliveries each new event gets.
//! Written by the flush in the transaction of the orders.

use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::event::Event;
use crate::domain::SaleId;

/// Writes a batch of events in one round trip. An event already there (its
/// id is fixed by the script that made the change: a batch flushed twice)
/// is skipped. Returns the events actually inserted, `(id, type)`.
pub async fn insert_events<'e>(
    db: impl sqlx::PgExecutor<'e>,
    events: &[Event],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: fn(&Event) -> String| events.iter().map(f).collect::<Vec<_>>();
    let rows = sqlx::query!(
        "INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                              $6::text[])
         ON CONFLICT (id) DO NOTHING
         RETURNING id, type",
        &col(|e| e.id.clone()),
        &col(|e| e.aggregatetype.to_string()),
        &col(|e| e.aggregateid.clone()),
        &col(|e| e.kind.clone()),
        &events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        &col(|e| e.sale_id.clone()),
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.r#type)).collect())
}

/// One pending delivery per new event and endpoint subscribed to its type
/// now (enabled, not deleted; `events` NULL: every type). `inserted` are
/// the events [`insert_events`] just wrote, so an event flushed again gets
/// no delivery it already had, nor one to an endpoint registered since.
pub async fn insert_deliveries<'e>(
    db: impl sqlx::PgExecutor<'e>,
    inserted: &[(String, String)],
) -> Result<u64, sqlx::Error> {
    if inserted.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = inserted.iter().map(|(id, _)| id.clone()).collect();
    let types: Vec<String> = inserted.iter().map(|(_, t)| t.clone()).collect();
    let result = sqlx::query!(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id)
         SELECT w.id, e.id
         FROM UNNEST($1::text[], $2::text[]) AS e (id, type)
         JOIN webhook_endpoints w
           ON w.enabled AND w.deleted_at IS NULL
          AND (w.events IS NULL OR e.type = ANY (w.events))
         ON CONFLICT DO NOTHING",
        &ids,
        &types,
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// The largest `n` of the sale's `<sale>.sale.sold_out.<n>` events (0 for
/// none): a rebuild keeps the sale's count of sell-outs at least this.
pub async fn sold_outs(db: &PgPool, sale_id: &SaleId) -> StoreResult<i64> {
    let n = sqlx::query_scalar!(
        r#"SELECT coalesce(max(substring(id FROM '\.sale\.sold_out\.([0-9]{1,18})$')::bigint), 0)
                  AS "n!"
           FROM events WHERE sale_id = $1 AND type = 'sale.sold_out'"#,
        sale_id.as_str(),
    )
    .fetch_one(db)
    .await?;
    Ok(n)
}

/// Deletes up to `batch` events created before `before` (their deliveries
/// go with them, by cascade). Returns how many went; the caller repeats
/// while a batch was full, so no statement holds its locks for long.
pub async fn delete_old_events(
    db: &PgPool,
    before: OffsetDateTime,
    batch: i64,
) -> StoreResult<u64> {
    let result = sqlx::query!(
        "DELETE FROM events
         WHERE id IN (SELECT id FROM events WHERE created_at < $1 LIMIT $2)",
        before,
        batch,
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}
