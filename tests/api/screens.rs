//! What buyers and on-call see: the live stock stream, server time, the
//! OpenAPI document, CORS, and the two pages driven in a real (headless)
//! Chromium.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::redis_server::PrivateRedis;
use crate::common::*;
use crate::helpers::browser::Browser;
use flashsale::domain::rfc3339_ms;
use serde_json::{json, Value};

/// Reads one SSE stream until `done` says so (or `within` passes); returns the
/// `stock` events' data in order.
async fn read_events(
    http: &reqwest::Client,
    url: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<(Instant, Value)> {
    let res = http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut res = res;
    let (mut buf, mut events) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, res.chunk()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                assert!(block.contains("event: stock"), "{block}");
                let v: Value = serde_json::from_str(data).unwrap();
                let stop = done(&v);
                events.push((Instant::now(), v));
                if stop {
                    return events;
                }
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_streams_see_sold_out_within_a_second_on_one_poller() {
    let redis = PrivateRedis::start();
    // No worker: its scripts would blur the count of the pollers' calls.
    let app = TestApp::builder().without_worker().on(&redis).spawn().await;
    let sale = app.live_sale(50, 1, 600).await;
    let url = app.url(&format!("/v1/sales/{sale}/stream"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let connected = AtomicUsize::new(0);
    let streams = futures::future::join_all((0..1000).map(|_| {
        let (http, url, connected) = (&http, &url, &connected);
        async move {
            let first_seen = std::sync::atomic::AtomicBool::new(false);
            read_events(http, url, Duration::from_secs(20), |v| {
                if !first_seen.swap(true, Ordering::SeqCst) {
                    connected.fetch_add(1, Ordering::SeqCst);
                }
                v["status"] == "sold_out"
            })
            .await
        }
    }));
    let storm = async {
        while connected.load(Ordering::SeqCst) < 1000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let calls_before = redis.calls("evalsha").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_calls = redis.calls("evalsha").await - calls_before;
        // One poller for the sale (10 reads a second), not one per browser.
        assert!(
            idle_calls <= 15,
            "{idle_calls} script calls in an idle second"
        );
        let answers = futures::future::join_all((0..300).map(|i| {
            let (app, sale) = (&app, &sale);
            async move {
                (
                    app.reserve(sale, &app.token(&format!("s{i}")), 1)
                        .await
                        .status,
                    Instant::now(),
                )
            }
        }))
        .await;
        // The last unit went at the latest when the last 201 came back.
        answers
            .iter()
            .filter(|(s, _)| *s == 201)
            .map(|(_, t)| *t)
            .max()
            .unwrap()
    };
    let (events, sold_out_at) = tokio::join!(streams, storm);
    for e in &events {
        let (seen_at, last) = e.last().unwrap();
        assert_eq!(last["status"], "sold_out", "{last}");
        assert_eq!(last["stock"]["available"], 0);
        let lag = seen_at.saturating_duration_since(sold_out_at);
        assert!(
            lag < Duration::from_secs(1),
            "saw sold_out {lag:?} after the last unit"
        );
        // Milliseconds in server_time, and events in order.
        assert!(last["server_time"].as_str().unwrap().len() == 24);
        let avail: Vec<i64> = e
            .iter()
            .map(|(_, v)| v["stock"]["available"].as_i64().unwrap())
            .collect();
        assert!(avail.windows(2).all(|w| w[1] <= w[0]), "{avail:?}");
    }
    drop(events);
    // Everyone gone: the poller stops, and streaming costs Redis nothing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = redis.calls("evalsha").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        redis.calls("evalsha").await,
        before,
        "a poller outlived its browsers"
    );
}

#[tokio::test]
async fn cors_lets_configured_origins_in_and_no_others() {
    let app =
        spawn_app_with(|s| s.http.cors_allowed_origins = vec!["https://shop.example".into()]).await;
    let sale = app.live_sale(5, 1, 60).await;
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url(&format!("/v1/sales/{sale}/reservations")),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    let res = app
        .http
        .get(app.url("/v1/sales"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase()
        .contains("retry-after"));
    let evil = app
        .http
        .get(app.url("/v1/sales"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());

    // No origins configured: no CORS headers at all.
    let plain = spawn_app().await;
    let res = plain
        .http
        .get(plain.url("/v1/sales"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn pages_are_served_only_when_enabled() {
    let app = spawn_app().await;
    for path in ["/sales/tv-1212", "/ops"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = res.text().await.unwrap();
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{path} loads nothing from outside"
        );
    }
    app.get("/sales/NOT%20VALID", None)
        .await
        .assert_problem(422, "invalid_request");
    let off = spawn_app_with(|s| s.http.pages = false).await;
    off.get("/ops", None).await.assert_problem(404, "not_found");
    off.get("/sales/tv-1212", None)
        .await
        .assert_problem(404, "not_found");
}

/// A buyer on a phone-sized window: the page shows the live stock, reserves,
/// confirms, and says "sold out" in plain words.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_reserves_and_confirms_on_the_landing_page() {
    let app = spawn_app().await;
    let sale = app.live_sale(2, 1, 600).await;
    let browser = Browser::start().await;
    let token = app.token("phone-buyer");
    browser
        .open(&app.url(&format!("/sales/{sale}#token={token}")))
        .await;
    browser.wait_text("#available", |t| t == "2").await;
    browser.wait_text("#status", |t| t == "Live now").await;

    browser.click("#reserve").await;
    browser
        .wait_text("#message", |t| t.starts_with("Reserved"))
        .await;
    browser.wait_text("#hold-status", |t| t == "held").await;
    // The stream brings the new stock without a reload.
    browser.wait_text("#available", |t| t == "1").await;
    assert_eq!(app.stock(&sale).await.held, 1);

    browser.click("#confirm").await;
    browser
        .wait_text("#message", |t| t.starts_with("Paid"))
        .await;
    assert_eq!(app.stock(&sale).await.sold, 1);

    // Someone else takes the last unit; our buyer is at the limit anyway.
    assert_eq!(app.reserve(&sale, &app.token("other"), 1).await.status, 201);
    browser.wait_text("#status", |t| t == "Sold out").await;
    browser.wait_text("#available", |t| t == "0").await;
    browser.assert_no_csp_violations().await;
}

/// The page keeps one payment reference per hold: its own retry of a
/// confirm is the same order, never a 409; and when the store's backend
/// confirmed the hold first with another payment, the page shows the order
/// that exists (409 `already_confirmed` carries it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_landing_page_retries_with_one_payment_ref_and_shows_an_existing_order() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 2, 600).await;
    let browser = Browser::start().await;
    let token = app.token("retrying-buyer");
    browser
        .open(&app.url(&format!("/sales/{sale}#token={token}")))
        .await;
    browser.wait_text("#status", |t| t == "Live now").await;

    browser.click("#reserve").await;
    browser.wait_text("#hold-status", |t| t == "held").await;
    browser.click("#confirm").await;
    let paid = browser
        .wait_text("#message", |t| t.starts_with("Paid"))
        .await;
    // The answer was lost, say: the page confirms the same hold again.
    browser
        .execute(r#"say(""); hold.status = "held"; showHold();"#)
        .await;
    browser.click("#confirm").await;
    let again = browser
        .wait_text("#message", |t| t.starts_with("Paid"))
        .await;
    assert_eq!(again, paid, "the same order");
    assert_eq!(app.stock(&sale).await.sold, 1);

    // A second hold, confirmed first by the store's backend.
    browser.execute(r#"say("");"#).await;
    browser.click("#reserve").await;
    browser
        .wait_text("#message", |t| t.starts_with("Reserved"))
        .await;
    let shop = app.auth.issue("shop", Some("service"), 3600).unwrap();
    let rid = browser.eval("return hold.id;").await;
    let rid = rid.as_str().expect("the page holds a hold").to_string();
    let by_shop = app.confirm(&rid, &shop).await;
    assert_eq!(by_shop.status, 200, "{}", by_shop.body);
    let order_id = by_shop.body["order_id"].as_str().unwrap().to_string();
    browser.click("#confirm").await;
    let said = browser
        .wait_text("#message", |t| t.contains("already paid"))
        .await;
    assert!(said.contains(&order_id), "{said}");
    assert!(said.contains("pay-1"), "{said}");
    assert_eq!(app.stock(&sale).await.sold, 2);
    browser.assert_no_csp_violations().await;
}

/// A sale of 5 units starting at `starts_at`, behind a room (`queue`, less
/// `opens_at`) that opened a second ago.
async fn create_room_sale(app: &TestApp, starts_at: time::OffsetDateTime, queue: Value) -> String {
    let sale = unique("s-");
    let mut body = crate::common::live_sale(&sale, 5, 2, 600);
    body["starts_at"] = json!(rfc3339_ms(starts_at));
    body["ends_at"] = json!(rfc3339_ms(starts_at + Duration::from_secs(3600)));
    body["queue"] = queue;
    body["queue"]["opens_at"] = json!(rfc3339_ms(
        time::OffsetDateTime::now_utc() - Duration::from_secs(1)
    ));
    let created = app.create_sale(&body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    sale
}

/// Opens the sale's page and joins its open room before the seal, signed in
/// by `set_token` (a script that fills in the page's token).
async fn join_before_the_seal(browser: &Browser, app: &TestApp, sale: &str, set_token: &str) {
    browser.open(&app.url(&format!("/sales/{sale}"))).await;
    browser
        .wait_text("#room-status", |t| {
            t.starts_with("The waiting room is open")
        })
        .await;
    assert_eq!(
        browser.text("#reserve").await,
        "",
        "no Reserve before the turn"
    );
    browser.execute(set_token).await;
    browser.click("#join").await;
    browser
        .wait_text("#room-status", |t| {
            t.contains("Your place is drawn at the start")
        })
        .await;
}

/// A buyer behind a waiting room: joins before the start, sees the place
/// drawn at the seal and the seed that drew it, is admitted, and reserves
/// with the admission, which the hold uses up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_waits_in_the_room_then_reserves_on_the_landing_page() {
    let app = spawn_app().await;
    // Chromium first: its start on a busy machine must not eat the seconds
    // before the sale starts, in which the buyer joins as a member.
    let browser = Browser::start().await;
    let now = time::OffsetDateTime::now_utc();
    // Room enough before the start for a slow page to show the room before
    // its seal (5 s was not, once, on a machine busy building).
    let until_start = Duration::from_secs(15);
    let starts = tokio::time::Instant::now() + until_start;
    let sale = create_room_sale(
        &app,
        now + until_start,
        json!({"admit_per_second": 1000, "admit_burst": 10, "admission_seconds": 120}),
    )
    .await;
    let token = app.token("room-buyer");
    let set_token = format!(
        "document.getElementById('token').value = {}; document.getElementById('token').dispatchEvent(new Event('change'));",
        json!(token)
    );
    join_before_the_seal(&browser, &app, &sale, &set_token).await;
    browser.wait_text("#room-ticket", |t| t == "0").await;
    let sha = browser.wait_text("#room-sha", |t| t.len() == 64).await;
    let public = app.get(&format!("/v1/sales/{sale}/queue"), None).await;
    assert_eq!(public.body["seed_sha256"], sha.as_str());

    assert!(
        tokio::time::Instant::now() < starts,
        "the page was too slow to show the room before its seal"
    );
    tokio::time::sleep_until(starts).await;
    // The seal: the only member is first in line, and the seed it was
    // drawn from matches the hash published before.
    browser.wait_text("#room-position", |t| t == "1").await;
    let seed = browser.wait_text("#room-seed", |t| t.len() > 20).await;
    assert_eq!(flashsale::usecases::waiting_room::sha256_hex(&seed), sha);
    browser
        .wait_text("#room-status", |t| t.starts_with("It is your turn"))
        .await;
    browser.wait_text("#reserve", |t| t == "Reserve").await;
    let me = app
        .get(&format!("/v1/sales/{sale}/queue/me"), Some(&token))
        .await;
    assert_eq!(me.body["status"], "admitted", "{}", me.body);
    let admission = me.body["admission"]["token"].as_str().unwrap().to_string();

    browser.click("#reserve").await;
    browser
        .wait_text("#message", |t| t.starts_with("Reserved"))
        .await;
    browser.wait_text("#hold-status", |t| t == "held").await;
    browser
        .wait_text("#room-status", |t| t.contains("used for your hold"))
        .await;
    assert_eq!(
        browser.text("#reserve").await,
        "",
        "one admission, one hold"
    );
    assert_eq!(app.stock(&sale).await.held, 1);
    assert_eq!(app.per_customer(&sale).await.get("room-buyer"), Some(&1));
    let me = app
        .get(&format!("/v1/sales/{sale}/queue/me"), Some(&token))
        .await;
    assert_eq!(me.body["status"], "used", "{}", me.body);

    // The page sent the admission: the same one again makes no second hold.
    let again = app
        .http
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(&token)
        .header("Admission-Token", &admission)
        .json(&json!({ "quantity": 1 }))
        .send()
        .await
        .unwrap();
    Answer::from(again)
        .await
        .assert_problem(409, "admission_invalid");
    assert_eq!(app.stock(&sale).await.held, 1);

    // A room that opens later: the page says when, and offers no Join yet.
    let later = unique("s-");
    let mut body = crate::common::live_sale(&later, 5, 2, 600);
    body["starts_at"] = json!(rfc3339_ms(now + Duration::from_secs(7200)));
    body["ends_at"] = json!(rfc3339_ms(now + Duration::from_secs(10800)));
    body["queue"] = json!({
        "opens_at": rfc3339_ms(now + Duration::from_secs(3600)),
        "admit_per_second": 10, "admit_burst": 1, "admission_seconds": 60,
    });
    let created = app.create_sale(&body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    browser.open(&app.url(&format!("/sales/{later}"))).await;
    browser
        .wait_text("#room-status", |t| {
            t.starts_with("The waiting room opens at") && t.contains("(in 59:")
        })
        .await;
    assert_eq!(browser.text("#join").await, "");
    assert_eq!(browser.text("#reserve").await, "");

    // A buyer an hour before the seal has nothing new to learn each 1.5 s:
    // the page polls a quarter of the time left, at most a quarter of an
    // admission's 60 s (15 s), so a crowd waiting early costs little.
    let far = create_room_sale(
        &app,
        now + Duration::from_secs(3600),
        json!({"admit_per_second": 10, "admit_burst": 1, "admission_seconds": 60}),
    )
    .await;
    join_before_the_seal(&browser, &app, &far, &set_token).await;
    browser
        .execute(
            "window.polls = 0; const f = window.fetch; \
             window.fetch = (...a) => { if (String(a[0]).includes('/queue')) window.polls++; return f(...a); }; \
             const p = document.createElement('p'); p.id = 'polls'; document.body.prepend(p); \
             setInterval(() => { p.textContent = 'polls ' + window.polls; }, 100);",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let polls = browser
        .wait_text("#polls", |t| t.starts_with("polls "))
        .await;
    let n: u32 = polls["polls ".len()..].parse().expect("a count");
    // Every 1.5 s, as before, would be 5 rounds of two calls each.
    assert!(n <= 2, "{n} room calls in 8 s, an hour before the seal");
    browser.assert_no_csp_violations().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_call_pauses_a_sale_from_the_ops_page() {
    let app = spawn_app().await;
    let sale = app.live_sale(7, 1, 600).await;
    let browser = Browser::start().await;
    browser.open(&app.url("/ops")).await;
    browser
        .wait_text("#sales", |t| t.contains(&sale) && t.contains("live"))
        .await;
    // Without a token, the buttons ask for one and change nothing.
    browser
        .click(&format!("button[data-sale='{sale}'][data-act='pause']"))
        .await;
    browser
        .wait_text("#message", |t| t.contains("admin token"))
        .await;
    assert_eq!(
        app.get(&format!("/v1/sales/{sale}"), None).await.body["status"],
        "live"
    );

    let admin = app.admin();
    let set_token = format!(
        "document.getElementById('token').value = {}; document.getElementById('token').dispatchEvent(new Event('change'));",
        json!(admin)
    );
    browser.execute(&set_token).await;
    browser
        .click(&format!("button[data-sale='{sale}'][data-act='pause']"))
        .await;
    browser.wait_text("#message", |t| t.contains("done")).await;
    assert_eq!(
        app.get(&format!("/v1/sales/{sale}"), None).await.body["status"],
        "paused"
    );
    browser.wait_text("#sales", |t| t.contains("paused")).await;
    browser.assert_no_csp_violations().await;
}

/// The ops page's endpoints panel: each endpoint's URL and state, once an
/// admin token is pasted (the list is admin-only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_call_sees_the_webhook_endpoints() {
    let app = TestApp::builder().without_worker().spawn().await;
    let url = "https://93.184.216.34/hooks/ops-page";
    let made = app
        .http
        .post(app.url("/v1/webhooks"))
        .bearer_auth(app.admin())
        .json(&json!({"url": url, "events": ["sale.sold_out"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let browser = Browser::start().await;
    browser.open(&app.url("/ops")).await;
    browser
        .wait_text("#webhooks", |t| t.contains("admin token"))
        .await;
    let set_token = format!(
        "document.getElementById('token').value = {}; document.getElementById('token').dispatchEvent(new Event('change'));",
        json!(app.admin())
    );
    browser.execute(&set_token).await;
    let text = browser
        .wait_text("#webhooks", |t| t.contains(url) && t.contains("enabled"))
        .await;
    assert!(text.contains("sale.sold_out"), "{text}");
    browser.assert_no_csp_violations().await;
}
