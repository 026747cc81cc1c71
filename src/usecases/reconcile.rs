//! On-call's view: do Redis and Postgres agree about each sale, and if not,
//! what kind of drift is it and what can be repaired safely.
//!
//! `flashsale reconcile` reports; `--apply` repairs what is safe while the
//! gateways serve (reap overdue holds, flush the outbox, recount counters
//! from the reservation records, rebuild a sale Redis lost); `--rebuild`
//! restores a sale from Postgres after Redis lost its data.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::domain::{to_ms, SaleDef, SaleId, Stock};
use crate::engine::{Engine, EngineError, Inspection, Known, Rebuilt, Recounted, Restore};
use crate::store::{self, Ledger, StoreError};
use crate::usecases::adjust::{self, AdjustError};
use crate::usecases::flush::{FlushError, Flusher};

/// Holds this far past their deadline count as not reaped (the reaper's
/// promise is one second), and orders waiting this long in the outbox as not
/// flushed (the worker polls every 100 ms).
pub const GRACE_MS: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// The sale is scheduled in Postgres but Redis does not hold it.
    MissingInRedis,
    /// available + held + sold != total, or a counter below zero.
    CountersDoNotAddUp,
    /// Redis's total differs from the schedule plus its adjustments.
    TotalDiffers { redis: i64, scheduled: i64 },
    /// Holds past their deadline that the reaper has not returned.
    HoldsNotReaped { holds: i64 },
    /// Confirmed orders still in the outbox, not yet in Postgres.
    OrdersNotInPostgres { orders: i64 },
    /// Units ordered in Postgres that Redis does not count as sold.
    OrdersNotCountedAsSold { units: i64 },
    /// Units Redis counts as sold with no order in Postgres or the outbox.
    SoldWithoutOrder { units: i64 },
    /// Outbox entries Postgres rejected for good: they need a human.
    DeadLetters { entries: i64 },
    /// The loader could not load the sale into Redis (it goes on with the
    /// others and retries this one).
    LoadFailed { reason: String },
}

/// Every drift kind's word, for the metrics.
pub const DRIFT_KINDS: &[&str] = &[
    "missing_in_redis",
    "counters_do_not_add_up",
    "total_differs",
    "holds_not_reaped",
    "orders_not_in_postgres",
    "orders_not_counted_as_sold",
    "sold_without_order",
    "dead_letters",
    "load_failed",
];

impl SaleReport {
    /// Exports the report's drift, per kind, as metrics.
    pub fn export(&self) {
        crate::metrics::drift(
            &self.sale_id,
            DRIFT_KINDS
                .iter()
                .map(|k| (*k, self.drift.iter().filter(|d| d.word() == *k).count())),
        );
    }
}

