//! An admin's change to a live sale, applied once by its id
//! (`lua/adjust_sale.lua`), and the settling of one Postgres has as pending
//! (`lua/settle_adjustment.lua`).

use serde::Deserialize;

use crate::domain::SaleId;
use crate::engine::{Engine, EngineError, EngineResult};

/// What an admin adjustment did: the figures before and after.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Figures {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub ends_ms: i64,
    pub paused: bool,
}

impl Figures {
    /// The figures as `adjust_sale.lua` writes them: one JSON field each
    /// for before and after.
    fn read(json: String) -> EngineResult<Figures> {
        serde_json::from_str(&json).map_err(|e| EngineError::Corrupt(format!("figures: {e}")))
    }
}

/// An admin's change to a live sale; `id` makes applying it idempotent.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub id: &'a str,
    pub stock_delta: i64,
    pub ends_ms: Option<i64>,
    pub paused: Option<bool>,
}

/// What became of an adjustment in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjusted {
    /// Applied now (or, for a retry of the same id, earlier): the figures
    /// before and after it.
    Applied { before: Figures, after: Figures },
    /// Found applied by an earlier call (settling a pending row).
    AppliedEarlier,
    /// A repair settled it as never applied; it never will be.
    Voided,
}

impl Engine {
    /// Applies an admin adjustment once (by its id).
    pub async fn adjust_sale(
        &self,
        sale_id: &SaleId,
        change: &Change<'_>,
    ) -> EngineResult<Adjusted> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .adjust_sale
                    .key(&k.sale)
                    .key(&k.adjustments)
                    .key(&k.voided)
                    .key(&k.events)
                    .arg(change.id)
                    .arg(change.stock_delta)
                    .arg(change.ends_ms.map(|v| v.to_string()).unwrap_or_default())
                    .arg(
                        change
                            .paused
                            .map(|p| if p { "1" } else { "0" })
                            .unwrap_or(""),
                    ),
            )
            .await?;
        if r.word == "voided" {
            return Ok(Adjusted::Voided);
        }
        let r = r.expect(&["applied", "already_applied"])?;
        self.soldout.forget(sale_id);
        // A new end may reopen a retired sale: the loops take it back.
        self.register(sale_id).await?;
        let mut f = r.fields();
        Ok(Adjusted::Applied {
            before: Figures::read(f.text()?)?,
            after: Figures::read(f.text()?)?,
        })
    }

    /// Decides whether an adjustment Postgres has as pending was applied;
    /// one not applied is voided in the same step, so it never will be.
    pub async fn settle_adjustment(&self, sale_id: &SaleId, id: &str) -> EngineResult<Adjusted> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .settle_adjustment
                    .key(&k.adjustments)
                    .key(&k.voided)
                    .arg(id),
            )
            .await?
            .expect(&["applied", "voided"])?;
        Ok(if r.word == "applied" {
            Adjusted::AppliedEarlier
        } else {
            Adjusted::Voided
        })
    }
}
