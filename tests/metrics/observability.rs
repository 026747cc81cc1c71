//! On-call's view of a live gateway (issue 16): its `/metrics` passes
//! `promtool check metrics`, every family it exports has HELP text, and the
//! dashboard (`deploy/grafana/flashsale.json`), the alert rules
//! (`deploy/prometheus/flashsale-rules.yml`) and the README's metrics section
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

/// The README's "## Metrics" section.
fn readme_metrics_section() -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Metrics")
        .expect("README has a Metrics section");
    let rest = &readme[start + 1..];
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
        .set(app.engine.keys(&broken).sale, "x")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_deploy_names_only_exported_series() {
    let app = spawn_app_with(|s| {
        s.worker.reconcile_interval_ms = 200;
        s.worker.claim_idle_ms = 300;
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
        ("README.md (## Metrics)", readme_metrics_section()),
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
    let dead = app.engine.keys(&sale).dead_letters;
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
