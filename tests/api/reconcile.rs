//! On-call tooling against drift made on purpose, rebuilds under load, and
//! the sales file: through the real `flashsale` binary, as on-call runs it.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use futures::stream::{self, StreamExt};
use redis::AsyncCommands;

async fn hold(app: &TestApp, sale: &str, who: &str) -> (String, String) {
    let t = app.token(who);
    let a = app.reserve(sale, &t, 1).await;
    assert_eq!(a.status, 201, "{}", a.body);
    (a.body["id"].as_str().unwrap().to_string(), t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_kind_of_drift_is_named_and_repaired() {
    let app = TestApp::builder().without_worker().spawn().await;
    let sale = app.live_sale(50, 5, 1).await;
    assert_eq!(app.drift(&sale), (0, vec![]));

    // Confirmed orders with no worker running: they wait in the outbox.
    for i in 0..3 {
        let (rid, t) = hold(&app, &sale, &format!("payer-{i}")).await;
        assert_eq!(app.confirm(&rid, &t).await.status, 200);
    }
    // Holds past their deadline with no reaper running.
    for i in 0..2 {
        hold(&app, &sale, &format!("walker-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (code, kinds) = app.drift(&sale);
    assert_eq!(code, 1);
    assert!(
        kinds.contains(&"orders_not_in_postgres".into()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"holds_not_reaped".into()), "{kinds:?}");

    // A corrupted counter.
    let mut conn = app.engine.connection();
    let _: () = conn
        .hset(app.engine.keys(&sale).sale.clone(), "available", 999)
        .await
        .unwrap();
    let (code, kinds) = app.drift(&sale);
    assert_eq!(code, 1);
    assert!(
        kinds.contains(&"counters_do_not_add_up".into()),
        "{kinds:?}"
    );

    let applied = app.run(&["reconcile", "--apply"]);
    let text = String::from_utf8_lossy(&applied.stdout);
    assert_eq!(applied.status.code(), Some(0), "{text}");
    assert!(text.contains("flushed 3 orders"), "{text}");
    assert!(text.contains("returned 2 overdue holds"), "{text}");
    assert!(text.contains("recounted"), "{text}");
    assert_eq!(app.drift(&sale), (0, vec![]));
    let stock = app.stock(&sale).await;
    assert_eq!(
        (stock.total, stock.available, stock.held, stock.sold),
        (50, 47, 0, 3)
    );
    assert_eq!(app.orders(&sale).await, (3, 3, 3));

    // The sale's keys deleted (Redis lost them): named, then rebuilt.
    let keys = app.engine.keys(&sale);
    let _: () = conn.del(&keys.all()[..]).await.unwrap();
    let (code, kinds) = app.drift(&sale);
    assert_eq!((code, kinds), (1, vec!["missing_in_redis".to_string()]));
    let rebuilt = app.run(&["reconcile", "--rebuild", "--sale", &sale]);
    assert_eq!(
        rebuilt.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert_eq!(app.drift(&sale), (0, vec![]));
    let stock = app.stock(&sale).await;
    assert_eq!(
        (stock.total, stock.available, stock.held, stock.sold),
        (50, 47, 0, 3)
    );
    // Confirmed purchases still count against the customer's limit.
    assert_eq!(app.per_customer(&sale).await.get("payer-0"), Some(&1));
}

#[tokio::test]
async fn an_unreachable_service_is_exit_2_naming_the_url() {
    let app = TestApp::builder().without_worker().spawn().await;
    let out = app
        .command()
        .args(["reconcile"])
        .env(
            "FLASHSALE__DATABASE__URL",
            "postgres://postgres:secret@127.0.0.1:1/nowhere",
        )
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database.url") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password is not printed");
}

/// After Redis lost a sale, a rebuild restores sold from Postgres; a storm
/// then never gets more than total - sold, and a hold from before the loss
/// cannot be confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_after_a_rebuild_never_sells_more_than_total_minus_sold() {
    let app = spawn_app().await;
    let sale = app.live_sale(100, 1, 600).await;
    for i in 0..30 {
        let (rid, t) = hold(&app, &sale, &format!("early-{i}")).await;
        assert_eq!(app.confirm(&rid, &t).await.status, 200);
    }
    let (lost_hold, lost_token) = hold(&app, &sale, "loser").await;
    app.wait_for_orders(&sale, 30, 10).await;

    let mut conn = app.engine.connection();
    let _: () = conn.del(&app.engine.keys(&sale).all()[..]).await.unwrap();
    let out = app.run(&["reconcile", "--rebuild", "--sale", &sale]);
    assert_eq!(out.status.code(), Some(0));
    let stock = app.stock(&sale).await;
    assert_eq!((stock.available, stock.held, stock.sold), (70, 0, 30));

    let a = app.confirm(&lost_hold, &lost_token).await;
    assert!(matches!(a.status, 404 | 410), "{}", a.body);
    let granted: usize = stream::iter(0..2000)
        .map(|i| {
            let app = &app;
            let sale = &sale;
            async move {
                app.reserve(sale, &app.token(&format!("storm-{i}")), 1)
                    .await
                    .status
            }
        })
        .buffer_unordered(200)
        .filter(|s| std::future::ready(*s == 201))
        .count()
        .await;
    assert_eq!(granted, 70, "exactly total - sold");
    // The customers who bought before the loss are still at their limit.
    app.reserve(&sale, &app.token("early-0"), 1)
        .await
        .assert_problem(409, "sold_out");
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!((stock.held, stock.sold), (70, 30));
}

/// A rebuild run in the middle of a storm of reserves and confirms: no
/// moment at which more than the stock is sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_during_a_storm_never_oversells() {
    let app = spawn_app().await;
    let sale = app.live_sale(1000, 1, 600).await;
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let buyers = stream::iter(0..3000)
        .map(|i| {
            let (app, sale, answered) = (&app, &sale, &answered);
            async move {
                let t = app.token(&format!("b{i}"));
                let a = app.reserve(sale, &t, 1).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if a.status != 201 {
                    return None;
                }
                let rid = a.body["id"].as_str().unwrap().to_string();
                let c = app.confirm(&rid, &t).await;
                assert!(matches!(c.status, 200 | 404 | 410), "{}", c.body);
                (c.status == 200).then_some(rid)
            }
        })
        .buffer_unordered(100)
        .filter_map(std::future::ready)
        .collect::<HashSet<String>>();
    let rebuild = async {
        while answered.load(std::sync::atomic::Ordering::Relaxed) < 300 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Its own thread: the storm goes on while the rebuild runs.
        let mut cmd = app.command();
        cmd.args(["reconcile", "--rebuild", "--sale", &sale])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let started_at = answered.load(std::sync::atomic::Ordering::Relaxed);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        crate::common::assert_exit(&out, 0);
        (
            started_at,
            answered.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let (confirmed, at) = tokio::join!(buyers, rebuild);
    eprintln!(
        "rebuild ran from answer {} to {} of 3000; {} confirmed",
        at.0,
        at.1,
        confirmed.len()
    );
    assert!(at.1 > at.0, "the storm went on during the rebuild");
    assert!(
        confirmed.len() <= 1000,
        "{} orders for 1000 units",
        confirmed.len()
    );
    let (rows, distinct, units) = app.wait_for_orders(&sale, confirmed.len() as i64, 20).await;
    assert_eq!(
        (rows, distinct),
        (confirmed.len() as i64, confirmed.len() as i64)
    );
    assert!(units <= 1000);
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!(stock.total, 1000);
    assert_eq!(
        stock.sold, units,
        "Redis and Postgres agree on what was sold"
    );
    assert_eq!(app.drift(&sale).0, 0);
}

#[tokio::test]
async fn a_sales_file_loads_all_or_nothing_and_twice_changes_nothing() {
    let app = TestApp::builder().without_worker().spawn().await;
    let dir = std::env::temp_dir().join(unique("sales-"));
    std::fs::create_dir_all(&dir).unwrap();
    let sale = |id: &str, stock: i64| {
        format!(
            "[[sale]]\nid = \"{id}\"\nsku = \"SKU-{id}\"\nname = \"Sale {id}\"\nprice_cents = 1000\n\
             currency = \"IDR\"\nstock = {stock}\nstarts_at = 2026-01-01T00:00:00Z\n\
             ends_at = \"2099-01-01T00:00:00Z\"\nper_customer_limit = 2\nhold_seconds = 600\n\n"
        )
    };
    let (a, b, c) = (unique("a-"), unique("b-"), unique("c-"));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, sale(&a, 10) + &sale(&b, -1) + &sale(&c, 5)).unwrap();
    let out = app.run(&["sales", "load", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("sale #2 ({b})")) && err.contains("stock"),
        "{err}"
    );
    assert!(err.contains("nothing loaded"), "{err}");
    assert_eq!(
        app.get("/v1/sales", None).await.body["sales"],
        serde_json::json!([])
    );

    let good = dir.join("good.toml");
    std::fs::write(&good, sale(&a, 10) + &sale(&c, 5)).unwrap();
    let dry = app.run(&["sales", "load", "--dry-run", good.to_str().unwrap()]);
    assert_eq!(dry.status.code(), Some(0));
    assert_eq!(
        app.get("/v1/sales", None).await.body["sales"],
        serde_json::json!([])
    );
    let first = app.run(&["sales", "load", good.to_str().unwrap()]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("2 created"));
    hold(&app, &a, "early-bird").await;
    let second = app.run(&["sales", "load", good.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0));
    assert!(text.contains("0 created, 2 unchanged"), "{text}");
    let stock = app.stock(&a).await;
    assert_eq!(
        (stock.available, stock.held),
        (9, 1),
        "the second load touched nothing"
    );

    let list = app.run(&["sales", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&a) && l.contains(" live ") && l.contains(" 9 ")),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
