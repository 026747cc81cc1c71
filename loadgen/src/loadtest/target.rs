//! What the crowd plays against. The gateway's 201 is a hold: the buyers
//! then confirm, release or abandon it, Postgres gets an order per confirm,
//! and abandoned holds expire. A bench baseline's 201 is an order at once:
//! nothing is left to decide, and Postgres holds one order per 201, none
//! beyond the stock. The phases ask the target wherever the two part.

use super::check::Checks;
use super::decide::Decided;
use super::storm::Storm;
use super::{Orders, Play};

pub(super) trait Target {
    /// How the report names it (`gateway now: ...`).
    fn name(&self) -> &'static str;

    /// Whether it records events for the store in Postgres `events`
    /// (`sale.sold_out` among them): flashsale does, the baselines do not.
    fn records_events(&self) -> bool {
        false
    }

    /// The decide phase: what becomes of the units granted, and the figures
    /// once it has (a new reading goes into `storm.readings`).
    async fn decide(&self, play: &Play<'_>, storm: &mut Storm) -> anyhow::Result<Decided>;

    /// The line that says what was granted and what became of it.
    fn units_line(&self, granted: i64, stock: i64, d: &Decided) -> String;

    /// The checks of the buyers' decisions against the figures.
    fn check_decisions(&self, d: &Decided, checks: &mut Checks);

    /// The orders Postgres should hold once the play is over.
    fn expected_orders(&self, storm: &Storm, d: &Decided) -> Orders;

    /// Checks the orders found against the ones expected; returns the order
    /// units beyond the stock, where this check weighs them against it (0
    /// elsewhere: the gateway's orders are its confirms).
    fn check_orders(&self, got: Orders, expected: Orders, stock: i64, checks: &mut Checks) -> i64;
}

/// The flashsale gateway.
pub(super) struct Gateway;

impl Target for Gateway {
    fn name(&self) -> &'static str {
        "gateway"
    }

    fn records_events(&self) -> bool {
        true
    }

    async fn decide(&self, play: &Play<'_>, storm: &mut Storm) -> anyhow::Result<Decided> {
        play.decide_holds(storm).await
    }

    fn units_line(&self, granted: i64, stock: i64, d: &Decided) -> String {
        let late_note = if d.late > 0 {
            format!(", {} too late (hold expired)", d.late)
        } else {
            String::new()
        };
        format!(
            "units reserved: {granted} of {stock} (oversold {}); then {} confirmed, {} released, {} abandoned{late_note}",
            (granted - stock).max(0),
            d.confirmed_units,
            d.released_units,
            d.abandoned_units
        )
    }

    fn check_decisions(&self, d: &Decided, checks: &mut Checks) {
        checks.add(
            format!(
                "sold ({}) == units confirmed ({})",
                d.now.sold, d.confirmed_units
            ),
            Some(d.now.sold == d.confirmed_units),
        );
        checks.add(
            "every confirm and release answered as the contract says".into(),
            Some(d.failures.is_empty()),
        );
    }

    fn expected_orders(&self, _storm: &Storm, d: &Decided) -> Orders {
        Orders {
            rows: d.confirmed,
            units: d.confirmed_units,
        }
    }

    fn check_orders(&self, got: Orders, expected: Orders, _stock: i64, checks: &mut Checks) -> i64 {
        checks.add(
            format!(
                "every confirmed order is one row in Postgres ({} rows, {} units)",
                got.rows, got.units
            ),
            Some(got.rows == expected.rows && got.units == expected.units),
        );
        0
    }
}

/// A bench baseline (`crate::baseline`, served by `examples/baseline_server`).
pub(super) struct BaselineStore;

impl Target for BaselineStore {
    fn name(&self) -> &'static str {
        "baseline"
    }

    /// A 201 is an order already: nothing to confirm, release or abandon,
    /// and the figures do not move after the storm.
    async fn decide(&self, _play: &Play<'_>, storm: &mut Storm) -> anyhow::Result<Decided> {
        Ok(Decided::nothing(storm.after))
    }

    fn units_line(&self, granted: i64, stock: i64, _d: &Decided) -> String {
        format!(
            "units ordered: {granted} of {stock} (oversold {}); confirm and release skipped (baseline)",
            (granted - stock).max(0)
        )
    }

    fn check_decisions(&self, _d: &Decided, _checks: &mut Checks) {}

    fn expected_orders(&self, storm: &Storm, _d: &Decided) -> Orders {
        Orders {
            rows: storm.tally.held.len() as i64,
            units: storm.units_granted(),
        }
    }

    fn check_orders(&self, got: Orders, expected: Orders, stock: i64, checks: &mut Checks) -> i64 {
        checks.add(
            format!(
                "every unit ordered is one order in Postgres, none beyond the stock ({} rows, {} units of {stock})",
                got.rows, got.units
            ),
            Some(got.rows == expected.rows && got.units == expected.units && got.units <= stock),
        );
        (got.units - stock).max(0)
    }
}
