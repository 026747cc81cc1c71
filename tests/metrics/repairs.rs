//! A script error is a fault of ours: a 500 without Retry-After, counted
//! by op. Apart from the other repairs tests (`tests/api`) because its 500s
//! are the process's: see `tests/metrics/main.rs`.

use redis::AsyncCommands;

use crate::common::*;

/// A script that fails inside Redis (here: a record that is not JSON) is a
/// fault of flashsale, not of Redis being away: 500 `internal` with no
/// Retry-After, logged and counted; a retry would fail again.
#[tokio::test]
async fn a_script_error_is_a_500_without_retry_after() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 600).await;
    let t = app.token("alice");
    let a = app.reserve(&sale, &t, 1).await;
    let rid = a.body["id"].as_str().unwrap().to_string();
    let mut conn = app.engine.connection();
    let _: () = conn
        .hset(
            app.engine.keys(&sale).reservations.clone(),
            &rid,
            "{not json",
        )
        .await
        .unwrap();
    let c = app.confirm(&rid, &t).await;
    c.assert_problem(500, "internal");
    assert_eq!(c.retry_after, None);
    let release = app.release(&rid, &t).await;
    release.assert_problem(500, "internal");
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("flashsale_redis_faults_total{op=\"confirm\"}")),
        "{metrics}"
    );
    // A sale key of the wrong type: also a fault, also 500.
    let broken = unique("s-");
    let _: () = conn
        .set(app.engine.keys(&broken).sale.clone(), "x")
        .await
        .unwrap();
    app.get(&format!("/v1/sales/{broken}"), None)
        .await
        .assert_problem(500, "internal");
}
