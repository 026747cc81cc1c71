//! Model-based test of repairs (issue 12): seeded random walks that
//! interleave buyers (reserve, confirm, release, abandon) with on-call and
//! faults (the sale's keys deleted, rebuilds, every drift kind injected and
//! `--apply`, PATCHes whose first attempt is cut at a random point and
//! retried with their key, a repair voiding them in between, a flushing
//! worker killed mid-batch, the reaper), some of them concurrently, against
//! the real Redis and Postgres.
//!
//! After every step the invariants of the contract are checked against what
//! the walk knows for certain: every confirm answered OK is a sale (Redis
//! counts it, and it lands in Postgres exactly once), admin changes that
//! were answered OK are applied exactly once, and no repair ever offers a
//! unit that is held or sold, overall or per customer.
//!
//! `PROPTEST_CASES` sets the number of walks (default 200), `MODEL_SEED`
//! replays one walk. A failing walk prints its seed and its steps.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use flashsale::domain::{ReservationStatus, SaleDef, SaleId};
use flashsale::engine::{ConfirmRequest, Engine, EngineError, Refusal, ReserveRequest};
use flashsale::usecases::adjust;
use flashsale::usecases::flush::Flusher;
use flashsale::usecases::reconcile::{self, Drift};
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

const CUSTOMERS: u8 = 5;
const STEPS: usize = 24;
/// Walks run this many at a time (each on its own sale).
const PARALLEL: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Injected {
    AvailableUp,
    AvailableDown,
    HeldUp,
    SoldDown,
    TotalUp,
    TotalDown,
}

#[derive(Debug, Clone)]
enum Repair {
    Rebuild,
    /// A recount whatever the drift: the repair racing the buyers.
    Recount,
    Patch {
        delta: i64,
        cut_us: u64,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Reserve {
        customer: u8,
        quantity: u32,
    },
    Confirm {
        pick: usize,
    },
    Release {
        pick: usize,
    },
    /// A buyer walks away: the hold is left to expire.
    Abandon,
    /// Waits past the next deadline (holds last one second).
    Advance,
    Reap,
    Flush,
    /// A flushing worker killed after `after_us`, anywhere in its batch.
    KillFlush {
        after_us: u64,
    },
    /// Redis lost the sale (its outbox survived: a partial loss).
    DeleteKeys,
    Rebuild,
    /// Drift injected and `--apply` right after, before any buyer can use it.
    Drift(Injected),
    Apply,
    /// A PATCH whose first attempt is cut after `cut_us` (its reply lost),
    /// maybe a reconcile in between, then retried with the same key.
    Patch {
        delta: i64,
        cut_us: Option<u64>,
        reconcile_between: bool,
    },
    /// Buyers and one repair at the same time.
    Storm {
        buyers: Vec<(u8, u32)>,
        confirms: usize,
        repair: Repair,
    },
}

fn step(rng: &mut StdRng) -> Step {
    let customer = |rng: &mut StdRng| rng.gen_range(0..CUSTOMERS);
    match rng.gen_range(0..100) {
        0..=21 => Step::Reserve {
            customer: customer(rng),
            quantity: rng.gen_range(1..=2),
        },
        22..=35 => Step::Confirm { pick: rng.gen() },
        36..=41 => Step::Release { pick: rng.gen() },
        42..=44 => Step::Abandon,
        45..=47 => Step::Advance,
        48..=51 => Step::Reap,
        52..=56 => Step::Flush,
        57..=60 => Step::KillFlush {
            after_us: rng.gen_range(0..4000),
        },
        61..=64 => Step::DeleteKeys,
        65..=69 => Step::Rebuild,
        70..=79 => Step::Drift(match rng.gen_range(0..6) {
            0 => Injected::AvailableUp,
            1 => Injected::AvailableDown,
            2 => Injected::HeldUp,
            3 => Injected::SoldDown,
            4 => Injected::TotalUp,
            _ => Injected::TotalDown,
        }),
        80..=82 => Step::Apply,
        83..=91 => Step::Patch {
            delta: [-3, -2, -1, 1, 2, 3][rng.gen_range(0..6)],
            cut_us: rng.gen_bool(0.7).then(|| rng.gen_range(0..6000)),
            reconcile_between: rng.gen_bool(0.5),
        },
        _ => Step::Storm {
            buyers: (0..rng.gen_range(2..6))
                .map(|_| (customer(rng), rng.gen_range(1..=2)))
                .collect(),
            confirms: rng.gen_range(0..3),
            repair: match rng.gen_range(0..3) {
                0 => Repair::Rebuild,
                1 => Repair::Recount,
                _ => Repair::Patch {
                    delta: [-2, -1, 1, 2][rng.gen_range(0..4)],
                    cut_us: rng.gen_range(0..6000),
                },
            },
        },
    }
}

#[derive(Debug, Clone)]
struct Hold {
    id: String,
    customer: String,
    quantity: u32,
    status: ReservationStatus,
}

/// What the walk knows for certain.
#[derive(Debug, Default)]
struct Model {
    total: i64,
    limit: i64,
    holds: Vec<Hold>,
}

impl Model {
    fn confirmed(&self) -> impl Iterator<Item = &Hold> {
        self.holds
            .iter()
            .filter(|h| h.status == ReservationStatus::Confirmed)
    }

