//! Every contract code these endpoints return, including hostile input. No
//! input gets a 500, and every error is problem+json with the contract code.

use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use serde_json::{json, Value};

async fn raw_post(app: &TestApp, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut req = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Answer::from(req.send().await.unwrap()).await
}

#[tokio::test]
async fn tokens_missing_malformed_expired_forged_or_unsigned_are_401() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 1, 60).await;
    let path = format!("/v1/sales/{sale}/reservations");
    let forged = flashsale::auth::Auth::new(&secrecy::SecretString::from(
        "somebody-else's-secret-key-here",
    ))
    .issue("c1", Some("admin"), 3600)
    .unwrap();
    let expired = app.auth.issue("c1", None, 0).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await; // past the 5 s leeway
                                                      // {"alg":"none"} . {"sub":"c1","exp":9999999999,"role":"admin"} . no signature
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                    eyJzdWIiOiJjMSIsImV4cCI6OTk5OTk5OTk5OSwicm9sZSI6ImFkbWluIn0.";
    let valid = app.token("c1");
    let tampered = format!("{}x", &valid[..valid.len() - 1]);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty bearer", Some("Bearer ".into())),
        ("wrong scheme", Some(format!("Basic {valid}"))),
        ("garbage", Some("Bearer not.a.jwt".into())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("forged", Some(format!("Bearer {forged}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("tampered", Some(format!("Bearer {tampered}"))),
    ];
    for (what, header) in cases {
        let mut req = app.http.post(app.url(&path)).json(&json!({"quantity": 1}));
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let a = Answer::from(req.send().await.unwrap()).await;
        assert_eq!(a.status, 401, "{what}: {}", a.body);
        a.assert_problem(401, "unauthorized");
    }
    // A sub that is too long is refused even when signed.
    let long = app.auth.issue(&"x".repeat(65), None, 60).unwrap();
    app.reserve(&sale, &long, 1)
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(app.stock(&sale).await.available, 5, "nothing was reserved");
}

#[tokio::test]
async fn customers_cannot_call_admin_endpoints() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 1, 60).await;
    let customer = app.token("c1");
    let a = raw_post(
        &app,
        "/v1/sales",
        Some(&customer),
        &live_sale("x-1", 5, 1, 60).to_string(),
    )
    .await;
    a.assert_problem(403, "forbidden");
    let res = app
        .http
        .patch(app.url(&format!("/v1/sales/{sale}")))
        .bearer_auth(&customer)
        .json(&json!({"stock_delta": 100}))
        .send()
        .await
        .unwrap();
    Answer::from(res).await.assert_problem(403, "forbidden");
    assert_eq!(app.stock(&sale).await.total, 5);
}

#[tokio::test]
async fn sales_are_created_once_and_conflicts_are_refused() {
    let app = spawn_app().await;
    let body = live_sale(&unique("s-"), 7, 2, 60);
    let first = app.create_sale(&body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(
        first.body["stock"],
        json!({"total": 7, "available": 7, "held": 0, "sold": 0})
    );
    assert_eq!(first.body["status"], "live");
    assert!(first.body["server_time"].as_str().unwrap().ends_with('Z'));
    let again = app.create_sale(&body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], first.body["id"]);
    let mut different = body.clone();
    different["stock"] = json!(8);
    app.create_sale(&different)
        .await
        .assert_problem(409, "sale_conflict");

    // Without an id, one is generated.
    let mut anonymous = live_sale("unused", 1, 1, 60);
    anonymous.as_object_mut().unwrap().remove("id");
    let a = app.create_sale(&anonymous).await;
    assert_eq!(a.status, 201);
    assert!(flashsale::domain::valid_sale_id(
        a.body["id"].as_str().unwrap()
    ));

    let list = app.get("/v1/sales", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["sales"].as_array().unwrap().len(), 2);

    app.get("/v1/sales/no-such-sale", None)
        .await
        .assert_problem(404, "sale_not_found");
    app.get("/v1/sales/BAD%20ID", None)
        .await
        .assert_problem(422, "invalid_request");
}

