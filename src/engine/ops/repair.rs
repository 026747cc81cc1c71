//! What reconcile asks of Redis: a consistent snapshot (`lua/inspect.lua`),
//! and the two repairs, a recount (`lua/recount.lua`) and a rebuild from
//! Postgres (`lua/rebuild.lua`), each after raising customers' counts to
//! their orders (`lua/floor_customers.lua`).

use crate::domain::{to_ms, SaleDef, SaleId, Stock};
use crate::engine::reply::Reply;
use crate::engine::{Engine, EngineError, EngineResult, SaleKeys};

/// Customers per call when their counts are raised to their orders: a
/// thousand keeps each call well under a millisecond.
const FLOOR_CHUNK: usize = 1000;

/// A sale's figures in Redis at one moment, for reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Inspection {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    /// Holds past their deadline by more than the grace period.
    pub overdue_holds: i64,
    /// Confirmed orders in the outbox, not yet flushed to Postgres.
    pub outbox: i64,
    pub dead_letters: i64,
    /// How long the oldest outbox entry has waited (0 when empty).
    pub oldest_outbox_age_ms: i64,
}

impl Inspection {
    /// `inspect.lua`'s `ok` reply.
    fn parse(r: &Reply) -> EngineResult<Inspection> {
        let mut f = r.fields();
        Ok(Inspection {
            total: f.int()?,
            available: f.int()?,
            held: f.int()?,
            sold: f.int()?,
            overdue_holds: f.int()?,
            outbox: f.int()?,
            dead_letters: f.int()?,
            oldest_outbox_age_ms: f.int()?,
        })
    }
}

/// What Postgres knows of a sale's stock, for the repairs: they take no
/// figure below it.
#[derive(Debug, Clone)]
pub struct Known<'a> {
    /// The scheduled stock plus the applied adjustments.
    pub total: i64,
    /// Units of the sale's orders.
    pub sold: i64,
    /// Ids of the adjustments settled as applied.
    pub applied: &'a [String],
    /// Units ordered per customer.
    pub per_customer: &'a [(String, i64)],
}

/// What a rebuild restores: the sale as Postgres knows it.
#[derive(Debug, Clone)]
pub struct Restore<'a> {
    pub def: &'a SaleDef,
    pub known: Known<'a>,
    pub ends_ms: i64,
    pub paused: bool,
    /// Ids of the adjustments settled as rejected: they stay refused.
    pub rejected: &'a [String],
    /// The sale's sell-outs Postgres has events of: the count in Redis
    /// never goes below it, so no later sell-out reuses an event id.
    pub sold_outs: i64,
}

/// What a recount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recounted {
    Done(Stock),
    /// More units held and sold than the total: nothing changed.
    Overcommitted {
        held: i64,
        sold: i64,
    },
    /// Redis applied an adjustment Postgres does not count yet: nothing
    /// changed (the total would have reversed it).
    AdjustmentUnsettled(String),
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    Done(Stock),
    /// The sale is gone but its outbox still holds orders: flush first.
    OutboxNotEmpty(i64),
    /// As for a recount.
    AdjustmentUnsettled(String),
    /// Postgres has more units sold than the total.
    Oversold,
}

impl Engine {
    /// A consistent snapshot of the sale's figures; `None` when Redis does
    /// not hold the sale.
    pub async fn inspect(
        &self,
        sale_id: &SaleId,
        grace_ms: i64,
    ) -> EngineResult<Option<Inspection>> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .inspect
                    .key(&k.sale)
                    .key(&k.due)
                    .key(&k.outbox)
                    .key(&k.dead_letters)
                    .arg(grace_ms),
            )
            .await?;
        if r.word == "sale_not_found" {
            return Ok(None);
        }
        Inspection::parse(&r.expect(&["ok"])?).map(Some)
    }

    /// Recomputes held and sold from every source that knows them (see
    /// `lua/recount.lua`), with `total` from Postgres, after raising each
    /// customer's count to their orders. Every call is short, however large
    /// the sale.
    pub async fn recount(&self, sale_id: &SaleId, known: &Known<'_>) -> EngineResult<Recounted> {
        let k = self.keys(sale_id);
        self.floor_customers(&k, known.per_customer).await?;
        let mut call = self.scripts.recount.key(&k.sale);
        call.key(&k.reservations)
            .key(&k.adjustments)
            .key(&k.events)
            .arg(known.total)
            .arg(known.sold);
        for id in known.applied {
            call.arg(id);
        }
        let r = self.run(&call).await?;
        self.soldout.forget(sale_id);
        Ok(match r.word.as_str() {
            "overcommitted" => {
                let mut f = r.fields();
                Recounted::Overcommitted {
                    held: f.int()?,
                    sold: f.int()?,
                }
            }
            "adjustment_unsettled" => Recounted::AdjustmentUnsettled(r.fields().text()?),
            _ => {
                let r = r.expect(&["recounted"])?;
                let mut f = r.fields();
                Recounted::Done(Stock {
                    total: f.int()?,
                    available: f.int()?,
                    held: f.int()?,
                    sold: f.int()?,
                })
            }
        })
    }

    /// Raises customers' counts to their units in Postgres, a chunk per
    /// call, so that no call grows with the number of buyers.
    async fn floor_customers(
        &self,
        k: &SaleKeys,
        per_customer: &[(String, i64)],
    ) -> EngineResult<()> {
        for chunk in per_customer.chunks(FLOOR_CHUNK) {
            let mut call = self.scripts.floor_customers.key(&k.customers);
            for (customer, units) in chunk {
                call.arg(customer).arg(*units);
            }
            self.run(&call).await?.expect(&["ok"])?;
        }
        Ok(())
    }

    /// Replaces the sale's Redis state with `restore`, atomically (see
    /// `lua/rebuild.lua` for when it refuses).
    pub async fn rebuild(&self, restore: &Restore<'_>) -> EngineResult<Rebuilt> {
        let def = restore.def;
        let k = self.keys(&def.id);
        let json = serde_json::to_string(def)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        self.register(&def.id).await?;
        let known = &restore.known;
        self.floor_customers(&k, known.per_customer).await?;
        let mut call = self.scripts.rebuild.key(&k.sale);
        call.key(&k.reservations)
            .key(&k.due)
            .key(&k.outbox)
            .key(&k.adjustments)
            .key(&k.voided)
            .arg(json)
            .arg(known.total)
            .arg(to_ms(def.starts_at))
            .arg(restore.ends_ms)
            .arg(def.per_customer_limit)
            .arg(i64::from(def.hold_seconds) * 1000)
            .arg(def.price_cents)
            .arg(&def.currency)
            .arg(if restore.paused { "1" } else { "0" })
            .arg(known.sold)
            .arg(restore.sold_outs)
            .arg(known.applied.len());
        for id in known.applied.iter().chain(restore.rejected) {
            call.arg(id);
        }
        let r = self.run(&call).await?;
        self.soldout.forget(&def.id);
        Ok(match r.word.as_str() {
            "outbox_not_empty" => Rebuilt::OutboxNotEmpty(r.fields().int()?),
            "adjustment_unsettled" => Rebuilt::AdjustmentUnsettled(r.fields().text()?),
            "oversold" => Rebuilt::Oversold,
            _ => {
                let r = r.expect(&["rebuilt"])?;
                let mut f = r.fields();
                let (total, available, sold) = (f.int()?, f.int()?, f.int()?);
                Rebuilt::Done(Stock {
                    total,
                    available,
                    held: 0,
                    sold,
                })
            }
        })
    }
}