    fn held_index(&self, pick: usize) -> Option<usize> {
        let held: Vec<usize> = (0..self.holds.len())
            .filter(|&i| self.holds[i].status == ReservationStatus::Held)
            .collect();
        (!held.is_empty()).then(|| held[pick % held.len()])
    }
}

struct Walk<'a> {
    app: &'a TestApp,
    def: SaleDef,
    sale: SaleId,
    model: Model,
    rng: StdRng,
    log: Vec<String>,
}

impl Walk<'_> {
    fn engine(&self) -> &Engine {
        &self.app.engine
    }

    fn outbox(&self) -> Flusher {
        // Claims every pending entry at once: the walk runs one flusher at
        // a time, so anything pending belongs to a flusher killed earlier.
        Flusher::new(
            self.app.engine.clone(),
            self.app.db.clone(),
            3,
            Duration::ZERO,
            CancellationToken::new(),
        )
    }

    fn sale(&self) -> &SaleId {
        &self.sale
    }

    async fn reserve(&self, customer: u8, quantity: u32) -> Option<Hold> {
        let customer = format!("c{customer}");
        // A key of its own for every call: it bypasses the engine's sold-out
        // marks, which nothing refreshes in this test's engine.
        let key = uuid::Uuid::new_v4().simple().to_string();
        let got = self
            .engine()
            .reserve(&ReserveRequest {
                sale_id: self.sale(),
                customer: &customer_id(&customer),
                quantity,
                idempotency: Some((&key, quantity.to_string())),
                admission: None,
            })
            .await;
        match got {
            Ok(r) => Some(Hold {
                id: r.id,
                customer,
                quantity,
                status: ReservationStatus::Held,
            }),
            Err(EngineError::Refused(
                Refusal::SoldOut
                | Refusal::InsufficientStock
                | Refusal::LimitExceeded
                | Refusal::SaleNotFound,
            )) => None,
            Err(e) => panic!("reserve: {e}"),
        }
    }

    /// Confirms a hold; `Some(true)` when it was sold.
    async fn confirm(&self, i: usize) -> ReservationStatus {
        let h = &self.model.holds[i];
        match self
            .engine()
            .confirm(&ConfirmRequest {
                sale_id: self.sale(),
                reservation_id: &reservation_id(&h.id),
                customer: &customer_id(&h.customer),
                payment_ref: "pay",
            })
            .await
        {
            Ok(c) => {
                assert_eq!(c.order.quantity, h.quantity);
                ReservationStatus::Confirmed
            }
            Err(EngineError::Refused(
                Refusal::HoldExpired | Refusal::ReservationNotHeld | Refusal::ReservationNotFound,
            )) => ReservationStatus::Expired,
            Err(e) => panic!("confirm: {e}"),
        }
    }

    /// Releases a hold; `true` when the release was answered OK.
    async fn release(&self, i: usize) -> bool {
        let h = &self.model.holds[i];
        match self
            .engine()
            .release(
                self.sale(),
                &reservation_id(&h.id),
                Some(&customer_id(&h.customer)),
            )
            .await
        {
            Ok(_) => true,
            Err(EngineError::Refused(
                Refusal::ReservationNotHeld | Refusal::ReservationNotFound,
            )) => false,
            Err(e) => panic!("release: {e}"),
        }
    }

    async fn reap(&self) {
        loop {
            let step = self.engine().expire_due(self.sale(), 100).await.unwrap();
            if !step.more_due {
                return;
            }
        }
    }

    async fn rebuild(&self) {
        reconcile::rebuild(self.engine(), &self.app.db, &self.outbox(), &self.def)
            .await
            .unwrap_or_else(|e| panic!("rebuild: {e}"));
    }

    /// `reconcile --apply`: the report, then the repair of what it found
    /// (plus a forced recount when asked).
    async fn apply(&self, force_recount: bool) -> reconcile::SaleReport {
        let report = reconcile::inspect(self.engine(), &self.app.db, &self.def, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("inspect: {e}"));
        let mut report = report;
        if force_recount && report.redis.is_some() {
            report.drift.push(Drift::CountersDoNotAddUp);
        }
        if report.drift.is_empty() {
            return report;
        }
        reconcile::apply(
            self.engine(),
            &self.app.db,
            &self.outbox(),
            &self.def,
            report,
        )
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// A PATCH cut after `cut_us` (if given), then retried with its key to
    /// the end. Returns whether the change was applied.
    async fn patch(&self, delta: i64, cut_us: Option<u64>, reconcile_between: bool) -> bool {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let req = adjust::Request {
            sale_id: self.sale(),
            actor: &customer_id("ops"),
            stock_delta: delta,
            ends_at: None,
            paused: None,
            queue: None,
            idempotency_key: Some(&key),
        };
        let timeout = Duration::from_secs(5);
        if let Some(us) = cut_us {
            let (engine, db) = (self.app.engine.clone(), self.app.db.clone());
            let (sale, key) = (self.sale.clone(), key.clone());
            let first = tokio::spawn(async move {
                let req = adjust::Request {
                    sale_id: &sale,
                    actor: &customer_id("ops"),
                    stock_delta: delta,
                    ends_at: None,
                    paused: None,
                    queue: None,
                    idempotency_key: Some(&key),
                };
                let _ = adjust::adjust(&engine, &db, timeout, &req).await;
            });
            tokio::time::sleep(Duration::from_micros(us)).await;
            first.abort();
            let _ = first.await;
            if reconcile_between {
                self.apply(false).await;
            }
        }
        let mut last = None;
        for _ in 0..3 {
            match adjust::adjust(self.engine(), &self.app.db, timeout, &req).await {
                Ok(answer) => {
                    assert!(answer["stock"]["total"].is_i64(), "{answer}");
                    return true;
                }
                Err(adjust::AdjustError::Refused(
                    Refusal::InsufficientStock | Refusal::SaleNotFound,
                )) => return false,
                // A concurrent repair voided it; the client retries.
                Err(e @ adjust::AdjustError::KeptVoided(_)) => last = Some(e),
                Err(e) => panic!("patch: {e}"),
            }
        }
        panic!("patch kept failing: {last:?}");
    }

    /// Marks holds Redis no longer holds (expired, dropped by a rebuild).
    async fn refresh(&mut self) {
        let mut conn = self.engine().connection();
        let k = self.engine().keys(self.sale());
        for h in self
            .model
            .holds
            .iter_mut()
            .filter(|h| h.status == ReservationStatus::Held)
        {
            let raw: Option<String> = conn.hget(&k.reservations, &h.id).await.unwrap();
            let held = raw.is_some_and(|r| r.contains("\"s\":\"held\""));
            if !held {
                h.status = ReservationStatus::Expired;
            }
        }
    }

    async fn run(&mut self, step: &Step) {
        match step {
            Step::Reserve { customer, quantity } => {
                if let Some(h) = self.reserve(*customer, *quantity).await {
                    self.model.holds.push(h);
                }
            }
            Step::Confirm { pick } => {
                if let Some(i) = self.model.held_index(*pick) {
                    self.model.holds[i].status = self.confirm(i).await;
                }
            }
            Step::Release { pick } => {
                if let Some(i) = self.model.held_index(*pick) {
                    if self.release(i).await {
                        self.model.holds[i].status = ReservationStatus::Released;
                    }
                }
            }
            Step::Abandon => {}
            Step::Advance => tokio::time::sleep(Duration::from_millis(1050)).await,
            Step::Reap => self.reap().await,
            Step::Flush => {
                self.outbox().flush_sale(self.sale(), true).await.unwrap();
            }
            Step::KillFlush { after_us } => {
                let (outbox, sale) = (self.outbox(), self.sale.clone());
                let flush = tokio::spawn(async move { outbox.flush_sale(&sale, true).await });
                tokio::time::sleep(Duration::from_micros(*after_us)).await;
                flush.abort();
                let _ = flush.await;
            }
            Step::DeleteKeys => {
                let k = self.engine().keys(self.sale());
                let lost: Vec<&str> = k
                    .all()
                    .into_iter()
                    // What a flush has yet to take is as durable as the
                    // orders' outbox: the events stream stays with it.
                    .filter(|key| *key != k.outbox && *key != k.events && *key != k.dead_letters)
                    .collect();
                let mut conn = self.engine().connection();
                let _: () = conn.del(lost).await.unwrap();
            }
            Step::Rebuild => self.rebuild().await,
            Step::Drift(kind) => {
                let k = self.engine().keys(self.sale());
                let mut conn = self.engine().connection();
                let exists: bool = conn.exists(&k.sale).await.unwrap();
                if exists {
                    let changes: &[(&str, i64)] = match kind {
                        Injected::AvailableUp => &[("available", 1)],
                        Injected::AvailableDown => &[("available", -1)],
                        Injected::HeldUp => &[("held", 1)],
                        Injected::SoldDown => &[("sold", -1)],
                        Injected::TotalUp => &[("total", 1), ("available", 1)],
                        Injected::TotalDown => &[("total", -1), ("available", -1)],
                    };
                    for (field, by) in changes {
                        let _: () = conn.hincr(&k.sale, *field, *by).await.unwrap();
                    }
                }
                let after = self.apply(false).await;
                for d in &after.drift {
                    assert!(
                        !matches!(
                            d,
                            Drift::CountersDoNotAddUp
                                | Drift::TotalDiffers { .. }
                                | Drift::OrdersNotCountedAsSold { .. }
                        ),
                        "--apply left {d:?}: {:?}",
                        after.repairs
                    );
                }
            }
            Step::Apply => {
                self.apply(false).await;
            }
            Step::Patch {
                delta,
                cut_us,
                reconcile_between,
            } => {
                if self.patch(*delta, *cut_us, *reconcile_between).await {
                    self.model.total += delta;
                }
            }
            Step::Storm {
                buyers,
                confirms,
                repair,
            } => {
                let picks: Vec<usize> = (0..*confirms)
                    .filter_map(|_| {
                        let pick = self.rng.gen();
                        self.model.held_index(pick)
                    })
                    .collect();
                let mut picks = picks;
                picks.dedup();
                let this = &*self;
                let reserves =
                    futures::future::join_all(buyers.iter().map(|(c, q)| this.reserve(*c, *q)));
                let confirmed = futures::future::join_all(picks.iter().map(|i| this.confirm(*i)));
                let repair = async {
                    match repair {
                        Repair::Rebuild => {
                            this.rebuild().await;
                            None
                        }
                        Repair::Recount => {
                            this.apply(true).await;
                            None
                        }
                        Repair::Patch { delta, cut_us } => this
                            .patch(*delta, Some(*cut_us), false)
                            .await
                            .then_some(*delta),
                    }
                };
                let (held, confirmed, patched) = tokio::join!(reserves, confirmed, repair);
                for (i, status) in picks.iter().zip(confirmed) {
                    self.model.holds[*i].status = status;
                }
                self.model.holds.extend(held.into_iter().flatten());
                self.model.total += patched.unwrap_or(0);
            }
        }
        self.refresh().await;
    }

    /// The invariants, against what the walk knows for certain.
    async fn check(&self) {
        let m = &self.model;
        let k = self.engine().keys(self.sale());
        let mut conn = self.engine().connection();
        let figures: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(&k.sale)
            .arg(&["total", "available", "held", "sold"])
            .query_async(&mut conn)
            .await
            .unwrap();
        let confirmed: i64 = m.confirmed().map(|h| i64::from(h.quantity)).sum();
        let (pg_units,): (i64,) = sqlx::query_as(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
        )
        .bind(self.sale().as_str())
        .fetch_one(&self.app.db)
        .await
        .unwrap();
        assert!(
            pg_units <= confirmed,
            "Postgres has orders nobody confirmed"
        );
        let (Some(total), Some(available), Some(held), Some(sold)) = figures else {
            return; // Redis lost the sale; nothing can be sold until a rebuild
        };
        assert!(
            available >= 0 && held >= 0 && sold >= 0 && available + held + sold == total,
            "invariant 1: {figures:?}"
        );
        assert_eq!(total, m.total, "admin changes applied once, never reversed");
        assert!(sold >= confirmed, "sold {sold} < confirmed {confirmed}");
        assert!(sold >= pg_units, "sold {sold} < Postgres's {pg_units}");
        let live: Vec<&Hold> = m
            .holds
            .iter()
            .filter(|h| h.status == ReservationStatus::Held)
            .collect();
        let live_units: i64 = live.iter().map(|h| i64::from(h.quantity)).sum();
        assert!(
            live_units + confirmed <= total,
            "units granted {live_units} held + {confirmed} sold > total {total}"
        );
        assert!(
            available <= total - live_units - confirmed,
            "available {available} offers units held ({live_units}) or sold ({confirmed}) of {total}"
        );
        let counts: HashMap<String, i64> = conn.hgetall(&k.customers).await.unwrap();
        let mut mine: HashMap<&str, i64> = HashMap::new();
        for h in live.iter().copied().chain(m.confirmed()) {
            *mine.entry(&h.customer).or_default() += i64::from(h.quantity);
        }
        for (c, units) in mine {
            assert!(units <= m.limit, "{c} has {units} > limit {}", m.limit);
            let counted = counts.get(c).copied().unwrap_or(0);
            assert!(
                counted >= units,
                "{c}: Redis counts {counted} held + bought, truly {units}"
            );
        }
    }

    /// The end: every order flushed, exactly the confirmed ones, once; and
    /// one more `--apply` finds nothing left.
    async fn finish(&mut self) {
        if self
            .engine()
            .inspect(self.sale(), 0)
            .await
            .unwrap()
            .is_none()
        {
            self.rebuild().await;
        }
        let outbox = self.outbox();
        for _ in 0..50 {
            outbox.flush_sale(self.sale(), true).await.unwrap();
            if self.app.outbox_len(self.sale()).await == 0 {
                break;
            }
        }
        let rows: Vec<(String, i32)> =
            sqlx::query_as("SELECT reservation_id, quantity FROM orders WHERE sale_id = $1")
                .bind(self.sale().as_str())
                .fetch_all(&self.app.db)
                .await
                .unwrap();
        let mut got: Vec<(String, i32)> = rows;
        got.sort();
        let mut want: Vec<(String, i32)> = self
            .model
            .confirmed()
            .map(|h| (h.id.clone(), h.quantity as i32))
            .collect();
        want.sort();
        assert_eq!(got, want, "every confirmed order in Postgres, exactly once");
        self.check_events().await;
        self.reap().await;
        let after = self.apply(false).await;
        assert!(
            after.drift.is_empty(),
            "drift left: {:?} {:?}",
            after.drift,
            after.repairs
        );
        self.refresh().await;
        self.check().await;
    }
}

