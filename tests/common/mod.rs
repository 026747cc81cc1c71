//! Test harness shared by the test binaries (`tests/api`, `tests/metrics`,
//! `tests/faults`, `tests/memory`): each test gets a real gateway on port 0,
//! backed by the real Redis (under its own key prefix) and the real Postgres
//! (its own database, migrated), so tests run in parallel without stepping on
//! each other. A test that passes leaves neither behind ([`Scratch`]).
//!
//! `FLASHSALE_TEST_REDIS_URL` and `FLASHSALE_TEST_DATABASE_URL` (a server
//! URL without a database) point the tests elsewhere.
//! `FLASHSALE_TEST_CLUSTER_NODES` (comma-separated `redis://host:port`, as
//! `redis.cluster_nodes`) runs them on a Redis Cluster with one replica per
//! primary instead, with `redis.confirm_replicas = 1` (scripts/test.sh runs
//! the storm, model, outbox and waiting-room modules so on a loopback cluster).

pub mod redis_server;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use flashsale::auth::Auth;
use flashsale::config::Settings;
use flashsale::domain::{rfc3339_ms, CustomerId, ReservationId, SaleId, Stock};
use flashsale::engine::Engine;
use redis::AsyncCommands;
use redis_server::PrivateRedis;
use secrecy::{ExposeSecret, SecretString};
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
fn test_settings() -> Settings {
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
    // per-address rate limit is lifted (limits off). The edge tests set
    // their own caps.
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
    /// Declared last: dropped after `stop` is cancelled.
    _scratch: Scratch,
}

pub async fn spawn_app() -> TestApp {
    TestApp::builder().spawn().await
}

/// Starts a gateway (with its worker) after `tweak` adjusts the settings.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::builder().settings(tweak).spawn().await
}

/// How a test's gateway starts: `TestApp::builder()...spawn().await`.
pub struct TestAppBuilder {
    settings: Settings,
    worker: bool,
    /// The prefix and database made for this gateway, which it removes;
    /// `None` beside another gateway, which removes its own.
    fresh: Option<(String, String)>,
}

impl TestApp {
    /// A gateway with its worker, on a fresh prefix and a fresh, migrated
    /// database ([`test_settings`]).
    pub fn builder() -> TestAppBuilder {
        let settings = test_settings();
        let fresh = (settings.redis.key_prefix.clone(), database_name(&settings));
        TestAppBuilder {
            settings,
            worker: true,
            fresh: Some(fresh),
        }
    }
}

impl TestAppBuilder {
    pub fn settings(mut self, tweak: impl FnOnce(&mut Settings)) -> Self {
        tweak(&mut self.settings);
        self
    }

    /// No worker loops in the gateway: the test drives them, or they would
    /// race what it checks.
    pub fn without_worker(mut self) -> Self {
        self.worker = false;
        self
    }

    /// On a private Redis, one server whatever the suite runs on; the keys
    /// go with it.
    pub fn on(mut self, redis: &PrivateRedis) -> Self {
        self.settings.redis.url = redis.url();
        self.settings.redis.cluster_nodes.clear();
        self.settings.redis.confirm_replicas = 0;
        self
    }

    /// Another gateway on `app`'s settings: its Redis prefix and its database
    /// (migrated already), which `app` removes when the test passes.
    pub fn beside(mut self, app: &TestApp) -> Self {
        self.settings = (*app.settings).clone();
        self.fresh = None;
        self
    }

