//! Check: the invariants, as the target and Postgres report them, each
//! said as it is made. A check that cannot be made (Postgres out of reach,
//! holds too long to wait for) is recorded as not checked, never as passed.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::decide::Decided;
use super::report::figures_line;
use super::storm::Storm;
use super::target::Target;
use super::{Check, Orders, Out, Play, Stock};

/// Holds longer than this are not waited for: the expiry check is skipped.
const MAX_EXPIRY_WAIT_SECONDS: u32 = 30;

/// The checks made so far, each said as it is added.
pub(super) struct Checks<'a> {
    out: &'a Out,
    list: Vec<Check>,
}

impl Checks<'_> {
    pub(super) fn add(&mut self, what: String, ok: Option<bool>) {
        self.out.say(format!(
            "  [{}] {what}",
            match ok {
                Some(true) => "ok",
                Some(false) => "BROKEN",
                None => "--",
            }
        ));
        self.list.push(Check { what, ok });
    }
}

/// What the check phase found beyond the checks themselves.
pub(super) struct Checked {
    pub(super) checks: Vec<Check>,
    /// The sale's orders in Postgres; `None` when unreachable.
    pub(super) orders: Option<Orders>,
    pub(super) oversold_in_orders: i64,
    /// Abandoned units that came back by expiry (when waited for).
    pub(super) expired_units: Option<i64>,
    /// The figures at the end.
    pub(super) final_stock: Stock,
}

impl Play<'_> {
    pub(super) async fn check(
        &self,
        target: &impl Target,
        storm: &mut Storm,
        d: &Decided,
    ) -> anyhow::Result<Checked> {
        let o = self.o;
        let mut checks = Checks {
            out: &self.out,
            list: Vec::new(),
        };
        let granted = storm.units_granted();
        if storm.none_expired() {
            checks.add(
                format!(
                    "no unit reserved twice: units reserved ({granted}) <= total ({})",
                    o.stock
                ),
                Some(granted <= o.stock),
            );
            let most = storm.max_units_per_customer();
            checks.add(
                format!("no buyer past the per-customer limit (most: {most})"),
                Some(most <= o.limit),
            );
        } else {
            checks.add(
                "holds expired during the storm: raise --hold-seconds to check the units granted against the stock".into(),
                None,
            );
        }
        let r = &storm.readings;
        checks.add(
            format!(
                "available + held + sold == total, none negative (in all {} readings)",
                r.samples + r.extra
            ),
            Some(r.negative == 0 && r.not_adding_up == 0),
        );
        target.check_decisions(d, &mut checks);
        checks.add(
            "no 5xx answers, no transport errors".into(),
            Some(storm.tally.failed == 0),
        );

        let expected = target.expected_orders(storm, d);
        let orders = orders_in_postgres(&self.database_url(), &self.sale_id, expected.rows).await;
        let oversold_in_orders = match orders {
            Some(got) => target.check_orders(got, expected, o.stock, &mut checks),
            None => {
                checks.add(
                    "Postgres not reachable from here: orders not checked".into(),
                    None,
                );
                0
            }
        };

        if target.records_events() {
            let seen_empty = storm.readings.min_available == 0;
            let check = match sold_outs_in_postgres(&self.database_url(), &self.sale_id, seen_empty)
                .await
            {
                Some(n) => (
                    format!(
                        "sell-outs recorded: {} (`sale.sold_out` events numbered 1..{}, one each time `available` reached 0{})",
                        n.len(),
                        n.len(),
                        if seen_empty { "; the readings saw it at 0" } else { "" }
                    ),
                    Some(
                        n.iter().enumerate().all(|(i, n)| *n == i as i64 + 1)
                            && (!seen_empty || !n.is_empty()),
                    ),
                ),
                None => (
                    "Postgres not reachable from here: sell-outs not counted".into(),
                    None,
                ),
            };
            checks.add(check.0, check.1);
        }
        let (expired_units, final_stock) = self.check_expiry(target, storm, d, &mut checks).await?;
        Ok(Checked {
            checks: checks.list,
            orders,
            oversold_in_orders,
            expired_units,
            final_stock,
        })
    }

    /// Waits for the abandoned holds to expire, when they are short enough,
    /// and checks their units came back; returns the units that did and the
    /// figures at the end.
    async fn check_expiry(
        &self,
        target: &impl Target,
        storm: &mut Storm,
        d: &Decided,
        checks: &mut Checks<'_>,
    ) -> anyhow::Result<(Option<i64>, Stock)> {
        let hold_seconds = self.o.hold_seconds;
        if d.abandoned_units == 0 {
            return Ok((None, d.now));
        }
        if hold_seconds > MAX_EXPIRY_WAIT_SECONDS {
            checks.add(
                format!(
                    "holds last {hold_seconds} s: not waiting for the abandoned ones to expire (30 s or less is checked)"
                ),
                None,
            );
            return Ok((None, d.now));
        }
        let wait = Duration::from_secs(u64::from(hold_seconds)) + Duration::from_millis(1500);
        self.out.say(format!(
            "waiting {:.1} s for abandoned holds to expire...",
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
        let s = self.stock().await?;
        storm.readings.see(&s);
        self.out.say(figures_line(target.name(), &s));
        checks.add(
            "abandoned holds returned to stock".into(),
            Some(s.held == 0 && s.available == s.total - s.sold && s.available >= 0),
        );
        Ok((Some(d.now.held - s.held), s))
    }

    /// The Postgres holding the orders: `--database-url`, or the settings'.
    fn database_url(&self) -> String {
        self.o
            .database_url
            .clone()
            .unwrap_or_else(|| self.settings.database.url.expose_secret().to_string())
    }
}

/// One connection to the Postgres holding the sale's orders and events;
/// `None` when it is unreachable.
async fn connect(url: &str) -> Option<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .ok()
}

/// The numbers of the sale's `sale.sold_out` events in Postgres
/// (`<sale>.sale.sold_out.<n>`), in order; waited for up to 10 s while
/// `expect_one` and there is none yet (the worker flushes them a moment
/// after the change). `None` when Postgres is unreachable.
async fn sold_outs_in_postgres(url: &str, sale_id: &str, expect_one: bool) -> Option<Vec<i64>> {
    let db = connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let prefix = format!("{sale_id}.sale.sold_out.");
    let got = loop {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM events WHERE sale_id = $1 AND type = 'sale.sold_out'",
        )
        .bind(sale_id)
        .fetch_all(&db)
        .await
        .ok()?;
        if !(expect_one && ids.is_empty()) || Instant::now() > deadline {
            let mut n: Vec<i64> = ids
                .iter()
                .map(|id| {
                    id.strip_prefix(&prefix)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(-1)
                })
                .collect();
            n.sort_unstable();
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    db.close().await;
    Some(got)
}

/// Orders of the sale in Postgres, once `expected` rows are there (the
/// gateway's worker flushes them a moment after the confirm) or after 10 s;
/// `None` when Postgres is unreachable.
async fn orders_in_postgres(url: &str, sale_id: &str, expected: i64) -> Option<Orders> {
    let db = connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let (rows, units): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
        )
        .bind(sale_id)
        .fetch_one(&db)
        .await
        .ok()?;
        if rows >= expected || Instant::now() > deadline {
            break Orders { rows, units };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    db.close().await;
    Some(got)
}
