//! Repairs never oversell and never reverse an admin change: one test per
//! fault of issue 12, each through the real binary or the real HTTP API
//! where on-call and admins reach it.

use std::time::Duration;

use crate::common::*;
use flashsale::engine::{Adjusted, Change};
use flashsale::store::{self, Adjustment, AdjustmentKey};
use redis::AsyncCommands;
use serde_json::{json, Value};

async fn buy(app: &TestApp, sale: &str, who: &str, units: u32) {
    let t = app.token(who);
    let a = app.reserve(sale, &t, units).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let c = app.confirm(a.body["id"].as_str().unwrap(), &t).await;
    assert_eq!(c.status, 200, "{}", c.body);
}

/// Reserves one unit each for `n` new customers; returns how many got one.
async fn storm(app: &TestApp, sale: &str, n: usize) -> usize {
    let mut granted = 0;
    for i in 0..n {
        let t = app.token(&format!("storm-{i}"));
        if app.reserve(sale, &t, 1).await.status == 201 {
            granted += 1;
        }
    }
    granted
}

/// An admin's stock change as the PATCH handler records it, before Redis.
fn stock_change(sale: &str, delta: i64) -> Adjustment {
    Adjustment {
        id: uuid::Uuid::now_v7(),
        sale_id: sale_id(sale),
        actor: "ops".into(),
        stock_delta: delta,
        ends_at: None,
        paused: None,
    }
}

/// What a PATCH call with `key` did before its connection died: the pending
/// row, carrying the key (the fingerprint is the handler's, for a stock
/// change).
async fn recorded_with_key(app: &TestApp, adj: &Adjustment, key: &str) {
    let fingerprint = format!("{}||", adj.stock_delta);
    let key = AdjustmentKey {
        key,
        fingerprint: &fingerprint,
    };
    store::record_adjustment(&app.db, adj, Some(&key))
        .await
        .unwrap();
}

async fn patch(app: &TestApp, sale: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut req = app
        .http
        .patch(app.url(&format!("/v1/sales/{sale}")))
        .bearer_auth(app.admin())
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    Answer::from(req.send().await.unwrap()).await
}

/// The 3 a.m. story: a sale rebuilt after Redis lost it, then any
/// drift that makes `--apply` recount. The recount used to count only the
/// reservation records, which the rebuild had dropped, and offered every
/// sold unit again; it must keep the rebuild's sold, in all and per customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recount_after_a_rebuild_never_offers_sold_units_again() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 2, 600).await;
    buy(&app, &sale, "early-0", 2).await;
    for i in 1..5 {
        buy(&app, &sale, &format!("early-{i}"), 1).await;
    }
    assert_eq!(app.wait_for_orders(&sale, 5, 10).await, (5, 5, 6));

    let mut conn = app.engine.connection();
    let _: () = conn.del(&app.engine.keys(&sale).all()[..]).await.unwrap();
    let out = app.run(&["reconcile", "--rebuild", "--sale", &sale]);
    assert_exit(&out, 0);
    let s = app.stock(&sale).await;
    assert_eq!((s.total, s.available, s.held, s.sold), (10, 4, 0, 6));

    // Every drift kind that makes --apply recount.
    let k = app.engine.keys(&sale);
    for (field, by) in [("available", 1), ("held", 1), ("sold", -3), ("total", 1)] {
        let _: () = conn.hincr(&k.sale, field, by).await.unwrap();
        if field == "total" {
            let _: () = conn.hincr(&k.sale, "available", 1).await.unwrap();
        }
        let out = app.run(&["reconcile", "--sale", &sale, "--apply"]);
        assert_eq!(out.status.code(), Some(0), "{field}: {}", said(&out));
        let s = app.stock(&sale).await;
        assert_eq!(
            (s.total, s.available, s.held, s.sold),
            (10, 4, 0, 6),
            "after drift in {field}: {}",
            said(&out)
        );
    }
    // The one who bought the limit before the loss is still at it.
    app.reserve(&sale, &app.token("early-0"), 1)
        .await
        .assert_problem(409, "limit_exceeded");
    assert_eq!(storm(&app, &sale, 10).await, 4, "exactly total - sold");
    assert_adds_up(&app.stock(&sale).await);
}

