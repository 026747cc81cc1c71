//! Events for the store (invariant 8): every confirm, release, expiry (by the
//! reaper, a late confirm, release or extend) and sell-out becomes exactly one
//! row of Postgres `events`, with the id its script fixed; a reserve that does
//! not sell out records nothing; a replayed flush writes no second row; order
//! entries written before events existed still yield their confirm; and each
//! new event gets a pending delivery per endpoint subscribed to it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::*;
use flashsale::usecases::flush::Flusher;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn service(app: &TestApp) -> String {
    app.auth
        .issue("shop-backend", Some("service"), 3600)
        .unwrap()
}

pub(crate) async fn hold(app: &TestApp, sale: &str, customer: &str, quantity: u32) -> String {
    let a = app.reserve(sale, &app.token(customer), quantity).await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

async fn patch(app: &TestApp, sale: &str, body: Value) -> Answer {
    let res = app
        .http
        .patch(app.url(&format!("/v1/sales/{sale}")))
        .bearer_auth(app.admin())
        .json(&body)
        .send()
        .await
        .unwrap();
    Answer::from(res).await
}

async fn extend(app: &TestApp, rid: &str, seconds: u32) -> Answer {
    let res = app
        .http
        .post(app.url(&format!("/v1/reservations/{rid}/extend")))
        .bearer_auth(service(app))
        .json(&json!({ "seconds": seconds }))
        .send()
        .await
        .unwrap();
    Answer::from(res).await
}

/// The reservation as `GET /v1/reservations/{id}` shows it, without the order.
async fn shown(app: &TestApp, rid: &str) -> (Value, Option<Value>) {
    let mut a = app
        .get(&format!("/v1/reservations/{rid}"), Some(&app.admin()))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let order = a.body.as_object_mut().unwrap().remove("order");
    (a.body, order)
}

fn by_id(rows: &[EventRow]) -> BTreeMap<&str, &EventRow> {
    rows.iter().map(|r| (r.id.as_str(), r)).collect()
}

/// The checks every reservation event passes.
fn reservation_event<'a>(rows: &'a [EventRow], rid: &str, kind: &str, sale: &str) -> &'a EventRow {
    let ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.aggregateid == rid)
        .map(|r| r.id.as_str())
        .collect();
    let want = format!("{rid}.{kind}");
    assert_eq!(ids, [want.as_str()], "one event for {rid}");
    let row = by_id(rows)[want.as_str()];
    assert_eq!(row.kind, kind);
    assert_eq!(row.aggregatetype, "reservation");
    assert_eq!(row.payload["type"], kind);
    assert!(row.payload["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(row.payload["data"]["sale_id"], sale);
    assert!(row.payload["data"]["version"].as_i64().unwrap() > 0);
    row
}

/// The holds [`end_holds_every_way`] made, by how each ended.
pub(crate) struct Ended {
    /// A sale of 10 with holds of 600 s.
    pub sale: String,
    /// Confirmed, and the confirm's answer (the order).
    pub alice: String,
    pub order: Value,
    /// Released, and the release's answer.
    pub bob: String,
    pub released: Value,
    /// Still held: a reserve, which records nothing.
    pub carol: String,
    /// A sale of 10 with holds of one second.
    pub late: String,
    /// Expired, found late by a confirm, a release, an extension and the
    /// reaper's step, in that order.
    pub d: Vec<String>,
}

/// Every way a hold ends, through the API: a confirm, a release, and
/// expiries found by a late confirm, release, extension and the reaper.
/// The app's own reaper must not run meanwhile (a long
/// `worker.reaper_interval_ms`), so the late calls find their holds held.
pub(crate) async fn end_holds_every_way(app: &TestApp) -> Ended {
    let sale = app.live_sale(10, 10, 600).await;
    let alice = hold(app, &sale, "alice", 1).await;
    let order = app.confirm(&alice, &app.token("alice")).await;
    assert_eq!(order.status, 200, "{}", order.body);
    let bob = hold(app, &sale, "bob", 2).await;
    let released = app.release(&bob, &app.token("bob")).await;
    assert_eq!(released.status, 200, "{}", released.body);
    let carol = hold(app, &sale, "carol", 1).await;

    let late = app.live_sale(10, 10, 1).await;
    let d: Vec<String> =
        futures::future::join_all((0..4).map(|i| hold(app, &late, ["d0", "d1", "d2", "d3"][i], 1)))
            .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.confirm(&d[0], &app.token("d0"))
        .await
        .assert_problem(410, "hold_expired");
    let a = app.release(&d[1], &app.token("d1")).await;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = extend(app, &d[2], 1).await;
    assert_ne!(a.status, 200, "{}", a.body);
    let reaped = app.engine.expire_due(&sale_id(&late), 100).await.unwrap();
    assert_eq!(reaped.holds, 1, "only d3 was left for the reaper");
    Ended {
        sale,
        alice,
        order: order.body,
        bob,
        released: released.body,
        carol,
        late,
        d,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_records_one_event_and_a_plain_reserve_none() {
    // The reaper's loop runs once at the start, then not for an hour: the
    // late confirm, release and extend find their holds still held.
    let app = spawn_app_with(|s| s.worker.reaper_interval_ms = 3_600_000).await;

    let Ended {
        sale,
        alice,
        order,
        bob,
        released,
        carol,
        late,
        d,
    } = end_holds_every_way(&app).await;

    // Sold out by reserves, twice (a release in between), and by a PATCH.
    let small = app.live_sale(2, 2, 600).await;
    let eve = hold(&app, &small, "eve", 2).await;
    assert_eq!(app.release(&eve, &app.token("eve")).await.status, 200);
    hold(&app, &small, "eve", 2).await;
    let cut = app.live_sale(5, 5, 600).await;
    hold(&app, &cut, "frank", 2).await;
    let a = patch(&app, &cut, json!({"stock_delta": -3})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(app.stock(&cut).await.available, 0);

    // Everything reaches Postgres through the gateway's own worker.
    let rows = app.wait_for_events(&sale, 2, 20).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let confirmed = reservation_event(&rows, &alice, "reservation.confirmed", &sale);
    let (reservation, shown_order) = shown(&app, &alice).await;
    assert_eq!(confirmed.payload["data"]["reservation"], reservation);
    assert_eq!(confirmed.payload["data"]["order"], order);
    assert_eq!(Some(&order), shown_order.as_ref());
    assert_eq!(
        confirmed.payload["timestamp"], order["confirmed_at"],
        "the time of the change"
    );
    let rel = reservation_event(&rows, &bob, "reservation.released", &sale);
    assert_eq!(rel.payload["data"]["reservation"], released);
    assert!(rel.payload["data"].get("order").is_none());
    assert!(
        rows.iter().all(|r| r.aggregateid != carol),
        "a reserve that does not sell out records nothing"
    );
    assert!(
        rel.payload["data"]["version"].as_i64() > confirmed.payload["data"]["version"].as_i64()
    );

    let rows = app.wait_for_events(&late, 4, 20).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    for rid in &d {
        let e = reservation_event(&rows, rid, "reservation.expired", &late);
        let (reservation, _) = shown(&app, rid).await;
        assert_eq!(reservation["status"], "expired");
        assert_eq!(e.payload["data"]["reservation"], reservation);
    }

    let rows = app.wait_for_events(&small, 3, 20).await;
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let (one, two) = (
        format!("{small}.sale.sold_out.1"),
        format!("{small}.sale.sold_out.2"),
    );
    let released = format!("{eve}.reservation.released");
    let mut want = vec![one.as_str(), two.as_str(), released.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let rows = by_id(&rows);
    for id in [&one, &two] {
        let e = rows[id.as_str()];
        assert_eq!(
            (e.kind.as_str(), e.aggregatetype.as_str()),
            ("sale.sold_out", "sale")
        );
        assert_eq!(e.aggregateid, small);
        assert_eq!(e.payload["type"], "sale.sold_out");
        assert_eq!(e.payload["data"]["sale_id"], small.as_str());
        assert_eq!(
            e.payload["data"]["sale"],
            json!({"total": 2, "available": 0, "held": 2, "sold": 0})
        );
    }
    assert!(
        rows[two.as_str()].payload["data"]["version"].as_i64()
            > rows[one.as_str()].payload["data"]["version"].as_i64()
    );

    let rows = app.wait_for_events(&cut, 1, 20).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].id, format!("{cut}.sale.sold_out.1"));
    assert_eq!(
        rows[0].payload["data"]["sale"],
        json!({"total": 2, "available": 0, "held": 2, "sold": 0})
    );
}

fn flusher(app: &TestApp) -> Flusher {
    Flusher::new(
        app.engine.clone(),
        app.db.clone(),
        100,
        Duration::from_millis(50),
        CancellationToken::new(),
    )
    .with_consumer("events-test")
}

/// Every entry of a stream: (id, fields).
async fn entries(app: &TestApp, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut conn = app.engine.connection();
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            let mut fields: Vec<(String, String)> = e
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value(v.clone()).unwrap()))
                .collect();
            fields.sort();
            (e.id, fields)
        })
        .collect()
}

