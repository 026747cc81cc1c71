//! Adjusting a sale (the admin's PATCH): recorded in Postgres as pending,
//! applied once in Redis by its id, then settled in Postgres.
//!
//! Why each step is where it is:
//! - The row comes first, so Redis never applies a change Postgres cannot
//!   see; a crash after it leaves a pending row that reconcile settles (as
//!   applied if Redis applied it, else as voided, marked in Redis in the same
//!   step so the change can no longer land).
//! - With an `Idempotency-Key` the row carries the key, so a retry after a
//!   lost reply finds the adjustment it made: applied, it answers as the
//!   first call did; refused, the same refusal; still pending, it applies
//!   the same id again (a no-op if Redis already did); voided by a repair,
//!   the key moves to a new adjustment and the change is applied once after
//!   all. A change is never applied twice, nor reversed by a repair.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{to_ms, CustomerId, SaleId, WaitingRoomDef};
use crate::engine::{Adjusted, Change, Engine, EngineError, Refusal};
use crate::store::{
    self, Adjustment, AdjustmentKey, AdjustmentState, KeyedAdjustment, Settlement, StoreError,
};

/// One PATCH, validated.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub sale_id: &'a SaleId,
    pub actor: &'a CustomerId,
    pub stock_delta: i64,
    pub ends_at: Option<OffsetDateTime>,
    pub paused: Option<bool>,
    /// A waiting room to set (before it opens).
    pub queue: Option<WaitingRoomDef>,
    pub idempotency_key: Option<&'a str>,
}

impl Request<'_> {
    /// Two requests with the same change have the same fingerprint, however
    /// their JSON was spelled.
    fn fingerprint(&self) -> String {
        let mut fp = format!(
            "{}|{}|{}",
            self.stock_delta,
            self.ends_at
                .map(to_ms)
                .map_or(String::new(), |ms| ms.to_string()),
            self.paused.map_or("", |p| if p { "1" } else { "0" })
        );
        // Appended only with a room, so the fingerprints kept before rooms
        // existed still match their retries.
        if let Some(q) = &self.queue {
            fp.push_str(&format!(
                "|{}:{}:{}:{}",
                to_ms(q.opens_at),
                q.admit_per_second,
                q.admit_burst,
                q.admission_seconds
            ));
        }
        fp
    }

    fn adjustment(&self) -> Adjustment {
        Adjustment {
            id: Uuid::now_v7(),
            sale_id: self.sale_id.clone(),
            actor: self.actor.to_string(),
            stock_delta: self.stock_delta,
            ends_at: self.ends_at,
            paused: self.paused,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("postgres did not answer within {0:?}")]
    StoreTimedOut(Duration),
    /// Repairs kept voiding the change before it could land: nothing was
    /// applied, and a retry may pass.
    #[error("the adjustment was voided by repairs {0} times in a row")]
    KeptVoided(usize),
    #[error("stored outcome `{0}` is not a contract code")]
    BadOutcome(String),
}

/// What a PATCH answers with: the sale after the change, as JSON, either
/// fresh or as the first call with the same key answered it.
pub type Answer = serde_json::Value;

/// Voided-and-retried rounds before giving up (a repair voids only pending
/// rows it finds, so more than one in a row is already unusual).
const ATTEMPTS: usize = 3;