impl Walk<'_> {
    /// Invariant 8 through the repairs, once everything is flushed: every
    /// confirm and release answered OK has its event, no hold has two
    /// endings, and every event of the sale has exactly one delivery for
    /// the endpoint registered (made in the flush's transaction).
    async fn check_events(&self) {
        let events: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT e.id, e.aggregateid, e.type, count(d.event_id)
               FROM events e LEFT JOIN webhook_deliveries d ON d.event_id = e.id
              WHERE e.sale_id = $1 GROUP BY e.id",
        )
        .bind(self.sale().as_str())
        .fetch_all(&self.app.db)
        .await
        .unwrap();
        let mut ended: HashMap<&str, &str> = HashMap::new();
        for (id, aggregate, kind, deliveries) in &events {
            assert_eq!(
                *deliveries, 1,
                "{id}: {deliveries} deliveries for one endpoint"
            );
            if kind.starts_with("reservation.") {
                if let Some(before) = ended.insert(aggregate, kind) {
                    panic!("{aggregate} ended twice: {before} and {kind}");
                }
            }
        }
        for h in &self.model.holds {
            let kind = match h.status {
                ReservationStatus::Confirmed => "reservation.confirmed",
                ReservationStatus::Released => "reservation.released",
                // An expiry the walk saw may be a hold a repair dropped with
                // Redis's records: no event is promised for it.
                _ => continue,
            };
            assert_eq!(
                ended.get(h.id.as_str()).copied(),
                Some(kind),
                "{} was answered OK but has no {kind}",
                h.id
            );
        }
    }
}

