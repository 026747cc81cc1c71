//! The webhook endpoints' admin API and `flashsale webhooks`: registration
//! and its URL rules, the secret shown once and stored sealed, rotation,
//! deletion, the deliveries log and replays (contract: "Events for the
//! store"). Deliveries themselves are the delivery worker's tests; these run
//! without a worker, so nothing claims the rows they set up.

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::common::*;
use flashsale::domain::rfc3339_ms;
use flashsale::domain::webhook::Secret;

/// A public address, so registration needs neither DNS nor the private
/// networks switch; nothing is ever sent to it (no worker runs).
const PUBLIC_URL: &str = "https://93.184.216.34/hooks/flashsale";

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    Answer::from(req.send().await.unwrap()).await
}

async fn admin_call(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> Answer {
    let body = body.map(|b| b.to_string());
    call(app, method, path, Some(&app.admin()), body.as_deref()).await
}

async fn register(app: &TestApp, body: Value) -> Answer {
    admin_call(app, "POST", "/v1/webhooks", Some(body)).await
}

/// The bytes of a shown secret, after checking its shape.
#[track_caller]
fn secret_bytes(secret: &Value) -> Vec<u8> {
    let text = secret.as_str().expect("a secret");
    let b64 = text.strip_prefix("whsec_").expect("whsec_ prefix");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    assert!(bytes.len() >= 24, "{} bytes", bytes.len());
    bytes
}

fn without_worker() -> TestAppBuilder {
    TestApp::builder().without_worker()
}

#[tokio::test]
async fn an_endpoint_is_registered_read_changed_rotated_and_deleted() {
    let app = without_worker().spawn().await;
    let made = register(
        &app,
        json!({"url": PUBLIC_URL, "events": ["reservation.confirmed", "sale.sold_out"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.body["id"].as_str().unwrap().to_string();
    assert_eq!(made.body["url"], PUBLIC_URL);
    assert_eq!(
        made.body["events"],
        json!(["reservation.confirmed", "sale.sold_out"])
    );
    assert_eq!(made.body["status"], "enabled");
    assert!(made.body["created_at"].is_string());
    let first = secret_bytes(&made.body["secret"]);

    // Every type when `events` is left out: stored NULL, shown null.
    let all = register(&app, json!({"url": PUBLIC_URL})).await;
    assert_eq!(all.status, 201, "{}", all.body);
    assert_eq!(all.body["events"], Value::Null);

    // The secret is shown once: never in a read.
    let list = admin_call(&app, "GET", "/v1/webhooks", None).await;
    assert_eq!(list.status, 200);
    let hooks = list.body["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0]["id"], id.as_str());
    let path = format!("/v1/webhooks/{id}");
    let got = admin_call(&app, "GET", &path, None).await;
    assert_eq!(got.status, 200);
    for shown in hooks.iter().chain([&got.body]) {
        assert!(shown.get("secret").is_none(), "{shown}");
        assert!(!shown.to_string().contains("whsec_"), "{shown}");
    }
    assert_eq!(got.body["status"], "enabled");
    assert_eq!(got.body["disabled_reason"], Value::Null);
    assert_eq!(
        got.body["deliveries"],
        json!({"pending": 0, "failed": 0, "oldest_pending_at": null})
    );

    // Disabled by an admin, then enabled again: the reason goes.
    let off = admin_call(&app, "PATCH", &path, Some(json!({"enabled": false}))).await;
    assert_eq!(
        (
            off.status,
            &off.body["status"],
            &off.body["disabled_reason"]
        ),
        (200, &json!("disabled"), &json!("admin"))
    );
    let on = admin_call(
        &app,
        "PATCH",
        &path,
        Some(json!({"enabled": true, "events": null})),
    )
    .await;
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(
        (
            &on.body["status"],
            &on.body["disabled_reason"],
            &on.body["events"]
        ),
        (&json!("enabled"), &Value::Null, &Value::Null)
    );
    // A reason set by a delivery ("gone": a 410) is cleared by enabling too.
    sqlx::query("UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'gone' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(
        admin_call(&app, "GET", &path, None).await.body["disabled_reason"],
        "gone"
    );
    let on = admin_call(&app, "PATCH", &path, Some(json!({"enabled": true}))).await;
    assert_eq!(
        (&on.body["status"], &on.body["disabled_reason"]),
        (&json!("enabled"), &Value::Null)
    );
    let moved = admin_call(
        &app,
        "PATCH",
        &path,
        Some(json!({"url": "https://93.184.216.35/other", "events": ["reservation.expired"]})),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["url"], "https://93.184.216.35/other");
    assert_eq!(moved.body["events"], json!(["reservation.expired"]));
    for bad in [
        json!({}),
        json!({"url": "http://93.184.216.35/"}),
        json!({"events": []}),
        json!({"enabled": null}),
        json!({"colour": 1}),
    ] {
        admin_call(&app, "PATCH", &path, Some(bad))
            .await
            .assert_problem(422, "invalid_request");
    }

    // Rotation: a new secret; the previous one kept, signing until the grace ends.
    let before = OffsetDateTime::now_utc();
    let rotated = admin_call(&app, "POST", &format!("{path}/rotate"), None).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.body["id"], id.as_str());
    let second = secret_bytes(&rotated.body["secret"]);
    assert_ne!(first, second);
    let (current, previous, until): (Vec<u8>, Option<Vec<u8>>, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT secret, previous_secret, previous_until FROM webhook_endpoints WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((current, previous), (second, Some(first)));
    let grace = time::Duration::seconds(app.settings.webhooks.rotation_grace_seconds as i64);
    let until = until.expect("previous_until");
    assert!(
        until >= before + grace - time::Duration::seconds(2)
            && until <= OffsetDateTime::now_utc() + grace,
        "{until}"
    );
    assert!(rotated.body["previous_secret_until"].is_string());

    // Deleted: 200, then unknown everywhere; nothing pending stays pending.
    insert_event(
        &app,
        "e-del.reservation.expired",
        "reservation.expired",
        OffsetDateTime::now_utc(),
    )
    .await;
    insert_delivery(
        &app,
        &id,
        "e-del.reservation.expired",
        "pending",
        OffsetDateTime::now_utc(),
    )
    .await;
    let gone = admin_call(&app, "DELETE", &path, None).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert_eq!(gone.body["id"], id.as_str());
    let status: String =
        sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE endpoint_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    for (method, p, body) in [
        ("GET", path.clone(), None),
        ("PATCH", path.clone(), Some(json!({"enabled": true}))),
        ("DELETE", path.clone(), None),
        ("POST", format!("{path}/rotate"), None),
        ("GET", format!("{path}/deliveries"), None),
        (
            "POST",
            format!("{path}/replay"),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        ),
    ] {
        admin_call(&app, method, &p, body)
            .await
            .assert_problem(404, "webhook_not_found");
    }
    let list = admin_call(&app, "GET", "/v1/webhooks", None).await;
    assert_eq!(list.body["webhooks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_registrations_are_problems() {
    // The defaults: https only, public addresses only.
    let app = without_worker().spawn().await;
    for body in [
        "[]",
        "\"https://93.184.216.34/\"",
        "null",
        "{}",
        r#"{"url": 7}"#,
        r#"{"url": "not a url"}"#,
        r#"{"url": "https://93.184.216.34/", "events": ["reservation.shipped"]}"#,
        r#"{"url": "https://93.184.216.34/", "events": []}"#,
        r#"{"url": "https://93.184.216.34/", "colour": "red"}"#,
        r#"{"url": "http://93.184.216.34/"}"#,
        r#"{"url": "ftp://93.184.216.34/"}"#,
        r#"{"url": "https://127.0.0.1/"}"#,
        r#"{"url": "https://127.0.0.1:8443/hook"}"#,
        r#"{"url": "https://[::1]/"}"#,
        r#"{"url": "https://10.1.2.3/"}"#,
        r#"{"url": "https://169.254.169.254/latest"}"#,
        r#"{"url": "https://[::ffff:192.168.0.1]/"}"#,
        r#"{"url": "https://localhost/"}"#,
        r#"{"url": "https://api.localhost/"}"#,
        r#"{"url": "https://user:pw@93.184.216.34/"}"#,
        r#"{"url": "https://93.184.216.34/#frag"}"#,
    ] {
        let a = call(&app, "POST", "/v1/webhooks", Some(&app.admin()), Some(body)).await;
        a.assert_problem(422, "invalid_request");
        assert!(
            a.body["detail"].as_str().unwrap().len() > 10,
            "{body}: {}",
            a.body
        );
    }
    let a = register(
        &app,
        json!({"url": "https://93.184.216.34/", "events": ["nope"]}),
    )
    .await;
    assert!(
        a.body["detail"].as_str().unwrap().contains("`nope`"),
        "{}",
        a.body
    );
    let a = register(&app, json!({"url": "http://93.184.216.34/"})).await;
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("webhooks.allow_http"),
        "{}",
        a.body
    );
    let a = register(&app, json!({"url": "https://127.0.0.1/"})).await;
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("webhooks.allow_private_networks"),
        "{}",
        a.body
    );
    let list = admin_call(&app, "GET", "/v1/webhooks", None).await;
    assert_eq!(list.body, json!({"webhooks": []}));

    // Who may call: an admin only.
    let customer = app.token("c1");
    for (method, path) in [
        ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/0190a000-0000-7000-8000-000000000000"),
        ("PATCH", "/v1/webhooks/0190a000-0000-7000-8000-000000000000"),
        (
            "DELETE",
            "/v1/webhooks/0190a000-0000-7000-8000-000000000000",
        ),
        (
            "POST",
            "/v1/webhooks/0190a000-0000-7000-8000-000000000000/rotate",
        ),
        (
            "GET",
            "/v1/webhooks/0190a000-0000-7000-8000-000000000000/deliveries",
        ),
        (
            "POST",
            "/v1/webhooks/0190a000-0000-7000-8000-000000000000/replay",
        ),
    ] {
        call(&app, method, path, None, None)
            .await
            .assert_problem(401, "unauthorized");
        call(&app, method, path, Some(&customer), None)
            .await
            .assert_problem(403, "forbidden");
    }
    for path in [
        "/v1/webhooks/0190a000-0000-7000-8000-000000000000",
        "/v1/webhooks/not-a-uuid",
    ] {
        admin_call(&app, "GET", path, None)
            .await
            .assert_problem(404, "webhook_not_found");
    }

    // Switched on, as tests and trusted networks do: plain http to loopback.
    let open = without_worker()
        .settings(|s| {
            s.webhooks.allow_http = true;
            s.webhooks.allow_private_networks = true;
        })
        .spawn()
        .await;
    for url in [
        "http://127.0.0.1:9/hook",
        "https://localhost/hook",
        "http://[::1]:9/",
    ] {
        let a = register(&open, json!({"url": url})).await;
        assert_eq!(a.status, 201, "{url}: {}", a.body);
    }
}

async fn insert_event(app: &TestApp, id: &str, kind: &str, at: OffsetDateTime) {
    let payload = json!({"type": kind, "timestamp": rfc3339_ms(at), "data": {"sale_id": "s-w"}});
    sqlx::query(
        "INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id, created_at)
         VALUES ($1, $2, $3, $4, $5, 's-w', $6)",
    )
    .bind(id)
    .bind(if kind.starts_with("sale.") {
        "sale"
    } else {
        "reservation"
    })
    .bind(id.split('.').next().unwrap_or(id))
    .bind(kind)
    .bind(payload)
    .bind(at)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn insert_delivery(
    app: &TestApp,
    endpoint: &str,
    event: &str,
    status: &str,
    at: OffsetDateTime,
) {
    sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, status, attempts, last_status_code,
                                         last_error, next_attempt_at, created_at)
         VALUES ($1::uuid, $2, $3, 3, 500, 'HTTP 500', $4, $4)",
    )
    .bind(endpoint)
    .bind(event)
    .bind(status)
    .bind(at)
    .execute(&app.db)
    .await
    .unwrap();
}

/// (status, attempts, next_attempt_at <= now) of each of an endpoint's
/// deliveries, by event id.
async fn delivery_states(app: &TestApp, endpoint: &str) -> Vec<(String, String, i32, bool)> {
    sqlx::query_as(
        "SELECT event_id, status, attempts, next_attempt_at <= now() FROM webhook_deliveries
         WHERE endpoint_id = $1::uuid ORDER BY event_id",
    )
    .bind(endpoint)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_replay_queues_the_endpoints_events_again_and_the_log_pages() {
    let app = without_worker().spawn().await;
    let made = register(
        &app,
        json!({"url": PUBLIC_URL, "events": ["reservation.confirmed", "reservation.expired"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/webhooks/{id}");
    let now = OffsetDateTime::now_utc();
    let later = |s: i64| now + time::Duration::seconds(s);
    // Before the endpoint existed: never replayed to it.
    insert_event(
        &app,
        "r0.reservation.confirmed",
        "reservation.confirmed",
        now - time::Duration::hours(1),
    )
    .await;
    // Its types, after it was registered: delivered, failed, pending, none yet.
    insert_event(
        &app,
        "r1.reservation.confirmed",
        "reservation.confirmed",
        later(1),
    )
    .await;
    insert_event(
        &app,
        "r2.reservation.expired",
        "reservation.expired",
        later(2),
    )
    .await;
    insert_event(
        &app,
        "r3.reservation.confirmed",
        "reservation.confirmed",
        later(3),
    )
    .await;
    insert_event(
        &app,
        "r4.reservation.confirmed",
        "reservation.confirmed",
        later(4),
    )
    .await;
    // Not its type.
    insert_event(
        &app,
        "r5.reservation.released",
        "reservation.released",
        later(5),
    )
    .await;
    insert_delivery(&app, &id, "r1.reservation.confirmed", "delivered", later(1)).await;
    insert_delivery(&app, &id, "r2.reservation.expired", "failed", later(2)).await;
    insert_delivery(&app, &id, "r3.reservation.confirmed", "failed", later(3)).await;
    // A pending delivery due in an hour.
    insert_delivery(
        &app,
        &id,
        "r0.reservation.confirmed",
        "pending",
        now + time::Duration::hours(1),
    )
    .await;

    // The log: newest first, filtered, paged by cursor.
    let log = admin_call(&app, "GET", &format!("{path}/deliveries"), None).await;
    assert_eq!(log.status, 200, "{}", log.body);
    let ids: Vec<&str> = log.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "r0.reservation.confirmed",
            "r3.reservation.confirmed",
            "r2.reservation.expired",
            "r1.reservation.confirmed"
        ]
    );
    assert!(log.body.get("next_cursor").is_none());
    let first = &log.body["deliveries"][1];
    assert_eq!(
        first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        [
            "attempts",
            "event_id",
            "last_error",
            "last_status_code",
            "next_attempt_at",
            "status",
            "type"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        (
            &first["type"],
            &first["status"],
            &first["attempts"],
            &first["last_status_code"],
            &first["last_error"]
        ),
        (
            &json!("reservation.confirmed"),
            &json!("failed"),
            &json!(3),
            &json!(500),
            &json!("HTTP 500")
        )
    );
    let failed = admin_call(
        &app,
        "GET",
        &format!("{path}/deliveries?status=failed"),
        None,
    )
    .await;
    let ids: Vec<&str> = failed.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r3.reservation.confirmed", "r2.reservation.expired"]);
    let mut seen = Vec::new();
    let mut next = format!("{path}/deliveries?limit=1");
    loop {
        let page = admin_call(&app, "GET", &next, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let rows = page.body["deliveries"].as_array().unwrap();
        assert!(rows.len() <= 1);
        seen.extend(
            rows.iter()
                .map(|d| d["event_id"].as_str().unwrap().to_string()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => next = format!("{path}/deliveries?limit=1&cursor={}", urlencode(c)),
            None => break,
        }
        assert!(seen.len() <= 4, "{seen:?}");
    }
    assert_eq!(
        seen,
        [
            "r0.reservation.confirmed",
            "r3.reservation.confirmed",
            "r2.reservation.expired",
            "r1.reservation.confirmed"
        ]
    );
    for query in [
        "limit=0",
        "limit=501",
        "limit=x",
        "status=lost",
        "cursor=nope",
        "cursor=12",
    ] {
        admin_call(&app, "GET", &format!("{path}/deliveries?{query}"), None)
            .await
            .assert_problem(422, "invalid_request");
    }

    // Only the failed ones: r2 and r3, due now, their attempts kept.
    let since = rfc3339_ms(now - time::Duration::days(1));
    let a = admin_call(
        &app,
        "POST",
        &format!("{path}/replay"),
        Some(json!({"since": since, "status": "failed"})),
    )
    .await;
    assert_eq!((a.status, &a.body), (202, &json!({"queued": 2})));
    let states = delivery_states(&app, &id).await;
    assert_eq!(
        states[2],
        ("r2.reservation.expired".into(), "pending".into(), 3, true)
    );
    assert_eq!(
        states[3],
        ("r3.reservation.confirmed".into(), "pending".into(), 3, true)
    );
    assert_eq!(states[1].1, "delivered");
    // Everything of its types since it was registered, up to r3's time: r1,
    // r2, r3 (r0 is older than the endpoint, r4 after `until`, r5 another type).
    let a = admin_call(
        &app,
        "POST",
        &format!("{path}/replay"),
        Some(json!({"since": since, "until": just_after(later(3))})),
    )
    .await;
    assert_eq!((a.status, &a.body), (202, &json!({"queued": 3})));
    // No `until`: r4 has no delivery yet, and gets one.
    let a = admin_call(
        &app,
        "POST",
        &format!("{path}/replay"),
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!((a.status, &a.body), (202, &json!({"queued": 4})));
    let states = delivery_states(&app, &id).await;
    let names: Vec<&str> = states.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "r0.reservation.confirmed",
            "r1.reservation.confirmed",
            "r2.reservation.expired",
            "r3.reservation.confirmed",
            "r4.reservation.confirmed"
        ]
    );
    assert!(
        states[1..].iter().all(|s| s.1 == "pending" && s.3),
        "{states:?}"
    );
    assert_eq!((states[1].2, states[4].2), (3, 0));
    // r0's pending delivery was out of the window: still due later.
    assert_eq!((states[0].1.as_str(), states[0].3), ("pending", false));
    let shown = admin_call(&app, "GET", &path, None).await;
    assert_eq!(shown.body["deliveries"]["pending"], 5);
    // A window after everything: nothing.
    let a = admin_call(
        &app,
        "POST",
        &format!("{path}/replay"),
        Some(json!({"since": rfc3339_ms(later(3600))})),
    )
    .await;
    assert_eq!((a.status, &a.body), (202, &json!({"queued": 0})));

    for bad in [
        json!({}),
        json!({"since": "yesterday"}),
        json!({"since": since, "status": "lost"}),
        json!({"since": since, "until": rfc3339_ms(now - time::Duration::days(2))}),
        json!({"since": since, "extra": 1}),
    ] {
        admin_call(&app, "POST", &format!("{path}/replay"), Some(bad))
            .await
            .assert_problem(422, "invalid_request");
    }
    call(
        &app,
        "POST",
        &format!("{path}/replay"),
        Some(&app.admin()),
        Some("[1]"),
    )
    .await
    .assert_problem(422, "invalid_request");

    // Disabled: a 409, nothing queued.
    admin_call(&app, "PATCH", &path, Some(json!({"enabled": false}))).await;
    admin_call(
        &app,
        "POST",
        &format!("{path}/replay"),
        Some(json!({"since": since})),
    )
    .await
    .assert_problem(409, "webhook_disabled");

    // The command line: the list, and replay's exit codes.
    let out = app.run(&["webhooks", "list"]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words,
        [
            id.as_str(),
            "disabled:admin",
            "5",
            "0",
            "reservation.confirmed,reservation.expired",
            PUBLIC_URL
        ],
        "{text}"
    );
    let out = app.run(&["webhooks", "replay", "--endpoint", &id, "--since", &since]);
    assert_exit(&out, 1);
    admin_call(&app, "PATCH", &path, Some(json!({"enabled": true}))).await;
    let out = app.run(&[
        "webhooks",
        "replay",
        "--endpoint",
        &id,
        "--since",
        &since,
        "--until",
        &just_after(later(2)),
    ]);
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "queued 2");
    for args in [
        vec![
            "--endpoint",
            "0190a000-0000-7000-8000-000000000000",
            "--since",
            since.as_str(),
        ],
        vec!["--endpoint", "nope", "--since", since.as_str()],
        vec!["--endpoint", id.as_str(), "--since", "yesterday"],
        vec![
            "--endpoint",
            id.as_str(),
            "--since",
            since.as_str(),
            "--until",
            "soon",
        ],
    ] {
        let out = app.run(&[&["webhooks", "replay"][..], &args].concat());
        assert_exit(&out, 2);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1,
            "{}",
            said(&out)
        );
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn secrets_are_sealed_with_the_key_when_it_is_set() {
    let key = [42u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let app = without_worker()
        .settings(|s| s.webhooks.secret_key = Some(SecretString::from(b64.clone())))
        .spawn()
        .await;
    let made = register(&app, json!({"url": PUBLIC_URL})).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let shown = secret_bytes(&made.body["secret"]);
    let id = made.body["id"].as_str().unwrap().to_string();
    let stored = || async {
        let row: (Vec<u8>, bool) = sqlx::query_as(
            "SELECT secret, secret_sealed FROM webhook_endpoints WHERE id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        row
    };
    let (bytes, sealed) = stored().await;
    assert!(sealed);
    assert!(
        !bytes.windows(shown.len()).any(|w| w == shown.as_slice()),
        "the raw secret is in the row"
    );
    assert_eq!(
        Secret::open(Some(&key), &bytes, true).unwrap().bytes(),
        shown.as_slice()
    );
    assert!(Secret::open(Some(&[1u8; 32]), &bytes, true).is_err());
    // Rotation seals the new one too, and keeps the old one sealed.
    let rotated = admin_call(&app, "POST", &format!("/v1/webhooks/{id}/rotate"), None).await;
    let new = secret_bytes(&rotated.body["secret"]);
    let (bytes, sealed) = stored().await;
    assert!(sealed);
    assert_eq!(
        Secret::open(Some(&key), &bytes, true).unwrap().bytes(),
        new.as_slice()
    );
    let (prev, prev_sealed): (Vec<u8>, bool) = sqlx::query_as(
        "SELECT previous_secret, previous_sealed FROM webhook_endpoints WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(prev_sealed);
    assert_eq!(
        Secret::open(Some(&key), &prev, true).unwrap().bytes(),
        shown.as_slice()
    );

    // Without a key the row holds the bytes as they are.
    let plain = without_worker().spawn().await;
    let made = register(&plain, json!({"url": PUBLIC_URL})).await;
    let shown = secret_bytes(&made.body["secret"]);
    let row: (Vec<u8>, bool) =
        sqlx::query_as("SELECT secret, secret_sealed FROM webhook_endpoints WHERE id = $1::uuid")
            .bind(made.body["id"].as_str().unwrap())
            .fetch_one(&plain.db)
            .await
            .unwrap();
    assert_eq!(row, (shown, false));

    // A key that is not 32 bytes of base64 ends `serve`, naming it.
    for bad in [
        "short",
        "not base64 at all!",
        &base64::engine::general_purpose::STANDARD.encode([1u8; 31]),
    ] {
        plain.serve_refuses(
            &[],
            &[("FLASHSALE__WEBHOOKS__SECRET_KEY", bad)],
            "webhooks.secret_key",
        );
    }
}

/// `at` in the API's milliseconds, not before it (an event's time has
/// microseconds, which a time cut to milliseconds would leave out).
fn just_after(at: OffsetDateTime) -> String {
    rfc3339_ms(at + time::Duration::milliseconds(1))
}
