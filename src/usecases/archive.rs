//! Retention: a sale that ended and settled leaves Redis
//! `engine.retention_seconds` after its end, and answers from Postgres.
//!
//! The steps, each safe to repeat after a crash at any point:
//! 1. reconcile must agree (no drift but dead letters, which are copied to
//!    Postgres's `dead_letters` first); the sale is then *closed* in Redis
//!    (`lua/archive.lua`: ended, nothing held, outbox empty, every dead
//!    letter copied), after which no adjustment applies, so its figures are
//!    final;
//! 2. the final figures are kept in Postgres: from here on, a read that no
//!    longer finds the sale in Redis answers from them;
//! 3. every Redis key of the sale is removed (idempotency keys included,
//!    from the sale's own index of them), a chunk at a time;
//! 4. the sale is marked archived.
//!
//! Each process then drops its metric series of the sale, whichever process
//! archived it ([`archive_due`]'s next pass).

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::domain::{CustomerId, Order, Reservation, ReservationId, Sale, SaleId, Stock};
use crate::engine::{Engine, EngineError};
use crate::store::{self, StoreError};
use crate::usecases::reconcile::{self, ReconcileError};

/// One pass: archives every sale whose retention is over. Returns how many.
pub async fn archive_due(
    engine: &Engine,
    db: &PgPool,
    retention: Duration,
) -> Result<usize, ReconcileError> {
    forget_archived(db).await?;
    let mut archived = 0;
    let now = OffsetDateTime::now_utc();
    for def in store::sales_to_archive(db, retention).await? {
        // An end moved by an admin counts, not the scheduled one.
        let ledger = store::ledger(db, &def).await?;
        if ledger.ends_at + retention > now {
            continue;
        }
        let report = reconcile::inspect(engine, db, &def, Duration::ZERO).await?;
        let id = &def.id;
        let closed_before = store::closed_sale(db, id).await?.is_some();
        if report.redis.is_none() && !closed_before {
            continue; // lost, not archived: reconcile names it
        }
        if report.redis.is_some() {
            // Reconcile must agree; dead letters are no disagreement here:
            // they are copied to Postgres for the human who deals with them.
            if report
                .drift
                .iter()
                .any(|d| !matches!(d, reconcile::Drift::DeadLetters { .. }))
            {
                continue;
            }
            let copied = copy_dead_letters(engine, db, id).await?;
            let Some(last) = engine.archive(id, copied).await? else {
                continue; // not over (held units, orders waiting)
            };
            store::keep_final(db, id, last.total, last.sold).await?;
            if def.queue.is_some() {
                // The room's public view answers from Postgres after this.
                match engine.waiting_room(id, None).await {
                    Ok(room) => store::keep_admitted(db, id, room.admitted).await?,
                    // A room Redis lost (reconcile names it): nothing to keep.
                    Err(e) if crate::engine::ops::waiting_room::is_missing(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            engine.remove_sale(id).await?;
        }
        store::mark_archived(db, &def.id).await?;
        crate::metrics::archived();
        tracing::info!(sale_id = %def.id, "sale archived: its Redis keys are removed; it answers from Postgres");
        archived += 1;
    }
    Ok(archived)
}

/// Drops this process's metric series of every sale archived, here or by
/// another process's worker: each process holds series of the sales its own
/// loops visited, and only one of them archives a sale. A sale archived in
/// this pass loses its series at the next (`worker.loader_interval_ms`).
async fn forget_archived(db: &PgPool) -> Result<(), StoreError> {
    let held = crate::metrics::sales_with_series();
    if held.is_empty() {
        return Ok(());
    }
    // Series are labelled only from sale ids: text that is not one names no sale.
    let held: Vec<SaleId> = held.into_iter().filter_map(SaleId::parse).collect();
    for id in store::archived_among(db, &held).await? {
        crate::metrics::forget_sale(&id);
    }
    Ok(())
}

/// Copies every dead letter of the sale to Postgres, a chunk at a time.
/// Returns how many there are.
async fn copy_dead_letters(
    engine: &Engine,
    db: &PgPool,
    sale_id: &SaleId,
) -> Result<usize, ReconcileError> {
    let mut after = "-".to_string();
    let mut copied = 0;
    loop {
        let chunk = engine.dead_letters(sale_id, &after, 500).await?;
        let Some(last) = chunk.last() else {
            return Ok(copied);
        };
        after = last.id.clone();
        let letters: Vec<(String, serde_json::Value)> = chunk
            .iter()
            .map(|e| {
                let fields: serde_json::Map<String, serde_json::Value> = e
                    .fields
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                (e.id.clone(), serde_json::Value::Object(fields))
            })
            .collect();
        store::keep_dead_letters(db, sale_id, &letters).await?;
        copied += letters.len();
    }
}

/// A sale that left Redis, as its final figures in Postgres show it.
pub async fn sale(db: &PgPool, id: &SaleId) -> Result<Option<Sale>, StoreError> {
    let Some((def, total, sold)) = store::closed_sale(db, id).await? else {
        return Ok(None);
    };
    let ledger = store::ledger(db, &def).await?;
    let stock = Stock {
        total,
        available: total - sold,
        held: 0,
        sold,
    };
    Ok(Some(Sale::new(
        def,
        stock,
        ledger.ends_at,
        ledger.paused,
        OffsetDateTime::now_utc(),
    )))
}

/// A confirmed reservation of a sale that left Redis, from its order;
/// `None` for any other (it is not found, as the contract says). `owner`
/// is the customer who must own it (`None`: an admin or a service).
pub async fn reservation(
    db: &PgPool,
    sale_id: &SaleId,
    reservation_id: &ReservationId,
    owner: Option<&CustomerId>,
) -> Result<Option<(Reservation, Order)>, StoreError> {
    if store::closed_sale(db, sale_id).await?.is_none() {
        return Ok(None);
    }
    let Some(o) = store::order_of(db, reservation_id).await? else {
        return Ok(None);
    };
    if o.sale_id != sale_id.as_str() || owner.is_some_and(|c| c.as_str() != o.customer_id) {
        return Ok(None);
    }
    Ok(Some(o.views()))
}

/// Whether an engine error means "not in Redis", which an archived sale
/// answers from Postgres instead.
pub fn not_in_redis(e: &EngineError) -> bool {
    use crate::engine::Refusal;
    matches!(
        e,
        EngineError::Refused(Refusal::SaleNotFound | Refusal::ReservationNotFound)
    )
}
