//! Failures: a gateway process killed with SIGKILL in the middle of a storm,
//! and a Redis server frozen mid-run. The invariants hold through both, and
//! service comes back without restarting anything else.

use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::redis_server::PrivateRedis;
use crate::common::*;
use futures::stream::{self, StreamExt};

/// The real `flashsale serve` binary, configured like `app`.
fn start_gateway(app: &TestApp, port: u16) -> Child {
    app.command()
        .arg("serve")
        .env("FLASHSALE__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .spawn()
        .expect("the flashsale binary starts")
}

pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_gateway_mid_storm_loses_and_oversells_nothing() {
    let app = spawn_app().await;
    let sale = app.live_sale(2000, 2, 600).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_gateway(&app, port);
    wait_ready(&app.http, &base).await;

    let tokens: Vec<String> = (0..1000).map(|i| app.token(&format!("k{i}"))).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let answered = AtomicUsize::new(0);
    let fire = |range: std::ops::Range<usize>| {
        let (http, base, sale, tokens, answered) = (&http, &base, &sale, &tokens, &answered);
        stream::iter(range)
            .map(move |i| async move {
                let res = http
                    .post(format!("{base}/v1/sales/{sale}/reservations"))
                    .bearer_auth(&tokens[i % 1000])
                    .json(&serde_json::json!({"quantity": 1}))
                    .send()
                    .await;
                answered.fetch_add(1, Ordering::Relaxed);
                match res {
                    Ok(r) => Some(Answer::from(r).await),
                    Err(_) => None, // the process died under this request
                }
            })
            .buffer_unordered(100)
            .collect::<Vec<_>>()
    };

    // Kill the gateway while the storm is in full flow.
    let storm = fire(0..1500);
    let killer = async {
        while answered.load(Ordering::Relaxed) < 400 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().expect("SIGKILL the gateway");
        child.wait().unwrap();
    };
    let (first, ()) = tokio::join!(storm, killer);
    let mut child = start_gateway(&app, port);
    wait_ready(&app.http, &base).await;
    let second = fire(1500..3000).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let answers: Vec<Answer> = first.into_iter().chain(second).flatten().collect();
    let granted: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(
        answers.iter().all(|a| matches!(a.status, 201 | 409)),
        "only holds and honest refusals"
    );
    eprintln!(
        "sigkill: {} answers ({} lost with the killed process), {} holds",
        answers.len(),
        3000 - answers.len(),
        granted.len()
    );
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!(stock.total, 2000);
    assert!(answers.len() < 3000, "the kill landed mid-storm");
    // Every hold a client was told about exists, and no more units are held
    // than were granted plus those whose answer died with the process.
    for a in &granted {
        let rid = a.body["id"].as_str().unwrap();
        app.engine
            .reservation(&sale_id(&sale), &reservation_id(rid), None)
            .await
            .unwrap();
    }
    assert!(stock.held >= granted.len() as i64);
    assert!(stock.held <= 2000);
    let per = app.per_customer(&sale).await;
    assert!(per.values().all(|&u| u <= 2), "{per:?}");
    assert_eq!(per.values().sum::<i64>(), stock.held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_redis_gives_prompt_503s_and_service_resumes() {
    let redis = PrivateRedis::start();
    let app = TestApp::builder()
        .on(&redis)
        .settings(|s| s.redis.timeout_ms = 250)
        .spawn()
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/readyz", None).await.status != 200 {
        assert!(Instant::now() < deadline, "private redis never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sale = app.live_sale(100, 100, 600).await;
    let t = app.token("steady");
    assert_eq!(app.reserve(&sale, &t, 1).await.status, 201);

    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let frozen = futures::future::join_all((0..50).map(|_| app.reserve(&sale, &t, 1))).await;
    let took = started.elapsed();
    for a in &frozen {
        a.assert_problem(503, "unavailable");
        assert!(a.retry_after.is_some());
    }
    assert!(took < Duration::from_secs(2), "503s took {took:?}");
    app.wait_readiness(503, Duration::from_secs(3)).await;

    redis.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        let a = app.reserve(&sale, &t, 1).await;
        if a.status == 201 {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "service never resumed: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resumed.body["status"], "held");
    // A frozen request may still have run once Redis woke up (its answer was
    // already a 503): the counters add up either way, and every held unit is
    // a recorded hold of this customer.
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!(app.per_customer(&sale).await["steady"], stock.held);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let app = spawn_app().await;
    let sale = app.live_sale(50, 50, 600).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_gateway(&app, port);
    wait_ready(&app.http, &base).await;
    let t = app.token("patient");
    let url = format!("{base}/v1/sales/{sale}/reservations");
    let inflight = futures::future::join_all((0..20).map(|_| {
        app.http
            .post(&url)
            .bearer_auth(&t)
            .json(&serde_json::json!({"quantity": 1}))
            .send()
    }));
    let term = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(send_signal(child.id(), libc::SIGTERM));
    };
    let (answers, ()) = tokio::join!(inflight, term);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    // Every request that got an answer was a hold, and every hold is counted.
    let holds = answers
        .into_iter()
        .filter_map(Result::ok)
        .filter(|r| r.status() == 201)
        .count() as i64;
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert!(stock.held >= holds);
}
