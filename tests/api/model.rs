//! Property test: random sequences of reserve, confirm, release, expire (the
//! reaper), stock changes and clock advances run against the real engine and
//! against a plain in-memory model of a sale. After every step the Redis state
//! must equal the model's.
//!
//! After the sequence the outbox is flushed, and every confirm, release and
//! expiry the model saw has exactly one row of Postgres `events`, as has every
//! time `available` went from above 0 to 0 (invariant 8).
//!
//! Time is real (holds last 1 s, "advance" sleeps past the next deadline), so
//! an operation within a few milliseconds of a deadline may go either way; the
//! model accepts either outcome there and adopts the one Redis chose.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use flashsale::domain::{ReservationStatus, SaleDef, SaleId};
use flashsale::engine::{
    Adjusted, Change, ConfirmRequest, Engine, EngineError, Refusal, ReserveRequest,
};
use proptest::prelude::*;
use time::OffsetDateTime;

const LIMIT: u32 = 3;
const STOCK: i64 = 6;
const HOLD_MS: i64 = 1000;
/// Operations this close to a deadline may land on either side of it. Redis
/// and the test share the machine's clock, so a few ms cover rounding.
const SLACK_MS: i64 = 5;

#[derive(Debug, Clone)]
enum Op {
    Reserve { customer: u8, quantity: u32 },
    Confirm { pick: usize },
    Release { pick: usize, admin: bool },
    Reap,
    AdjustStock { delta: i64 },
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 1u32..=3).prop_map(|(customer, quantity)| Op::Reserve { customer, quantity }),
        3 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, admin)| Op::Release { pick, admin }),
        2 => Just(Op::Reap),
        1 => (-4i64..=4).prop_map(|delta| Op::AdjustStock { delta }),
        1 => Just(Op::Advance),
    ]
}

#[derive(Debug, Clone)]
struct Hold {
    id: String,
    customer: String,
    quantity: u32,
    status: ReservationStatus,
    expires_ms: i64,
}

#[derive(Debug, Default)]
struct Model {
    total: i64,
    available: i64,
    held: i64,
    sold: i64,
    holds: Vec<Hold>,
    /// Times `available` went from above 0 to 0.
    sold_outs: u32,
}

impl Model {
    fn per_customer(&self) -> HashMap<String, i64> {
        let mut m = HashMap::new();
        for h in &self.holds {
            if matches!(
                h.status,
                ReservationStatus::Held | ReservationStatus::Confirmed
            ) {
                *m.entry(h.customer.clone()).or_insert(0) += i64::from(h.quantity);
            }
        }
        m
    }

    /// A held hold ends: its units go back.
    fn end(&mut self, i: usize, status: ReservationStatus) {
        let h = &mut self.holds[i];
        assert_eq!(h.status, ReservationStatus::Held);
        h.status = status;
        self.held -= i64::from(h.quantity);
        self.available += i64::from(h.quantity);
    }
}

fn wall_ms() -> i64 {
    flashsale::domain::to_ms(OffsetDateTime::now_utc())
}

/// Which side of its deadline a hold is on, judged with slack.
#[derive(Debug, PartialEq)]
enum Side {
    Before,
    After,
    Either,
}

fn side(expires_ms: i64, before_call: i64, after_call: i64) -> Side {
    if before_call >= expires_ms + SLACK_MS {
        Side::After
    } else if after_call + SLACK_MS < expires_ms {
        Side::Before
    } else {
        Side::Either
    }
}

async fn status_in_redis(engine: &Engine, sale: &SaleId, id: &str) -> ReservationStatus {
    engine
        .reservation(sale, &reservation_id(id), None)
        .await
        .unwrap()
        .0
        .status
}

