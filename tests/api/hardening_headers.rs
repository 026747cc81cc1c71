//! The headers a browser is told to hold the gateway to (issue 27): nosniff
//! on every answer, no-store on every answer to a request with
//! `Authorization`, and on the pages a strict Content-Security-Policy (no
//! inline code: the scripts and styles are files) and no referrer.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;

const NEVER_FRAMED: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The status and headers of one request (the body is left unread: the
/// stream never ends).
async fn head_of(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (u16, HeaderMap) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.headers().clone())
}

#[track_caller]
fn assert_page_headers(path: &str, headers: &HeaderMap, csp: &str) {
    assert_eq!(
        header(headers, "content-security-policy"),
        Some(csp),
        "{path}"
    );
    assert_eq!(
        header(headers, "referrer-policy"),
        Some("no-referrer"),
        "{path}"
    );
    assert_eq!(
        header(headers, "x-content-type-options"),
        Some("nosniff"),
        "{path}"
    );
}

/// What a strict `default-src 'self'` would block in a page: an inline
/// script, a style element, a style attribute (in the markup or in markup
/// a script writes).
#[track_caller]
fn assert_nothing_inline(what: &str, text: &str) {
    assert!(!text.contains("style="), "{what} has a style attribute");
    assert!(!text.contains("<style"), "{what} has a style element");
    let scripts = text.matches("<script").count();
    let files = text.matches("<script src=\"/assets/").count();
    assert_eq!(scripts, files, "{what} has an inline script");
}

#[tokio::test]
async fn the_pages_carry_a_strict_policy_and_nothing_inline() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 1, 600).await;
    for path in [format!("/sales/{sale}"), "/ops".into()] {
        let res = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_page_headers(&path, res.headers(), NEVER_FRAMED);
        let html = res.text().await.unwrap();
        assert_nothing_inline(&path, &html);
        // Everything the page links to is served, with its own type.
        let linked: Vec<&str> = html
            .split('"')
            .filter(|s| s.starts_with("/assets/"))
            .collect();
        assert_eq!(linked.len(), 2, "{path}: a script and a style sheet");
        for asset in linked {
            let res = app.http.get(app.url(asset)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{asset}");
            let kind = if asset.ends_with(".js") {
                "text/javascript; charset=utf-8"
            } else {
                "text/css; charset=utf-8"
            };
            assert_eq!(header(res.headers(), "content-type"), Some(kind));
            assert_eq!(
                header(res.headers(), "x-content-type-options"),
                Some("nosniff")
            );
            assert_nothing_inline(asset, &res.text().await.unwrap());
        }
    }
    // A malformed id is refused before any HTML, under the same policy.
    let (status, headers) = head_of(&app, Method::GET, "/sales/NOT%20VALID", None).await;
    assert_eq!(status, 422);
    assert_page_headers("/sales/NOT%20VALID", &headers, NEVER_FRAMED);
}

