//! Events for the store end to end (issue 28, invariant 8), through the
//! public API only: an endpoint registered with `POST /v1/webhooks`, buyers'
//! changes made through the gateway, and a real receiver in the test that
//! gets each change's `webhook-id` at least once, every request verified by
//! the PyPI `standardwebhooks` package; replays through the API and the
//! command line; a receiver failing its first attempts.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use flashsale::domain::rfc3339_ms;
use flashsale::domain::webhook::Secret;
use serde_json::{json, Value};

use crate::common::webhooks::*;
use crate::common::*;
use crate::events::{end_holds_every_way, hold, Ended};

async fn admin_post(app: &TestApp, path: &str, body: Value) -> Answer {
    let res = app
        .http
        .post(app.url(path))
        .bearer_auth(app.admin())
        .json(&body)
        .send()
        .await
        .unwrap();
    Answer::from(res).await
}

/// Registers `url` through the admin API: its id and its secret.
pub(crate) async fn register(app: &TestApp, body: Value) -> (String, Secret) {
    let a = admin_post(app, "/v1/webhooks", body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let shown = a.body["secret"].as_str().expect("the secret, shown once");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(shown.strip_prefix("whsec_").expect("whsec_"))
        .expect("base64");
    let id = a.body["id"].as_str().unwrap().to_string();
    (id, Secret::from_bytes(bytes))
}

/// How many times the receiver got each id.
fn counts(seen: &[Seen]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for s in seen {
        *n.entry(s.id.clone()).or_default() += 1;
    }
    n
}

/// Waits until the receiver got each of `ids` at least `times` times.
async fn wait_ids(receiver: &Receiver, ids: &[String], times: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = counts(&receiver.seen());
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| got.get(*id).copied().unwrap_or(0) < times)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not received {times} times within {within:?}: {missing:?}; got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The endpoint's deliveries log, as the admin API shows it.
async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let a = app
        .get(
            &format!("/v1/webhooks/{endpoint}/deliveries"),
            Some(&app.admin()),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["deliveries"].as_array().unwrap().clone()
}

/// The body of a delivery, checked against the contract's shape and the
/// event's row in Postgres (the body is the row's payload).
fn check_body(seen: &Seen, rows: &HashMap<String, EventRow>) -> Value {
    assert_eq!(seen.content_type, "application/json");
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    let row = rows
        .get(&seen.id)
        .unwrap_or_else(|| panic!("{} is not an events row", seen.id));
    assert_eq!(body, row.payload, "{}", seen.id);
    assert_eq!(body["type"], row.kind.as_str());
    assert!(
        seen.id.ends_with(&row.kind) || seen.id.contains(&format!(".{}.", row.kind)),
        "{} for {}",
        seen.id,
        row.kind
    );
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    assert!(body["data"]["version"].as_i64().unwrap() > 0, "{body}");
    assert!(body["data"]["sale_id"].is_string(), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_change_reaches_the_receiver_verified_and_a_reserve_sends_nothing() {
    // The reaper's loop runs once at the start, then not for an hour: the
    // late confirm, release and extend find their holds still held, and the
    // test runs the reaper's step itself for the last one.
    let app = spawn_app_with(|s| {
        local(s);
        s.worker.reaper_interval_ms = 3_600_000;
    })
    .await;
    let all = Receiver::start(|_, _| Reply::Status(204)).await;
    let released_only = Receiver::start(|_, _| Reply::Status(200)).await;
    let (all_id, all_secret) = register(&app, json!({ "url": all.url() })).await;
    let (rel_id, rel_secret) = register(
        &app,
        json!({"url": released_only.url(), "events": ["reservation.released"]}),
    )
    .await;

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

    let small = app.live_sale(2, 2, 600).await;
    hold(&app, &small, "eve", 2).await;

    let mut want: Vec<String> = vec![
        format!("{alice}.reservation.confirmed"),
        format!("{bob}.reservation.released"),
        format!("{small}.sale.sold_out.1"),
    ];
    want.extend(d.iter().map(|r| format!("{r}.reservation.expired")));
    wait_ids(&all, &want, 1, Duration::from_secs(30)).await;
    let released_id = format!("{bob}.reservation.released");
    wait_ids(
        &released_only,
        std::slice::from_ref(&released_id),
        1,
        Duration::from_secs(30),
    )
    .await;

    // Everything is in Postgres by now: no other event exists, and neither
    // receiver got anything else (a plain reserve sends nothing).
    let mut rows: HashMap<String, EventRow> = HashMap::new();
    for s in [&sale, &late, &small] {
        for row in app.wait_for_events(s, 0, 20).await {
            rows.insert(row.id.clone(), row);
        }
    }
    let in_postgres: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(in_postgres, wanted, "one events row per change, no more");
    let seen = all.seen();
    let got: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(got, wanted);
    assert!(seen.iter().all(|s| !s.id.starts_with(&carol)));

    for s in &seen {
        let body = check_body(s, &rows);
        let data = &body["data"];
        match body["type"].as_str().unwrap() {
            "reservation.confirmed" => {
                assert_eq!(data["sale_id"], sale.as_str());
                assert_eq!(data["order"], order);
                assert_eq!(data["reservation"]["id"], alice.as_str());
                assert_eq!(data["reservation"]["status"], "confirmed");
            }
            "reservation.released" => {
                assert_eq!(data["reservation"], released);
                assert!(data.get("order").is_none());
            }
            "reservation.expired" => {
                assert_eq!(data["sale_id"], late.as_str());
                assert_eq!(data["reservation"]["status"], "expired");
                let rid = data["reservation"]["id"].as_str().unwrap();
                assert_eq!(s.id, format!("{rid}.reservation.expired"));
            }
            "sale.sold_out" => {
                assert_eq!(data["sale_id"], small.as_str());
                assert_eq!(
                    data["sale"],
                    json!({"total": 2, "available": 0, "held": 2, "sold": 0})
                );
            }
            other => panic!("unexpected type {other}"),
        }
    }
    verify_with_standardwebhooks(&seen, &[&all_secret]);

    let only = released_only.seen();
    let got: BTreeSet<&str> = only.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(got, BTreeSet::from([released_id.as_str()]));
    check_body(&only[0], &rows);
    verify_with_standardwebhooks(&only, &[&rel_secret]);
    // Its log holds that one delivery and nothing else was queued for it.
    let log = deliveries(&app, &rel_id).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["event_id"], released_id.as_str());
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(deliveries(&app, &all_id).await.len(), want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_through_the_api_and_the_command_line_resends_the_original_id() {
    let app = spawn_app_with(local).await;
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let since = rfc3339_ms(time::OffsetDateTime::now_utc() - Duration::from_secs(60));
    let (endpoint, secret) = register(&app, json!({ "url": receiver.url() })).await;
    let sale = app.live_sale(10, 10, 600).await;
    let rid = hold(&app, &sale, "alice", 1).await;
    assert_eq!(app.confirm(&rid, &app.token("alice")).await.status, 200);
    let id = format!("{rid}.reservation.confirmed");
    let ids = [id.clone()];
    wait_ids(&receiver, &ids, 1, Duration::from_secs(30)).await;

    let a = admin_post(
        &app,
        &format!("/v1/webhooks/{endpoint}/replay"),
        json!({ "since": since }),
    )
    .await;
    assert_eq!((a.status, &a.body), (202, &json!({"queued": 1})));
    wait_ids(&receiver, &ids, 2, Duration::from_secs(30)).await;

    let out = app.run(&[
        "webhooks",
        "replay",
        "--endpoint",
        &endpoint,
        "--since",
        &since,
    ]);
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "queued 1");
    wait_ids(&receiver, &ids, 3, Duration::from_secs(30)).await;

    let seen = receiver.seen();
    assert!(seen.iter().all(|s| s.id == id), "only the one event");
    assert!(
        seen.iter().all(|s| s.body == seen[0].body),
        "a replay sends the same body"
    );
    verify_with_standardwebhooks(&seen, &[&secret]);
    let log = deliveries(&app, &endpoint).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["status"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_failing_its_first_attempts_gets_the_same_id_again() {
    let app = spawn_app_with(local).await;
    let receiver = Receiver::start(|_, times| {
        if times <= 2 {
            Reply::Status(500)
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let (endpoint, secret) = register(&app, json!({ "url": receiver.url() })).await;
    let sale = app.live_sale(10, 10, 600).await;
    let rid = hold(&app, &sale, "alice", 1).await;
    assert_eq!(app.release(&rid, &app.token("alice")).await.status, 200);
    let id = format!("{rid}.reservation.released");
    wait_ids(
        &receiver,
        std::slice::from_ref(&id),
        3,
        Duration::from_secs(30),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let log = deliveries(&app, &endpoint).await;
        if log.len() == 1 && log[0]["status"] == "delivered" {
            break log[0].clone();
        }
        assert!(Instant::now() < deadline, "never delivered: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row["event_id"], id.as_str());
    assert_eq!(row["attempts"], 3);
    assert_eq!(row["last_status_code"], 204);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3, "two failures, then the 2xx, and no more");
    assert!(seen.iter().all(|s| s.id == id && s.body == seen[0].body));
    verify_with_standardwebhooks(&seen, &[&secret]);
}

/// The storm with an endpoint registered: buyers race for the stock, the
/// winners confirm or release while the others try again; afterwards every
/// events row of the sale has reached `delivered` and the receiver, and
/// invariants 1, 2, 4 and 8 hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_with_an_endpoint_delivers_every_event_and_adds_up() {
    let app = spawn_app_with(local).await;
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (endpoint, secret) = register(&app, json!({ "url": receiver.url() })).await;
    let sale = app.live_sale(100, 1, 600).await;
    let tokens: Vec<String> = (0..800).map(|i| app.token(&format!("c{i}"))).collect();
    let first = futures::future::join_all(tokens.iter().map(|t| app.reserve(&sale, t, 1))).await;
    let winners: Vec<(usize, String)> = first
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status == 201)
        .map(|(i, a)| (i, a.body["id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(winners.len(), 100, "exactly the stock");
    for a in &first {
        assert!(matches!(a.status, 201 | 409), "{}", a.body);
    }

    let (app_ref, sale_ref, tokens_ref) = (&app, &sale, &tokens);
    let settle = futures::future::join_all(winners.iter().map(|(i, rid)| async move {
        let a = if i % 2 == 0 {
            app_ref.confirm(rid, &tokens_ref[*i]).await
        } else {
            app_ref.release(rid, &tokens_ref[*i]).await
        };
        assert_eq!(a.status, 200, "{}", a.body);
        let kind = if i % 2 == 0 { "confirmed" } else { "released" };
        format!("{rid}.reservation.{kind}")
    }));
    let retry = futures::future::join_all(tokens.iter().map(|t| app_ref.reserve(sale_ref, t, 1)));
    let (settled, retried) = tokio::join!(settle, retry);
    let confirmed = settled
        .iter()
        .filter(|id| id.ends_with(".confirmed"))
        .count() as i64;
    let reheld = retried.iter().filter(|a| a.status == 201).count() as i64;
    for a in &retried {
        assert!(matches!(a.status, 201 | 409), "{}", a.body);
    }

    // Invariants 1, 2 and 4.
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!((stock.sold, stock.held), (confirmed, reheld));
    assert!(stock.sold + stock.held <= 100);
    let per = app.per_customer(&sale).await;
    assert!(per.values().all(|&u| u <= 1), "{per:?}");
    let orders = app.wait_for_orders(&sale, confirmed, 20).await;
    assert_eq!(orders, (confirmed, confirmed, confirmed));

    // Invariant 8: one row per confirm and release, and the sell-outs;
    // every row delivered, and each id at the receiver.
    let rows = app.wait_for_events(&sale, settled.len() + 1, 20).await;
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), rows.len());
    for id in &settled {
        assert!(ids.contains(id.as_str()), "no events row {id}");
    }
    let sold_outs: Vec<&&str> = ids
        .iter()
        .filter(|id| !settled.iter().any(|s| s == *id))
        .collect();
    assert!(!sold_outs.is_empty(), "the storm sold the sale out");
    for id in &sold_outs {
        assert!(
            id.starts_with(&format!("{sale}.sale.sold_out.")),
            "an unexpected event {id}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (undelivered,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM events e WHERE e.sale_id = $1 AND NOT EXISTS (
                 SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id
                 AND d.endpoint_id::text = $2 AND d.status = 'delivered')",
        )
        .bind(&sale)
        .bind(&endpoint)
        .fetch_one(&app.db)
        .await
        .unwrap();
        if undelivered == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{undelivered} of {} events not delivered",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = receiver.seen();
    let got: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(got, ids);
    let by_id: HashMap<String, EventRow> = rows.iter().map(|r| (r.id.clone(), r.clone())).collect();
    for s in &seen {
        check_body(s, &by_id);
    }
    verify_with_standardwebhooks(&seen, &[&secret]);
    eprintln!(
        "storm: {confirmed} confirmed, {} released, {} sell-outs, {} deliveries",
        settled.len() as i64 - confirmed,
        sold_outs.len(),
        seen.len()
    );
}
