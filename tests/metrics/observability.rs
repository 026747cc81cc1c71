//! On-call's view of a live gateway (issue 16): its `/metrics` passes
//! `promtool check metrics`, every family it exports has HELP text, and the
//! dashboard (`deploy/grafana/flashsale.json`), the alert rules
//! (`deploy/prometheus/flashsale-rules.yml`) and the on-call guide's metrics section
//! name only series a gateway exports: a renamed metric breaks this test, not
//! a panel at 3 a.m.
//!
//! promtool comes from `scripts/promtool.sh` (`PROMTOOL`, PATH, its cache,
//! else Debian's package, fetched). Without one the test fails, unless it
//! runs outside CI (`CI` unset) and says so: the rest of the suite needs no
//! Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use redis::AsyncCommands;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// The families of an exposition (from its `# TYPE` lines) and their types.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// Every `flashsale_…` identifier in `text`, as PromQL spells metric names.
fn flashsale_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("flashsale_") {
        let start = at + found;
        // Part of a longer identifier (`xflashsale_`) is not a metric name.
        let inside = start > 0 && is_ident(bytes[start - 1]);
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if !inside {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// The family a series name belongs to: `x_bucket` of histogram `x` is `x`.
fn family_of<'a>(name: &'a str, exported: &BTreeMap<String, String>) -> Option<&'a str> {
    if exported.contains_key(name) {
        return Some(name);
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            exported.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then_some(base)
    })
}

/// The PromQL of a dashboard: every panel target's `expr` and every
/// templating query, wherever they nest (rows hold panels too).
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

/// The families `src/metrics.rs` gives HELP text to (its `describe_*!` calls).
fn described() -> BTreeSet<String> {
    let src = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs"));
    let mut names = BTreeSet::new();
    for part in src.split("describe_").skip(1) {
        let Some(call) = part.split_once("!(") else {
            continue;
        };
        if !["counter", "gauge", "histogram"].contains(&call.0) {
            continue;
        }
        if let Some(name) = call.1.split('"').nth(1) {
            names.insert(name.to_string());
        }
    }
    names
}

