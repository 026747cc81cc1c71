//! Hardening (issue 27), attacked through HTTP: bodies that are not objects,
//! a second payment on a confirmed hold, an admin's confirm, format
//! characters in text, hostile request ids, and a burst of `/readyz`.

use std::time::Duration;

use crate::common::redis_server::PrivateRedis;
use crate::common::*;
use serde_json::{json, Value};

/// Sends `body` as raw JSON text.
async fn send_raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &str,
    key: Option<&str>,
) -> Answer {
    let mut req = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    Answer::from(req.send().await.unwrap()).await
}

const NOT_OBJECTS: [&str; 7] = ["null", "[2]", "[5]", "5", "\"x\"", "true", " [ ] "];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_objects_are_422_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin();
    let sale = app.live_sale(10, 5, 600).await;
    let alice = app.token("alice");
    let held = app.reserve(&sale, &alice, 1).await;
    let rid = held.body["id"].as_str().unwrap().to_string();
    let before = app.stock(&sale).await;
    let shop = app.auth.issue("shop", Some("service"), 3600).unwrap();
    let routes: Vec<(reqwest::Method, String, &str)> = vec![
        (
            reqwest::Method::POST,
            format!("/v1/sales/{sale}/reservations"),
            alice.as_str(),
        ),
        (reqwest::Method::PATCH, format!("/v1/sales/{sale}"), &admin),
        (reqwest::Method::POST, "/v1/sales".into(), &admin),
        (
            reqwest::Method::POST,
            format!("/v1/reservations/{rid}/confirm"),
            &alice,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/reservations/{rid}/extend"),
            &shop,
        ),
    ];
    for (method, path, token) in &routes {
        for (i, body) in NOT_OBJECTS.iter().enumerate() {
            let key = format!("k-{i}");
            let a = send_raw(&app, method.clone(), path, token, body, Some(&key)).await;
            a.assert_problem(422, "invalid_request");
            assert!(
                a.body["detail"].as_str().unwrap().contains("object"),
                "{method} {path} {body}: {}",
                a.body
            );
        }
    }
    assert_eq!(app.stock(&sale).await, before, "nothing changed");
    let mine = app
        .get(&format!("/v1/reservations/{rid}"), Some(&alice))
        .await;
    assert_eq!(mine.body["status"], "held");
    // No key was recorded for the refused bodies: the same key with a real
    // body is a first request, not `idempotency_key_reused`.
    let a = send_raw(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sales/{sale}/reservations"),
        &alice,
        r#"{"quantity": 2}"#,
        Some("k-1"),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = send_raw(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/sales/{sale}"),
        &admin,
        r#"{"stock_delta": 1}"#,
        Some("k-1"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let after = app.stock(&sale).await;
    assert_eq!(after.total, before.total + 1);
    assert_eq!(after.held, before.held + 2);
    // An empty body still reads as `{}` where every field is optional.
    let bob = app.token("bob");
    let a = send_raw(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sales/{sale}/reservations"),
        &bob,
        "",
        None,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["quantity"], 1);
    app.shutdown().await.unwrap();
}

async fn stored_payment_ref(app: &TestApp, rid: &str) -> String {
    sqlx::query_scalar("SELECT payment_ref FROM orders WHERE reservation_id = $1")
        .bind(rid)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// The 409 of a second payment: the order as it stands, with its reference
/// and who confirmed it.
fn assert_second_payment(a: &Answer, first: &Value, payment_ref: &str, by: Option<&str>) {
    a.assert_problem(409, "already_confirmed");
    let order = &a.body["order"];
    assert_eq!(order["order_id"], first["order_id"], "{}", a.body);
    assert_eq!(order["payment_ref"], payment_ref, "{}", a.body);
    match by {
        Some(by) => assert_eq!(order["confirmed_by"], by, "{}", a.body),
        None => assert!(order.get("confirmed_by").is_none(), "{}", a.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_payment_is_409_already_confirmed_live_and_archived() {
    let app = spawn_app_with(|s| s.engine.retention_seconds = 1).await;
    let sale = unique("s-");
    let now = time::OffsetDateTime::now_utc();
    let mut body = live_sale(&sale, 10, 5, 600);
    body["ends_at"] = json!(flashsale::domain::rfc3339_ms(now + Duration::from_secs(4)));
    assert_eq!(app.create_sale(&body).await.status, 201);
    let alice = app.token("alice");
    let shop = app.auth.issue("shop", Some("service"), 3600).unwrap();

    // The buyer confirms with a made-up reference; the store's backend then
    // confirms with the real payment.
    let mine = app.reserve(&sale, &alice, 1).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = app.confirm_with(&mine, &alice, "buyer-made-up").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.get("payment_ref").is_none(), "{}", first.body);
    let again = app.confirm_with(&mine, &alice, "buyer-made-up").await;
    assert_eq!(again.status, 200, "the same reference: the same order");
    assert_eq!(again.body, first.body);
    let real = app.confirm_with(&mine, &shop, "psp-real-42").await;
    assert_second_payment(&real, &first.body, "buyer-made-up", None);
    // Compared exactly: the empty reference and a case change are others.
    for other in ["", "BUYER-MADE-UP", "buyer-made-up "] {
        let a = app.confirm_with(&mine, &alice, other).await;
        assert_second_payment(&a, &first.body, "buyer-made-up", None);
    }

    // The backend confirmed first: the buyer's retry with another reference
    // is the 409, and it names the service.
    let theirs = app.reserve(&sale, &alice, 1).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let by_shop = app.confirm_with(&theirs, &shop, "psp-1").await;
    assert_eq!(by_shop.status, 200, "{}", by_shop.body);
    let a = app.confirm_with(&theirs, &shop, "psp-2").await;
    assert_second_payment(&a, &by_shop.body, "psp-1", Some("shop"));

    // Postgres keeps the first reference of each.
    app.wait_for_orders(&sale, 2, 20).await;
    assert_eq!(stored_payment_ref(&app, &mine).await, "buyer-made-up");
    assert_eq!(stored_payment_ref(&app, &theirs).await, "psp-1");

    // The same from Postgres once the sale is archived.
    app.wait_archived(&sale, Duration::from_secs(30)).await;
    let again = app.confirm_with(&mine, &alice, "buyer-made-up").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["order_id"], first.body["order_id"]);
    let real = app.confirm_with(&mine, &shop, "psp-real-42").await;
    assert_second_payment(&real, &first.body, "buyer-made-up", None);
    let a = app.confirm_with(&theirs, &alice, "").await;
    assert_second_payment(&a, &by_shop.body, "psp-1", Some("shop"));
    // An admin releases; it never confirms, live or archived.
    app.confirm_with(&mine, &app.admin(), "buyer-made-up")
        .await
        .assert_problem(403, "forbidden");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_admins_confirm_is_403_and_changes_nothing() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 600).await;
    let alice = app.token("alice");
    let rid = app.reserve(&sale, &alice, 1).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.confirm_with(&rid, &app.admin(), "x")
        .await
        .assert_problem(403, "forbidden");
    let s = app.stock(&sale).await;
    assert_eq!((s.held, s.sold), (1, 0));
    // The admin's release is still theirs.
    assert_eq!(app.release(&rid, &app.admin()).await.status, 200);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn format_characters_are_refused_in_names_skus_and_payment_refs() {
    let app = spawn_app().await;
    let bad = [
        "\u{202E}gnp.exe",
        "tv\u{200B}",
        "a\u{2060}b",
        "\u{FEFF}bom",
        "x\u{2066}y",
        "soft\u{00AD}",
    ];
    for (i, text) in bad.iter().enumerate() {
        for field in ["name", "sku"] {
            let mut body = live_sale(&format!("cf-{i}-{field}"), 5, 1, 60);
            body[field] = json!(text);
            let a = app.create_sale(&body).await;
            a.assert_problem(422, "invalid_request");
            assert!(a.body["detail"].as_str().unwrap().contains(field));
        }
    }
    // Joiners are text: Persian words and emoji sequences need them.
    let mut body = live_sale(&unique("cf-ok-"), 5, 5, 60);
    body["name"] = json!("می\u{200C}خواهم 👩\u{200D}💻");
    let created = app.create_sale(&body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let sale = created.body["id"].as_str().unwrap().to_string();
    let alice = app.token("alice");
    let rid = app.reserve(&sale, &alice, 1).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    for text in bad {
        app.confirm_with(&rid, &alice, text)
            .await
            .assert_problem(422, "invalid_request");
    }
    assert_eq!(app.stock(&sale).await.held, 1, "still held");
    assert_eq!(
        app.confirm_with(&rid, &alice, "ref\u{200D}1").await.status,
        200
    );
    app.shutdown().await.unwrap();
}

fn is_ours(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn request_ids_are_kept_only_when_plain_and_ours_reveal_no_count() {
    let app = spawn_app().await;
    let id_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    for kept in ["abc", "trace-1.2:3_4", &"a".repeat(64)] {
        let res = app
            .http
            .get(app.url("/healthz"))
            .header("x-request-id", kept)
            .send()
            .await
            .unwrap();
        assert_eq!(id_of(&res), kept);
    }
    let hostile: [&[u8]; 6] = [
        b"<script>alert(1)</script>",
        b"two words",
        b"new\tline",
        b"quote\"d",
        &[b'a'; 65],
        b"\xc3\xa9t\xc3\xa9",
    ];
    for sent in hostile {
        let res = app
            .http
            .get(app.url("/healthz"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(sent).unwrap(),
            )
            .send()
            .await
            .unwrap();
        let got = id_of(&res);
        assert!(is_ours(&got), "{sent:?} answered with {got:?}");
    }
    // Ours are random: consecutive ids share no counter-like prefix.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let res = app.http.get(app.url("/healthz")).send().await.unwrap();
        ids.push(id_of(&res));
    }
    assert!(ids.iter().all(|id| is_ours(id)), "{ids:?}");
    let shared = ids.windows(2).filter(|w| w[0][..8] == w[1][..8]).count();
    assert_eq!(shared, 0, "{ids:?}");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_readyz_asks_redis_at_most_once_a_second() {
    let redis = PrivateRedis::start();
    let app = TestApp::builder().without_worker().on(&redis).spawn().await;
    assert_eq!(app.get("/readyz", None).await.status, 200);
    let before = redis.calls("ping").await;
    let started = std::time::Instant::now();
    let mut asked = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let burst = (0..50).map(|_| app.get("/readyz", None));
        for a in futures::future::join_all(burst).await {
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.body["redis"], "up");
            asked += 1;
        }
    }
    let pings = redis.calls("ping").await - before;
    let secs = started.elapsed().as_secs() + 1;
    // At most one probe a second, plus the gateway's own service watch
    // (every 2 s), which pings as well.
    assert!(
        pings <= secs + secs / 2 + 1,
        "{asked} /readyz in {secs} s made {pings} PINGs"
    );
    assert!(asked >= 100, "the burst was a burst: {asked}");
    app.shutdown().await.unwrap();
}

/// The verified-token cache keys on every byte of the token: a token that
/// reuses a cached token's header and signature over another payload, or
/// differs from it in one byte, is verified afresh and refused.
#[tokio::test]
async fn a_cached_signature_on_another_payload_is_401() {
    let app = spawn_app().await;
    let status = |token: String| {
        let req = app
            .http
            .post(app.url("/v1/sales/no-such-sale/reservations"))
            .bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let alice = app.token("alice");
    // Verified, then answered from the cache.
    assert_eq!(status(alice.clone()).await, 404);
    assert_eq!(status(alice.clone()).await, 404);
    let part = |t: &str, i: usize| t.split('.').nth(i).unwrap().to_string();
    let mallory = app.token("mallory");
    let forged = format!(
        "{}.{}.{}",
        part(&alice, 0),
        part(&mallory, 1),
        part(&alice, 2)
    );
    assert_eq!(
        status(forged).await,
        401,
        "alice's signature on mallory's claims"
    );
    let sig_start = alice.rfind('.').unwrap() + 1;
    // The signature's last character carries padding bits; the one before
    // it does not.
    for i in [0, alice.len() / 2, sig_start, alice.len() - 2] {
        let mut b = alice.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(b).unwrap();
        assert_eq!(status(changed).await, 401, "byte {i} changed");
    }
    assert_eq!(
        status(alice).await,
        404,
        "the cached token itself still works"
    );
    app.shutdown().await.unwrap();
}
