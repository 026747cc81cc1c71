//! The load generator's invariant checker, checked: it must flag a store that
//! oversells (the naive baselines of `src/baseline.rs`, started here on port
//! 0, each against its own database) and pass the stores that do not (the
//! row lock, the conditional update, and the real gateway). A checker that
//! cannot fail would pass everything; one that fails on correct stores would
//! be noise. Real concurrency: 400 reserves, 64 at a time, on 20 units.

mod common;

use flashsale_loadgen::{baseline, play, Options, Report, TargetKind};
use tokio_util::sync::CancellationToken;

/// A baseline server on port 0 with a database of its own; `stop` ends it
/// and drops the database.
struct Baseline {
    base: String,
    database_url: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn spawn_baseline(mode: baseline::Mode) -> Baseline {
    let database_url = format!(
        "{}/{}",
        common::pg_server_url(),
        common::unique("flashsale_test_baseline_")
    );
    let mut config = baseline::Config::new(mode, &database_url);
    // Several tests run at once against one Postgres (100 connections).
    config.pool_size = 12;
    let state = baseline::connect(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let server = tokio::spawn(baseline::serve(listener, state, async move {
        shutdown.cancelled().await
    }));
    Baseline {
        base,
        database_url,
        stop,
        server,
    }
}

impl Baseline {
    /// Stops the server, then drops its database (best effort).
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
        if let Some((_, name)) = self.database_url.rsplit_once('/') {
            if let Ok(db) =
                sqlx::PgPool::connect(&format!("{}/postgres", common::pg_server_url())).await
            {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&db)
                    .await;
            }
        }
    }
}

/// The storm every case gets: 400 buyers, one reserve of one unit each, 64
/// at a time, on 20 units; the stock read every 10 ms meanwhile.
fn storm(url: &str) -> Options {
    Options::from_args([
        "--url",
        url,
        "--stock",
        "20",
        "--requests",
        "400",
        "--customers",
        "400",
        "--concurrency",
        "64",
        "--max-quantity",
        "1",
        "--sample-ms",
        "10",
    ])
    .unwrap()
}

async fn play_baseline(mode: baseline::Mode) -> Report {
    let server = spawn_baseline(mode).await;
    let mut opts = storm(&server.base);
    opts.target_kind = TargetKind::Baseline;
    opts.database_url = Some(server.database_url.clone());
    let report = play(&common::test_settings(), &opts).await.unwrap();
    server.stop().await;
    report
}

fn broke(report: &Report, what: &str) -> bool {
    report.broken.iter().any(|b| b.contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flags_the_naive_store_that_writes_back_what_it_read() {
    let r = play_baseline(baseline::Mode::Naive).await;
    assert!(!r.ok(), "the naive store passed the checker: {r:#?}");
    assert_eq!(r.requests, 400);
    assert_eq!(r.failed, 0, "{:?}", r.answers);
    // More units granted than there were, seen from the answers...
    assert!(r.oversold_units > 0, "{r:#?}");
    assert_eq!(r.oversold_units, r.units_granted - 20);
    assert!(broke(&r, "no unit reserved twice"), "{:?}", r.broken);
    // ...from Postgres's orders...
    assert!(r.oversold_in_orders > 0, "{:?}", r.orders);
    assert!(broke(&r, "order in Postgres"), "{:?}", r.broken);
    // ...and from the counter: lost updates leave it above what was sold.
    assert!(r.stock_drift > 0, "{:?}", r.after_storm);
    assert!(r.samples_not_adding_up > 0);
    assert!(broke(&r, "available + held + sold == total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flags_the_naive_store_whose_stock_goes_negative() {
    let r = play_baseline(baseline::Mode::NaiveDecrement).await;
    assert!(!r.ok(), "the naive store passed the checker: {r:#?}");
    assert!(r.oversold_units > 0, "{r:#?}");
    assert!(
        r.negative_stock_seen > 0 && r.min_available_seen < 0,
        "{r:#?}"
    );
    assert_eq!(r.after_storm.available, 20 - r.units_granted);
    assert!(broke(&r, "none negative"), "{:?}", r.broken);
    assert!(broke(&r, "no unit reserved twice"), "{:?}", r.broken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_row_lock() {
    let r = play_baseline(baseline::Mode::RowLock).await;
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(r.units_granted, 20);
    assert_eq!(r.answers.get("409 sold_out"), Some(&380), "{:?}", r.answers);
    assert!(r.samples > 0, "the stock was never read during the storm");
    assert_eq!(
        (r.oversold_units, r.negative_stock_seen, r.stock_drift),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_conditional_update() {
    let r = play_baseline(baseline::Mode::Conditional).await;
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(r.units_granted, 20);
    assert_eq!(r.orders.map(|o| (o.rows, o.units)), Some((20, 20)));
    assert_eq!(
        (r.oversold_units, r.negative_stock_seen, r.stock_drift),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_gateway_through_holds_confirms_releases_and_expiry() {
    let app = common::spawn_app().await;
    // Buyers with a limit of 2 asking for 1 or 2 units; 60% pay, 20% give
    // back, the rest walk away and their 2-second holds expire.
    let mut opts = storm(&app.base);
    opts.customers = 200;
    opts.limit = 2;
    opts.max_quantity = 2;
    opts.hold_seconds = 2;
    let r = play(&app.settings, &opts).await.unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(r.units_granted, 20, "{:?}", r.answers);
    assert!(r.max_units_per_customer <= 2);
    assert!(r.samples > 0 && r.samples_not_adding_up == 0);
    // Every check was made: none skipped for want of Postgres or time.
    assert!(
        r.checks.iter().all(|c| c.ok == Some(true)),
        "{:#?}",
        r.checks
    );
    assert!(r.confirmed_units > 0 && r.abandoned_units > 0);
    assert_eq!(r.expired_units, Some(r.abandoned_units));
    assert_eq!(r.final_stock.sold, r.confirmed_units);
    assert_eq!(
        r.orders.map(|o| o.units),
        Some(r.confirmed_units),
        "{:?}",
        r.orders
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flags_a_gateway_whose_counters_were_corrupted() {
    // The same gateway, with one unit more than the sale has, moved into
    // `available` behind its back mid-way: the readings must catch it.
    let app = common::spawn_app().await;
    let mut opts = storm(&app.base);
    opts.confirm_share = 0.0;
    opts.release_share = 0.0;
    opts.hold_seconds = 60;
    opts.requests = 4000;
    opts.concurrency = 32;
    let engine = app.engine.clone();
    let corrupt = tokio::spawn(async move {
        // The sale is created by `play`: once it is loaded (its id enters the
        // registry a moment before), add a phantom unit.
        for _ in 0..400 {
            if let Ok(ids) = engine.sale_ids().await {
                let Some(id) = ids.first() else {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                };
                if engine.sale(id).await.is_ok() {
                    let mut conn = engine.connection();
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg(&engine.keys(id).sale)
                        .arg("available")
                        .arg(1)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the sale never appeared");
    });
    let r = play(&app.settings, &opts).await.unwrap();
    corrupt.await.unwrap();
    assert!(!r.ok(), "a corrupted counter passed: {r:#?}");
    assert!(r.samples_not_adding_up > 0, "{r:#?}");
    assert!(
        broke(&r, "available + held + sold == total"),
        "{:?}",
        r.broken
    );
}
