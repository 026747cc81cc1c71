//! Surviving the spike: rate limits answer 429 with Retry-After while others
//! are served; a dead Redis gives prompt 503s and service comes back by
//! itself; a sold-out sale is answered from memory, without Redis.

use std::time::{Duration, Instant};

use crate::common::redis_server::PrivateRedis;
use crate::common::*;
use futures::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_greedy_customer_gets_429s_while_another_is_served() {
    let app = spawn_app_with(|s| {
        s.limits.enabled = true;
        // One unit a second refills: a slow machine's storm still lets
        // few extra requests through.
        s.limits.per_customer_per_second = 1;
        s.limits.per_customer_burst = 10;
        s.limits.per_ip_per_second = 100_000;
        s.limits.per_ip_burst = 100_000;
    })
    .await;
    let sale = app.live_sale(100_000, 100_000, 600).await;
    let greedy = app.token("greedy");
    let polite = app.token("polite");
    let (storm, others) = tokio::join!(
        join_all((0..2000).map(|_| app.reserve(&sale, &greedy, 1))),
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            join_all((0..3).map(|_| app.reserve(&sale, &polite, 1))).await
        }
    );
    let held = storm.iter().filter(|a| a.status == 201).count();
    let limited: Vec<_> = storm.iter().filter(|a| a.status == 429).collect();
    assert!((10..=20).contains(&held), "{held} holds got through");
    assert_eq!(held + limited.len(), 2000, "only holds and 429s");
    for a in &limited {
        a.assert_problem(429, "rate_limited");
        let secs: u64 = a.retry_after.as_deref().unwrap().parse().unwrap();
        assert!((1..=2).contains(&secs));
    }
    for a in &others {
        assert_eq!(a.status, 201, "the polite customer is served: {}", a.body);
    }
    // Confirm counts against the same budget, and tells the same story. The
    // storm may have ended a while ago: use up what refilled since, then
    // confirm at once. A refill between the two is possible, hence retries.
    let rid = storm.iter().find(|a| a.status == 201).unwrap().body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut refused = false;
    for _ in 0..5 {
        loop {
            let a = app.reserve(&sale, &greedy, 1).await;
            if a.status == 429 {
                break;
            }
            assert_eq!(a.status, 201, "{}", a.body);
        }
        let c = app.confirm(&rid, &greedy).await;
        if c.status == 429 {
            c.assert_problem(429, "rate_limited");
            refused = true;
            break;
        }
        assert_eq!(c.status, 200, "{}", c.body);
    }
    assert!(
        refused,
        "a confirm over the customer's budget was let through"
    );
    let text = app.metrics_text().await;
    assert!(text.contains("flashsale_reservations_total{outcome=\"rate_limited\"}"));
}

#[tokio::test]
async fn addresses_behind_a_trusted_proxy_get_their_own_budget() {
    let app = spawn_app_with(|s| {
        s.limits.enabled = true;
        s.limits.per_customer_per_second = 100_000;
        s.limits.per_customer_burst = 100_000;
        s.limits.per_ip_per_second = 1;
        s.limits.per_ip_burst = 3;
        s.limits.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let sale = app.live_sale(1000, 1000, 600).await;
    let send = |ip: &'static str| {
        let (app, sale) = (&app, &sale);
        async move {
            let res = app
                .http
                .post(app.url(&format!("/v1/sales/{sale}/reservations")))
                .bearer_auth(app.token("shopper"))
                .header("x-forwarded-for", format!("203.0.113.7, {ip}"))
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap();
            Answer::from(res).await.status
        }
    };
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(send("198.51.100.1").await);
    }
    assert_eq!(first, vec![201, 201, 201, 429, 429]);
    assert_eq!(
        send("198.51.100.2").await,
        201,
        "another address, another budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sold_out_sale_is_answered_without_redis_until_stock_returns() {
    let redis = PrivateRedis::start();
    // No worker: its reaper's scripts would blur the count of script calls.
    let app = TestApp::builder().without_worker().on(&redis).spawn().await;
    let sale = app.live_sale(5, 5, 600).await;
    let t = app.token("first");
    let hold = app.reserve(&sale, &t, 5).await;
    assert_eq!(hold.status, 201);
    app.reserve(&sale, &app.token("second"), 1)
        .await
        .assert_problem(409, "sold_out");

    let before = redis.calls("evalsha").await;
    let losers = join_all((0..1000).map(|i| {
        let token = app.token(&format!("loser-{i}"));
        let (app, sale) = (&app, &sale);
        async move { app.reserve(sale, &token, 1).await }
    }))
    .await;
    for a in &losers {
        a.assert_problem(409, "sold_out");
    }
    let after = redis.calls("evalsha").await;
    assert_eq!(after, before, "1000 sold-out answers cost no script call");

    // Another gateway on the same Redis releases the hold: this one learns
    // of the returned stock within 100 ms.
    let other = TestApp::builder()
        .beside(&app)
        .without_worker()
        .spawn()
        .await;
    let released = other.release(hold.body["id"].as_str().unwrap(), &t).await;
    assert_eq!(released.status, 200);
    let since = Instant::now();
    let buyer = app.token("late-buyer");
    loop {
        let a = app.reserve(&sale, &buyer, 1).await;
        if a.status == 201 {
            break;
        }
        a.assert_problem(409, "sold_out");
        assert!(
            since.elapsed() < Duration::from_millis(150),
            "still sold out {:?} after stock came back",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("stock seen again after {:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_redis_gives_prompt_503s_and_service_resumes_without_restart() {
    let mut redis = PrivateRedis::start();
    let app = TestApp::builder()
        .on(&redis)
        .settings(|s| s.redis.timeout_ms = 300)
        .spawn()
        .await;
    let sale = app.live_sale(10, 10, 600).await;
    let t = app.token("steady");
    assert_eq!(app.reserve(&sale, &t, 1).await.status, 201);

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let a = app.reserve(&sale, &t, 1).await;
        a.assert_problem(503, "unavailable");
        assert!(a.retry_after.is_some());
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "took {:?}",
            started.elapsed()
        );
    }
    app.wait_readiness(503, Duration::from_secs(3)).await;

    // Back, empty (no persistence): the gateway reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/readyz", None).await.status != 200 {
        assert!(Instant::now() < deadline, "the gateway never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = app.live_sale(3, 3, 600).await;
    assert_eq!(app.reserve(&fresh, &t, 1).await.status, 201);
    // The lost sale is gone from Redis: an honest 404, not a 500.
    app.reserve(&sale, &t, 1)
        .await
        .assert_problem(404, "sale_not_found");
}