/// Redis's sold counter lost while confirmed orders wait in the outbox and
/// others are only in Postgres (after a rebuild): the recount takes the
/// larger of every source, never one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recount_takes_the_largest_sold_any_source_knows() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(10, 5, 600).await;
    buy(&app, &sale, "a", 3).await;
    // Flushed by hand: Postgres has 3, then Redis loses the sale.
    let out = app.run(&["reconcile", "--sale", &sale, "--rebuild"]);
    assert_exit(&out, 0);
    let mut conn = app.engine.connection();
    let k = app.engine.keys(&sale);
    let _: () = conn.del(&k.all()[..]).await.unwrap();
    let out = app.run(&["reconcile", "--sale", &sale, "--rebuild"]);
    assert_exit(&out, 0);
    // Two more sold, not yet in Postgres (no worker): only the records and
    // the counter know them. Then the counter is lost.
    buy(&app, &sale, "b", 2).await;
    let _: () = conn.hset(&k.sale, "sold", 0).await.unwrap();
    let _: () = conn.hincr(&k.sale, "available", 5).await.unwrap();
    let out = app.run(&["reconcile", "--sale", &sale, "--apply"]);
    assert_exit(&out, 0);
    let s = app.stock(&sale).await;
    assert_eq!((s.total, s.available, s.held, s.sold), (10, 5, 0, 5));
    // Whether or not --apply flushed the young outbox, the 5 were counted.
    assert!(
        matches!(app.orders(&sale).await, (1, 1, 3) | (2, 2, 5)),
        "{:?}",
        app.orders(&sale).await
    );
}

/// More units held and sold than the total: the recount changes nothing,
/// names the drift and exits 1.
#[tokio::test]
async fn a_recount_that_cannot_be_reconciled_changes_nothing_and_exits_1() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(4, 4, 600).await;
    buy(&app, &sale, "a", 4).await;
    let out = app.run(&["reconcile", "--sale", &sale, "--apply"]);
    assert_exit(&out, 0);
    // Marketing's total in Redis lowered behind everyone's back.
    let mut conn = app.engine.connection();
    let k = app.engine.keys(&sale);
    let _: () = conn.hset(&k.sale, "total", 2).await.unwrap();
    let out = app.run(&["reconcile", "--sale", &sale, "--apply"]);
    assert_exit(&out, 0);
    // The scheduled total is 4 and 4 are sold: that one can be repaired.
    let s = app.stock(&sale).await;
    assert_eq!((s.total, s.available, s.sold), (4, 0, 4));
    // This one cannot: Redis knows of more units sold than the total.
    let _: () = conn.hset(&k.sale, "sold", 9).await.unwrap();
    let before = app.stock(&sale).await;
    let out = app.run(&["reconcile", "--sale", &sale, "--apply"]);
    assert_exit(&out, 1);
    assert!(said(&out).contains("NOT recounted"), "{}", said(&out));
    assert_eq!(app.stock(&sale).await, before, "nothing changed");
}