/// The on-call guide's "## Metrics" section.
fn metrics_section() -> String {
    let guide =
        std::fs::read_to_string(Path::new(ROOT).join("docs/on-call.md")).expect("docs/on-call.md");
    let start = guide
        .find("\n## Metrics")
        .expect("docs/on-call.md has a Metrics section");
    let rest = &guide[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// promtool, or why there is none: `scripts/promtool.sh` checks `PROMTOOL`
/// first, then PATH, its cache, and fetches Debian's as a last resort.
fn promtool() -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/promtool.sh"))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run scripts/promtool.sh: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = text.to_string();
    // Written from a thread: promtool may answer (and fill its pipes) before
    // it has read everything.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("promtool runs");
    writer
        .join()
        .expect("writer thread")
        .expect("promtool reads /metrics");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Drives a gateway through every path that records a metric, then waits
/// until every described family is exported. Returns the last `/metrics`.
async fn busy_gateway(app: &TestApp) -> String {
    let sale = app.live_sale(100, 5, 600).await;
    let t = app.token("alice");
    // Reserve, confirm (flushed by the worker), release, a refusal.
    let a = app.reserve(&sale, &t, 2).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let rid = a.body["id"].as_str().expect("reservation id").to_string();
    assert_eq!(app.confirm(&rid, &t).await.status, 200);
    let b = app.reserve(&sale, &t, 1).await;
    assert_eq!(b.status, 201, "{}", b.body);
    let rid_b = b.body["id"].as_str().expect("reservation id").to_string();
    assert_eq!(app.release(&rid_b, &t).await.status, 200);
    app.reserve(&sale, &t, 4)
        .await
        .assert_problem(409, "limit_exceeded");
    assert_eq!(app.wait_for_orders(&sale, 1, 20).await.0, 1);

    // A hold left to expire, for the reaper.
    let short = app.live_sale(10, 5, 1).await;
    assert_eq!(app.reserve(&short, &app.token("bob"), 1).await.status, 201);

    // A poison entry read by a consumer that never acknowledges it: the
    // worker claims it once idle (claimed) and dead-letters it (dead letters).
    let keys = app.engine.keys(&sale);
    let mut conn = app.engine.connection();
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.outbox)
        .arg("flushers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    if let Err(e) = created {
        assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
    }
    // One MULTI, so the worker cannot read the entry before the ghost does.
    let _: () = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&keys.outbox)
        .arg("*")
        .arg("junk")
        .arg("1")
        .ignore()
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("flushers")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&keys.outbox)
        .arg(">")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("poison entry delivered to the ghost consumer");

    // A Redis fault: a sale key of the wrong type is a 500 counted by op.
    let broken = unique("s-");
    let _: () = conn
        .set(app.engine.keys(&broken).sale.clone(), "x")
        .await
        .expect("SET");
    app.get(&format!("/v1/sales/{broken}"), None)
        .await
        .assert_problem(500, "internal");

    // An event stream opened and left.
    let mut stream = app
        .http
        .get(app.url(&format!("/v1/sales/{sale}/stream")))
        .send()
        .await
        .expect("stream opens");
    assert_eq!(stream.status(), 200);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await;
    drop(stream);

    // Webhook deliveries: one delivered (latency), one retried then failed.
    webhook_deliveries(app).await;

    let want = described();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.metrics_text().await;
        let have = families(&text);
        let missing: Vec<&String> = want.iter().filter(|n| !have.contains_key(*n)).collect();
        let reaped = text
            .lines()
            .any(|l| l.starts_with("flashsale_holds_reaped_total ") && !l.ends_with(" 0"));
        if missing.is_empty() && reaped {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s, /metrics still lacks {missing:?} (holds reaped: {reaped}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A loopback receiver (204 on `/ok`, 500 elsewhere) and an endpoint on
/// each path with one delivery, written as the flush writes them.
async fn webhook_deliveries(app: &TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .fallback(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR });
    tokio::spawn(async move {
        let _ = axum::serve(listener, receiver).await;
    });
    for path in ["ok", "broken"] {
        let endpoint = uuid::Uuid::new_v4();
        let event = unique("e-");
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, secret, secret_sealed)
             VALUES ($1, $2, '\\x00112233445566778899aabbccddeeff0011223344556677', false)",
        )
        .bind(endpoint)
        .bind(format!("http://{addr}/{path}"))
        .execute(&app.db)
        .await
        .expect("endpoint");
        sqlx::query(
            "INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id)
             VALUES ($1, 'sale', 's', 'sale.sold_out', '{}', 's')",
        )
        .bind(&event)
        .execute(&app.db)
        .await
        .expect("event");
        sqlx::query("INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES ($1, $2)")
            .bind(endpoint)
            .bind(&event)
            .execute(&app.db)
            .await
            .expect("delivery");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_deploy_names_only_exported_series() {
    let app = spawn_app_with(|s| {
        s.worker.reconcile_interval_ms = 200;
        s.worker.claim_idle_ms = 300;
        s.webhooks.allow_http = true;
        s.webhooks.allow_private_networks = true;
        s.webhooks.retry_schedule_seconds = vec![1];
    })
    .await;
    let text = busy_gateway(&app).await;
    let exported = families(&text);

    // Exported and described are the same set: nothing without HELP, and no
    // HELP for a family nothing records any more.
    let flashsale: BTreeSet<String> = exported
        .keys()
        .filter(|n| n.starts_with("flashsale_"))
        .cloned()
        .collect();
    assert_eq!(flashsale, described(), "exported vs described families");
    for name in &flashsale {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    // The issue-16 rename: a gauge may not end in _total.
    for (name, kind) in &exported {
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}: only counters end in _total"
        );
    }

    // Names on-call's artefacts use: each one exported by a gateway.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/flashsale.json"))
            .expect("deploy/grafana/flashsale.json"),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() > 10, "the dashboard has its queries");
    let rules =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/flashsale-rules.yml"))
            .expect("deploy/prometheus/flashsale-rules.yml");
    let sources = [
        ("deploy/grafana/flashsale.json", queries.join("\n")),
        ("deploy/prometheus/flashsale-rules.yml", rules),
        ("docs/on-call.md (## Metrics)", metrics_section()),
    ];
    for (file, text) in &sources {
        let names = flashsale_names(text);
        assert!(!names.is_empty(), "{file} names no flashsale_ metric");
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| family_of(n, &exported).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names series no gateway exports: {unknown:?}"
        );
    }
    // What the issue asks the dashboard to show.
    let dash_names = flashsale_names(&sources[0].1);
    for needed in [
        "flashsale_reservations_total",
        "flashsale_http_request_seconds_bucket",
        "flashsale_outbox_pending",
        "flashsale_outbox_oldest_age_seconds",
        "flashsale_dead_letters",
        "flashsale_reconcile_drift",
        "flashsale_stock",
        "flashsale_redis_up",
        "flashsale_postgres_up",
    ] {
        assert!(dash_names.contains(needed), "the dashboard lacks {needed}");
    }

    if let Some(promtool) = promtool_or_skip("promtool check metrics") {
        let (ok, said) = check_metrics(&promtool, &text);
        assert!(
            ok,
            "promtool check metrics failed:\n{said}\n--- /metrics:\n{text}"
        );
    }
}

