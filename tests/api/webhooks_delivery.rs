//! Delivering events to the store's endpoints (issue 28, invariant 8): a
//! real receiver in the test, every delivery verified by the PyPI
//! `standardwebhooks` package (an implementation that is not ours), retries
//! with the same `webhook-id`, 410, the per-endpoint bound across workers,
//! leases that come back, the SSRF defaults, and Postgres or the endpoint
//! down for a while.
//!
//! Endpoints, events and deliveries are written here with SQL, as the admin
//! API and the flush write them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use flashsale::domain::webhook::Secret;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::webhooks::*;
use crate::common::*;
use crate::helpers::proxy::Proxy;

/// One endpoint's deliveries in flight, across all workers.
const BOUND: usize = flashsale::usecases::deliver::IN_FLIGHT_PER_ENDPOINT as usize;

/// An endpoint as the admin API stores it (secret not sealed).
async fn endpoint(app: &TestApp, url: &str, secret: &Secret) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, secret, secret_sealed) VALUES ($1, $2, $3, false)",
    )
    .bind(id)
    .bind(url)
    .bind(secret.bytes())
    .execute(&app.db)
    .await
    .unwrap();
    id
}

/// `n` events (reservation.confirmed), each with a delivery to every one of
/// `endpoints`, as the flush writes them. Returns the event ids.
async fn events(app: &TestApp, endpoints: &[Uuid], n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let rid = unique("r");
        let id = format!("{rid}.reservation.confirmed");
        let payload = json!({
            "type": "reservation.confirmed",
            "timestamp": "2026-12-06T09:00:00.000Z",
            "data": {"reservation": {"id": rid, "sale_id": "s-1", "quantity": 1}, "version": 3},
        });
        sqlx::query(
            "INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id)
             VALUES ($1, 'reservation', $2, 'reservation.confirmed', $3, 's-1')",
        )
        .bind(&id)
        .bind(&rid)
        .bind(&payload)
        .execute(&app.db)
        .await
        .unwrap();
        for e in endpoints {
            sqlx::query("INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES ($1, $2)")
                .bind(e)
                .bind(&id)
                .execute(&app.db)
                .await
                .unwrap();
        }
        ids.push(id);
    }
    ids
}

#[derive(Debug, Clone)]
struct Row {
    status: String,
    attempts: i32,
    code: Option<i32>,
    error: Option<String>,
}

/// A delivery's row: event id, status, attempts, last code, last error.
type RawRow = (String, String, i32, Option<i32>, Option<String>);

async fn deliveries(app: &TestApp, endpoint: Uuid) -> HashMap<String, Row> {
    let rows: Vec<RawRow> = sqlx::query_as(
        "SELECT event_id, status, attempts, last_status_code, last_error
         FROM webhook_deliveries WHERE endpoint_id = $1",
    )
    .bind(endpoint)
    .fetch_all(&app.db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, status, attempts, code, error)| {
            (
                id,
                Row {
                    status,
                    attempts,
                    code,
                    error,
                },
            )
        })
        .collect()
}

