//! What `tests/loadtest_checker.rs` needs of the gateway's test harness
//! (`../tests/common`): a real gateway on port 0, backed by the real Redis
//! (its own key prefix) and the real Postgres (its own database, migrated).
//! That harness cannot be shared with `#[path]`: it names the gateway's own
//! binary (`CARGO_BIN_EXE_flashsale`), which Cargo gives only to the
//! gateway's tests. The same environment variables point it elsewhere:
//! `FLASHSALE_TEST_REDIS_URL`, `FLASHSALE_TEST_DATABASE_URL` (a server URL
//! without a database).

use std::sync::Arc;

use flashsale::config::Settings;
use flashsale::engine::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

pub fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
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
    s.redis.key_prefix = unique("t");
    s.database.url =
        SecretString::from(format!("{}/{}", pg_server_url(), unique("flashsale_test_")));
    s.limits.enabled = false;
    // Every simulated buyer comes from 127.0.0.1: lift the per-address
    // connection cap, as the per-address rate limit is lifted.
    s.http.max_connections_per_ip = 100_000;
    s.worker.reaper_interval_ms = 100;
    s.worker.loader_interval_ms = 200;
    s
}

pub struct TestApp {
    pub base: String,
    pub settings: Arc<Settings>,
    pub engine: Engine,
    stop: CancellationToken,
}

/// A gateway with its worker, on port 0; it stops when the `TestApp` drops.
pub async fn spawn_app() -> TestApp {
    let settings = test_settings();
    flashsale::store::migrate(settings.database.url.expose_secret())
        .await
        .expect("test database migrates");
    let settings = Arc::new(settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(flashsale::serve(
        settings.clone(),
        listener,
        true,
        stop.clone(),
    ));
    let (engine, _db) = flashsale::connect(&settings).unwrap();
    TestApp {
        base,
        settings,
        engine,
        stop,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