/// promtool, or `None` (said on stderr) outside CI when there is none.
fn promtool_or_skip(what: &str) -> Option<PathBuf> {
    match promtool() {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED {what} (no promtool, not in CI): {why}");
            None
        }
        Err(why) => panic!("CI needs promtool for {what}: {why}"),
    }
}

/// Every panel query of the dashboard is PromQL Prometheus parses: each
/// becomes a recording rule of a scratch file that `promtool check rules`
/// reads, with Grafana's variables given values first.
#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = promtool_or_skip("the dashboard's PromQL check") else {
        return;
    };
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/flashsale.json"))
            .expect("deploy/grafana/flashsale.json"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    panel_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 10, "the dashboard has its queries");
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
                .replace("$sale", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": e })
        })
        .collect();
    // JSON is YAML: promtool reads it as a rules file.
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let path = std::env::temp_dir().join(format!("{}.rules.json", unique("flashsale-dash-")));
    std::fs::write(&path, file.to_string()).expect("scratch rules file");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "a dashboard query is not PromQL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The panels' `expr`s only (templating queries are Grafana's functions).
fn panel_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => panel_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| panel_exprs(i, out)),
        _ => {}
    }
}

/// The name scanner and the histogram mapping the test above relies on.
#[test]
fn names_are_read_out_of_promql() {
    let q = r#"histogram_quantile(0.99, sum by (le) (rate(flashsale_http_request_seconds_bucket{job="flashsale"}[5m]))) / xflashsale_y"#;
    let names = flashsale_names(q);
    assert!(names.contains("flashsale_http_request_seconds_bucket"));
    assert!(!names.iter().any(|n| n == "flashsale_y"));
    let exported: BTreeMap<String, String> = [
        ("flashsale_http_request_seconds", "histogram"),
        ("flashsale_stock", "gauge"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        family_of("flashsale_http_request_seconds_bucket", &exported),
        Some("flashsale_http_request_seconds")
    );
    assert_eq!(family_of("flashsale_stock_count", &exported), None);
    assert_eq!(
        family_of("flashsale_stock", &exported),
        Some("flashsale_stock")
    );
}

/// A sale that ends with drift stays watched after the light reconcile's
/// hour until the drift clears, so its gauge drops to 0 with the repair
/// instead of freezing at the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_that_ended_with_drift_stays_watched_until_it_clears() {
    let app = spawn_app_with(|s| s.worker.reconcile_interval_ms = 200).await;
    let sale = app.live_sale(10, 5, 600).await;
    let dead = app.engine.keys(&sale).dead_letters.clone();
    let mut conn = app.engine.connection();
    let _: String = redis::cmd("XADD")
        .arg(&dead)
        .arg("*")
        .arg("reason")
        .arg("bad row")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let labels = [
        format!("sale_id=\"{sale}\""),
        "kind=\"dead_letters\"".to_string(),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let within = Duration::from_secs(15);
    app.wait_sample("flashsale_reconcile_drift", &labels, 1.0, within)
        .await;
    // Long over: past the hour in which every ended sale is watched.
    sqlx::query(
        "UPDATE sales SET starts_at = now() - interval '3 hours',
         ends_at = now() - interval '2 hours' WHERE id = $1",
    )
    .bind(&sale)
    .execute(&app.db)
    .await
    .expect("UPDATE");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _: () = redis::cmd("DEL")
        .arg(&dead)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    app.wait_sample("flashsale_reconcile_drift", &labels, 0.0, within)
        .await;
}

/// What a scrape holds of the families that carry a sale's label (their
/// names from the scrapes of a test, [`labelled_families`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PerSale {
    /// Samples of those families.
    series: usize,
    /// Their lines (HELP, TYPE and samples), in bytes.
    bytes: usize,
    /// The whole scrape, in bytes.
    scrape: usize,
}

