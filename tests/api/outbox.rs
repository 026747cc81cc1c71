//! Durable orders: every confirmed reservation becomes exactly one row in
//! Postgres `orders`, whatever is killed and whatever is down.

use std::collections::HashSet;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::helpers::proxy::Proxy;
use futures::stream::{self, StreamExt};
use rand::Rng;
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};

/// Reserves and confirms `n` orders (one unit each, one customer each) over
/// HTTP, 100 at a time. Returns the confirmed reservation ids.
async fn confirm_orders(app: &TestApp, sale: &str, n: usize) -> HashSet<String> {
    end_holds(app, sale, n, Ending::Confirm).await
}

/// Reserves and releases `n` holds, as [`confirm_orders`] confirms them.
async fn release_holds(app: &TestApp, sale: &str, n: usize) -> HashSet<String> {
    end_holds(app, sale, n, Ending::Release).await
}

#[derive(Clone, Copy)]
enum Ending {
    Confirm,
    Release,
}

async fn end_holds(app: &TestApp, sale: &str, n: usize, ending: Ending) -> HashSet<String> {
    let crowd = unique(match ending {
        Ending::Confirm => "b",
        Ending::Release => "r",
    });
    let crowd = &crowd;
    stream::iter(0..n)
        .map(|i| async move {
            let t = app.token(&format!("{crowd}-{i}"));
            let held = app.reserve(sale, &t, 1).await;
            assert_eq!(held.status, 201, "{}", held.body);
            let rid = held.body["id"].as_str().unwrap().to_string();
            let ended = match ending {
                Ending::Confirm => app.confirm(&rid, &t).await,
                Ending::Release => app.release(&rid, &t).await,
            };
            assert_eq!(ended.status, 200, "{}", ended.body);
            rid
        })
        .buffer_unordered(100)
        .collect()
        .await
}

/// The ids of the sale's events of one type in Postgres, by reservation.
async fn events_of(app: &TestApp, sale: &str, kind: &str) -> HashSet<String> {
    app.events(sale)
        .await
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.aggregateid)
        .collect()
}

/// A standalone `flashsale worker` with small batches and a short claim time,
/// so kills land mid-flush and a successor takes over quickly.
fn start_worker(app: &TestApp) -> Child {
    app.command()
        .arg("worker")
        .env("FLASHSALE__WORKER__FLUSH_BATCH", "10")
        .env("FLASHSALE__WORKER__FLUSH_INTERVAL_MS", "10")
        .env("FLASHSALE__WORKER__CLAIM_IDLE_MS", "300")
        .spawn()
        .expect("flashsale worker starts")
}

