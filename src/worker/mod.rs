//! Background work beside the gateway (or alone, as `flashsale worker`):
//! the outbox flush, which writes confirmed orders to Postgres; the reaper,
//! which returns expired holds to stock; and the loader, which finishes sales
//! written to Postgres but not yet loaded into Redis.
//!
//! Each step is idempotent and returns what it did, so tests can drive the
//! worker one step at a time; the loops only repeat the steps.

pub mod outbox;

use std::time::{Duration, Instant};

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

/// Loads into Redis the sales whose creation stopped half way (Postgres
/// written, Redis not). A sale that fails to load is skipped, with the
/// reason kept in Postgres (shown by reconcile), logged when it first fails
/// (or fails anew), and counted; the others load. Returns how many loaded.
pub async fn load_pending_sales(engine: &Engine, db: &PgPool) -> anyhow::Result<usize> {
    let mut loaded = 0;
    for (def, previous) in store::sales_not_loaded(db).await? {
        match engine.create_sale(&def).await {
            Ok(_) => {
                store::mark_loaded(db, &def.id).await?;
                loaded += 1;
                tracing::info!(sale_id = %def.id, "loaded a sale whose creation was interrupted");
            }
            // Redis down is down for every sale: stop the pass here.
            Err(e @ EngineError::Unavailable(_)) => return Err(e.into()),
            Err(e) => {
                let why = match &e {
                    EngineError::Refused(Refusal::SaleConflict) => {
                        "Redis holds a different sale under this id".to_string()
                    }
                    other => other.to_string(),
                };
                crate::metrics::load_failed();
                if previous.as_deref() != Some(why.as_str()) {
                    tracing::error!(sale_id = %def.id, reason = %why, "cannot load a sale into Redis; loading the others");
                    store::mark_load_failed(db, &def.id, &why).await?;
                }
            }
        }
    }
    Ok(loaded)
}

/// One pass of the outbox flush over every active sale (so sales created
/// after the worker started are found without scanning keys, and sales
/// that are over cost nothing).
/// `claim` also takes over entries idle at dead consumers. Stops at the first
/// failure: the entries in question stay pending and are retried.
pub async fn flush_once(
    outbox: &outbox::Outbox,
    engine: &Engine,
    claim: bool,
) -> Result<outbox::Flushed, outbox::FlushError> {
    let mut total = outbox::Flushed::default();
    let mut failed = None;
    for id in engine.active_ids().await? {
        match outbox.flush_sale(&id, claim).await {
            Ok(done) => total.add(done),
            // Postgres down is down for every sale: stop the pass here.
            Err(e @ outbox::FlushError::Postgres(_)) => return Err(e),
            // A Redis failure may be this sale's alone: the others go on.
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(total), Err)
}

/// The flush loop: a pass every `flush_interval_ms` while there is work,
/// backing off (capped, doubling) while Postgres or Redis is down.
///
/// `report` makes this loop the one that exports the backlog gauges.
async fn flush_loop(
    settings: &Settings,
    engine: Engine,
    db: PgPool,
    stop: CancellationToken,
    report: bool,
) {
    let w = &settings.worker;
    let claim_idle = Duration::from_millis(w.claim_idle_ms);
    let outbox = outbox::Outbox::new(engine.clone(), db, w.flush_batch, claim_idle, stop.clone());
    let interval = Duration::from_millis(w.flush_interval_ms);
    let max_backoff = Duration::from_millis(w.max_backoff_ms);
    let mut delay = Duration::ZERO;
    let mut failing = false;
    // Claim on the first pass: a worker restarting after a crash finds its
    // predecessor's entries.
    let mut last_claim: Option<Instant> = None;
    let mut last_gauges = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        let claim = last_claim.is_none_or(|t| t.elapsed() >= claim_idle / 2);
        match flush_once(&outbox, &engine, claim).await {
            Ok(done) => {
                if claim {
                    last_claim = Some(Instant::now());
                }
                if failing {
                    failing = false;
                    tracing::info!("outbox flush recovered");
                }
                if !done.is_idle() {
                    tracing::debug!(?done, "outbox flushed");
                }
                delay = if done.orders + done.dead > 0 {
                    Duration::ZERO
                } else {
                    interval
                };
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "outbox flush failing; orders wait in Redis, retrying with backoff");
                }
                delay = (delay * 2).clamp(Duration::from_millis(100), max_backoff);
            }
        }
        if report && last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = Instant::now();
            if let Ok(ids) = engine.active_ids().await {
                let mut per_sale = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Ok((pending, dead)) = outbox.backlog(&id).await {
                        per_sale.push((id, pending, dead));
                    }
                }
                crate::metrics::backlog(&per_sale);
            }
        }
    }
}

