//! Events through a gateway SIGKILLed (invariant 8): right after a run of
//! confirms and releases, or while its worker holds deliveries in flight,
//! the gateway and its worker die (or a `flashsale worker` process alone);
//! a new one starts, and every answered
//! confirm and release reaches the store's receiver (each `webhook-id` at
//! least once, verified by the PyPI `standardwebhooks` package) and is
//! exactly one `events` row.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use flashsale::domain::webhook::Secret;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::common::webhooks::*;
use crate::common::*;
use crate::failures::wait_ready;

/// The real binary running `args`, delivering to a receiver on loopback
/// over http, with short retries.
fn flashsale(app: &TestApp, args: &[&str], port: u16) -> std::process::Child {
    let mut cmd = app.command();
    cmd.args(args)
        .env("FLASHSALE__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("FLASHSALE__WEBHOOKS__ALLOW_HTTP", "true")
        .env("FLASHSALE__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true")
        .env("FLASHSALE__WEBHOOKS__RETRY_SCHEDULE_SECONDS", "[1, 1, 1]")
        // A dead worker's leases (the timeout and 5 s) run out soon.
        .env("FLASHSALE__WEBHOOKS__TIMEOUT_MS", "1000");
    cmd.spawn().expect("the flashsale binary starts")
}

/// `flashsale serve` (with its worker) on `port`.
fn gateway(app: &TestApp, port: u16) -> std::process::Child {
    flashsale(app, &["serve"], port)
}

/// `flashsale worker` alone: flushes and delivers, answers nothing.
fn worker(app: &TestApp) -> std::process::Child {
    flashsale(app, &["worker"], free_port())
}

/// The answer, or None when the request found no gateway to answer it.
async fn send(req: reqwest::RequestBuilder) -> Option<Answer> {
    match req.send().await {
        Ok(r) => Some(Answer::from(r).await),
        Err(_) => None,
    }
}

/// The test's own gateway (no worker: only the gateways it starts flush
/// and deliver), an endpoint registered through the admin API for
/// `receiver`, its secret, and a sale.
async fn setup(receiver: &Receiver) -> (TestApp, Secret, String) {
    let app = TestApp::builder()
        .settings(local)
        .without_worker()
        .spawn()
        .await;
    let made = app
        .http
        .post(app.url("/v1/webhooks"))
        .bearer_auth(app.admin())
        .json(&json!({ "url": receiver.url() }))
        .send()
        .await
        .unwrap();
    let made = Answer::from(made).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = Secret::from_bytes(
        base64::engine::general_purpose::STANDARD
            .decode(
                made.body["secret"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("whsec_"))
                    .expect("a whsec_ secret"),
            )
            .expect("base64"),
    );
    let sale = app.live_sale(1000, 2, 600).await;
    (app, secret, sale)
}

/// `n` buyers through the gateway at `base`, each holding one unit, then
/// confirming it (even) or releasing it (odd): the ids of the events of
/// the changes answered 200.
async fn changes(app: &TestApp, base: &str, sale: &str, n: usize) -> BTreeSet<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let answered: Vec<Option<String>> = stream::iter(0..n)
        .map(|i| {
            let http = &http;
            let token = app.token(&format!("buyer-{i}"));
            async move {
                let held = send(
                    http.post(format!("{base}/v1/sales/{sale}/reservations"))
                        .bearer_auth(&token)
                        .json(&json!({"quantity": 1})),
                )
                .await?;
                assert_eq!(held.status, 201, "{}", held.body);
                let rid = held.body["id"].as_str()?.to_string();
                let (req, kind) = if i % 2 == 0 {
                    (
                        http.post(format!("{base}/v1/reservations/{rid}/confirm"))
                            .json(&json!({"payment_ref": format!("pay-{i}")})),
                        "reservation.confirmed",
                    )
                } else {
                    (
                        http.delete(format!("{base}/v1/reservations/{rid}")),
                        "reservation.released",
                    )
                };
                let done = send(req.bearer_auth(&token)).await?;
                assert_eq!(done.status, 200, "{}", done.body);
                Some(format!("{rid}.{kind}"))
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let want: BTreeSet<String> = answered.into_iter().flatten().collect();
    assert_eq!(want.len(), n, "every change was answered");
    want
}

/// After the kill and a restart: every one of `want` arrives, nothing
/// else, each verified, and each is exactly one `events` row.
async fn every_event_arrives(
    app: &TestApp,
    receiver: &Receiver,
    secret: &Secret,
    sale: &str,
    want: &BTreeSet<String>,
) {
    let before = receiver.seen().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<String> = receiver.seen().into_iter().map(|s| s.id).collect();
        let missing: Vec<&String> = want.difference(&got).collect();
        if missing.is_empty() {
            assert!(
                got.is_subset(want),
                "nothing else: {:?}",
                got.difference(want)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never arrived (e.g. {:?}); {before} requests before the kill",
            missing.len(),
            want.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "sigkill: {before} requests before the kill, {} in all for {} events",
        receiver.seen().len(),
        want.len()
    );

    // Exactly one row per answered change, and no hold with two endings.
    let rows = app.wait_for_events(sale, want.len(), 20).await;
    let ids: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(&ids, want);
    assert_eq!(rows.len(), want.len());
    let mut endings: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *endings.entry(r.aggregateid.as_str()).or_default() += 1;
    }
    assert!(endings.values().all(|&n| n == 1));

    let seen = receiver.seen();
    for s in &seen {
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        let row = rows.iter().find(|r| r.id == s.id).unwrap();
        assert_eq!(body, row.payload);
    }
    verify_with_standardwebhooks(&seen, &[secret]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_gateway_after_confirms_and_releases_loses_no_event() {
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (app, secret, sale) = setup(&receiver).await;
    let port = free_port();
    let mut child = gateway(&app, port);
    wait_ready(&app.http, &format!("http://127.0.0.1:{port}")).await;
    let want = changes(&app, &format!("http://127.0.0.1:{port}"), &sale, 300).await;
    // At once: most events are still in Redis or not yet delivered.
    child.kill().expect("SIGKILL the gateway");
    child.wait().unwrap();
    let _child = KillOnDrop(gateway(&app, port));
    wait_ready(&app.http, &format!("http://127.0.0.1:{port}")).await;
    every_event_arrives(&app, &receiver, &secret, &sale, &want).await;
}

/// Killed while its worker holds deliveries in flight: their leases run
/// out and the next gateway's worker sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_gateway_with_deliveries_in_flight_loses_no_event() {
    let receiver = Receiver::start(|_, _| Reply::Slow(Duration::from_millis(300), 204)).await;
    let (app, secret, sale) = setup(&receiver).await;
    let port = free_port();
    let child = gateway(&app, port);
    wait_ready(&app.http, &format!("http://127.0.0.1:{port}")).await;
    let want = changes(&app, &format!("http://127.0.0.1:{port}"), &sale, 200).await;
    kill_mid_delivery(&app, &receiver, child).await;
    let _child = KillOnDrop(gateway(&app, port));
    wait_ready(&app.http, &format!("http://127.0.0.1:{port}")).await;
    every_event_arrives(&app, &receiver, &secret, &sale, &want).await;
}

/// A `flashsale worker` process, apart from the gateway answering the
/// buyers, killed while it flushes and delivers; a new worker picks up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_worker_with_deliveries_in_flight_loses_no_event() {
    let receiver = Receiver::start(|_, _| Reply::Slow(Duration::from_millis(300), 204)).await;
    let (app, secret, sale) = setup(&receiver).await;
    let child = worker(&app);
    let want = changes(&app, &app.url(""), &sale, 200).await;
    kill_mid_delivery(&app, &receiver, child).await;
    let _child = KillOnDrop(worker(&app));
    every_event_arrives(&app, &receiver, &secret, &sale, &want).await;
}

/// SIGKILLs `child` once deliveries have started, and checks it died
/// holding some: leased, still pending.
async fn kill_mid_delivery(app: &TestApp, receiver: &Receiver, mut child: std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.seen().len() < 20 {
        assert!(Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let (leased,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND leased_until > now()",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(leased > 0, "the kill found no delivery in flight");
}