/// Waits until every delivery of `endpoint` satisfies `done`; returns them.
async fn wait_all(
    app: &TestApp,
    endpoint: Uuid,
    within: Duration,
    done: impl Fn(&Row) -> bool,
) -> HashMap<String, Row> {
    let deadline = Instant::now() + within;
    loop {
        let rows = deliveries(app, endpoint).await;
        if !rows.is_empty() && rows.values().all(&done) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries of {endpoint} not done in {within:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delivered(r: &Row) -> bool {
    r.status == "delivered"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_delivery_verifies_with_standardwebhooks_and_a_changed_byte_does_not() {
    let key = [9u8; 32];
    let app = TestApp::builder()
        .settings(|s| {
            local(s);
            s.webhooks.secret_key = Some(SecretString::from(
                base64::engine::general_purpose::STANDARD.encode(key),
            ));
        })
        .spawn()
        .await;
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    // Sealed at rest, as the admin API stores it with a secret key.
    let secret = Secret::generate();
    let (stored, sealed) = secret.seal(Some(&key));
    assert!(sealed);
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, secret, secret_sealed) VALUES ($1, $2, $3, true)",
    )
    .bind(id)
    .bind(receiver.url())
    .bind(&stored)
    .execute(&app.db)
    .await
    .unwrap();
    let ids = events(&app, &[id], 20).await;
    let rows = wait_all(&app, id, Duration::from_secs(20), delivered).await;
    assert_eq!(rows.len(), 20);
    assert!(rows
        .values()
        .all(|r| r.attempts == 1 && r.code == Some(204)));

    let seen = receiver.seen();
    assert_eq!(seen.len(), 20);
    let mut got: Vec<String> = seen.iter().map(|s| s.id.clone()).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "webhook-id is the event's id");
    for s in &seen {
        assert_eq!(s.content_type, "application/json");
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["type"], "reservation.confirmed");
        let ts: i64 = s.timestamp.parse().unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - ts).abs() < 60, "webhook-timestamp is the attempt's");
        assert_eq!(s.signature.split(' ').count(), 1);
    }
    verify_with_standardwebhooks(&seen, &[&secret]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn during_a_rotations_grace_both_secrets_sign_and_after_it_only_the_new() {
    let app = TestApp::builder().settings(local).spawn().await;
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let (new, old) = (Secret::generate(), Secret::generate());
    let id = endpoint(&app, &receiver.url(), &new).await;
    sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret = $2, previous_sealed = false,
                previous_until = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(id)
    .bind(old.bytes())
    .execute(&app.db)
    .await
    .unwrap();
    events(&app, &[id], 3).await;
    wait_all(&app, id, Duration::from_secs(20), delivered).await;
    let seen = receiver.seen();
    assert!(seen.iter().all(|s| s.signature.split(' ').count() == 2));
    verify_with_standardwebhooks(&seen, &[&new, &old]);

    // The grace period over: the new secret alone.
    sqlx::query("UPDATE webhook_endpoints SET previous_until = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    events(&app, &[id], 2).await;
    wait_all(&app, id, Duration::from_secs(20), delivered).await;
    let later: Vec<Seen> = receiver.seen().split_off(3);
    assert_eq!(later.len(), 2);
    assert!(later.iter().all(|s| s.signature.split(' ').count() == 1));
    verify_with_standardwebhooks(&later, &[&new]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_come_back_with_the_same_id_on_the_schedule_then_fail() {
    let app = TestApp::builder().settings(local).spawn().await;
    // Two failures, then a 2xx: delivered on the third attempt.
    let flaky = Receiver::start(|_, times| {
        if times <= 2 {
            Reply::Status(500)
        } else {
            Reply::Status(204)
        }
    })
    .await;
    // Never a 2xx: failed once the schedule ([1, 1]: three attempts) ran out.
    let broken = Receiver::start(|_, _| Reply::Status(503)).await;
    let secret = Secret::generate();
    let a = endpoint(&app, &flaky.url(), &secret).await;
    let b = endpoint(&app, &broken.url(), &secret).await;
    let started = Instant::now();
    let ids = events(&app, &[a, b], 2).await;

    let rows = wait_all(&app, a, Duration::from_secs(30), delivered).await;
    assert!(rows
        .values()
        .all(|r| r.attempts == 3 && r.code == Some(204)));
    let rows = wait_all(&app, b, Duration::from_secs(30), |r| r.status == "failed").await;
    for r in rows.values() {
        assert_eq!(r.attempts, 3, "{r:?}");
        assert_eq!(r.code, Some(503));
        assert!(r.error.as_deref().unwrap_or("").contains("503"), "{r:?}");
    }
    // Two waits of about a second (±10 %) between three attempts.
    assert!(started.elapsed() >= Duration::from_millis(1800));
    for receiver in [&flaky, &broken] {
        let seen = receiver.seen();
        assert_eq!(seen.len(), 6);
        for id in &ids {
            let same: Vec<&Seen> = seen.iter().filter(|s| &s.id == id).collect();
            assert_eq!(same.len(), 3, "every attempt of {id} carries its id");
            assert!(same.iter().all(|s| s.body == same[0].body));
        }
        verify_with_standardwebhooks(&seen, &[&secret]);
    }
    // Failed is final: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(broken.seen().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_410_disables_the_endpoint() {
    let app = TestApp::builder().settings(local).spawn().await;
    let receiver = Receiver::start(|_, _| Reply::Status(410)).await;
    let id = endpoint(&app, &receiver.url(), &Secret::generate()).await;
    events(&app, &[id], 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (enabled, reason): (bool, Option<String>) =
            sqlx::query_as("SELECT enabled, disabled_reason FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .fetch_one(&app.db)
                .await
                .unwrap();
        if !enabled {
            assert_eq!(reason.as_deref(), Some("gone"));
            break;
        }
        assert!(Instant::now() < deadline, "the endpoint stays enabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more is sent to it, even with new deliveries.
    events(&app, &[id], 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.seen().len(), 1);
    let rows = deliveries(&app, id).await;
    assert_eq!(rows.values().filter(|r| r.code == Some(410)).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_endpoint_does_not_delay_another() {
    let app = TestApp::builder()
        .settings(|s| {
            local(s);
            s.webhooks.timeout_ms = 10_000;
        })
        .spawn()
        .await;
    let hanging = Receiver::start(|_, _| Reply::Hang).await;
    let healthy = Receiver::start(|_, _| Reply::Status(204)).await;
    let secret = Secret::generate();
    let h = endpoint(&app, &hanging.url(), &secret).await;
    let ok = endpoint(&app, &healthy.url(), &secret).await;
    // More than the hanging one's bound: its extra deliveries wait, and the
    // healthy one's go through meanwhile.
    let n = 2 * BOUND;
    let started = Instant::now();
    events(&app, &[h, ok], n).await;
    wait_all(&app, ok, Duration::from_secs(5), delivered).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(healthy.seen().len(), n);
    let waiting = deliveries(&app, h).await;
    assert!(waiting.values().all(|r| r.status == "pending"));
    assert!(
        hanging.max_in_flight() <= BOUND,
        "{}",
        hanging.max_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_keep_one_endpoints_bound_and_deliver_each_once() {
    let app = TestApp::builder()
        .settings(|s| {
            local(s);
        })
        .spawn()
        .await;
    let other = TestApp::builder().beside(&app).spawn().await;
    let receiver = Receiver::start(|_, _| Reply::Slow(Duration::from_millis(100), 204)).await;
    let id = endpoint(&app, &receiver.url(), &Secret::generate()).await;
    // Several rounds of the bound; each worker alone has room for more.
    let n = 8 * BOUND;
    events(&app, &[id], n).await;
    wait_all(&app, id, Duration::from_secs(60), delivered).await;
    let seen = receiver.seen();
    let distinct: std::collections::HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(distinct.len(), n);
    assert_eq!(seen.len(), n, "each delivered once while its lease held");
    let max = receiver.max_in_flight();
    assert!(
        max <= BOUND,
        "at most {BOUND} in flight across both workers, saw {max}"
    );
    drop(other);
}

/// A worker killed while holding claims: its deliveries are claimed again
/// once the lease runs out, by any other worker, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_workers_claims_come_back_after_the_lease() {
    use flashsale::store::deliveries::claim;
    let app = TestApp::builder()
        .settings(local)
        .without_worker()
        .spawn()
        .await;
    let id = endpoint(&app, "http://127.0.0.1:9/hook", &Secret::generate()).await;
    events(&app, &[id], 10).await;
    // The "killed" worker: its own pool, claims, then is gone.
    let dead = sqlx::PgPool::connect(app.settings.database.url.expose_secret())
        .await
        .unwrap();
    let taken = claim(&dead, 4, 1500, 100).await.unwrap();
    assert_eq!(taken.len(), 4, "the per-endpoint bound");
    dead.close().await;
    // Another worker finds nothing it may take: the bound is full, held by
    // the dead worker's leases.
    assert!(claim(&app.db, 4, 1500, 100).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let again = claim(&app.db, 4, 1500, 100).await.unwrap();
    assert_eq!(again.len(), 4);
    let mut before: Vec<&str> = taken.iter().map(|c| c.event_id.as_str()).collect();
    let mut after: Vec<&str> = again.iter().map(|c| c.event_id.as_str()).collect();
    before.sort();
    after.sort();
    assert_eq!(before, after, "the oldest due come back first");
    assert!(again.iter().all(|c| c.attempts == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ssrf_defaults_refuse_plain_http_loopback_and_a_name_resolving_to_it() {
    let app = TestApp::builder()
        .settings(|s| {
            s.webhooks.timeout_ms = 2000;
            s.webhooks.retry_schedule_seconds = vec![60];
        })
        .spawn()
        .await;
    assert!(!app.settings.webhooks.allow_http);
    assert!(!app.settings.webhooks.allow_private_networks);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let port = receiver.addr.port();
    let secret = Secret::generate();
    let cases = [
        (format!("http://{}/hook", receiver.addr), "scheme `http`"),
        (format!("https://127.0.0.1:{port}/hook"), "127.0.0.1"),
        (format!("https://[::1]:{port}/hook"), "::1"),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/hook"),
            "not a public",
        ),
        (format!("https://localhost:{port}/hook"), "non-public"),
    ];
    let mut ids = Vec::new();
    for (url, _) in &cases {
        ids.push(endpoint(&app, url, &secret).await);
    }
    events(&app, &ids, 1).await;
    for (id, (url, why)) in ids.iter().zip(&cases) {
        let rows = wait_all(&app, *id, Duration::from_secs(20), |r| r.attempts >= 1).await;
        let row = rows.values().next().unwrap();
        assert_eq!(row.status, "pending", "retried later: {url}");
        assert_eq!(row.code, None, "{url}");
        let error = row.error.clone().unwrap_or_default();
        assert!(error.contains("refused"), "{url}: {error}");
        assert!(error.contains(why), "{url}: {error}");
        assert!(!error.contains(&secret.reveal()));
    }
    assert!(receiver.seen().is_empty(), "nothing reached the receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_wait_out_a_postgres_outage_and_arrive() {
    let target = pg_server_url().rsplit_once('@').unwrap().1.to_string();
    let proxy = Proxy::start(target).await;
    let app = TestApp::builder()
        .settings(|s| {
            local(s);
            let real_url = s.database.url.expose_secret().to_string();
            let (_, database) = real_url.rsplit_once('/').unwrap();
            s.database.url = SecretString::from(format!(
                "postgres://postgres@127.0.0.1:{}/{database}",
                proxy.port
            ));
            s.database.timeout_ms = 500;
            s.worker.max_backoff_ms = 400;
        })
        .spawn()
        .await;
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let id = endpoint(&app, &receiver.url(), &Secret::generate()).await;
    proxy.cut();
    // Written past the proxy, as a flush on another host would.
    let direct = sqlx::PgPool::connect(&format!(
        "{}/{}",
        pg_server_url(),
        app.settings
            .database
            .url
            .expose_secret()
            .rsplit('/')
            .next()
            .unwrap()
    ))
    .await
    .unwrap();
    let ids = {
        let mut ids = Vec::new();
        for _ in 0..20 {
            let rid = unique("r");
            let eid = format!("{rid}.reservation.released");
            sqlx::query(
                "INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id)
                 VALUES ($1, 'reservation', $2, 'reservation.released', '{\"type\": \"reservation.released\"}', 's')",
            )
            .bind(&eid)
            .bind(&rid)
            .execute(&direct)
            .await
            .unwrap();
            sqlx::query("INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES ($1, $2)")
                .bind(id)
                .bind(&eid)
                .execute(&direct)
                .await
                .unwrap();
            ids.push(eid);
        }
        ids
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receiver.seen().is_empty(),
        "nothing is claimed while Postgres is away"
    );
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'delivered'",
        )
        .bind(id)
        .fetch_one(&direct)
        .await
        .unwrap();
        if n == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of 20 delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got: Vec<String> = receiver.seen().into_iter().map(|s| s.id).collect();
    got.sort();
    got.dedup();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
    direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_wait_out_the_endpoint_being_down_and_arrive() {
    let app = TestApp::builder()
        .settings(|s| {
            local(s);
            s.webhooks.retry_schedule_seconds = vec![1, 1, 1, 1, 1, 1];
        })
        .spawn()
        .await;
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let proxy = Proxy::start(receiver.addr.to_string()).await;
    proxy.cut();
    let secret = Secret::generate();
    let id = endpoint(
        &app,
        &format!("http://127.0.0.1:{}/hook", proxy.port),
        &secret,
    )
    .await;
    let ids = events(&app, &[id], 10).await;
    // Refused connections: attempts counted, retried.
    let rows = wait_all(&app, id, Duration::from_secs(20), |r| r.attempts >= 2).await;
    for r in rows.values() {
        assert_eq!(r.status, "pending");
        assert_eq!(r.code, None, "no answer: {r:?}");
        assert!(r.error.is_some(), "{r:?}");
    }
    proxy.restore();
    wait_all(&app, id, Duration::from_secs(20), delivered).await;
    let seen = receiver.seen();
    let mut got: Vec<String> = seen.iter().map(|s| s.id.clone()).collect();
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
    verify_with_standardwebhooks(&seen, &[&secret]);
}

/// An endpoint's series count its outcomes, and leave `/metrics` when it
/// is deleted (bounded: endpoints come and go over a gateway's life).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoints_series_count_its_outcomes_and_go_when_it_is_deleted() {
    let app = TestApp::builder().settings(local).spawn().await;
    let flaky = Receiver::start(|_, times| {
        if times == 1 {
            Reply::Status(500)
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let id = endpoint(&app, &flaky.url(), &Secret::generate()).await;
    events(&app, &[id], 3).await;
    wait_all(&app, id, Duration::from_secs(20), delivered).await;
    let label = format!("endpoint_id=\"{id}\"");
    let within = Duration::from_secs(10);
    app.wait_sample("flashsale_webhook_delivered_total", &[&label], 3.0, within)
        .await;
    app.wait_sample("flashsale_webhook_retries_total", &[&label], 3.0, within)
        .await;
    app.wait_sample("flashsale_webhook_failed_total", &[&label], 0.0, within)
        .await;
    app.wait_sample("flashsale_webhook_pending", &[&label], 0.0, within)
        .await;
    sqlx::query("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.wait_no_sample(&label, within).await;
}

/// A worker asked to stop drops its attempts in flight and gives their
/// leases back at once (no attempt counted): the next worker need not wait
/// for the lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_worker_gives_its_leases_back() {
    let app = TestApp::builder()
        .settings(|s| {
            local(s);
            s.webhooks.timeout_ms = 30_000;
        })
        .without_worker()
        .spawn()
        .await;
    let hanging = Receiver::start(|_, _| Reply::Hang).await;
    let id = endpoint(&app, &hanging.url(), &Secret::generate()).await;
    events(&app, &[id], 3).await;
    let worker = TestApp::builder().beside(&app).spawn().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while hanging.seen().len() < 3 {
        assert!(Instant::now() < deadline, "the attempts never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leased,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM webhook_deliveries WHERE leased_until > now() AND endpoint_id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(leased, 3);
    let stopping = Instant::now();
    worker.shutdown().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let rows: Vec<(Option<time::OffsetDateTime>, i32)> = sqlx::query_as(
        "SELECT leased_until, attempts FROM webhook_deliveries WHERE endpoint_id = $1",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|(lease, attempts)| lease.is_none() && *attempts == 0),
        "{rows:?}"
    );
}