#[tokio::test]
async fn hostile_sale_bodies_get_422_or_413_never_500() {
    let app = spawn_app().await;
    let admin = app.admin();
    let good = live_sale("h-1", 5, 1, 60);
    let with = |field: &str, value: Value| {
        let mut b = good.clone();
        b[field] = value;
        b.to_string()
    };
    let huge = "9".repeat(40);
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("not json", "{nope".into()),
        ("array", "[]".into()),
        ("null", "null".into()),
        ("unknown field", with("colour", json!("red"))),
        ("string stock", with("stock", json!("100"))),
        ("negative stock", with("stock", json!(-1))),
        (
            "huge stock",
            good.to_string()
                .replace("\"stock\":5", &format!("\"stock\":{huge}")),
        ),
        ("float stock", with("stock", json!(1.5))),
        ("stock too large", with("stock", json!(10_000_000_000i64))),
        ("limit zero", with("per_customer_limit", json!(0))),
        ("negative limit", with("per_customer_limit", json!(-2))),
        ("hold zero", with("hold_seconds", json!(0))),
        ("hold a year", with("hold_seconds", json!(31_536_000))),
        ("bad currency", with("currency", json!("rupiah"))),
        ("negative price", with("price_cents", json!(-5))),
        ("bad id", with("id", json!("Has Spaces"))),
        ("brace id", with("id", json!("a{b}"))),
        ("long id", with("id", json!("a".repeat(65)))),
        ("empty name", with("name", json!(""))),
        ("bad time", with("starts_at", json!("tomorrow"))),
        // Past 2999 a script's number comes back as 1.0e+14: refused, not stored.
        ("year 3000", with("ends_at", json!("3000-01-01T00:00:00Z"))),
        (
            "year 1999",
            with("starts_at", json!("1999-12-31T23:59:59Z")),
        ),
        (
            "ends before starts",
            with("ends_at", json!("2000-01-01T00:00:00Z")),
        ),
        ("missing field", {
            let mut b = good.clone();
            b.as_object_mut().unwrap().remove("sku");
            b.to_string()
        }),
    ];
    for (what, body) in cases {
        let a = raw_post(&app, "/v1/sales", Some(&admin), &body).await;
        assert_eq!(a.status, 422, "{what}: {}", a.body);
        a.assert_problem(422, "invalid_request");
    }
    let big = "x".repeat(app.settings.http.body_limit_bytes + 1);
    let a = raw_post(&app, "/v1/sales", Some(&admin), &format!("\"{big}\"")).await;
    a.assert_problem(413, "invalid_request");
    // Nothing was created along the way.
    assert_eq!(
        app.get("/v1/sales", None).await.body["sales"],
        json!([]),
        "a hostile body created a sale"
    );
}