async fn append(app: &TestApp, key: &str, fields: &[(String, String)]) {
    let mut conn = app.engine.connection();
    let _: String = conn.xadd(key, "*", fields).await.unwrap();
}

async fn deliveries(app: &TestApp) -> Vec<(uuid::Uuid, String, String)> {
    sqlx::query_as("SELECT endpoint_id, event_id, status FROM webhook_deliveries ORDER BY 1, 2")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replayed_flush_writes_one_row_per_event_and_old_order_entries_still_yield_theirs() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(3, 3, 600).await;
    let keys = app.engine.keys(&sale);
    let alice = hold(&app, &sale, "alice", 1).await;
    assert_eq!(app.confirm(&alice, &app.token("alice")).await.status, 200);
    let bob = hold(&app, &sale, "bob", 1).await;
    assert_eq!(app.release(&bob, &app.token("bob")).await.status, 200);
    hold(&app, &sale, "carol", 2).await; // sells out

    // The outbox holds orders only (a worker of the version before
    // dead-letters anything else): the other events have their own stream.
    let outbox = entries(&app, &keys.outbox).await;
    assert_eq!(outbox.len(), 1);
    let fields: HashSet<&str> = outbox[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        fields.contains("order_id") && fields.contains("version"),
        "{fields:?}"
    );
    assert_eq!(entries(&app, &keys.events).await.len(), 2);

    // An order entry as today's confirm writes it: no `version`.
    let legacy = format!("{sale}.{}", uuid::Uuid::new_v4().simple());
    let old: Vec<(String, String)> = [
        ("order_id", uuid::Uuid::now_v7().to_string()),
        ("reservation_id", legacy.clone()),
        ("sale_id", sale.clone()),
        ("customer_id", "dave".into()),
        ("quantity", "1".into()),
        ("price_cents", "499900".into()),
        ("currency", "IDR".into()),
        ("payment_ref", "pay-old".into()),
        ("confirmed_ms", "1765497600123".into()),
        ("expires_ms", "1765497660000".into()),
        ("confirmed_by", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    append(&app, &keys.outbox, &old).await;

    let outbox = entries(&app, &keys.outbox).await;
    let events = entries(&app, &keys.events).await;
    let f = flusher(&app);
    // The first call makes the groups; the entries flush after it.
    let mut done = f.flush_sale(&sale_id(&sale), false).await.unwrap();
    done.add(f.flush_sale(&sale_id(&sale), false).await.unwrap());
    assert_eq!((done.orders, done.events, done.dead), (2, 2, 0));
    let first = app.events(&sale).await;
    let ids: Vec<&str> = first.iter().map(|r| r.id.as_str()).collect();
    let mut want = vec![
        format!("{alice}.reservation.confirmed"),
        format!("{bob}.reservation.released"),
        format!("{legacy}.reservation.confirmed"),
        format!("{sale}.sale.sold_out.1"),
    ];
    want.sort();
    assert_eq!(ids, want);
    let old_confirm = by_id(&first)[format!("{legacy}.reservation.confirmed").as_str()];
    assert_eq!(old_confirm.payload["data"]["version"], Value::Null);
    assert_eq!(old_confirm.payload["data"]["order"]["customer_id"], "dave");
    assert_eq!(old_confirm.payload["timestamp"], "2025-12-12T00:00:00.123Z");
    assert!(!old_confirm.payload.to_string().contains("pay-old"));
    assert_eq!(app.outbox_len(&sale).await, 0);
    assert_eq!(app.events_len(&sale).await, 0);

    // A crash between commit and acknowledgement: the same entries come
    // back, and are flushed again.
    for (_, fields) in &outbox {
        append(&app, &keys.outbox, fields).await;
    }
    for (_, fields) in &events {
        append(&app, &keys.events, fields).await;
    }
    let again = f.flush_sale(&sale_id(&sale), false).await.unwrap();
    assert_eq!((again.orders, again.events, again.dead), (2, 2, 0));
    let second = app.events(&sale).await;
    assert_eq!(
        second.iter().map(|r| &r.id).collect::<Vec<_>>(),
        first.iter().map(|r| &r.id).collect::<Vec<_>>(),
        "one row per event"
    );
    assert_eq!(app.orders(&sale).await.0, 2);
    assert_eq!(app.outbox_len(&sale).await, 0);
    assert_eq!(app.events_len(&sale).await, 0);

    // A poison event goes to the dead letters, like a poison order.
    append(
        &app,
        &keys.events,
        &[
            ("id".to_string(), "x".to_string()),
            ("type".into(), "nonsense".into()),
        ],
    )
    .await;
    let poisoned = f.flush_sale(&sale_id(&sale), false).await.unwrap();
    assert_eq!((poisoned.events, poisoned.dead), (0, 1));
    let dead = entries(&app, &keys.dead_letters).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0]
        .1
        .contains(&("stream".to_string(), "events".to_string())));
    assert_eq!(app.events(&sale).await.len(), 4);
}