fn stop(mut worker: Child) -> std::process::ExitStatus {
    assert!(send_signal(worker.id(), libc::SIGTERM));
    let started = Instant::now();
    loop {
        if let Some(status) = worker.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "worker ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn reservation_ids_in_postgres(app: &TestApp, sale: &str) -> HashSet<String> {
    sqlx::query_scalar("SELECT reservation_id FROM orders WHERE sale_id = $1")
        .bind(sale)
        .fetch_all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn pending(app: &TestApp, sale: &str) -> i64 {
    let mut conn = app.engine.connection();
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(app.engine.keys(sale).outbox.clone())
        .arg(flashsale::engine::ops::outbox::GROUP)
        .query_async(&mut conn)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_workers_still_flush_each_order_exactly_once() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(2300, 1, 3600).await;
    let confirmed = confirm_orders(&app, &sale, 2000).await;
    // Releases too: their events ride the events stream, flushed with the
    // orders (invariant 8).
    let released = release_holds(&app, &sale, 300).await;
    assert_eq!(app.outbox_len(&sale).await, 2000);
    assert_eq!(app.events_len(&sale).await, 300);
    assert_eq!(app.orders(&sale).await.0, 0, "no worker ran yet");

    // Kill workers at random moments, several times over: each one once it
    // has made some progress, a random few milliseconds later.
    let mut kills_mid_flush = 0;
    for round in 0..5 {
        let before = app.orders(&sale).await.0;
        let mut w = start_worker(&app);
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.orders(&sale).await.0 == before && before < 2000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ms = rand::thread_rng().gen_range(0..25);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        w.kill().unwrap(); // SIGKILL
        w.wait().unwrap();
        let rows = app.orders(&sale).await.0;
        kills_mid_flush += usize::from(rows < 2000);
        eprintln!("round {round}: killed {ms} ms after progress; {rows} rows so far");
    }
    assert!(kills_mid_flush >= 2, "the kills landed mid-flush");
    let last = start_worker(&app);
    let (rows, distinct, _) = app.wait_for_orders(&sale, 2000, 60).await;
    let events = app.wait_for_events(&sale, 2300, 60).await;
    assert_eq!(stop(last).code(), Some(0), "SIGTERM exits 0");
    assert_eq!((rows, distinct), (2000, 2000));
    assert_eq!(reservation_ids_in_postgres(&app, &sale).await, confirmed);
    assert_eq!(app.outbox_len(&sale).await, 0);
    assert_eq!(pending(&app, &sale).await, 0, "nothing left pending");
    // Every answered confirm and release has its one event.
    assert_eq!(events.len(), 2300, "one row per event");
    assert_eq!(
        events_of(&app, &sale, "reservation.confirmed").await,
        confirmed
    );
    assert_eq!(
        events_of(&app, &sale, "reservation.released").await,
        released
    );
    assert_eq!(app.events_len(&sale).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_at_once_write_no_duplicates_and_miss_nothing() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(2000, 1, 3600).await;
    let confirmed = confirm_orders(&app, &sale, 2000).await;
    let (a, b) = (start_worker(&app), start_worker(&app));
    let (rows, distinct, _) = app.wait_for_orders(&sale, 2000, 60).await;
    assert_eq!(stop(a).code(), Some(0));
    assert_eq!(stop(b).code(), Some(0));
    assert_eq!((rows, distinct), (2000, 2000));
    assert_eq!(reservation_ids_in_postgres(&app, &sale).await, confirmed);
    assert_eq!(pending(&app, &sale).await, 0);
}

/// Postgres goes away: confirms keep succeeding, orders wait in Redis,
/// `/readyz` stays 200 and reports Postgres down; everything lands once it
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_wait_out_a_postgres_outage_and_all_land() {
    let target = pg_server_url().rsplit_once('@').unwrap().1.to_string();
    let proxy = Proxy::start(target).await;
    // Migrated through the proxy, which is up until the cut.
    let app = TestApp::builder()
        .settings(|s| {
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
    let sale = app.live_sale(300, 1, 3600).await;

    proxy.cut();
    let confirmed = confirm_orders(&app, &sale, 300).await;
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["postgres"], "down");
    assert_eq!(ready.body["redis"], "up");
    tokio::time::sleep(Duration::from_millis(1500)).await; // several failed flushes
    assert_eq!(app.outbox_len(&sale).await, 300, "the orders wait in Redis");
    assert_eq!(app.events_len(&sale).await, 1, "so does the sell-out");

    proxy.restore();
    let (rows, distinct, _) = app.wait_for_orders(&sale, 300, 30).await;
    assert_eq!((rows, distinct), (300, 300));
    assert_eq!(reservation_ids_in_postgres(&app, &sale).await, confirmed);
    assert_eq!(pending(&app, &sale).await, 0);
    // The events waited with the orders: a confirm each, and the sell-out.
    let events = app.wait_for_events(&sale, 301, 30).await;
    assert_eq!(events.len(), 301);
    assert_eq!(
        events_of(&app, &sale, "reservation.confirmed").await,
        confirmed
    );
    assert_eq!(app.get("/readyz", None).await.body["postgres"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_entries_go_to_the_dead_letters_and_the_rest_flush() {
    let app = spawn_app().await;
    let sale = app.live_sale(40, 1, 3600).await;
    let keys = app.engine.keys(&sale);
    let mut conn = app.engine.connection();
    // Unparsable, then valid-looking but for a sale Postgres does not know
    // (a foreign-key violation), among real orders.
    let _: String = conn
        .xadd(
            &keys.outbox,
            "*",
            &[("order_id", "not-a-uuid"), ("quantity", "abc")],
        )
        .await
        .unwrap();
    let first = confirm_orders(&app, &sale, 10).await;
    let ghost = uuid::Uuid::new_v4().to_string();
    let _: String = conn
        .xadd(
            &keys.outbox,
            "*",
            &[
                ("order_id", ghost.as_str()),
                ("reservation_id", "ghost.0123456789abcdef0123456789abcdef"),
                ("sale_id", "ghost-sale"),
                ("customer_id", "nobody"),
                ("quantity", "1"),
                ("price_cents", "100"),
                ("currency", "IDR"),
                ("payment_ref", ""),
                ("confirmed_ms", "1765497600000"),
            ],
        )
        .await
        .unwrap();
    let second = confirm_orders(&app, &sale, 10).await;

    let (rows, distinct, _) = app.wait_for_orders(&sale, 20, 20).await;
    assert_eq!((rows, distinct), (20, 20));
    let all: HashSet<String> = first.union(&second).cloned().collect();
    assert_eq!(reservation_ids_in_postgres(&app, &sale).await, all);
    let dead: Vec<(String, Vec<(String, String)>)> = {
        let reply: redis::streams::StreamRangeReply =
            conn.xrange_all(&keys.dead_letters).await.unwrap();
        reply
            .ids
            .into_iter()
            .map(|e| {
                let fields = e
                    .map
                    .iter()
                    .map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap()))
                    .collect();
                (e.id, fields)
            })
            .collect()
    };
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (_, fields) in &dead {
        let reason = fields.iter().find(|(k, _)| k == "reason").unwrap();
        assert!(!reason.1.is_empty());
    }
    assert_eq!(app.outbox_len(&sale).await, 0);
    assert_eq!(pending(&app, &sale).await, 0);

    let text = app.metrics_text().await;
    for name in [
        "flashsale_orders_flushed_total",
        "flashsale_dead_letters_total",
        "flashsale_flush_seconds_bucket",
        "flashsale_flush_batch_size_bucket",
        "flashsale_http_request_seconds_bucket{route=\"/v1/sales/{sale_id}/reservations\"",
        "flashsale_reservations_total{outcome=\"held\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(text.contains(&format!(
        "flashsale_dead_letters_total{{sale_id=\"{sale}\"}} 2"
    )));
}