    pub async fn spawn(self) -> TestApp {
        // Beside another gateway, the database is migrated already.
        if self.fresh.is_some() {
            flashsale::store::migrate(self.settings.database.url.expose_secret())
                .await
                .expect("test database migrates");
        }
        // Only what was made for this gateway and is still on the shared
        // servers: a prefix on a private Redis goes with that server, and a
        // database another gateway made is that one's to remove.
        let (prefix, database) = match self.fresh {
            Some((prefix, db)) => (
                (self.settings.redis.key_prefix == prefix).then_some(prefix),
                (database_name(&self.settings) == db).then_some(db),
            ),
            None => (None, None),
        };
        let scratch = Scratch::new(&self.settings, prefix, database);
        let settings = Arc::new(self.settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(flashsale::serve(
            settings.clone(),
            listener,
            self.worker,
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
            _scratch: scratch,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        // On a runtime of several threads the gateway's loops go on while
        // this thread blocks: wait until they stopped, or one could write a
        // key after the scratch's scan. On one thread nothing runs meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        // After a failure the scratch is kept: no need to wait.
        if let (true, false, Some(server)) = (multi_thread, std::thread::panicking(), &self.server)
        {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !server.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A test's own corner of the shared servers: its Redis key prefix and its
/// Postgres database, removed when it is dropped after a pass. After a
/// failure (a panic unwinding) they are kept, and named, for inspection.
pub struct Scratch {
    prefix: Option<String>,
    database: Option<String>,
    /// The shared Redis, or the seeds of the shared cluster.
    redis: Vec<String>,
}

impl Scratch {
    /// Claims `prefix` where `settings` put it on the shared Redis (keys on
    /// a private server go with it), and `database` on the shared Postgres.
    fn new(settings: &Settings, prefix: Option<String>, database: Option<String>) -> Scratch {
        let shared_redis = settings.redis.cluster_nodes == cluster_nodes()
            && (!settings.redis.cluster_nodes.is_empty() || settings.redis.url == redis_url());
        Scratch {
            prefix: prefix.filter(|_| shared_redis),
            database,
            redis: match cluster_nodes() {
                seeds if seeds.is_empty() => vec![redis_url()],
                seeds => seeds,
            },
        }
    }

    async fn remove(&self) -> anyhow::Result<()> {
        if let Some(db) = &self.database {
            use sqlx::Connection;
            let mut pg =
                sqlx::PgConnection::connect(&format!("{}/postgres", pg_server_url())).await?;
            // FORCE: the gateway's pools may still hold connections to it.
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db.replace('"', "\"\"")
            ))
            .execute(&mut pg)
            .await?;
        }
        if let Some(prefix) = &self.prefix {
            for node in primaries(&self.redis).await? {
                unlink_prefix(&node, prefix).await?;
            }
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.prefix.is_none() && self.database.is_none() {
            return;
        }
        let what = format!(
            "Redis keys {}:*, database {}",
            self.prefix.as_deref().unwrap_or("(none)"),
            self.database.as_deref().unwrap_or("(none)")
        );
        if std::thread::panicking() {
            eprintln!("kept for inspection: {what}");
            return;
        }
        // A runtime of its own: drop runs inside the test's runtime, which
        // cannot be blocked on from within.
        let removed = std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(self.remove())
            })
            .join()
        });
        // A pass that leaves its data behind is a failure of the harness,
        // and says so: the next runs would pile up what it left.
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("could not remove {what}: {e:#}"),
            Err(_) => panic!("removing {what} panicked"),
        }
    }
}

/// The primaries of the Redis at `seeds`: the one server, or every primary of
/// a cluster (`CLUSTER NODES` on the first seed), each SCANned on its own.
async fn primaries(seeds: &[String]) -> anyhow::Result<Vec<String>> {
    let [seed, more @ ..] = seeds else {
        return Ok(Vec::new());
    };
    if more.is_empty() && cluster_nodes().is_empty() {
        return Ok(vec![seed.clone()]);
    }
    let client = redis::Client::open(seed.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    Ok(nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let master = f.get(2)?.contains("master") && !f.get(2)?.contains("fail");
            let addr = f.get(1)?.split('@').next()?;
            master.then(|| format!("redis://{addr}"))
        })
        .collect())
}

