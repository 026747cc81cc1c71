//! The edge against a hostile crowd: half-open connections, connection caps,
//! floods of public reads, streams that stop reading.
//!
//! Loopback has a whole /8: clients bind 127.0.0.2, 127.0.0.3, ... to come
//! from other addresses than the attacker on 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::common::redis_server::PrivateRedis;
use crate::common::*;
use futures::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn addr_of(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

async fn try_connect_from(
    from: &str,
    to: SocketAddr,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(to).await
}

async fn connect_from(from: &str, to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    try_connect_from(from, to, rcvbuf).await.unwrap()
}

/// A client whose connections come from `from`.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Whether the server closes the connection (EOF or reset) within `wait`.
/// Data before the close is skipped.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// One full request on a fresh connection; the status, or None when the
/// server closed it without an answer.
async fn probe(from: &str, to: SocketAddr) -> Option<u16> {
    let mut s = try_connect_from(from, to, None).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut text))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&text);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

const HALF: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_capped_per_address_and_closed_after_the_header_timeout() {
    let timeout = Duration::from_millis(2000);
    let app = spawn_app_with(|s| {
        s.http.max_connections_per_ip = 20;
        s.http.header_timeout_ms = timeout.as_millis() as u64;
    })
    .await;
    let to = addr_of(&app);
    let other = client_from("127.0.0.2");
    assert_eq!(probe("127.0.0.2", to).await, Some(200));

    // The attacker: 40 connections from 127.0.0.1 that never end their headers.
    let opened = Instant::now();
    let mut attack = Vec::new();
    for _ in 0..40 {
        let mut s = connect_from("127.0.0.1", to, None).await;
        s.write_all(HALF).await.unwrap();
        attack.push(s);
    }
    let first = join_all(attack.into_iter().map(|mut s| async move {
        let closed = closed_within(&mut s, Duration::from_millis(300)).await;
        (closed, s)
    }))
    .await;
    let (closed, held): (Vec<_>, Vec<_>) = first.into_iter().partition(|(c, _)| *c);
    assert!(
        closed.len() >= 20 && held.len() >= 15,
        "{} closed at once, {} held (cap 20)",
        closed.len(),
        held.len()
    );

    // Someone else is served meanwhile, on a kept-alive connection too.
    for _ in 0..3 {
        let res = other.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let served_at = opened.elapsed();
    assert!(
        served_at < timeout,
        "the other client was served only after {served_at:?}"
    );
    let text = other
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&text, "flashsale_connections_refused_total{cap=\"per_ip\"}") >= 20.0);

    // The held ones are closed by the server once the header timeout passed.
    let ends = join_all(held.into_iter().map(|(_, mut s)| async move {
        let closed = closed_within(&mut s, Duration::from_secs(10)).await;
        (closed, opened.elapsed())
    }))
    .await;
    for (closed, at) in ends {
        assert!(closed, "a half-open connection was never closed");
        assert!(
            at >= timeout / 2 && at < timeout + Duration::from_secs(4),
            "closed after {at:?} (timeout {timeout:?})"
        );
    }

    // An idle kept-alive connection: closed the same time after its answer.
    let mut idle = connect_from("127.0.0.3", to, None).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
    let idle_for = answered.elapsed();
    assert!(
        idle_for >= timeout / 2 && idle_for < timeout + Duration::from_secs(4),
        "idle connection closed after {idle_for:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_open_file_limit_is_refused_and_the_gateway_recovers_by_itself() {
    // The real binary, under an open-file limit of 256 (hard too, so it
    // cannot raise it): its connection cap is lowered to fit, the flood is
    // refused at the door, and its log shows no accept-error loop.
    let app = spawn_app().await;
    let port = free_port();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_path = std::env::temp_dir().join(unique("flashsale-flood-") + ".log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = app.command();
    cmd.arg("serve")
        .arg("--no-worker")
        .env("FLASHSALE__HTTP__ADDR", to.to_string())
        .env("FLASHSALE__HTTP__HEADER_TIMEOUT_MS", "1500")
        .env("RUST_LOG", "info")
        .stderr(log.try_clone().unwrap())
        .stdout(log);
    // SAFETY: setrlimit is async-signal-safe and touches only this child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut gateway = KillOnDrop(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe("127.0.0.9", to).await != Some(200) {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 300 half-open connections from four addresses (75 each: under the
    // per-address cap, far over what 256 descriptors hold).
    let started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..300 {
        let from = format!("127.0.0.{}", 2 + i % 4);
        let mut s = connect_from(&from, to, None).await;
        let _ = s.write_all(HALF).await;
        flood.push(s);
    }
    let first = join_all(flood.into_iter().map(|mut s| async move {
        let closed = closed_within(&mut s, Duration::from_millis(300)).await;
        (closed, s)
    }))
    .await;
    let refused = first.iter().filter(|(c, _)| *c).count();
    assert!(refused >= 100, "only {refused} of 300 refused");
    // Full now: a newcomer is closed at once, not left hanging.
    assert_eq!(probe("127.0.0.9", to).await, None);

    // Once the header timeout frees the places, a fresh connection is served.
    let mut served = None;
    while started.elapsed() < Duration::from_secs(10) {
        if probe("127.0.0.9", to).await == Some(200) {
            served = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let served = served.expect("the gateway never served again");
    assert!(
        served >= Duration::from_millis(700),
        "served after {served:?}"
    );
    drop(first);
    let elapsed = started.elapsed();

    assert!(crate::common::send_signal(gateway.0.id(), libc::SIGTERM));
    let stopping = Instant::now();
    loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            assert!(status.success(), "exit {status:?}");
            break;
        }
        assert!(stopping.elapsed() < Duration::from_secs(15), "no drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        text.contains("lowered"),
        "the cap was not fitted under the limit:\n{text}"
    );
    let accept_errors = text.lines().filter(|l| l.contains("accept error")).count();
    assert!(accept_errors <= 2, "accept errors logged:\n{text}");
    let refusals = text
        .lines()
        .filter(|l| l.contains("connection over a cap"))
        .count();
    assert!(
        (1..=elapsed.as_secs() as usize + 2).contains(&refusals),
        "{refusals} refusal lines in {elapsed:?}:\n{text}"
    );
}

/// Creates `n` live sales (16 at a time), starting at `starts(i)`.
async fn create_sales(app: &TestApp, n: usize, starts: impl Fn(usize) -> String) -> Vec<String> {
    let bodies: Vec<(String, Value)> = (0..n)
        .map(|i| {
            let id = unique(&format!("p{i:03}-"));
            let mut body = live_sale(&id, 100, 2, 600);
            body["starts_at"] = json!(starts(i));
            (id, body)
        })
        .collect();
    for chunk in bodies.chunks(16) {
        for a in join_all(chunk.iter().map(|(_, b)| app.create_sale(b))).await {
            assert_eq!(a.status, 201, "{}", a.body);
        }
    }
    bodies.into_iter().map(|(id, _)| id).collect()
}

fn minutes_ago(m: usize) -> String {
    flashsale::domain::rfc3339_ms(
        time::OffsetDateTime::now_utc() - Duration::from_secs(60 * (m as u64 + 1)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_list_is_paginated_and_a_walk_sees_every_sale_once() {
    let app = spawn_app().await;
    // Seven start times shared by many sales: the order breaks ties by id.
    let base = minutes_ago(0);
    let ids = create_sales(&app, 230, |i| {
        if i % 3 == 0 {
            base.clone()
        } else {
            minutes_ago(i % 7)
        }
    })
    .await;

    let first = app.get("/v1/sales", None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["sales"].as_array().unwrap().len(), 100);
    assert!(first.body["next_cursor"].is_string());

    let mut seen = Vec::new();
    let mut order = Vec::new();
    let mut path = "/v1/sales?limit=100".to_string();
    let mut pages = 0;
    loop {
        let page = app.get(&path, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        pages += 1;
        for s in page.body["sales"].as_array().unwrap() {
            seen.push(s["id"].as_str().unwrap().to_string());
            order.push((
                time::OffsetDateTime::parse(
                    s["starts_at"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap(),
                s["id"].as_str().unwrap().to_string(),
            ));
        }
        match page.body.get("next_cursor") {
            None => break,
            Some(c) => {
                path = format!("/v1/sales?limit=100&cursor={}", c.as_str().unwrap());
            }
        }
        assert!(pages < 10, "the walk does not end");
    }
    assert_eq!(pages, 3);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "pages come in one order");
    let mut unique_seen = seen.clone();
    unique_seen.sort();
    unique_seen.dedup();
    assert_eq!(unique_seen.len(), seen.len(), "a sale seen twice");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(unique_seen, expected, "every sale, exactly once");

    let all = app.get("/v1/sales?limit=500", None).await;
    assert_eq!(all.body["sales"].as_array().unwrap().len(), 230);
    assert!(all.body.get("next_cursor").is_none());
    for bad in [
        "/v1/sales?limit=0",
        "/v1/sales?limit=501",
        "/v1/sales?limit=ten",
        "/v1/sales?cursor=garbage",
        "/v1/sales?cursor=12.NOT%20AN%20ID",
    ] {
        app.get(bad, None)
            .await
            .assert_problem(422, "invalid_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_public_reads_gets_429s_and_costs_redis_per_sale_not_per_request() {
    let redis = PrivateRedis::start();
    // No worker: its reaper's scripts would blur the count of script calls.
    let app = TestApp::builder()
        .without_worker()
        .on(&redis)
        .settings(|s| {
            s.limits.enabled = true;
            s.limits.per_customer_per_second = 1_000_000;
            s.limits.per_customer_burst = 1_000_000;
            s.limits.per_ip_per_second = 1_000_000;
            s.limits.per_ip_burst = 1_000_000;
            s.limits.public_per_ip_per_second = 50;
            s.limits.public_per_ip_burst = 100;
        })
        .spawn()
        .await;
    let ids = create_sales(&app, 200, minutes_ago).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let scripts_before = redis.calls("evalsha").await;
    let registry_before = redis.calls("smembers").await;
    let started = Instant::now();
    let flood_for = Duration::from_secs(3);
    let attacker = client_from("127.0.0.1");
    let flood = join_all((0..16).map(|w| {
        let (app, ids, attacker) = (&app, &ids, &attacker);
        async move {
            let mut answers = Vec::new();
            let mut i = w;
            while started.elapsed() < flood_for {
                let path = if i % 2 == 0 {
                    "/v1/sales?limit=500".to_string()
                } else {
                    format!("/v1/sales/{}", ids[i % ids.len()])
                };
                i += 1;
                let res = attacker.get(app.url(&path)).send().await.unwrap();
                answers.push((i % 2 == 1, Answer::from(res).await));
            }
            answers
        }
    }));
    // A reader from another address, well below the limit, is served.
    let neighbour = async {
        let client = client_from("127.0.0.2");
        let mut statuses = Vec::new();
        while started.elapsed() < flood_for {
            for path in ["/v1/sales".to_string(), format!("/v1/sales/{}", ids[7])] {
                statuses.push(client.get(app.url(&path)).send().await.unwrap().status());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        statuses
    };
    let (flood, neighbour) = tokio::join!(flood, neighbour);
    let elapsed = started.elapsed();
    let scripts = redis.calls("evalsha").await - scripts_before;
    let registry = redis.calls("smembers").await - registry_before;

    let answers: Vec<_> = flood.into_iter().flatten().collect();
    let limited: Vec<_> = answers.iter().filter(|(_, a)| a.status == 429).collect();
    let lists_served = answers
        .iter()
        .filter(|(list, a)| *list && a.status == 200)
        .count();
    assert!(
        limited.len() > answers.len() / 2,
        "{} of {} answers were 429",
        limited.len(),
        answers.len()
    );
    for (_, a) in &limited {
        a.assert_problem(429, "rate_limited");
        assert!(a.retry_after.is_some());
    }
    assert!(answers
        .iter()
        .all(|(_, a)| a.status == 200 || a.status == 429));
    assert!(neighbour.iter().all(|s| *s == 200), "{neighbour:?}");

    // One read per sale per 100 ms however many requests: the bound is sales
    // times the intervals of the flood (+2 for the edges).
    let intervals = elapsed.as_millis() as u64 / 100 + 2;
    let bound = ids.len() as u64 * intervals;
    let neighbour_lists = neighbour.len() as u64 / 2;
    let per_request = (lists_served as u64 + neighbour_lists) * ids.len() as u64;
    assert!(
        per_request > bound,
        "the flood was too small to tell ({per_request} <= {bound})"
    );
    assert!(
        scripts <= bound,
        "{scripts} script calls for {} requests in {elapsed:?} (bound {bound})",
        answers.len()
    );
    assert!(registry <= intervals, "{registry} registry reads");
    eprintln!(
        "{} requests ({} 429), {scripts} script calls, {registry} registry reads in {elapsed:?}",
        answers.len(),
        limited.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_have_their_own_cap_and_one_that_stops_reading_is_dropped() {
    let app = spawn_app_with(|s| {
        s.http.max_streams = 2;
        s.http.send_timeout_ms = 1000;
    })
    .await;
    let sale = app.live_sale(100_000, 100_000, 600).await;
    let url = app.url(&format!("/v1/sales/{sale}/stream"));
    let open = |from: &'static str| {
        let url = url.clone();
        async move {
            let client = client_from(from);
            let mut res = client.get(&url).send().await.unwrap();
            if res.status() == 200 {
                // The first event arrives at once.
                let chunk = tokio::time::timeout(Duration::from_secs(5), res.chunk())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert!(String::from_utf8_lossy(&chunk).contains("event: stock"));
            }
            (client, res)
        }
    };
    let (_c1, s1) = open("127.0.0.1").await;
    assert_eq!(s1.status(), 200);

    // A reader that stops reading: a tiny receive buffer, never read.
    let mut stalled = connect_from("127.0.0.3", addr_of(&app), Some(1024)).await;
    stalled
        .write_all(format!("GET /v1/sales/{sale}/stream HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Two streams are open: a third is refused with a problem.
    let (_c3, s3) = open("127.0.0.2").await;
    assert_eq!(s3.status(), 503);
    Answer::from(s3).await.assert_problem(503, "unavailable");

    // Stock changes: an event every 100 ms, which the stalled reader never
    // takes. Once its window is full and the send timeout passed, it goes.
    let buyer = app.token("buyer");
    let started = Instant::now();
    let mut dropped = false;
    while started.elapsed() < Duration::from_secs(40) {
        assert_eq!(app.reserve(&sale, &buyer, 1).await.status, 201);
        let text = app.metrics_text().await;
        if metric(
            &text,
            "flashsale_connections_dropped_total{why=\"send_stalled\"}",
        ) >= 1.0
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped, "the stalled stream was never dropped");
    eprintln!("stalled stream dropped after {:?}", started.elapsed());
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);

    // Its place is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_c, s) = open("127.0.0.2").await;
        if s.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Shutdown ends the open streams: the drain does not wait for them.
    let stopping = Instant::now();
    app.shutdown().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with streams open",
        stopping.elapsed()
    );
    drop(s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_reads_its_own_writes_through_a_warm_shared_view() {
    let app = spawn_app().await;
    let sale = app.live_sale(1000, 1000, 600).await;
    // Another address keeps the view of the sale warm all along.
    let warm = async {
        let other = client_from("127.0.0.2");
        for _ in 0..100 {
            let res = other
                .get(app.url(&format!("/v1/sales/{sale}")))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let writer = async {
        let t = app.token("writer");
        let mut rids = Vec::new();
        for held in 1..=20 {
            let a = app.reserve(&sale, &t, 1).await;
            assert_eq!(a.status, 201, "{}", a.body);
            rids.push(a.body["id"].as_str().unwrap().to_string());
            let view = app.get(&format!("/v1/sales/{sale}"), None).await;
            assert_eq!(view.body["stock"]["held"], held, "{}", view.body);
        }
        let released = app.release(&rids[0], &t).await;
        assert_eq!(released.status, 200);
        let view = app.get(&format!("/v1/sales/{sale}"), None).await;
        assert_eq!(view.body["stock"]["held"], 19);
        let confirmed = app.confirm(&rids[1], &t).await;
        assert_eq!(confirmed.status, 200);
        let list = app.get("/v1/sales", None).await;
        assert_eq!(list.body["sales"][0]["stock"]["sold"], 1);
        // A sale created now is in the next list at once.
        let fresh = app.live_sale(5, 1, 60).await;
        let list = app.get("/v1/sales", None).await;
        let ids: Vec<&str> = list.body["sales"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&fresh.as_str()), "{ids:?}");
    };
    tokio::join!(warm, writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dribbled_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let timeout = Duration::from_millis(1000);
    let app = spawn_app_with(|s| s.http.header_timeout_ms = timeout.as_millis() as u64).await;
    let sale = app.live_sale(10, 10, 600).await;
    let token = app.token("dribbler");
    let body = format!("{{\"quantity\": 1{}}}", " ".repeat(80));
    let mut s = connect_from("127.0.0.1", addr_of(&app), None).await;
    let head = format!(
        "POST /v1/sales/{sale}/reservations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 200 ms: the whole body would take ~19 s.
    let (mut rd, mut wr) = s.into_split();
    let dribble = tokio::spawn(async move {
        for b in body.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let took = started.elapsed();
    dribble.abort();
    assert!(read.is_ok(), "no answer while the body dribbled in");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 422"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(
        took >= timeout / 2 && took < timeout + Duration::from_secs(4),
        "answered after {took:?}"
    );
    // Nothing was reserved.
    assert_eq!(app.stock(&sale).await.held, 0);
}