impl Drift {
    pub fn word(&self) -> &'static str {
        match self {
            Drift::MissingInRedis => "missing_in_redis",
            Drift::CountersDoNotAddUp => "counters_do_not_add_up",
            Drift::TotalDiffers { .. } => "total_differs",
            Drift::HoldsNotReaped { .. } => "holds_not_reaped",
            Drift::OrdersNotInPostgres { .. } => "orders_not_in_postgres",
            Drift::OrdersNotCountedAsSold { .. } => "orders_not_counted_as_sold",
            Drift::SoldWithoutOrder { .. } => "sold_without_order",
            Drift::DeadLetters { .. } => "dead_letters",
            Drift::LoadFailed { .. } => "load_failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SaleReport {
    pub sale_id: String,
    pub redis: Option<Inspection>,
    pub postgres: Ledger,
    pub drift: Vec<Drift>,
    /// What `--apply` or `--rebuild` did.
    pub repairs: Vec<String>,
    /// The sale left Redis after its retention: Postgres alone holds it.
    pub archived: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Redis(#[from] EngineError),
    #[error(transparent)]
    Postgres(#[from] StoreError),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Adjust(#[from] AdjustError),
    #[error("no sale `{0}` in Postgres")]
    UnknownSale(String),
    #[error("{0}")]
    Refused(String),
}

/// Compares one sale's figures in Redis and Postgres.
///
/// The gateways and the worker keep going while this looks, and the two
/// stores cannot be read at one instant, so each check uses the reading that
/// cannot make it fire falsely: Redis is read before Postgres (an order found
/// in neither was never sold) and again after it (an order Postgres holds was
/// sold in Redis before that second reading; `sold` only grows). Orders
/// waiting in the outbox count only once they wait longer than the worker's
/// promise, as holds do for the reaper.
///
/// First it settles the sale's pending adjustments recorded at least
/// `settle_age` ago, so the scheduled total counts every change Redis
/// applied; while one younger than that is still pending, totals are not
/// compared (it may be applied in Redis and not yet settled).
pub async fn inspect(
    engine: &Engine,
    db: &PgPool,
    def: &SaleDef,
    settle_age: Duration,
) -> Result<SaleReport, ReconcileError> {
    let id = &def.id;
    adjust::settle_pending(engine, db, id, settle_age).await?;
    let in_flight = !store::pending_adjustments(db, id, Duration::ZERO)
        .await?
        .is_empty();
    let redis = engine.inspect(id, GRACE_MS).await?;
    let pg = store::ledger(db, def).await?;
    let mut drift = Vec::new();
    if let Some(reason) = store::load_error(db, id).await? {
        drift.push(Drift::LoadFailed { reason });
    }
    let archived = redis.is_none() && store::closed_sale(db, id).await?.is_some();
    match &redis {
        None if archived => {}
        None => drift.push(Drift::MissingInRedis),
        Some(r) => {
            if r.available + r.held + r.sold != r.total
                || r.available < 0
                || r.held < 0
                || r.sold < 0
            {
                drift.push(Drift::CountersDoNotAddUp);
            }
            if r.total != pg.scheduled_total && !in_flight {
                drift.push(Drift::TotalDiffers {
                    redis: r.total,
                    scheduled: pg.scheduled_total,
                });
            }
            if r.overdue_holds > 0 {
                drift.push(Drift::HoldsNotReaped {
                    holds: r.overdue_holds,
                });
            }
            if r.outbox > 0 && r.oldest_outbox_age_ms > GRACE_MS {
                drift.push(Drift::OrdersNotInPostgres { orders: r.outbox });
            }
            let sold_after = if pg.order_units > r.sold {
                engine
                    .inspect(id, GRACE_MS)
                    .await?
                    .map_or(0, |later| later.sold)
            } else {
                r.sold
            };
            if pg.order_units > sold_after {
                drift.push(Drift::OrdersNotCountedAsSold {
                    units: pg.order_units - sold_after,
                });
            } else if r.outbox == 0 && r.dead_letters == 0 && r.sold > pg.order_units {
                drift.push(Drift::SoldWithoutOrder {
                    units: r.sold - pg.order_units,
                });
            }
            if r.dead_letters > 0 {
                drift.push(Drift::DeadLetters {
                    entries: r.dead_letters,
                });
            }
        }
    }
    Ok(SaleReport {
        sale_id: def.id.to_string(),
        redis,
        postgres: pg,
        drift,
        repairs: Vec::new(),
        archived,
    })
}

/// Repairs what is safe while gateways keep serving, then inspects again.
/// Dead letters and units sold without an order are left for a human.
pub async fn apply(
    engine: &Engine,
    db: &PgPool,
    outbox: &Flusher,
    def: &SaleDef,
    report: SaleReport,
) -> Result<SaleReport, ReconcileError> {
    let id = &def.id;
    let mut repairs = Vec::new();
    for d in &report.drift {
        match d {
            Drift::MissingInRedis => {
                let s = rebuild(engine, db, outbox, def).await?;
                repairs.push(format!(
                    "rebuilt from Postgres: total {} sold {} available {}",
                    s.total, s.sold, s.available
                ));
                break; // a rebuild settles every other figure
            }
            Drift::HoldsNotReaped { .. } => {
                let mut n = 0;
                loop {
                    let step = engine.expire_due(id, 1000).await?;
                    n += step.holds;
                    if !step.more_due {
                        break;
                    }
                }
                repairs.push(format!("returned {n} overdue holds to stock"));
            }
            Drift::OrdersNotInPostgres { .. } => {
                let done = outbox.flush_sale(id, true).await?;
                repairs.push(format!("flushed {} orders to Postgres", done.orders));
            }
            _ => {}
        }
    }
    let needs_recount = report.drift.iter().any(|d| {
        matches!(
            d,
            Drift::CountersDoNotAddUp
                | Drift::TotalDiffers { .. }
                | Drift::OrdersNotCountedAsSold { .. }
        )
    });
    if needs_recount && !repairs.iter().any(|r| r.starts_with("rebuilt")) {
        repairs.push(recount(engine, db, def).await?);
    }
    let mut after = inspect(engine, db, def, Duration::ZERO).await?;
    after.repairs = repairs;
    Ok(after)
}

/// What Postgres knows of the sale, for a repair.
struct Facts {
    ledger: Ledger,
    per_customer: Vec<(String, i64)>,
    applied: Vec<String>,
    rejected: Vec<String>,
}

impl Facts {
    async fn read(db: &PgPool, def: &SaleDef) -> Result<Facts, ReconcileError> {
        let (applied, rejected) = store::settled_adjustments(db, &def.id).await?;
        Ok(Facts {
            ledger: store::ledger(db, def).await?,
            per_customer: store::units_per_customer(db, &def.id).await?,
            applied,
            rejected,
        })
    }

    fn known(&self) -> Known<'_> {
        Known {
            total: self.ledger.scheduled_total,
            sold: self.ledger.order_units,
            applied: &self.applied,
            per_customer: &self.per_customer,
        }
    }
}

/// Tries this often when an adjustment lands between the settling of
/// pending ones and the repair (the repair refuses rather than reverse it).
const ROUNDS: usize = 5;

/// Recounts the sale's counters (see `lua/recount.lua`): never below any
/// figure Postgres or Redis knows. Returns what it did, in words.
async fn recount(engine: &Engine, db: &PgPool, def: &SaleDef) -> Result<String, ReconcileError> {
    let id = &def.id;
    for _ in 0..ROUNDS {
        let facts = Facts::read(db, def).await?;
        match engine.recount(id, &facts.known()).await? {
            Recounted::Done(s) => {
                tracing::warn!(sale_id = %def.id, stock = ?s, "sale recounted");
                return Ok(format!(
                    "recounted: total {} available {} held {} sold {}",
                    s.total, s.available, s.held, s.sold
                ));
            }
            Recounted::Overcommitted { held, sold } => {
                return Ok(format!(
                    "NOT recounted: {held} units held and {sold} sold exceed the total {}; nothing changed",
                    facts.ledger.scheduled_total
                ))
            }
            Recounted::AdjustmentUnsettled(_) => {
                adjust::settle_pending(engine, db, id, Duration::ZERO).await?;
            }
        }
    }
    Ok("NOT recounted: admin changes kept landing while it ran; nothing changed".into())
}

/// Restores a sale's Redis state from Postgres: total from the schedule and
/// its adjustments, sold from the orders (or more, where Redis still knows
/// more), available = total - sold, held = 0. Pending adjustments are
/// settled and orders still waiting in the outbox flushed first; the rebuild
/// script refuses to run while any remain, so `sold` never misses one.
pub async fn rebuild(
    engine: &Engine,
    db: &PgPool,
    outbox: &Flusher,
    def: &SaleDef,
) -> Result<Stock, ReconcileError> {
    let id = &def.id;
    if engine.inspect(id, GRACE_MS).await?.is_none() && store::closed_sale(db, id).await?.is_some()
    {
        return Err(ReconcileError::Refused(format!(
            "sale {} is closed and archived (or being archived): it answers from Postgres and is not rebuilt",
            def.id
        )));
    }
    for _ in 0..20 {
        adjust::settle_pending(engine, db, id, Duration::ZERO).await?;
        outbox.flush_sale(id, true).await?;
        let facts = Facts::read(db, def).await?;
        let restore = Restore {
            def,
            known: facts.known(),
            ends_ms: to_ms(facts.ledger.ends_at),
            paused: facts.ledger.paused,
            rejected: &facts.rejected,
            sold_outs: store::sold_outs(db, id).await?,
        };
        match engine.rebuild(&restore).await? {
            Rebuilt::Done(stock) => {
                tracing::warn!(sale_id = %def.id, ?stock, "sale rebuilt from Postgres");
                return Ok(stock);
            }
            Rebuilt::Oversold => {
                return Err(ReconcileError::Refused(format!(
                    "sale {}: Postgres has more units sold than the total {}; nothing changed",
                    def.id, facts.ledger.scheduled_total
                )))
            }
            // Another worker's batch was still in flight, or an admin change
            // landed after the settling: go again.
            Rebuilt::OutboxNotEmpty(_) | Rebuilt::AdjustmentUnsettled(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
    }
    Err(ReconcileError::Refused(format!(
        "sale {}: the outbox never stayed empty long enough to rebuild; stop confirms or the worker's errors first",
        def.id
    )))
}

/// The worker settles only adjustments pending this long: younger ones are
/// most likely a PATCH still on its way, which settles them itself.
const SETTLE_AGE: Duration = Duration::from_secs(5);

/// The light reconcile: every sale that is live now (or ended within the
/// hour) is compared with Postgres, and its drift and stock exported as
/// metrics, so drift alerts before anyone is paged. It repairs nothing.
/// `drifting` (kept by the caller from pass to pass) are the sales whose
/// last report had drift: they stay watched after that hour until the drift
/// clears (a repair, or the archive), so a drift gauge never freezes at an
/// alert that nothing could clear.
pub async fn watch_live(
    engine: &Engine,
    db: &PgPool,
    drifting: &mut HashSet<String>,
) -> Result<(), ReconcileError> {
    let now = time::OffsetDateTime::now_utc();
    for def in store::sales(db).await? {
        let live = def.starts_at <= now && def.ends_at >= now - time::Duration::hours(1);
        if !live && !drifting.contains(def.id.as_str()) {
            continue;
        }
        let report = inspect(engine, db, &def, SETTLE_AGE).await?;
        if report.archived {
            // Its series are gone with it (crate::usecases::archive): none again.
            drifting.remove(def.id.as_str());
            continue;
        }
        report.export();
        if report.drift.is_empty() {
            drifting.remove(def.id.as_str());
        } else {
            drifting.insert(def.id.to_string());
        }
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

/// The sales to look at: one, or every scheduled sale.
pub async fn sales(db: &PgPool, only: Option<&SaleId>) -> Result<Vec<SaleDef>, ReconcileError> {
    match only {
        Some(id) => Ok(vec![store::sale(db, id)
            .await?
            .ok_or_else(|| ReconcileError::UnknownSale(id.to_string()))?]),
        None => Ok(store::sales(db).await?),
    }
}

/// The human-readable table.
pub fn render(reports: &[SaleReport]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>5} | {:>9} {:>7} {:>7}\n",
        "sale",
        "available",
        "held",
        "sold",
        "total",
        "overdue",
        "outbox",
        "dead",
        "scheduled",
        "orders",
        "units"
    );
    for r in reports {
        let p = &r.postgres;
        let redis = match &r.redis {
            Some(i) => format!(
                "{:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>5}",
                i.available, i.held, i.sold, i.total, i.overdue_holds, i.outbox, i.dead_letters
            ),
            None if r.archived => format!("{:>56}", "(archived: in Postgres only)"),
            None => format!("{:>56}", "(not in Redis)"),
        };
        out.push_str(&format!(
            "{:<24} {redis} | {:>9} {:>7} {:>7}\n",
            r.sale_id, p.scheduled_total, p.orders, p.order_units
        ));
        for d in &r.drift {
            out.push_str(&format!("  drift: {} {}\n", d.word(), describe(d)));
        }
        for repair in &r.repairs {
            out.push_str(&format!("  repaired: {repair}\n"));
        }
    }
    let drifting = reports.iter().filter(|r| !r.drift.is_empty()).count();
    out.push_str(&if drifting == 0 {
        format!("{} sales, Redis and Postgres agree\n", reports.len())
    } else {
        format!("{} sales, {drifting} with drift\n", reports.len())
    });
    out
}

fn describe(d: &Drift) -> String {
    match d {
        Drift::MissingInRedis => {
            "the sale is scheduled in Postgres but Redis does not hold it (repair: --rebuild)"
                .into()
        }
        Drift::CountersDoNotAddUp => {
            "available + held + sold != total (repair: --apply recounts)".into()
        }
        Drift::TotalDiffers { redis, scheduled } => {
            format!("Redis total {redis}, schedule plus adjustments {scheduled} (repair: --apply recounts)")
        }
        Drift::HoldsNotReaped { holds } => {
            format!("{holds} holds over a second past their deadline (repair: --apply)")
        }
        Drift::OrdersNotInPostgres { orders } => {
            format!("{orders} confirmed orders not yet in Postgres (is a worker running? repair: --apply flushes)")
        }
        Drift::OrdersNotCountedAsSold { units } => {
            format!("{units} units ordered in Postgres not counted as sold in Redis")
        }
        Drift::SoldWithoutOrder { units } => {
            format!("{units} units sold in Redis with no order anywhere")
        }
        Drift::DeadLetters { entries } => {
            format!("{entries} orders Postgres rejected; see the sale's dead-letter stream")
        }
        Drift::LoadFailed { reason } => {
            format!("the loader cannot load the sale into Redis: {reason}")
        }
    }
}