/// The families with a sample labelled with a sale.
fn labelled_families(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("sale_id=\""))
        .filter_map(|l| l.split('{').next())
        .map(String::from)
}

fn per_sale(text: &str, families: &BTreeSet<String>) -> PerSale {
    let mut figures = PerSale {
        series: 0,
        bytes: 0,
        scrape: text.len(),
    };
    for line in text.lines() {
        let (sample, name) = match line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            Some(rest) => (false, rest.split(' ').next().unwrap_or_default()),
            None => (true, line.split(['{', ' ']).next().unwrap_or_default()),
        };
        if families.contains(name) {
            figures.series += usize::from(sample);
            figures.bytes += line.len() + 1;
        }
    }
    figures
}

/// Creates a sale per id on the gateway at `base`, ending at `ends_at`, and
/// confirms a hold in each.
async fn sell(app: &TestApp, base: &str, ids: &[String], ends_at: time::OffsetDateTime) {
    use futures::StreamExt;
    let (admin, buyer) = (app.admin(), app.token("buyer"));
    let post = |path: String, token: &str, body: Value| {
        let req = app.http.post(format!("{base}{path}"));
        let req = req.bearer_auth(token).json(&body);
        async move {
            let res = req.send().await.expect("the gateway answers");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    futures::stream::iter(ids)
        .for_each_concurrent(8, |id| {
            let (post, admin, buyer) = (&post, &admin, &buyer);
            async move {
                let mut body = live_sale(id, 10, 5, 600);
                body["ends_at"] = serde_json::json!(flashsale::domain::rfc3339_ms(ends_at));
                let (status, sale) = post("/v1/sales".into(), admin, body).await;
                assert_eq!(status, 201, "{sale}");
                let held = serde_json::json!({"quantity": 1});
                let (status, hold) =
                    post(format!("/v1/sales/{id}/reservations"), buyer, held).await;
                assert_eq!(status, 201, "{hold}");
                let rid = hold["id"].as_str().expect("reservation id");
                let paid = serde_json::json!({"payment_ref": format!("pay-{id}")});
                let confirm = format!("/v1/reservations/{rid}/confirm");
                let (status, order) = post(confirm, buyer, paid).await;
                assert_eq!(status, 200, "{order}");
            }
        })
        .await;
    assert!(
        time::OffsetDateTime::now_utc() < ends_at,
        "the sales ended before every hold was confirmed: the test measures nothing"
    );
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let res = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(res.status(), 200);
    res.text().await.expect("/metrics body")
}

/// `/metrics` once the series of archived sales are gone, which takes every
/// process an archiver pass after the archive (`worker.loader_interval_ms`),
/// or after 5 s. `families` gathers those with a sale label on the way.
async fn settled(http: &reqwest::Client, base: &str, families: &mut BTreeSet<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(http, base).await;
        families.extend(labelled_families(&text));
        if per_sale(&text, families).series == 0 || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every sale of the test's database is archived.
async fn wait_all_archived(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sales WHERE archived_at IS NULL")
            .fetch_one(&app.db)
            .await
            .expect("count the sales left");
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {within:?}, {left} sales are not archived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Metrics stay bounded (issue 27): a gateway that outlives its sales does
/// not keep their series. A hundred short sales go through one gateway (the
/// real binary: its `/metrics` holds nothing of the other tests of this
/// file), a hold confirmed in each; once they are all archived, the
/// families with a `sale_id` label are back to the series and bytes they had
/// before, and so is the scrape, but for the values of the series without a
/// sale label. Before: after one sale went the same way, so that every
/// series without a sale label (each route's latency, the reserve outcomes,
/// the flush histograms...) exists already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_sales_leave_the_metrics() {
    const SALES: usize = 100;
    // In-process: the database, Postgres reads and tokens; no worker here.
    let app = TestApp::builder().without_worker().spawn().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _gateway = KillOnDrop(
        app.command()
            .arg("serve")
            .env("FLASHSALE__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("FLASHSALE__ENGINE__RETENTION_SECONDS", "1")
            // The archiver's pace, and a light reconcile that exports its
            // drift and stock series for every sale.
            .env("FLASHSALE__WORKER__LOADER_INTERVAL_MS", "200")
            .env("FLASHSALE__WORKER__RECONCILE_INTERVAL_MS", "200")
            .spawn()
            .expect("the flashsale binary starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = app.http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut families = BTreeSet::new();

    let now = time::OffsetDateTime::now_utc();
    sell(&app, &base, &[unique("m-")], now + Duration::from_secs(2)).await;
    wait_all_archived(&app, Duration::from_secs(20)).await;
    let before = settled(&app.http, &base, &mut families).await;

    let ids: Vec<String> = (0..SALES).map(|_| unique("m-")).collect();
    let now = time::OffsetDateTime::now_utc();
    sell(&app, &base, &ids, now + Duration::from_secs(6)).await;
    // While they are live: every sale has the series of both of the
    // worker's loops that export them (the backlog's and the reconcile's).
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let text = scrape(&app.http, &base).await;
        families.extend(labelled_families(&text));
        let seen = ids
            .iter()
            .filter(|id| {
                ["flashsale_sale_keys", "flashsale_stock"]
                    .iter()
                    .all(|f| text.contains(&format!("{f}{{sale_id=\"{id}\"")))
            })
            .count();
        if seen == SALES {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s, {seen} of {SALES} sales have their series"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_all_archived(&app, Duration::from_secs(40)).await;
    let after = settled(&app.http, &base, &mut families).await;

    let kept: Vec<&str> = after.lines().filter(|l| l.contains("sale_id=")).collect();
    let (before, live, after) = (
        per_sale(&before, &families),
        per_sale(&live, &families),
        per_sale(&after, &families),
    );
    eprintln!(
        "per-sale families {families:?}\nbefore {before:?}\nlive   {live:?}\nafter  {after:?}"
    );
    assert!(
        live.series >= SALES,
        "the sales' series were not all seen: {live:?}"
    );
    assert_eq!(
        (after.series, after.bytes),
        (before.series, before.bytes),
        "the per-sale families did not come back down after the sales were archived \
         (before {before:?}, live {live:?}, after {after:?})"
    );
    assert!(
        kept.is_empty(),
        "{} series of archived sales, such as {:?}",
        kept.len(),
        &kept[..kept.len().min(3)]
    );
    // Only the values of the series without a sale label changed (a few
    // digits more in counters and histogram buckets).
    assert!(
        after.scrape <= before.scrape + 2048,
        "the scrape did not come back down: before {before:?}, live {live:?}, after {after:?}"
    );
}