/// The worker settles only adjustments pending this long: younger ones are
/// most likely a PATCH still on its way, which settles them itself.
const SETTLE_AGE: Duration = Duration::from_secs(5);

/// The light reconcile: every sale that is live now (or ended within the
/// hour) is compared with Postgres, and its drift and stock exported as
/// metrics, so drift alerts before anyone is paged. It repairs nothing.
pub async fn reconcile_live(engine: &Engine, db: &PgPool) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    for def in store::sales(db).await? {
        if def.starts_at > now || def.ends_at < now - time::Duration::hours(1) {
            continue;
        }
        let report = crate::reconcile::inspect(engine, db, &def, SETTLE_AGE).await?;
        crate::metrics::drift(&def.id, &report.drift);
        if let Some(r) = &report.redis {
            let stock = crate::domain::Stock {
                total: r.total,
                available: r.available,
                held: r.held,
                sold: r.sold,
            };
            crate::metrics::stock(&def.id, &stock);
        }
        if !report.drift.is_empty() {
            let kinds: Vec<&str> = report.drift.iter().map(|d| d.word()).collect();
            tracing::warn!(sale_id = %def.id, drift = ?kinds, "reconcile found drift");
        }
    }
    Ok(())
}

/// Runs the background loops until `stop` is cancelled. Failures are logged
/// once per change of state (down, then back up), not once per attempt.
pub async fn run(settings: &Settings, engine: Engine, db: PgPool, stop: CancellationToken) {
    // Sales registered before the active set existed (or after it was lost)
    // come back into the loops; those that are over leave on the first pass.
    if let Err(e) = engine.activate_all().await {
        tracing::warn!(error = %e, "cannot refresh the active sales; the loops use the set as it is");
    }
    // Several consumers per worker: one reads and acknowledges in Redis while
    // another writes to Postgres (the group never hands both the same entry).
    let flush = futures::future::join_all(
        (0..settings.worker.flush_consumers)
            .map(|i| flush_loop(settings, engine.clone(), db.clone(), stop.clone(), i == 0)),
    );
    let reaper = {
        let engine = engine.clone();
        let every = Duration::from_millis(settings.worker.reaper_interval_ms);
        let batch = settings.worker.reaper_batch;
        every_tick("reaper", every, stop.clone(), move || {
            let engine = engine.clone();
            async move {
                let r = reap_once(&engine, batch).await?;
                crate::metrics::reaped(r.expired);
                if r.expired > 0 {
                    tracing::info!(expired = r.expired, "reaped expired holds");
                }
                Ok::<(), EngineError>(())
            }
        })
    };
    let loader = {
        let every = Duration::from_millis(settings.worker.loader_interval_ms);
        let (engine, db) = (engine.clone(), db.clone());
        every_tick("loader", every, stop.clone(), move || {
            let (engine, db) = (engine.clone(), db.clone());
            async move { load_pending_sales(&engine, &db).await.map(drop) }
        })
    };
    let reconciler = {
        let every = Duration::from_millis(settings.worker.reconcile_interval_ms);
        every_tick("reconcile", every, stop.clone(), move || {
            let (engine, db) = (engine.clone(), db.clone());
            async move { reconcile_live(&engine, &db).await }
        })
    };
    tokio::join!(flush, reaper, loader, reconciler);
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