/// PATCH with an Idempotency-Key: the same key and body again answer the
/// first result and change nothing; another body is 422; a refusal is
/// answered again as it was.
#[tokio::test]
async fn a_patch_retried_with_its_key_applies_once() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 600).await;
    let add = json!({"stock_delta": 5});
    let first = patch(&app, &sale, Some("k-1"), &add).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["stock"]["total"], 15);
    let again = patch(&app, &sale, Some("k-1"), &json!({"stock_delta": 5})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body, "the first result, verbatim");
    assert_eq!(app.stock(&sale).await.total, 15, "applied once");

    patch(&app, &sale, Some("k-1"), &json!({"stock_delta": 6}))
        .await
        .assert_problem(422, "idempotency_key_reused");
    patch(&app, &sale, Some("k-1"), &json!({"paused": true}))
        .await
        .assert_problem(422, "idempotency_key_reused");

    // A refusal is the first result too: answered again, nothing applied,
    // even once the stock would allow it.
    patch(&app, &sale, Some("k-2"), &json!({"stock_delta": -20}))
        .await
        .assert_problem(409, "insufficient_stock");
    patch(&app, &sale, Some("k-2"), &json!({"stock_delta": -20}))
        .await
        .assert_problem(409, "insufficient_stock");
    assert_eq!(app.stock(&sale).await.total, 15);

    // Without a key, as before: every call applies.
    for _ in 0..2 {
        assert_eq!(patch(&app, &sale, None, &add).await.status, 200);
    }
    assert_eq!(app.stock(&sale).await.total, 25);
    patch(&app, &sale, Some(&"x".repeat(129)), &add)
        .await
        .assert_problem(422, "invalid_request");
}

/// The reply of a PATCH lost after Redis applied it (the settle in Postgres
/// never ran): the retry with the same key applies nothing more.
#[tokio::test]
async fn a_patch_whose_reply_was_lost_is_retried_without_applying_twice() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 600).await;
    // What the first call did before its connection died: the row (with
    // the key), then Redis.
    let adj = stock_change(&sale, 7);
    recorded_with_key(&app, &adj, "lost-1").await;
    let id = adj.id.to_string();
    let change = Change {
        id: &id,
        stock_delta: 7,
        ends_ms: None,
        paused: None,
    };
    let applied = app
        .engine
        .adjust_sale(&sale_id(&sale), &change)
        .await
        .unwrap();
    assert!(matches!(applied, Adjusted::Applied { .. }));
    assert_eq!(app.stock(&sale).await.total, 17);

    let retry = patch(&app, &sale, Some("lost-1"), &json!({"stock_delta": 7})).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.body["stock"]["total"], 17);
    assert_eq!(app.stock(&sale).await.total, 17, "applied once");
    let state: String = sqlx::query_scalar("SELECT state FROM sale_adjustments WHERE id = $1")
        .bind(adj.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(state, "applied");
}

/// An adjustment applied in Redis whose settle in Postgres failed, and one
/// that never reached Redis: reconcile settles both before it compares
/// totals, so the first is kept (not reversed by the recount) and the second
/// is voided in Redis, so its PATCH, still in flight, cannot land it later.
#[tokio::test]
async fn pending_adjustments_are_settled_and_never_reversed() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(10, 5, 600).await;
    let (landed, stray) = (stock_change(&sale, -4), stock_change(&sale, 3));
    for adj in [&landed, &stray] {
        store::record_adjustment(&app.db, adj, None).await.unwrap();
    }
    let change = |adj: &Adjustment, id| Change {
        id,
        stock_delta: adj.stock_delta,
        ends_ms: None,
        paused: None,
    };
    let landed_id = landed.id.to_string();
    app.engine
        .adjust_sale(&sale_id(&sale), &change(&landed, &landed_id))
        .await
        .unwrap();
    assert_eq!(app.stock(&sale).await.total, 6);

    // A counter off by one makes --apply recount to the Postgres total.
    let mut conn = app.engine.connection();
    let _: () = conn
        .hincr(app.engine.keys(&sale).sale.clone(), "available", 1)
        .await
        .unwrap();
    let out = app.run(&["reconcile", "--sale", &sale, "--apply"]);
    assert_exit(&out, 0);
    let s = app.stock(&sale).await;
    assert_eq!((s.total, s.available), (6, 6), "marketing's -4 stands");

    let states: Vec<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT id, state, outcome FROM sale_adjustments WHERE sale_id = $1 ORDER BY at",
    )
    .bind(&sale)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![
            (landed.id, "applied".into(), None),
            (stray.id, "rejected".into(), Some("voided".into())),
        ]
    );
    // The voided one's PATCH arrives late: refused, nothing applied.
    let stray_id = stray.id.to_string();
    let late = app
        .engine
        .adjust_sale(&sale_id(&sale), &change(&stray, &stray_id))
        .await
        .unwrap();
    assert_eq!(late, Adjusted::Voided);
    assert_eq!(app.stock(&sale).await.total, 6);
    assert_eq!(app.drift(&sale), (0, vec![]));
}

