//! The reaper's step: holds past their deadline go back to stock, and a sale
//! that is over leaves the worker's loops.

use crate::engine::{Engine, EngineError, Refusal};

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    pub sales: usize,
    pub expired: u64,
}

/// One reaper pass over every active sale: expires every hold whose
/// deadline has passed, in batches, from each sale's deadline index. A sale
/// that is over (ended, nothing held, outbox empty) then leaves the loops.
pub async fn reap_once(engine: &Engine, batch: u32) -> Result<Reaped, EngineError> {
    let ids = engine.active_ids().await?;
    let mut reaped = Reaped {
        sales: ids.len(),
        expired: 0,
    };
    for id in &ids {
        loop {
            match engine.expire_due(id, batch).await {
                Ok(step) => {
                    reaped.expired += step.holds;
                    if step.more_due {
                        continue;
                    }
                    if step.over && engine.retire_if_over(id).await? {
                        tracing::info!(sale_id = %id, "sale is over: it leaves the worker's loops");
                    }
                    break;
                }
                // A registered id whose keys are gone (Redis lost them): skip.
                Err(EngineError::Refused(Refusal::SaleNotFound)) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(reaped)
}