#[tokio::test]
async fn the_landing_page_may_be_framed_by_the_configured_origins_and_ops_never() {
    let app = spawn_app_with(|s| {
        s.http.frame_ancestors = vec!["'self'".into(), "https://shop.example".into()]
    })
    .await;
    let (status, headers) = head_of(&app, Method::GET, "/sales/tv-1212", None).await;
    assert_eq!(status, 200);
    assert_page_headers(
        "/sales/tv-1212",
        &headers,
        "default-src 'self'; frame-ancestors 'self' https://shop.example; base-uri 'none'",
    );
    let (status, headers) = head_of(&app, Method::GET, "/ops", None).await;
    assert_eq!(status, 200);
    assert_page_headers("/ops", &headers, NEVER_FRAMED);
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 1, 600).await;
    let cases = [
        (
            Method::GET,
            "/v1/sales".to_string(),
            200,
            "application/json",
        ),
        (
            Method::GET,
            format!("/v1/sales/{sale}"),
            200,
            "application/json",
        ),
        (
            Method::GET,
            "/v1/sales/no-such-sale".into(),
            404,
            "application/problem+json",
        ),
        (
            Method::GET,
            "/v1/sales/NOT%20VALID".into(),
            422,
            "application/problem+json",
        ),
        (
            Method::POST,
            format!("/v1/sales/{sale}/reservations"),
            401,
            "application/problem+json",
        ),
        (
            Method::GET,
            "/no/such/route".into(),
            404,
            "application/problem+json",
        ),
        (
            Method::PUT,
            "/v1/sales".into(),
            405,
            "application/problem+json",
        ),
        (Method::GET, "/metrics".into(), 200, "text/plain"),
        (Method::GET, "/healthz".into(), 200, "text/plain"),
        (Method::GET, "/openapi.json".into(), 200, "application/json"),
        (
            Method::GET,
            format!("/v1/sales/{sale}/stream"),
            200,
            "text/event-stream",
        ),
    ];
    for (method, path, status, kind) in cases {
        let (got, headers) = head_of(&app, method.clone(), &path, None).await;
        assert_eq!(got, status, "{method} {path}");
        let content_type = header(&headers, "content-type").unwrap_or("");
        assert!(
            content_type.starts_with(kind),
            "{method} {path}: {content_type}"
        );
        assert_eq!(
            header(&headers, "x-content-type-options"),
            Some("nosniff"),
            "{method} {path}"
        );
        // Nothing here was asked with a token: caches may keep it.
        assert_ne!(
            header(&headers, "cache-control"),
            Some("no-store"),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn answers_to_a_request_with_authorization_are_never_stored() {
    let app = spawn_app().await;
    let sale = app.live_sale(5, 1, 600).await;
    let buyer = app.token("buyer");
    let hold = app.reserve(&sale, &buyer, 1).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let rid = hold.body["id"].as_str().unwrap().to_string();
    let forged = format!("{buyer}x");
    let cases = [
        (format!("/v1/reservations/{rid}"), buyer.as_str(), 200),
        (format!("/v1/reservations/{rid}"), forged.as_str(), 401),
        (format!("/v1/sales/{sale}"), buyer.as_str(), 200),
        ("/no/such/route".into(), buyer.as_str(), 404),
        // The stream's own `no-cache` gives way.
        (format!("/v1/sales/{sale}/stream"), buyer.as_str(), 200),
    ];
    for (path, token, status) in cases {
        let (got, headers) = head_of(&app, Method::GET, &path, Some(token)).await;
        assert_eq!(got, status, "{path}");
        assert_eq!(
            header(&headers, "cache-control"),
            Some("no-store"),
            "{path}"
        );
        assert_eq!(
            header(&headers, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    // A write with a token, and the same public read without one.
    let res = app
        .http
        .patch(app.url(&format!("/v1/sales/{sale}")))
        .bearer_auth(app.admin())
        .json(&serde_json::json!({ "stock_delta": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "cache-control"), Some("no-store"));
    let (got, headers) = head_of(&app, Method::GET, &format!("/v1/sales/{sale}"), None).await;
    assert_eq!(got, 200);
    assert_eq!(header(&headers, "cache-control"), None);
}

#[tokio::test]
async fn the_assets_go_with_the_pages() {
    let app = spawn_app().await;
    for (asset, kind) in [
        ("/assets/sale.js", "text/javascript; charset=utf-8"),
        ("/assets/sale.css", "text/css; charset=utf-8"),
        ("/assets/ops.js", "text/javascript; charset=utf-8"),
        ("/assets/ops.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers) = head_of(&app, Method::GET, asset, None).await;
        assert_eq!(status, 200, "{asset}");
        assert_eq!(header(&headers, "content-type"), Some(kind), "{asset}");
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        let (status, _) = head_of(&app, Method::POST, asset, None).await;
        assert_eq!(status, 405, "{asset}");
    }
    let off = spawn_app_with(|s| s.http.pages = false).await;
    off.get("/assets/sale.js", None)
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn frame_ancestors_that_could_rewrite_the_policy_exit_2() {
    let app = spawn_app().await;
    for value in [
        "https://shop.example; script-src *",
        "https://shop.example script-src",
        "'unsafe-inline'",
        "https://\"shop.example",
        "https://shop.example'",
        "'none', https://shop.example",
        "'self','none'",
        "",
    ] {
        app.serve_refuses(
            &[],
            &[("FLASHSALE__HTTP__FRAME_ANCESTORS", value)],
            "http.frame_ancestors",
        );
    }
    // A comma inside one value of a TOML list, and a line break.
    let dir = std::env::temp_dir().join(unique("fs-frame-"));
    std::fs::create_dir_all(&dir).unwrap();
    for list in [
        r#"["https://a.example,https://b.example"]"#,
        r#"["https://a.example\n"]"#,
        r#"[]"#,
    ] {
        let file = dir.join("c.toml");
        std::fs::write(&file, format!("[http]\nframe_ancestors = {list}\n")).unwrap();
        app.serve_refuses(
            &["--config", file.to_str().unwrap()],
            &[],
            "http.frame_ancestors",
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn frame_ancestors_come_comma_separated_from_the_environment() {
    let app = spawn_app().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let _gateway = KillOnDrop(
        app.command()
            .args(["serve", "--no-worker"])
            .env("FLASHSALE__HTTP__ADDR", &addr)
            .env(
                "FLASHSALE__HTTP__FRAME_ANCESTORS",
                "'self', https://shop.example,https://*.shop.example",
            )
            .spawn()
            .expect("flashsale serve starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let res = loop {
        if let Ok(res) = app
            .http
            .get(format!("http://{addr}/sales/tv-1212"))
            .send()
            .await
        {
            break res;
        }
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(res.status(), 200);
    assert_page_headers(
        "/sales/tv-1212",
        res.headers(),
        "default-src 'self'; frame-ancestors 'self' https://shop.example https://*.shop.example; base-uri 'none'",
    );
}