/// A PATCH whose row a repair voided before it reached Redis is applied
/// anew under a fresh id: once, not zero times, not twice.
#[tokio::test]
async fn a_patch_voided_in_flight_is_applied_once_after_all() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 600).await;
    recorded_with_key(&app, &stock_change(&sale, 2), "slow-1").await;
    // Reconcile runs while the first call is stalled before Redis.
    let out = app.run(&["reconcile", "--sale", &sale]);
    assert_exit(&out, 0);
    let retry = patch(&app, &sale, Some("slow-1"), &json!({"stock_delta": 2})).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(app.stock(&sale).await.total, 12);
    let again = patch(&app, &sale, Some("slow-1"), &json!({"stock_delta": 2})).await;
    assert_eq!(again.body, retry.body);
    assert_eq!(app.stock(&sale).await.total, 12);
    assert_eq!(app.drift(&sale), (0, vec![]));
}

/// One sale that cannot be loaded (Redis holds another sale under its id)
/// no longer blocks the ones after it; reconcile names it.
#[tokio::test]
async fn the_loader_skips_a_sale_it_cannot_load() {
    let app = TestApp::builder().without_worker().spawn().await;
    let bad: flashsale::domain::SaleDef = serde_json::from_value(json!({
        "id": unique("bad-"), "sku": "TV", "name": "TV", "price_cents": 1, "currency": "IDR",
        "stock": 5, "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z",
        "per_customer_limit": 1, "hold_seconds": 60,
    }))
    .unwrap();
    let mut good = bad.clone();
    good.id = sale_id(&unique("good-"));
    let mut squatter = bad.clone();
    squatter.stock = 99;
    app.engine.create_sale(&squatter).await.unwrap();
    for def in [&bad, &good] {
        store::insert_sale(&app.db, def).await.unwrap();
    }
    let loaded = flashsale::usecases::schedule::load_pending(&app.engine, &app.db)
        .await
        .unwrap();
    assert_eq!(loaded, 1);
    assert_eq!(app.stock(&good.id).await.total, 5);
    let (code, kinds) = app.drift(&bad.id);
    assert_eq!(code, 1);
    assert!(kinds.contains(&"load_failed".to_string()), "{kinds:?}");
    // Loading again changes nothing and stops at nothing.
    let loaded = flashsale::usecases::schedule::load_pending(&app.engine, &app.db)
        .await
        .unwrap();
    assert_eq!(loaded, 0);
    assert_eq!(app.drift(&good.id), (0, vec![]));
}