/// Deletes every key under `prefix` on one server, by SCAN: one key per
/// UNLINK, as keys of different slots cannot share one on a cluster.
async fn unlink_prefix(node: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(node)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{prefix}:*");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The database name at the end of `settings`' database URL.
fn database_name(settings: &Settings) -> String {
    let url = settings.database.url.expose_secret();
    url.rsplit('/').next().unwrap_or_default().to_string()
}

/// An engine on a fresh key prefix, without a gateway, after `tweak`; its
/// keys go with the [`Scratch`] (keep it alive as long as the engine).
pub fn test_engine(tweak: impl FnOnce(&mut Settings)) -> (Engine, Scratch) {
    let mut settings = test_settings();
    tweak(&mut settings);
    let engine = Engine::new(&settings).expect("engine");
    // No database: an engine alone never makes one.
    let scratch = Scratch::new(&settings, Some(settings.redis.key_prefix.clone()), None);
    (engine, scratch)
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

/// One row of the Postgres `events` table.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    pub kind: String,
    pub aggregatetype: String,
    pub aggregateid: String,
    pub payload: Value,
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
        self.confirm_with(rid, token, "pay-1").await
    }

    pub async fn confirm_with(&self, rid: &str, token: &str, payment_ref: &str) -> Answer {
        let res = self
            .http
            .post(self.url(&format!("/v1/reservations/{rid}/confirm")))
            .bearer_auth(token)
            .json(&json!({ "payment_ref": payment_ref }))
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
        conn.hgetall(self.engine.keys(sale).customers.clone())
            .await
            .unwrap()
    }

    /// Entries in the sale's outbox not yet flushed to Postgres.
    pub async fn outbox_len(&self, sale: &str) -> usize {
        let mut conn = self.engine.connection();
        conn.xlen(self.engine.keys(sale).outbox.clone())
            .await
            .unwrap()
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

    /// The sale's rows of `events`, by id.
    pub async fn events(&self, sale: &str) -> Vec<EventRow> {
        let rows: Vec<(String, String, String, String, Value)> = sqlx::query_as(
            "SELECT id, type, aggregatetype, aggregateid, payload FROM events
             WHERE sale_id = $1 ORDER BY id",
        )
        .bind(sale)
        .fetch_all(&self.db)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(id, kind, aggregatetype, aggregateid, payload)| EventRow {
                id,
                kind,
                aggregatetype,
                aggregateid,
                payload,
            })
            .collect()
    }

    /// Entries in the sale's events stream not yet flushed to Postgres.
    pub async fn events_len(&self, sale: &str) -> usize {
        let mut conn = self.engine.connection();
        conn.xlen(&self.engine.keys(sale).events).await.unwrap()
    }

    /// Waits (up to `secs`) until the sale has at least `n` events in
    /// Postgres and both streams are empty, then returns the rows.
    pub async fn wait_for_events(&self, sale: &str, n: usize, secs: u64) -> Vec<EventRow> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.events(sale).await;
            if (got.len() >= n
                && self.events_len(sale).await == 0
                && self.outbox_len(sale).await == 0)
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

    /// Waits (up to `within`) until `/readyz` answers `status`: it probes at
    /// most once a second, so a change shows within about a second.
    pub async fn wait_readiness(&self, status: u16, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let ready = self.get("/readyz", None).await;
            if ready.status == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz still {} after {within:?}: {}",
                ready.status,
                ready.body
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

    /// The real `flashsale` binary, configured like this gateway (same Redis
    /// prefix, same database), quiet, limits off.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
        cmd.env("FLASHSALE__REDIS__URL", &self.settings.redis.url)
            .env(
                "FLASHSALE__REDIS__CLUSTER_NODES",
                self.settings.redis.cluster_nodes.join(","),
            )
            .env(
                "FLASHSALE__REDIS__CONFIRM_REPLICAS",
                self.settings.redis.confirm_replicas.to_string(),
            )
            .env(
                "FLASHSALE__REDIS__KEY_PREFIX",
                &self.settings.redis.key_prefix,
            )
            .env(
                "FLASHSALE__DATABASE__URL",
                self.settings.database.url.expose_secret(),
            )
            .env("FLASHSALE__LIMITS__ENABLED", "false")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    }

    /// Runs `flashsale [args] serve --no-worker` with `env`: it must refuse
    /// to start, exit 2 and say one line that names `key` (bad configuration).
    pub fn serve_refuses(&self, args: &[&str], env: &[(&str, &str)], key: &str) {
        let out = self
            .command()
            .envs(env.iter().copied())
            .args(args)
            .args(["serve", "--no-worker"])
            .env(
                "FLASHSALE__HTTP__ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("flashsale runs");
        let err = String::from_utf8_lossy(&out.stderr);
        let case = format!("{args:?} {env:?}: {err}");
        assert_eq!(out.status.code(), Some(2), "{case}");
        assert_eq!(err.trim().lines().count(), 1, "{case}");
        assert!(err.contains(&format!("`{key}`")), "{case}");
    }

    /// Runs the real binary with `args` to the end, capturing its output.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command()
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .output()
            .expect("flashsale runs")
    }

    /// Waits until the worker has archived the sale (`sales.archived_at` set).
    pub async fn wait_archived(&self, sale: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let archived: Option<time::OffsetDateTime> =
                sqlx::query_scalar("SELECT archived_at FROM sales WHERE id = $1")
                    .bind(sale)
                    .fetch_one(&self.db)
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

    /// `reconcile --json` for one sale: (exit code, drift kinds).
    pub fn drift(&self, sale: &str) -> (i32, Vec<String>) {
        let out = self.run(&["reconcile", "--sale", sale, "--json"]);
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

    /// Stops the gateway and waits for it to drain.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.server.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
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

/// A sale id a test wrote: one that is not an id is a bug in the test.
#[track_caller]
pub fn sale_id(id: &str) -> SaleId {
    SaleId::parse(id).expect("a test's sale id")
}

/// A reservation id a test wrote or read back from the API.
#[track_caller]
pub fn reservation_id(id: &str) -> ReservationId {
    ReservationId::parse(id).expect("a test's reservation id")
}

/// A customer id a test wrote.
#[track_caller]
pub fn customer_id(id: &str) -> CustomerId {
    CustomerId::parse(id).expect("a test's customer id")
}

/// A sale's counters straight from Redis (one HMGET, so one moment).
pub async fn read_stock(engine: &Engine, sale: &str) -> Stock {
    let mut conn = engine.connection();
    let v: (i64, i64, i64, i64) = redis::cmd("HMGET")
        .arg(engine.keys(sale).sale.clone())
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