#[tokio::test]
async fn hostile_reserve_requests_get_clear_errors() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 2, 60).await;
    let t = app.token("c1");
    let path = format!("/v1/sales/{sale}/reservations");
    for (what, body) in [
        ("zero", r#"{"quantity":0}"#),
        ("negative", r#"{"quantity":-1}"#),
        ("huge", r#"{"quantity":99999999999999999999999}"#),
        ("above max", r#"{"quantity":101}"#),
        ("string", r#"{"quantity":"2"}"#),
        ("unknown field", r#"{"quantity":1,"price":0}"#),
        ("broken", r#"{"quantity":"#),
    ] {
        let a = raw_post(&app, &path, Some(&t), body).await;
        assert_eq!(a.status, 422, "{what}: {}", a.body);
        a.assert_problem(422, "invalid_request");
    }
    // An empty body asks for one unit.
    let a = raw_post(&app, &path, Some(&t), "").await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["quantity"], 1);
    assert_eq!(a.body["status"], "held");
    assert_eq!(a.body["customer_id"], "c1");
    assert_eq!(a.body["sale_id"], sale.as_str());

    raw_post(&app, "/v1/sales/nope/reservations", Some(&t), "{}")
        .await
        .assert_problem(404, "sale_not_found");
    raw_post(&app, "/v1/sales/NO_PE!/reservations", Some(&t), "{}")
        .await
        .assert_problem(422, "invalid_request");
    let res = app
        .http
        .post(app.url(&path))
        .bearer_auth(&t)
        .header("idempotency-key", "")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    Answer::from(res)
        .await
        .assert_problem(422, "invalid_request");
    let stock = app.stock(&sale).await;
    assert_eq!(stock.held, 1);
    assert_adds_up(&stock);
}

#[tokio::test]
async fn stock_and_limit_refusals() {
    let app = spawn_app().await;
    let sale = app.live_sale(3, 2, 60).await;
    let (a, b, c) = (app.token("a"), app.token("b"), app.token("c"));
    assert_eq!(app.reserve(&sale, &a, 2).await.status, 201);
    app.reserve(&sale, &a, 1)
        .await
        .assert_problem(409, "limit_exceeded");
    app.reserve(&sale, &b, 2)
        .await
        .assert_problem(409, "insufficient_stock");
    assert_eq!(app.reserve(&sale, &b, 1).await.status, 201);
    app.reserve(&sale, &c, 1)
        .await
        .assert_problem(409, "sold_out");
    let view = app.get(&format!("/v1/sales/{sale}"), None).await;
    assert_eq!(view.body["status"], "sold_out");
    assert_eq!(view.body["stock"]["held"], 3);
}

#[tokio::test]
async fn sales_outside_their_window_or_paused_are_not_live() {
    let app = spawn_app().await;
    let now = time::OffsetDateTime::now_utc();
    let ts = |d: i64| flashsale::domain::rfc3339_ms(now + time::Duration::seconds(d));
    let mut future = live_sale(&unique("f-"), 5, 1, 60);
    future["starts_at"] = json!(ts(3600));
    future["ends_at"] = json!(ts(7200));
    let mut past = live_sale(&unique("p-"), 5, 1, 60);
    past["starts_at"] = json!(ts(-7200));
    past["ends_at"] = json!(ts(-3600));
    let t = app.token("c1");
    for (body, status) in [(future, "scheduled"), (past, "ended")] {
        let created = app.create_sale(&body).await;
        assert_eq!(created.status, 201);
        assert_eq!(created.body["status"], status);
        app.reserve(body["id"].as_str().unwrap(), &t, 1)
            .await
            .assert_problem(409, "sale_not_live");
    }

    let sale = app.live_sale(5, 1, 60).await;
    let patch = |body: Value| {
        let (app, sale) = (&app, &sale);
        async move {
            let res = app
                .http
                .patch(app.url(&format!("/v1/sales/{sale}")))
                .bearer_auth(app.admin())
                .json(&body)
                .send()
                .await
                .unwrap();
            Answer::from(res).await
        }
    };
    let paused = patch(json!({"paused": true})).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.body["status"], "paused");
    app.reserve(&sale, &t, 1)
        .await
        .assert_problem(409, "sale_not_live");
    assert_eq!(patch(json!({"paused": false})).await.body["status"], "live");
    assert_eq!(app.reserve(&sale, &t, 1).await.status, 201);

    // Stock adjustments move total and available together; never below zero.
    let more = patch(json!({"stock_delta": 10})).await;
    assert_eq!(
        more.body["stock"],
        json!({"total": 15, "available": 14, "held": 1, "sold": 0})
    );
    patch(json!({"stock_delta": -15}))
        .await
        .assert_problem(409, "insufficient_stock");
    let less = patch(json!({"stock_delta": -14})).await;
    assert_eq!(
        less.body["stock"],
        json!({"total": 1, "available": 0, "held": 1, "sold": 0})
    );
    patch(json!({}))
        .await
        .assert_problem(422, "invalid_request");
    patch(json!({"stock_delta": "lots"}))
        .await
        .assert_problem(422, "invalid_request");
    patch(json!({"ends_at": ts(-999_999_999)}))
        .await
        .assert_problem(422, "invalid_request");
    let ended = patch(json!({"ends_at": ts(-1)})).await;
    assert_eq!(ended.body["status"], "ended");
    // The audit trail has each change, applied or rejected, with its figures.
    let audit: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, stock_delta FROM sale_adjustments WHERE sale_id = $1 ORDER BY at",
    )
    .bind(&sale)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audit,
        vec![
            ("applied".into(), 0),
            ("applied".into(), 0),
            ("applied".into(), 10),
            ("rejected".into(), -15),
            ("applied".into(), -14),
            ("applied".into(), 0),
        ]
    );
}

#[tokio::test]
async fn reservation_lifecycle_codes() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 60).await;
    let (alice, mallory) = (app.token("alice"), app.token("mallory"));
    let r = app.reserve(&sale, &alice, 2).await;
    let rid = r.body["id"].as_str().unwrap().to_string();

    // Another customer cannot see, confirm or release it.
    let path = format!("/v1/reservations/{rid}");
    app.get(&path, Some(&mallory))
        .await
        .assert_problem(404, "reservation_not_found");
    app.confirm(&rid, &mallory)
        .await
        .assert_problem(404, "reservation_not_found");
    app.release(&rid, &mallory)
        .await
        .assert_problem(404, "reservation_not_found");
    // Admins can read it.
    assert_eq!(app.get(&path, Some(&app.admin())).await.status, 200);
    app.get("/v1/reservations/nonsense", Some(&alice))
        .await
        .assert_problem(404, "reservation_not_found");
    app.get(
        &format!("/v1/reservations/{sale}.0123456789abcdef0123456789abcdef"),
        Some(&alice),
    )
    .await
    .assert_problem(404, "reservation_not_found");

    // Confirm twice: the same order.
    let order = app.confirm(&rid, &alice).await;
    assert_eq!(order.status, 200, "{}", order.body);
    for field in [
        "order_id",
        "reservation_id",
        "sale_id",
        "customer_id",
        "quantity",
        "price_cents",
        "currency",
        "confirmed_at",
    ] {
        assert!(!order.body[field].is_null(), "order lacks {field}");
    }
    assert_eq!(app.confirm(&rid, &alice).await.body, order.body);
    app.release(&rid, &alice)
        .await
        .assert_problem(409, "reservation_not_held");

    // Release twice: 200 both times; confirming it afterwards is refused.
    let r2 = app.reserve(&sale, &alice, 1).await;
    let rid2 = r2.body["id"].as_str().unwrap().to_string();
    let released = app.release(&rid2, &alice).await;
    assert_eq!(released.status, 200);
    assert_eq!(released.body["status"], "released");
    assert_eq!(app.release(&rid2, &alice).await.status, 200);
    app.confirm(&rid2, &alice)
        .await
        .assert_problem(409, "reservation_not_held");

    // An admin may release a customer's hold.
    let r3 = app.reserve(&sale, &alice, 1).await;
    let rid3 = r3.body["id"].as_str().unwrap();
    assert_eq!(
        app.release(rid3, &app.admin()).await.body["status"],
        "released"
    );

    let stock = app.stock(&sale).await;
    assert_eq!((stock.available, stock.held, stock.sold), (8, 0, 2));
    assert_eq!(
        app.wait_for_orders(&sale, 1, 10).await,
        (1, 1, 2),
        "one order, once"
    );
}