async fn walk(app: &TestApp, seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let stock = rng.gen_range(3..=8);
    let limit = rng.gen_range(1..=3);
    let sale = app.live_sale(stock, limit, 1).await;
    let def = flashsale::store::sale(&app.db, &sale_id(&sale))
        .await
        .unwrap()
        .unwrap();
    let steps: Vec<Step> = (0..STEPS).map(|_| step(&mut rng)).collect();
    let mut w = Walk {
        app,
        def,
        sale: sale_id(&sale),
        model: Model {
            total: stock,
            limit: i64::from(limit),
            holds: Vec::new(),
        },
        rng,
        log: vec![format!(
            "sale {sale}: stock {stock}, limit {limit}, holds 1 s"
        )],
    };
    let outcome = std::panic::AssertUnwindSafe(async {
        for s in &steps {
            w.log.push(format!("{s:?}"));
            w.run(s).await;
            w.check().await;
        }
        w.log.push("finish".into());
        w.finish().await;
    })
    .catch_unwind()
    .await;
    outcome.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!(
            "walk with MODEL_SEED={seed} failed: {why}\nsteps:\n  {}",
            w.log.join("\n  ")
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_in_any_order_never_oversell() {
    let app = TestApp::builder()
        .without_worker()
        .settings(crate::common::webhooks::local)
        .spawn()
        .await;
    // Nothing delivers (no worker): the walks check the deliveries made.
    crate::webhooks_e2e::register(
        &app,
        serde_json::json!({ "url": "http://127.0.0.1:9/hook" }),
    )
    .await;
    let seeds: Vec<u64> = match std::env::var("MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("MODEL_SEED is a number")],
        Err(_) => {
            let cases: u64 = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(200);
            let base: u64 = rand::random();
            (0..cases).map(|i| base.wrapping_add(i)).collect()
        }
    };
    use futures::stream::{self, StreamExt};
    let failures: Vec<String> = stream::iter(seeds.iter().copied())
        .map(|seed| walk(&app, seed))
        .buffer_unordered(PARALLEL)
        .filter_map(|r| std::future::ready(r.err()))
        .collect()
        .await;
    for f in &failures {
        eprintln!("{f}\n");
    }
    assert!(
        failures.is_empty(),
        "{} of {} walks failed; the first:\n{}",
        failures.len(),
        seeds.len(),
        failures[0]
    );
}