async fn step(engine: &Engine, sale: &SaleId, m: &mut Model, op: &Op) {
    match op {
        Op::Reserve { customer, quantity } => {
            let customer = format!("c{customer}");
            let mine = m.per_customer().get(&customer).copied().unwrap_or(0);
            let expected = if mine + i64::from(*quantity) > i64::from(LIMIT) {
                Err(Refusal::LimitExceeded)
            } else if m.available == 0 {
                Err(Refusal::SoldOut)
            } else if m.available < i64::from(*quantity) {
                Err(Refusal::InsufficientStock)
            } else {
                Ok(())
            };
            // A fresh Idempotency-Key per call: every reserve reaches the
            // script (the sold-out memory answers key-less requests only).
            let key = uuid::Uuid::new_v4().to_string();
            let got = engine
                .reserve(&ReserveRequest {
                    sale_id: sale,
                    customer: &customer_id(&customer),
                    quantity: *quantity,
                    idempotency: Some((&key, quantity.to_string())),
                    admission: None,
                })
                .await;
            match (expected, got) {
                (Ok(()), Ok(r)) => {
                    assert_eq!(r.status, ReservationStatus::Held);
                    let expires = OffsetDateTime::parse(
                        &r.expires_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap();
                    m.available -= i64::from(*quantity);
                    m.held += i64::from(*quantity);
                    m.holds.push(Hold {
                        id: r.id,
                        customer,
                        quantity: *quantity,
                        status: ReservationStatus::Held,
                        expires_ms: flashsale::domain::to_ms(expires),
                    });
                }
                (Err(want), Err(EngineError::Refused(got))) => assert_eq!(want, got),
                (want, got) => panic!("reserve: model {want:?}, redis {got:?}"),
            }
        }
        Op::Confirm { pick } => {
            if m.holds.is_empty() {
                return;
            }
            let i = pick % m.holds.len();
            let h = m.holds[i].clone();
            let before = wall_ms();
            let got = engine
                .confirm(&ConfirmRequest {
                    sale_id: sale,
                    reservation_id: &reservation_id(&h.id),
                    customer: &customer_id(&h.customer),
                    payment_ref: "pay",
                })
                .await;
            let when = side(h.expires_ms, before, wall_ms());
            match (h.status, got) {
                (ReservationStatus::Held, Ok(_)) if when != Side::After => {
                    m.end(i, ReservationStatus::Confirmed);
                    // A confirmed hold's units are sold, not available.
                    m.available -= i64::from(h.quantity);
                    m.sold += i64::from(h.quantity);
                }
                (ReservationStatus::Held, Err(EngineError::Refused(Refusal::HoldExpired)))
                    if when != Side::Before =>
                {
                    m.end(i, ReservationStatus::Expired)
                }
                (ReservationStatus::Confirmed, Ok(_)) => {}
                (ReservationStatus::Expired, Err(EngineError::Refused(Refusal::HoldExpired))) => {}
                (
                    ReservationStatus::Released,
                    Err(EngineError::Refused(Refusal::ReservationNotHeld)),
                ) => {}
                (status, got) => panic!("confirm of {status:?} ({when:?}): redis {got:?}"),
            }
        }
        Op::Release { pick, admin } => {
            if m.holds.is_empty() {
                return;
            }
            let i = pick % m.holds.len();
            let h = m.holds[i].clone();
            let owner = (!admin).then(|| customer_id(&h.customer));
            let before = wall_ms();
            let got = engine
                .release(sale, &reservation_id(&h.id), owner.as_ref())
                .await;
            let when = side(h.expires_ms, before, wall_ms());
            match (h.status, got) {
                (ReservationStatus::Held, Ok(r)) if when != Side::After => {
                    assert_eq!(r.status, ReservationStatus::Released);
                    m.end(i, ReservationStatus::Released)
                }
                (
                    ReservationStatus::Held,
                    Err(EngineError::Refused(Refusal::ReservationNotHeld)),
                ) if when != Side::Before => m.end(i, ReservationStatus::Expired),
                (ReservationStatus::Released, Ok(_)) => {}
                (
                    ReservationStatus::Confirmed | ReservationStatus::Expired,
                    Err(EngineError::Refused(Refusal::ReservationNotHeld)),
                ) => {}
                (status, got) => panic!("release of {status:?} ({when:?}): redis {got:?}"),
            }
        }
        Op::Reap => {
            let before = wall_ms();
            flashsale::usecases::reap::reap_once(engine, 2)
                .await
                .unwrap();
            let after = wall_ms();
            for i in 0..m.holds.len() {
                let h = m.holds[i].clone();
                if h.status != ReservationStatus::Held {
                    continue;
                }
                let expired = match side(h.expires_ms, before, after) {
                    Side::After => true,
                    Side::Before => false,
                    Side::Either => {
                        status_in_redis(engine, sale, &h.id).await == ReservationStatus::Expired
                    }
                };
                if expired {
                    m.end(i, ReservationStatus::Expired);
                }
            }
        }
        Op::AdjustStock { delta } => {
            let id = uuid::Uuid::new_v4().to_string();
            let change = Change {
                id: &id,
                stock_delta: *delta,
                ends_ms: None,
                paused: None,
            };
            let got = engine.adjust_sale(sale, &change).await;
            if m.available + delta < 0 {
                assert!(matches!(
                    got,
                    Err(EngineError::Refused(Refusal::InsufficientStock))
                ));
            } else {
                let Ok(Adjusted::Applied { before, after }) = got else {
                    panic!("adjustment not applied: {got:?}");
                };
                assert_eq!(after.total - before.total, *delta);
                m.total += delta;
                m.available += delta;
                // Applying the same adjustment again changes nothing.
                let again = engine.adjust_sale(sale, &change).await.unwrap();
                assert_eq!(
                    again,
                    Adjusted::Applied {
                        before: after.clone(),
                        after
                    }
                );
            }
        }
        Op::Advance => {
            let next = m
                .holds
                .iter()
                .filter(|h| h.status == ReservationStatus::Held)
                .map(|h| h.expires_ms)
                .min();
            if let Some(deadline) = next {
                let wait = (deadline + SLACK_MS - wall_ms()).clamp(0, HOLD_MS + SLACK_MS);
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
    }
}

/// Postgres `events` after a flush: one per hold that left `held` (its id
/// `<hold>.reservation.<status>`) and one per sell-out, nothing else.
async fn compare_events(app: &TestApp, sale: &SaleId, m: &Model) {
    let flusher = flashsale::usecases::flush::Flusher::new(
        app.engine.clone(),
        app.db.clone(),
        100,
        Duration::from_millis(50),
        tokio_util::sync::CancellationToken::new(),
    )
    .with_consumer("model");
    // The first call makes the consumer groups.
    for _ in 0..2 {
        flusher.flush_sale(sale, false).await.unwrap();
    }
    let mut want: Vec<String> = m
        .holds
        .iter()
        .filter_map(|h| {
            let kind = match h.status {
                ReservationStatus::Held => return None,
                ReservationStatus::Confirmed => "confirmed",
                ReservationStatus::Released => "released",
                ReservationStatus::Expired => "expired",
            };
            Some(format!("{}.reservation.{kind}", h.id))
        })
        .chain((1..=m.sold_outs).map(|n| format!("{sale}.sale.sold_out.{n}")))
        .collect();
    want.sort();
    let got: Vec<String> = app.events(sale).await.into_iter().map(|e| e.id).collect();
    assert_eq!(got, want, "events after the flush");
    let dead: usize = redis::AsyncCommands::xlen(
        &mut app.engine.connection(),
        &app.engine.keys(sale).dead_letters,
    )
    .await
    .unwrap();
    assert_eq!(dead, 0, "no dead letters");
}

/// Redis and the model agree on every figure and every hold.
async fn compare(engine: &Engine, sale: &SaleId, m: &Model, after: &Op) {
    let s = engine.sale(sale).await.unwrap().stock;
    assert_eq!(
        (s.total, s.available, s.held, s.sold),
        (m.total, m.available, m.held, m.sold),
        "counters after {after:?}"
    );
    assert_eq!(s.available + s.held + s.sold, s.total);
    let mut conn = engine.connection();
    let per: HashMap<String, i64> =
        redis::AsyncCommands::hgetall(&mut conn, engine.keys(sale).customers.clone())
            .await
            .unwrap();
    assert_eq!(per, m.per_customer(), "per-customer counts after {after:?}");
    for h in &m.holds {
        assert_eq!(
            status_in_redis(engine, sale, &h.id).await,
            h.status,
            "hold {} after {after:?}",
            h.id
        );
    }
}

// Failing seeds are saved to, and replayed from,
// tests/proptest-regressions/model.txt: proptest's place for a test file
// under a directory with a main.rs (tests/api).
proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 64,
        .. ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let app = TestApp::builder().without_worker().spawn().await;
            let engine = app.engine.clone();
            let now = OffsetDateTime::now_utc();
            let def = SaleDef {
                id: sale_id(&unique("m-")),
                sku: "SKU".into(),
                name: "model".into(),
                price_cents: 100,
                currency: "IDR".into(),
                stock: STOCK,
                starts_at: now - Duration::from_secs(60),
                ends_at: now + Duration::from_secs(3600),
                per_customer_limit: LIMIT,
                hold_seconds: (HOLD_MS / 1000) as u32,
                queue: None,
            };
            // Postgres keeps the sale too: the flush's orders refer to it.
            flashsale::store::insert_sale(&app.db, &def).await.unwrap();
            engine.create_sale(&def).await.unwrap();
            let mut model = Model { total: STOCK, available: STOCK, ..Model::default() };
            let sale = def.id.clone();
            for op in &ops {
                let before = model.available;
                step(&engine, &sale, &mut model, op).await;
                if before > 0 && model.available == 0 {
                    model.sold_outs += 1;
                }
                compare(&engine, &sale, &model, op).await;
            }
            compare_events(&app, &sale, &model).await;
        });
    }
}