/// A sale that ended with nothing held and its outbox flushed leaves the
/// worker's loops (it stays listed); moving its end reopens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_sale_leaves_the_loops_until_it_is_reopened() {
    let app = spawn_app().await;
    let sale = unique("s-");
    let now = time::OffsetDateTime::now_utc();
    let mut body = live_sale(&sale, 10, 5, 600);
    body["ends_at"] = json!(flashsale::domain::rfc3339_ms(now + Duration::from_secs(2)));
    assert_eq!(app.create_sale(&body).await.status, 201);
    buy(&app, &sale, "a", 1).await;
    let t = app.token("b");
    let held = app.reserve(&sale, &t, 1).await;
    assert_eq!(held.status, 201);

    let prefix = &app.settings.redis.key_prefix;
    let mut conn = app.engine.connection();
    let active = |conn: &mut flashsale::engine::Conn| {
        let (mut conn, key, sale) = (conn.clone(), format!("{prefix}:active"), sale.clone());
        async move { conn.sismember::<_, _, bool>(key, sale).await.unwrap() }
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(active(&mut conn).await, "a unit is still held");
    app.release(held.body["id"].as_str().unwrap(), &t).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while active(&mut conn).await && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!active(&mut conn).await, "an ended, settled sale leaves");
    let metrics = app.metrics_text().await;
    let memory = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flashsale_redis_used_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(memory.is_some_and(|b| b > 0.0), "{metrics}");
    assert!(metrics.contains("flashsale_sale_keys{"), "{metrics}");
    let listed = app.get("/v1/sales", None).await;
    assert!(listed.body["sales"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == sale.as_str()));
    assert_eq!(app.orders(&sale).await.2, 1);

    let later = flashsale::domain::rfc3339_ms(now + Duration::from_secs(3600));
    let reopened = patch(&app, &sale, None, &json!({ "ends_at": later })).await;
    assert_eq!(reopened.status, 200, "{}", reopened.body);
    assert!(active(&mut conn).await, "a reopened sale is back");
    let h = app.reserve(&sale, &app.token("c"), 1).await;
    assert_eq!(h.status, 201, "{}", h.body);
}

/// `reconcile --apply` and `--rebuild` flush through the outbox group and
/// leave no consumer of their own behind, however often on-call runs them.
#[tokio::test]
async fn repairs_leave_no_consumer_in_the_outbox_group() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(10, 5, 600).await;
    let mut conn = app.engine.connection();
    for (i, args) in [
        ["reconcile", "--sale", &sale, "--apply"],
        ["reconcile", "--sale", &sale, "--rebuild"],
        ["reconcile", "--sale", &sale, "--apply"],
    ]
    .iter()
    .enumerate()
    {
        buy(&app, &sale, &format!("c{i}"), 1).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let out = app.run(args);
        assert_exit(&out, 0);
        assert_eq!(app.orders(&sale).await.0, i as i64 + 1, "flushed");
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(app.engine.keys(&sale).outbox.clone())
            .arg("flushers")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(consumers.is_empty(), "{consumers:?}");
    }
}