pub async fn adjust(
    engine: &Engine,
    db: &PgPool,
    db_timeout: Duration,
    req: &Request<'_>,
) -> Result<Answer, AdjustError> {
    let fingerprint = req.fingerprint();
    let key = req.idempotency_key.map(|key| AdjustmentKey {
        key,
        fingerprint: &fingerprint,
    });
    let mut adj = req.adjustment();
    if let Some(found) =
        bounded(db_timeout, store::record_adjustment(db, &adj, key.as_ref())).await?
    {
        if found.fingerprint != fingerprint {
            return Err(AdjustError::Refused(Refusal::IdempotencyKeyReused));
        }
        match found.state {
            AdjustmentState::Applied => return replay(engine, db, db_timeout, req, &found).await,
            AdjustmentState::Rejected if found.outcome.as_deref() != Some(store::VOIDED) => {
                let code = found.outcome.unwrap_or_default();
                return Err(Refusal::from_word(&code)
                    .map_or(AdjustError::BadOutcome(code), AdjustError::Refused));
            }
            AdjustmentState::Rejected => {
                adj = rekey(db, db_timeout, found.id, req, key.as_ref()).await?;
            }
            // The first call's reply was lost: apply the same id again.
            AdjustmentState::Pending => adj.id = found.id,
        }
    }
    if let Some(queue) = &req.queue {
        // Postgres first (it refuses a room that opened), then Redis; if the
        // room opens in between, the opener copies Postgres's configuration.
        if !bounded(db_timeout, store::set_waiting_room(db, req.sale_id, queue)).await? {
            let refused = Settlement::Rejected {
                outcome: Refusal::WaitingRoomOpened.code(),
            };
            bounded(db_timeout, store::settle_adjustment(db, adj.id, &refused)).await?;
            return Err(AdjustError::Refused(Refusal::WaitingRoomOpened));
        }
        engine.set_waiting_room(req.sale_id, queue).await?;
    }
    for _ in 0..ATTEMPTS {
        let id = adj.id.to_string();
        let change = Change {
            id: &id,
            stock_delta: adj.stock_delta,
            ends_ms: adj.ends_at.map(to_ms),
            paused: adj.paused,
        };
        match engine.adjust_sale(req.sale_id, &change).await {
            Ok(Adjusted::Applied { before, after }) => {
                let figures = |f| serde_json::to_value(f).ok();
                let settled = Settlement::Applied {
                    before: figures(&before),
                    after: figures(&after),
                };
                bounded(db_timeout, store::settle_adjustment(db, adj.id, &settled)).await?;
                tracing::info!(sale_id = %req.sale_id, adjustment = %adj.id, ?before, ?after, "sale adjusted");
                return answer(engine, db, db_timeout, adj.id, key.is_some(), req).await;
            }
            Ok(Adjusted::AppliedEarlier) => {
                return answer(engine, db, db_timeout, adj.id, key.is_some(), req).await
            }
            Ok(Adjusted::Voided) => {
                let voided = Settlement::Rejected {
                    outcome: store::VOIDED,
                };
                bounded(db_timeout, store::settle_adjustment(db, adj.id, &voided)).await?;
                tracing::info!(sale_id = %req.sale_id, adjustment = %adj.id, "a repair voided the adjustment in flight; applying it anew");
                adj = rekey(db, db_timeout, adj.id, req, key.as_ref()).await?;
            }
            Err(EngineError::Refused(refusal)) => {
                let refused = Settlement::Rejected {
                    outcome: refusal.code(),
                };
                bounded(db_timeout, store::settle_adjustment(db, adj.id, &refused)).await?;
                return Err(AdjustError::Refused(refusal));
            }
            // Unknown outcome: the row stays pending, for a retry with the
            // same key or for reconcile to settle.
            Err(e) => return Err(e.into()),
        }
    }
    Err(AdjustError::KeptVoided(ATTEMPTS))
}

/// A new pending adjustment for the same change, after `voided` was voided;
/// with a key, the key moves to it.
async fn rekey(
    db: &PgPool,
    db_timeout: Duration,
    voided: Uuid,
    req: &Request<'_>,
    key: Option<&AdjustmentKey<'_>>,
) -> Result<Adjustment, AdjustError> {
    let adj = req.adjustment();
    match key {
        None => {
            bounded(db_timeout, store::record_adjustment(db, &adj, None)).await?;
        }
        Some(key) => {
            if !bounded(db_timeout, store::rekey_adjustment(db, voided, &adj, key)).await? {
                // A concurrent retry with the same key moved it first; the
                // client's next retry finds that adjustment.
                return Err(AdjustError::KeptVoided(1));
            }
        }
    }
    Ok(adj)
}

/// The sale as it is now, kept as the key's answer when there is a key.
async fn answer(
    engine: &Engine,
    db: &PgPool,
    db_timeout: Duration,
    id: Uuid,
    keyed: bool,
    req: &Request<'_>,
) -> Result<Answer, AdjustError> {
    let sale = engine.sale(req.sale_id).await?;
    let json =
        serde_json::to_value(&sale).map_err(|e| EngineError::Corrupt(format!("sale view: {e}")))?;
    if keyed {
        bounded(db_timeout, store::keep_response(db, id, &json)).await?;
    }
    Ok(json)
}

/// The first call's answer for a key whose adjustment is applied.
async fn replay(
    engine: &Engine,
    db: &PgPool,
    db_timeout: Duration,
    req: &Request<'_>,
    found: &KeyedAdjustment,
) -> Result<Answer, AdjustError> {
    match &found.response {
        Some(first) => Ok(first.clone()),
        // Applied, but the first call stopped before keeping its answer.
        None => answer(engine, db, db_timeout, found.id, true, req).await,
    }
}

/// Settles the sale's pending adjustments recorded at least `min_age` ago:
/// Redis decides applied or voided (see `lua/settle_adjustment.lua`), then
/// Postgres records it. Returns how many were settled each way.
pub async fn settle_pending(
    engine: &Engine,
    db: &PgPool,
    sale_id: &SaleId,
    min_age: Duration,
) -> Result<(usize, usize), AdjustError> {
    let (mut applied, mut voided) = (0, 0);
    for id in store::pending_adjustments(db, sale_id, min_age).await? {
        let settlement = match engine.settle_adjustment(sale_id, &id.to_string()).await? {
            Adjusted::Voided => {
                voided += 1;
                Settlement::Rejected {
                    outcome: store::VOIDED,
                }
            }
            _ => {
                applied += 1;
                Settlement::Applied {
                    before: None,
                    after: None,
                }
            }
        };
        store::settle_adjustment(db, id, &settlement).await?;
        tracing::warn!(%sale_id, adjustment = %id, ?settlement, "settled a pending adjustment");
    }
    Ok((applied, voided))
}

async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, AdjustError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(AdjustError::StoreTimedOut(limit)),
    }
}