async fn endpoint(
    app: &TestApp,
    events: Option<&[&str]>,
    enabled: bool,
    deleted: bool,
) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, events, secret, secret_sealed, enabled, deleted_at)
         VALUES ($1, 'https://store.example/hooks', $2, '\\x00', false, $3,
                 CASE WHEN $4 THEN now() END)",
    )
    .bind(id)
    .bind(events.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
    .bind(enabled)
    .bind(deleted)
    .execute(&app.db)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn new_events_get_a_pending_delivery_per_subscribed_endpoint() {
    let app = TestApp::builder().without_worker().spawn().await;
    let every = endpoint(&app, None, true, false).await;
    let confirms = endpoint(&app, Some(&["reservation.confirmed"]), true, false).await;
    let other = endpoint(&app, Some(&["sale.sold_out"]), true, false).await;
    let disabled = endpoint(&app, None, false, false).await;
    let deleted = endpoint(&app, None, true, true).await;

    let sale = app.live_sale(10, 10, 600).await;
    let alice = hold(&app, &sale, "alice", 1).await;
    assert_eq!(app.confirm(&alice, &app.token("alice")).await.status, 200);
    let bob = hold(&app, &sale, "bob", 1).await;
    assert_eq!(app.release(&bob, &app.token("bob")).await.status, 200);
    let f = flusher(&app);
    f.flush_sale(&sale_id(&sale), false).await.unwrap();
    f.flush_sale(&sale_id(&sale), false).await.unwrap();
    assert_eq!(app.events(&sale).await.len(), 2);

    let got = deliveries(&app).await;
    let of = |e: uuid::Uuid| -> Vec<&str> {
        got.iter()
            .filter(|(id, _, _)| *id == e)
            .map(|(_, event, status)| {
                assert_eq!(status, "pending");
                event.as_str()
            })
            .collect()
    };
    let (c, r) = (
        format!("{alice}.reservation.confirmed"),
        format!("{bob}.reservation.released"),
    );
    let mut both = vec![c.as_str(), r.as_str()];
    both.sort();
    assert_eq!(of(every), both);
    assert_eq!(of(confirms), [c.as_str()]);
    assert!(of(other).is_empty());
    assert!(of(disabled).is_empty());
    assert!(of(deleted).is_empty());
}

#[tokio::test]
async fn events_past_their_retention_go_with_their_deliveries() {
    let app = TestApp::builder().without_worker().spawn().await;
    let every = endpoint(&app, None, true, false).await;
    let sale = app.live_sale(10, 10, 600).await;
    for c in ["a", "b", "c"] {
        let rid = hold(&app, &sale, c, 1).await;
        assert_eq!(app.confirm(&rid, &app.token(c)).await.status, 200);
    }
    let f = flusher(&app);
    f.flush_sale(&sale_id(&sale), false).await.unwrap();
    f.flush_sale(&sale_id(&sale), false).await.unwrap();
    let rows = app.events(&sale).await;
    assert_eq!(rows.len(), 3);
    sqlx::query("UPDATE events SET created_at = now() - interval '8 days' WHERE id <> $1")
        .bind(&rows[0].id)
        .execute(&app.db)
        .await
        .unwrap();
    let n = flashsale::usecases::events::prune(&app.db, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert_eq!(n, 2);
    let left = app.events(&sale).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, rows[0].id);
    let d = deliveries(&app).await;
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].0, d[0].1.as_str()), (every, rows[0].id.as_str()));
}

/// Redis loses the sale: the rebuild keeps its count of sell-outs at what
/// Postgres has, so the next sell-out is a new event, not a skipped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sell_out_after_a_rebuild_gets_a_new_id() {
    let app = spawn_app().await;
    let sale = app.live_sale(2, 2, 600).await;
    let first = hold(&app, &sale, "a", 2).await;
    assert_eq!(app.release(&first, &app.token("a")).await.status, 200);
    hold(&app, &sale, "b", 2).await;
    assert_eq!(app.wait_for_events(&sale, 3, 20).await.len(), 3);

    let mut conn = app.engine.connection();
    let _: () = conn.del(&app.engine.keys(&sale).all()[..]).await.unwrap();
    let out = app.run(&["reconcile", "--rebuild", "--sale", &sale]);
    assert_exit(&out, 0);
    assert_eq!(app.stock(&sale).await.available, 2);
    hold(&app, &sale, "c", 2).await;
    let rows = app.wait_for_events(&sale, 4, 20).await;
    let sold_outs: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == "sale.sold_out")
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        sold_outs,
        [1, 2, 3].map(|n| format!("{sale}.sale.sold_out.{n}"))
    );
}
