//! Report: what a play saw and concluded, as [`Report`] (the `--json`
//! object `bench/compare.sh` and `bench/plot.py` read) and as the lines a
//! person reads.

use std::collections::BTreeMap;

use serde::Serialize;

use super::check::Checked;
use super::decide::Decided;
use super::storm::Storm;
use super::target::Target;
use super::{Play, Stock, TargetKind};

/// Latency of the reserves, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One invariant: `ok` is `None` when it could not be checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: Option<bool>,
}

/// Rows and units of the sale's orders in Postgres.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Orders {
    pub rows: i64,
    pub units: i64,
}

/// What a play saw and what it concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target_kind: TargetKind,
    pub url: String,
    pub sale_id: String,
    pub concurrency: usize,
    pub customers: usize,
    /// Units on sale.
    pub stock: i64,
    /// Reserves answered (or failed in transport).
    pub requests: u64,
    /// Wall time of the storm of reserves.
    pub seconds: f64,
    /// Reserves per second over the storm.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// `"<status> <code>"` -> count, e.g. `"201 held"`, `"409 sold_out"`.
    pub answers: BTreeMap<String, u64>,
    /// The first few transport errors, verbatim.
    pub transport_errors: Vec<String>,
    pub sold_out_answers: u64,
    pub rate_limited: u64,
    /// 5xx answers and transport errors.
    pub failed: u64,
    /// Units of the 201 answers.
    pub units_granted: i64,
    /// Units granted beyond the stock (0 when none).
    pub oversold_units: i64,
    pub max_units_per_customer: u32,
    /// Readings of the sale's stock taken during the storm.
    pub samples: u64,
    pub sample_errors: u64,
    /// The lowest `available` in any reading (during the storm or after).
    pub min_available_seen: i64,
    /// Readings (during the storm or after) with a negative figure.
    pub negative_stock_seen: u64,
    /// Readings where available + held + sold != total.
    pub samples_not_adding_up: u64,
    /// The figures right after the storm.
    pub after_storm: Stock,
    /// available + held + sold - total right after the storm: units the
    /// counter lost (positive) or took twice (negative).
    pub stock_drift: i64,
    pub confirmed_units: i64,
    pub released_units: i64,
    pub abandoned_units: i64,
    /// Abandoned units that came back by expiry (when waited for).
    pub expired_units: Option<i64>,
    /// The figures at the end.
    pub final_stock: Stock,
    /// The sale's orders in Postgres; `None` when unreachable.
    pub orders: Option<Orders>,
    /// Order units beyond the stock (0 when none or not checked).
    pub oversold_in_orders: i64,
    pub checks: Vec<Check>,
    /// The invariants that failed.
    pub broken: Vec<String>,
}

impl Report {
    /// No invariant broken.
    pub fn ok(&self) -> bool {
        self.broken.is_empty()
    }
}

/// `<name> now: available .. held .. sold .. total ..`.
pub(super) fn figures_line(name: &str, s: &Stock) -> String {
    format!(
        "{name} now: available {} held {} sold {} total {}",
        s.available, s.held, s.sold, s.total
    )
}

impl Play<'_> {
    /// What the storm and the buyers' decisions came to, before the checks.
    pub(super) fn tell(&self, target: &impl Target, storm: &Storm, d: &Decided) {
        let out = &self.out;
        let lat = storm.tally.latency();
        out.say(format!(
            "\nstorm: {} requests in {:.2} s ({:.0} req/s); latency p50 {:.1} ms, p99 {:.1} ms (p90 {:.1}, p99.9 {:.1}, max {:.1})",
            storm.tally.answered,
            storm.elapsed.as_secs_f64(),
            storm.throughput(),
            lat.p50,
            lat.p99,
            lat.p90,
            lat.p999,
            lat.max
        ));
        for (code, n) in &storm.tally.codes {
            out.say(format!("  {n:>6}  {code}"));
        }
        for e in &storm.tally.transport_errors {
            out.say(format!("  transport error: {e}"));
        }
        out.say(target.units_line(storm.units_granted(), self.o.stock, d));
        let r = &storm.readings;
        out.say(format!(
            "stock readings: {} during the storm; lowest available {}, {} negative, {} not adding up",
            r.samples, r.min_available, r.negative, r.not_adding_up
        ));
        out.say(figures_line(target.name(), &d.now));
        for f in &d.failures {
            out.say(format!("  unexpected answer: {f}"));
        }
    }

    /// The report of the play, with its last two lines said.
    pub(super) fn report(self, storm: Storm, d: Decided, checked: Checked) -> Report {
        let o = self.o;
        let count = |code: &str| {
            storm
                .tally
                .codes
                .iter()
                .filter(|(k, _)| k.ends_with(code))
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        let granted = storm.units_granted();
        let after = storm.after;
        let r = &storm.readings;
        let report = Report {
            target_kind: o.target_kind,
            url: self.bases.join(","),
            sale_id: self.sale_id,
            concurrency: o.concurrency,
            customers: o.customers,
            stock: o.stock,
            requests: storm.tally.answered,
            seconds: storm.elapsed.as_secs_f64(),
            throughput: storm.throughput(),
            latency_ms: storm.tally.latency(),
            sold_out_answers: count(" sold_out"),
            rate_limited: storm
                .tally
                .codes
                .iter()
                .filter(|(k, _)| k.starts_with("429"))
                .map(|(_, n)| n)
                .sum(),
            failed: storm.tally.failed,
            answers: storm.tally.codes.clone(),
            transport_errors: storm.tally.transport_errors.clone(),
            units_granted: granted,
            oversold_units: (granted - o.stock).max(0),
            max_units_per_customer: storm.max_units_per_customer(),
            samples: r.samples,
            sample_errors: r.errors,
            min_available_seen: r.min_available,
            negative_stock_seen: r.negative,
            samples_not_adding_up: r.not_adding_up,
            after_storm: after,
            stock_drift: after.available + after.held + after.sold - after.total,
            confirmed_units: d.confirmed_units,
            released_units: d.released_units,
            abandoned_units: d.abandoned_units,
            expired_units: checked.expired_units,
            final_stock: checked.final_stock,
            orders: checked.orders,
            oversold_in_orders: checked.oversold_in_orders,
            broken: checked
                .checks
                .iter()
                .filter(|c| c.ok == Some(false))
                .map(|c| c.what.clone())
                .collect(),
            checks: checked.checks,
        };
        self.out.say(format!(
            "outcome: {} units sold, {} held, {} expired; {} sold-out answers, {} 429s",
            report.final_stock.sold,
            report.final_stock.held,
            report
                .expired_units
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            report.sold_out_answers,
            report.rate_limited
        ));
        self.out.say(if report.ok() {
            "all invariants hold".to_string()
        } else {
            format!("INVARIANT BROKEN: {}", report.broken.join("; "))
        });
        report
    }
}
