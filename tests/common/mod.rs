//! Test harness: each test gets a real gateway on port 0, backed by the real
//! Redis (under its own key prefix) and the real Postgres (its own database,
//! migrated), so tests run in parallel without stepping on each other.
//!
//! `FLASHSALE_TEST_REDIS_URL` and `FLASHSALE_TEST_DATABASE_URL` (a server
//! URL without a database) point the tests elsewhere.
//! `FLASHSALE_TEST_CLUSTER_NODES` (comma-separated `redis://host:port`, as
//! `redis.cluster_nodes`) runs them on a Redis Cluster with one replica per
//! primary instead, with `redis.confirm_replicas = 1` (scripts/test.sh runs
//! storm, model and outbox so on a loopback cluster).
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod crowd;
pub mod proxy;
pub mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use flashsale::auth::Auth;
use flashsale::config::Settings;
use flashsale::domain::{rfc3339_ms, Stock};
use flashsale::engine::Engine;
use redis::AsyncCommands;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The seed nodes of the cluster the tests run on; empty: one Redis.
pub fn cluster_nodes() -> Vec<String> {
    std::env::var("FLASHSALE_TEST_CLUSTER_NODES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub fn pg_server_url() -> String {
    std::env::var("FLASHSALE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Settings for one test: own key prefix, own (not yet created) database.
pub fn test_settings() -> Settings {
    let mut s = Settings::load(None).expect("default configuration loads");
    s.redis.url = redis_url();
    s.redis.cluster_nodes = cluster_nodes();
    // The topology scripts/cluster.sh makes: one replica per primary, so
    // every confirm of a run on the cluster also goes through the wait.
    s.redis.confirm_replicas = u32::from(!s.redis.cluster_nodes.is_empty());
    s.redis.key_prefix = unique("t");
    s.database.url =
        SecretString::from(format!("{}/{}", pg_server_url(), unique("flashsale_test_")));
    s.limits.enabled = false;
    // Every simulated buyer of a test comes from 127.0.0.1 (storms hold
    // thousands of connections at once): lift the per-address cap, as the
    // per-address rate limit is lifted (limits off). tests/edge.rs sets
    // its own caps.
    s.http.max_connections_per_ip = 100_000;
    s.worker.reaper_interval_ms = 100;
    s.worker.loader_interval_ms = 200;
    s
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub settings: Arc<Settings>,
    pub engine: Engine,
    pub db: sqlx::PgPool,
    pub auth: Auth,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a gateway (with its worker) after `tweak` adjusts the settings.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    tweak(&mut settings);
    spawn_with_settings(settings, true, true).await
}

/// `migrate = false` for a gateway whose database is meant to be unreachable.
pub async fn spawn_with_settings(settings: Settings, with_worker: bool, migrate: bool) -> TestApp {
    use secrecy::ExposeSecret;
    if migrate {
        flashsale::store::migrate(settings.database.url.expose_secret())
            .await
            .expect("test database migrates");
    }
    let settings = Arc::new(settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(flashsale::serve(
        settings.clone(),
        listener,
        with_worker,
        stop.clone(),
    ));
    let (engine, db) = flashsale::connect(&settings).unwrap();
    TestApp {
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        // A test that configures public keys sets its own secret beside
        // them for the admin's and customers' HS256 tokens.
        auth: Auth::new(
            &settings
                .auth
                .hs256_secret()
                .expect("the test settings take HS256 tokens"),
        ),
        settings,
        engine,
        db,
        stop,
        server: Some(server),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A sale body that is live now, with the given stock, limit and hold.
pub fn live_sale(id: &str, stock: i64, limit: u32, hold_seconds: u32) -> Value {
    let now = time::OffsetDateTime::now_utc();
    json!({
        "id": id, "sku": "TV-55-OLED", "name": "55\" OLED TV", "price_cents": 499900,
        "currency": "IDR", "stock": stock,
        "starts_at": rfc3339_ms(now - Duration::from_secs(60)),
        "ends_at": rfc3339_ms(now + Duration::from_secs(3600)),
        "per_customer_limit": limit, "hold_seconds": hold_seconds,
    })
}

/// A response's status and JSON body (Null when the body is not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
    pub retry_after: Option<String>,
}

impl Answer {
    pub async fn from(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let text = res.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            content_type,
            retry_after,
        }
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Asserts a contract error: status, code and the problem+json shape.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "body: {}",
            self.body
        );
        assert_eq!(self.content_type, "application/problem+json");
        for field in ["type", "title", "detail"] {
            assert!(
                self.body[field].is_string(),
                "problem lacks {field}: {}",
                self.body
            );
        }
        assert_eq!(self.body["status"], status);
    }
}

impl TestApp {
    pub fn token(&self, sub: &str) -> String {
        self.auth.issue(sub, None, 3600).unwrap()
    }

    pub fn admin(&self) -> String {
        self.auth.issue("ops", Some("admin"), 3600).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_sale(&self, body: &Value) -> Answer {
        let res = self
            .http
            .post(self.url("/v1/sales"))
            .bearer_auth(self.admin())
            .json(body)
            .send()
            .await
            .unwrap();
        Answer::from(res).await
    }

    /// Creates a live sale and returns its id.
    pub async fn live_sale(&self, stock: i64, limit: u32, hold_seconds: u32) -> String {
        let id = unique("s-");
        let a = self
            .create_sale(&live_sale(&id, stock, limit, hold_seconds))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        id
    }

    pub async fn reserve(&self, sale: &str, token: &str, quantity: u32) -> Answer {
        let res = self
            .http
            .post(self.url(&format!("/v1/sales/{sale}/reservations")))
            .bearer_auth(token)
            .json(&json!({ "quantity": quantity }))
            .send()
            .await
            .unwrap();
        Answer::from(res).await
    }

    pub async fn confirm(&self, rid: &str, token: &str) -> Answer {
        let res = self
            .http
            .post(self.url(&format!("/v1/reservations/{rid}/confirm")))
            .bearer_auth(token)
            .json(&json!({ "payment_ref": "pay-1" }))
            .send()
            .await
            .unwrap();
        Answer::from(res).await
    }

    pub async fn release(&self, rid: &str, token: &str) -> Answer {
        let res = self
            .http
            .delete(self.url(&format!("/v1/reservations/{rid}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        Answer::from(res).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Answer::from(req.send().await.unwrap()).await
    }

    /// The sale's counters straight from Redis, in one atomic read.
    pub async fn stock(&self, sale: &str) -> Stock {
        read_stock(&self.engine, sale).await
    }

    /// Units held + confirmed per customer, as the engine counts them.
    pub async fn per_customer(&self, sale: &str) -> std::collections::HashMap<String, i64> {
        let mut conn = self.engine.connection();
        conn.hgetall(self.engine.keys(sale).customers)
            .await
            .unwrap()
    }

    /// Entries in the sale's outbox not yet flushed to Postgres.
    pub async fn outbox_len(&self, sale: &str) -> usize {
        let mut conn = self.engine.connection();
        conn.xlen(self.engine.keys(sale).outbox).await.unwrap()
    }

    /// The sale's orders in Postgres: (rows, distinct reservation ids, units).
    pub async fn orders(&self, sale: &str) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT count(*), count(DISTINCT reservation_id), coalesce(sum(quantity), 0)::bigint
             FROM orders WHERE sale_id = $1",
        )
        .bind(sale)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// Waits (up to `secs`) until the worker has flushed `rows` orders of the
    /// sale and the outbox is empty, then returns what Postgres holds.
    pub async fn wait_for_orders(&self, sale: &str, rows: i64, secs: u64) -> (i64, i64, i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.orders(sale).await;
            if (got.0 >= rows && self.outbox_len(sale).await == 0)
                || std::time::Instant::now() > deadline
            {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let res = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// Waits (up to `within`) until `/metrics` has a sample of `family` with
    /// every label of `labels` (`name="value"`) and the value `value`.
    pub async fn wait_sample(&self, family: &str, labels: &[&str], value: f64, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        let start = format!("{family}{{");
        loop {
            let text = self.metrics_text().await;
            let seen: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&start))
                .filter(|l| labels.iter().all(|want| l.contains(want)))
                .collect();
            let at = |l: &&str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if seen.iter().any(|l| at(l) == Some(value)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {family}{labels:?} = {value} after {within:?}; seen {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to `within`) until `/metrics` has no sample carrying
    /// `label` (`name="value"`).
    pub async fn wait_no_sample(&self, label: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let text = self.metrics_text().await;
            let seen: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(label))
                .collect();
            if seen.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still {label} after {within:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.server.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }
}

/// The real `flashsale` binary, configured like `app` (same Redis prefix, same
/// database), quiet, limits off.
pub fn flashsale_command(app: &TestApp) -> std::process::Command {
    use secrecy::ExposeSecret;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.env("FLASHSALE__REDIS__URL", &app.settings.redis.url)
        .env(
            "FLASHSALE__REDIS__CLUSTER_NODES",
            app.settings.redis.cluster_nodes.join(","),
        )
        .env(
            "FLASHSALE__REDIS__CONFIRM_REPLICAS",
            app.settings.redis.confirm_replicas.to_string(),
        )
        .env(
            "FLASHSALE__REDIS__KEY_PREFIX",
            &app.settings.redis.key_prefix,
        )
        .env(
            "FLASHSALE__DATABASE__URL",
            app.settings.database.url.expose_secret(),
        )
        .env("FLASHSALE__LIMITS__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// Runs the real binary with `args` to the end, capturing its output.
pub fn run_flashsale(app: &TestApp, args: &[&str]) -> std::process::Output {
    flashsale_command(app)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("flashsale runs")
}

/// Waits until the worker has archived the sale (`sales.archived_at` set).
pub async fn wait_archived(app: &TestApp, sale: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let archived: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT archived_at FROM sales WHERE id = $1")
                .bind(sale)
                .fetch_one(&app.db)
                .await
                .expect("the sale is in Postgres");
        if archived.is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sale} never archived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a command printed, stdout then stderr: the message of an assertion on it.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts a command exited `code`, showing what it printed when it did not.
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", said(out));
}

/// `reconcile --json` for one sale: (exit code, drift kinds).
pub fn reconcile_drift(app: &TestApp, sale: &str) -> (i32, Vec<String>) {
    let out = run_flashsale(app, &["reconcile", "--sale", sale, "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let kinds = report["sales"][0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    (out.status.code().unwrap(), kinds)
}

/// kill(2), without needing a `kill` binary on the machine.
pub fn send_signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill() has no memory effects; a stale pid just fails.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sale's counters straight from Redis (one HMGET, so one moment).
pub async fn read_stock(engine: &Engine, sale: &str) -> Stock {
    let mut conn = engine.connection();
    let v: (i64, i64, i64, i64) = redis::cmd("HMGET")
        .arg(engine.keys(sale).sale)
        .arg(&["total", "available", "held", "sold"])
        .query_async(&mut conn)
        .await
        .unwrap();
    Stock {
        total: v.0,
        available: v.1,
        held: v.2,
        sold: v.3,
    }
}

/// `available + held + sold == total`, each `>= 0`.
#[track_caller]
pub fn assert_adds_up(s: &Stock) {
    assert!(
        s.available >= 0 && s.held >= 0 && s.sold >= 0 && s.available + s.held + s.sold == s.total,
        "stock does not add up: {s:?}"
    );
}

/// A child process that is killed when the test ends, passed or failed.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