#[tokio::test]
async fn confirm_after_the_deadline_is_410() {
    let app = spawn_app_with(|s| s.worker.reaper_interval_ms = 1000).await;
    let sale = app.live_sale(3, 1, 1).await;
    let t = app.token("late");
    let rid = app.reserve(&sale, &t, 1).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.confirm(&rid, &t)
        .await
        .assert_problem(410, "hold_expired");
    app.confirm(&rid, &t)
        .await
        .assert_problem(410, "hold_expired");
    let stock = app.stock(&sale).await;
    assert_eq!((stock.available, stock.held, stock.sold), (3, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_gives_one_reservation_under_concurrent_duplicates() {
    let app = spawn_app().await;
    let sale = app.live_sale(100, 10, 60).await;
    let t = app.token("retrier");
    let send = |key: &'static str, quantity: u32| {
        let (app, sale, t) = (&app, &sale, &t);
        async move {
            let res = app
                .http
                .post(app.url(&format!("/v1/sales/{sale}/reservations")))
                .bearer_auth(t)
                .header("idempotency-key", key)
                .json(&json!({ "quantity": quantity }))
                .send()
                .await
                .unwrap();
            Answer::from(res).await
        }
    };
    let answers = join_all((0..100).map(|_| send("order-42", 2))).await;
    let first = &answers[0];
    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["id"], first.body["id"]);
    }
    assert_eq!(app.stock(&sale).await.held, 2, "one reservation, not many");
    send("order-42", 3)
        .await
        .assert_problem(422, "idempotency_key_reused");
    // The same key from another customer is another request.
    let res = app
        .http
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(app.token("someone-else"))
        .header("idempotency-key", "order-42")
        .json(&json!({ "quantity": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(Answer::from(res).await.status, 201);
    assert_eq!(app.stock(&sale).await.held, 5);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_app().await;
    let a = app.get("/v2/nothing", None).await;
    a.assert_problem(404, "not_found");
    let res = app.http.put(app.url("/v1/sales")).send().await.unwrap();
    Answer::from(res)
        .await
        .assert_problem(405, "method_not_allowed");
    assert_eq!(app.get("/healthz", None).await.status, 200);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, json!({"redis": "up", "postgres": "up"}));
}

/// Redis unreachable: a prompt 503 with Retry-After, within the configured
/// timeout, and `/readyz` says so; Postgres down alone keeps the gateway ready.
#[tokio::test]
async fn unreachable_services_give_prompt_503s() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = spawn_app().await;
    let sale = app.live_sale(5, 1, 60).await;
    let db_url = app.settings.database.url.clone();
    let no_redis = spawn_app_with(|s| {
        s.redis.url = format!("redis://127.0.0.1:{closed}");
        s.redis.timeout_ms = 300;
        s.database.url = db_url;
    })
    .await;
    let t = no_redis.token("c1");
    let started = std::time::Instant::now();
    let a = no_redis.reserve(&sale, &t, 1).await;
    a.assert_problem(503, "unavailable");
    assert!(a.retry_after.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !a.body["detail"].as_str().unwrap().contains("127.0.0.1"),
        "no internals leak"
    );
    let ready = no_redis.get("/readyz", None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["redis"], "down");

    // Postgres down: reserves still work (Redis only); admin writes are 503.
    let no_pg = TestApp::builder()
        .beside(&app)
        .settings(|s| {
            s.database.url =
                secrecy::SecretString::from(format!("postgres://postgres@127.0.0.1:{closed}/x"));
            s.database.timeout_ms = 300;
        })
        .spawn()
        .await;
    assert_eq!(
        no_pg.reserve(&sale, &no_pg.token("c2"), 1).await.status,
        201
    );
    no_pg
        .create_sale(&live_sale("another", 1, 1, 60))
        .await
        .assert_problem(503, "unavailable");
    let ready = no_pg.get("/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, json!({"redis": "up", "postgres": "down"}));
}

/// A gateway that stopped between the Postgres write and the Redis load left
/// a row without `loaded_at`: the worker loads it, and a retried POST finds
/// the same sale. Never half created.
#[tokio::test]
async fn an_interrupted_sale_creation_is_finished_by_the_worker() {
    // No worker in the gateway: it would race the check that a half-created
    // sale is not served. The real `flashsale worker` starts after it.
    let app = TestApp::builder().without_worker().spawn().await;
    let id = unique("half-");
    let body = live_sale(&id, 9, 1, 60);
    let input: flashsale::domain::SaleInput = serde_json::from_value(body.clone()).unwrap();
    let def = input.validate(|| unreachable!()).unwrap();
    // What a crashed gateway leaves behind: the row, not the Redis keys.
    flashsale::store::insert_sale(&app.db, &def).await.unwrap();
    app.get(&format!("/v1/sales/{id}"), None)
        .await
        .assert_problem(404, "sale_not_found");

    let _worker = KillOnDrop(
        app.command()
            .arg("worker")
            .spawn()
            .expect("flashsale worker starts"),
    );
    // The worker loads Redis first, then marks the row: wait for both.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let a = app.get(&format!("/v1/sales/{id}"), None).await;
        let loaded: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT loaded_at FROM sales WHERE id = $1")
                .bind(&id)
                .fetch_one(&app.db)
                .await
                .unwrap();
        if a.status == 200 && loaded.is_some() {
            assert_eq!(a.body["stock"]["available"], 9);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Loading is idempotent: a held unit survives the client's retry.
    assert_eq!(app.reserve(&id, &app.token("c"), 1).await.status, 201);
    let retry = app.create_sale(&body).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["stock"]["held"], 1);
}

/// Sale ids are read back from Postgres as typed ids: a row edited by hand
/// into another shape would stop every list read that meets it, so the
/// database itself refuses one (migration `sale_id_format`), whatever its
/// locale's idea of `a-z`.
#[tokio::test]
async fn postgres_refuses_a_sale_id_the_gateway_could_not_parse() {
    let app = spawn_app().await;
    let sale = app.live_sale(1, 1, 60).await;
    for bad in ["Bad", "with space", "é", "", &"a".repeat(65), "a{b}"] {
        let refused = sqlx::query("UPDATE sales SET id = $1 WHERE id = $2")
            .bind(bad)
            .bind(&sale)
            .execute(&app.db)
            .await
            .expect_err(bad);
        assert!(
            refused.to_string().contains("sales_id_format"),
            "{bad:?}: {refused}"
        );
    }
    assert_eq!(
        app.get(&format!("/v1/sales/{sale}"), None).await.status,
        200
    );
}
