//! Background work beside the gateway: the reaper, which returns expired holds
//! to stock, and the loader, which finishes sales written to Postgres but not
//! yet loaded into Redis. (The outbox flush to Postgres joins them here.)
//!
//! Each step is idempotent and returns what it did, so tests can drive the
//! worker one step at a time; the loops only repeat the steps.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::engine::{Engine, EngineError, Refusal};
use crate::store;

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    pub sales: usize,
    pub expired: u64,
}

/// One reaper pass over every sale: expires every hold whose deadline has
/// passed, in batches, from each sale's deadline index.
pub async fn reap_once(engine: &Engine, batch: u32) -> Result<Reaped, EngineError> {
    let ids = engine.sale_ids().await?;
    let mut reaped = Reaped {
        sales: ids.len(),
        expired: 0,
    };
    for id in &ids {
        loop {
            match engine.expire_due(id, batch).await {
                Ok((n, more)) => {
                    reaped.expired += n;
                    if !more {
                        break;
                    }
                }
                // A registered id whose keys are gone (Redis lost them): skip.
                Err(EngineError::Refused(Refusal::SaleNotFound)) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(reaped)
}

/// Loads into Redis the sales whose creation stopped half way (Postgres
/// written, Redis not). Returns how many it loaded.
pub async fn load_pending_sales(engine: &Engine, db: &PgPool) -> anyhow::Result<usize> {
    let pending = store::sales_not_loaded(db).await?;
    for def in &pending {
        engine.create_sale(def).await?;
        store::mark_loaded(db, &def.id).await?;
        tracing::info!(sale_id = %def.id, "loaded a sale whose creation was interrupted");
    }
    Ok(pending.len())
}

/// Runs the background loops until `stop` is cancelled. Failures are logged
/// once per change of state (down, then back up), not once per attempt.
pub async fn run(settings: &Settings, engine: Engine, db: PgPool, stop: CancellationToken) {
    let reaper = {
        let engine = engine.clone();
        let every = Duration::from_millis(settings.worker.reaper_interval_ms);
        let batch = settings.worker.reaper_batch;
        every_tick("reaper", every, stop.clone(), move || {
            let engine = engine.clone();
            async move {
                let r = reap_once(&engine, batch).await?;
                if r.expired > 0 {
                    tracing::info!(expired = r.expired, "reaped expired holds");
                }
                Ok::<(), EngineError>(())
            }
        })
    };
    let loader = {
        let every = Duration::from_millis(settings.worker.loader_interval_ms);
        every_tick("loader", every, stop.clone(), move || {
            let (engine, db) = (engine.clone(), db.clone());
            async move { load_pending_sales(&engine, &db).await.map(drop) }
        })
    };
    tokio::join!(reaper, loader);
}

async fn every_tick<F, Fut, E>(name: &str, every: Duration, stop: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match step().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(task = name, "recovered");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(task = name, error = %e, "failing; retrying quietly until it recovers");
            }
            Err(_) => {}
        }
    }
}