/// Every worker ever started joined each outbox group under a new name;
/// once a stopped one's entries are claimed, its name goes too.
#[tokio::test]
async fn a_stopped_workers_consumer_is_pruned_once_it_holds_nothing() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(10, 5, 600).await;
    buy(&app, &sale, "a", 1).await;
    let outbox = app.engine.keys(&sale).outbox.clone();
    let mut conn = app.engine.connection();
    let group = flashsale::engine::ops::outbox::GROUP;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&outbox)
        .arg(group)
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A worker that read the order and died before writing it.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("ghost")
        .arg("STREAMS")
        .arg(&outbox)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let names = |conn: &mut flashsale::engine::Conn| {
        let (mut conn, outbox) = (conn.clone(), outbox.clone());
        async move {
            let v: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&outbox)
                .arg(group)
                .query_async(&mut conn)
                .await
                .unwrap();
            format!("{v:?}")
        }
    };
    assert!(names(&mut conn).await.contains("ghost"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flusher = flashsale::usecases::flush::Flusher::new(
        app.engine.clone(),
        app.db.clone(),
        100,
        Duration::from_millis(20),
        tokio_util::sync::CancellationToken::new(),
    );
    let done = flusher.flush_sale(&sale_id(&sale), true).await.unwrap();
    assert_eq!((done.orders, done.claimed), (1, 1));
    assert_eq!(app.orders(&sale).await.0, 1);
    assert!(!names(&mut conn).await.contains("ghost"), "pruned");
}

/// Retention: a sale that ended and settled leaves Redis after
/// `engine.retention_seconds` (every key, idempotency keys included), and
/// still answers: its figures, its orders, its confirmed reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_sale_leaves_redis_and_answers_from_postgres() {
    let app = spawn_app_with(|s| s.engine.retention_seconds = 2).await;
    let sale = unique("s-");
    let now = time::OffsetDateTime::now_utc();
    let mut body = live_sale(&sale, 10, 5, 600);
    // Long enough for the worker's gauges to see the sale live (each second).
    body["ends_at"] = json!(flashsale::domain::rfc3339_ms(now + Duration::from_secs(3)));
    assert_eq!(app.create_sale(&body).await.status, 201);
    let t = app.token("alice");
    let held = app
        .http
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(&t)
        .header("Idempotency-Key", "k-1")
        .json(&json!({"quantity": 2}))
        .send()
        .await
        .unwrap();
    let held = Answer::from(held).await;
    assert_eq!(held.status, 201, "{}", held.body);
    let bought = held.body["id"].as_str().unwrap().to_string();
    let order = app.confirm(&bought, &t).await;
    assert_eq!(order.status, 200);
    let walked = app.reserve(&sale, &t, 1).await;
    let walked = walked.body["id"].as_str().unwrap().to_string();
    assert_eq!(app.release(&walked, &t).await.status, 200);
    // An order Postgres refused for good: it must outlive the sale's keys.
    let mut conn = app.engine.connection();
    let _: String = redis::cmd("XADD")
        .arg(app.engine.keys(&sale).dead_letters.clone())
        .arg("*")
        .arg("reason")
        .arg("bad row")
        .arg("reservation_id")
        .arg("poison")
        .query_async(&mut conn)
        .await
        .unwrap();

    let label = format!("sale_id=\"{sale}\"");
    app.wait_sample(
        "flashsale_dead_letters",
        &[&label],
        1.0,
        Duration::from_secs(10),
    )
    .await;
    app.wait_archived(&sale, Duration::from_secs(20)).await;
    // Its dead letters went to Postgres with it: the gauge is gone with
    // every other series of the sale, not left at its last reading, which
    // would keep an alert firing for ever.
    app.wait_no_sample(&label, Duration::from_secs(10)).await;
    let pattern = format!("{}:\\{{{sale}\\}}:*", app.settings.redis.key_prefix);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "keys left: {left:?}");
    let dead: Vec<(serde_json::Value,)> =
        sqlx::query_as("SELECT fields FROM dead_letters WHERE sale_id = $1")
            .bind(&sale)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["reason"], "bad row");

    let s = app.get(&format!("/v1/sales/{sale}"), None).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["status"], "ended");
    assert_eq!(
        s.body["stock"],
        json!({"total": 10, "available": 8, "held": 0, "sold": 2})
    );
    let r = app
        .get(&format!("/v1/reservations/{bought}"), Some(&t))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "confirmed");
    assert_eq!(r.body["order"]["order_id"], order.body["order_id"]);
    let again = app.confirm(&bought, &t).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, order.body, "the same order");
    // Another customer's, and the sale's other reservations: not found.
    app.get(
        &format!("/v1/reservations/{bought}"),
        Some(&app.token("eve")),
    )
    .await
    .assert_problem(404, "reservation_not_found");
    app.get(&format!("/v1/reservations/{walked}"), Some(&t))
        .await
        .assert_problem(404, "reservation_not_found");
    app.release(&walked, &t)
        .await
        .assert_problem(404, "reservation_not_found");
    app.confirm(&walked, &t)
        .await
        .assert_problem(404, "reservation_not_found");
    patch(&app, &sale, None, &json!({"stock_delta": 1}))
        .await
        .assert_problem(404, "sale_not_found");
    // A reserve is answered by Redis alone: the archived sale is not there,
    // and a Postgres look-up per unknown id would let anyone load Postgres.
    app.reserve(&sale, &t, 1)
        .await
        .assert_problem(404, "sale_not_found");
    let out = app.run(&["reconcile", "--sale", &sale, "--json"]);
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sales"][0]["archived"], true);
    let out = app.run(&["reconcile", "--sale", &sale, "--rebuild"]);
    assert_exit(&out, 2);
    assert!(said(&out).contains("archived"), "{}", said(&out));
}
