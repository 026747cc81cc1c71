//! Typed, layered settings: `config/default.toml` (embedded in the binary),
//! then the file given with `--config`, then `FLASHSALE__SECTION__KEY`
//! environment variables. Any error names the key it is about, so a bad
//! deployment fails at start with one line instead of at the first request.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

const DEFAULTS: &str = include_str!("../config/default.toml");

/// The HS256 secret used when `auth.jwt_secret` is not set and no public
/// keys are configured; `serve` warns while it is used, and it is refused
/// beside public keys (anyone can read it here).
pub const DEV_JWT_SECRET: &str = "flashsale-development-secret-do-not-use-in-production";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub redis: RedisSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub engine: EngineSettings,
    pub worker: WorkerSettings,
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    #[serde(deserialize_with = "list_or_commas")]
    pub cors_allowed_origins: Vec<String>,
    /// The landing page's CSP `frame-ancestors`: the store's origins that
    /// may embed it, or `'none'` (`/ops` is never framed).
    #[serde(deserialize_with = "list_or_commas")]
    pub frame_ancestors: Vec<String>,
    pub pages: bool,
    /// From the accept (or the end of the previous response) to the end of
    /// the next request's headers; past it the connection is closed.
    pub header_timeout_ms: u64,
    /// A connection whose peer takes none of our bytes for this long is
    /// closed (a client that stopped reading).
    pub send_timeout_ms: u64,
    /// Open client connections, in all (lowered at start to fit under the
    /// open-file limit) and per client address (trusted proxies: no cap).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Open event streams (`/v1/sales/{id}/stream`) per gateway.
    pub max_streams: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub timeout_ms: u64,
    /// Seed nodes of a Redis Cluster; empty: one Redis at `url`.
    #[serde(deserialize_with = "list_or_commas")]
    pub cluster_nodes: Vec<String>,
    /// Replicas an order must reach before its confirm is answered and
    /// before the worker writes it to Postgres.
    pub confirm_replicas: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password, so it is never printed.
    pub url: SecretString,
    pub max_connections: u32,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Absent from `config/default.toml` on purpose: "not set" must be told
    /// from "set", since only the built-in development secret is refused
    /// beside public keys. See `hs256_secret`.
    #[serde(default)]
    pub jwt_secret: Option<SecretString>,
    /// PEM files of public keys (RSA, EC P-256, Ed25519).
    #[serde(deserialize_with = "list_or_commas")]
    pub jwt_public_keys: Vec<String>,
    /// The store's JWKS; empty: none.
    pub jwks_url: String,
    pub jwks_min_refresh_seconds: u64,
    pub jwks_max_age_seconds: u64,
    /// Checked when not empty.
    pub issuer: String,
    pub audience: String,
    pub leeway_seconds: u64,
    pub customer_claim: String,
    pub role_claim: String,
    /// `false`: only a service confirms. `None` (not set by any layer):
    /// see [`AuthSettings::customer_confirm`].
    #[serde(default)]
    pub customer_confirm: Option<bool>,
    /// Verified tokens remembered (by hash, until their `exp`); 0: none.
    pub token_cache_entries: usize,
}

impl AuthSettings {
    pub fn has_public_keys(&self) -> bool {
        !self.jwt_public_keys.is_empty() || !self.jwks_url.is_empty()
    }

    /// The HS256 secret tokens may be signed with: the one set, else the
    /// development secret while no public keys are configured, else none
    /// (HS256 tokens are then refused).
    pub fn hs256_secret(&self) -> Option<SecretString> {
        match &self.jwt_secret {
            Some(s) => Some(s.clone()),
            None if !self.has_public_keys() => Some(SecretString::from(DEV_JWT_SECRET)),
            None => None,
        }
    }

    /// Whether a buyer may confirm their own hold: as set, else off beside
    /// the store's own sign-in (production: only its backend knows that a
    /// payment happened) and on for the HS256 demo. Read where it is used,
    /// so settings changed after loading (tests) resolve the same way.
    pub fn customer_confirm(&self) -> bool {
        self.customer_confirm
            .unwrap_or_else(|| !self.has_public_keys())
    }

    /// Whether HS256 tokens are verified with the development secret.
    pub fn uses_dev_secret(&self) -> bool {
        self.hs256_secret()
            .is_some_and(|s| s.expose_secret() == DEV_JWT_SECRET)
    }
}

/// Rate limits of the reservation endpoints (`limits.enabled = false` turns
/// all of them off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub enabled: bool,
    pub per_customer_per_second: u32,
    pub per_customer_burst: u32,
    pub per_ip_per_second: u32,
    pub per_ip_burst: u32,
    /// Public reads (sales, a sale, the stream) per client address.
    pub public_per_ip_per_second: u32,
    pub public_per_ip_burst: u32,
    pub global_per_second: u32,
    /// Reserves in flight at once on one gateway; more get 503 at once.
    pub max_in_flight: usize,
    /// Peers whose `client_ip_header` is believed (exact addresses).
    pub trusted_proxies: Vec<String>,
    pub client_ip_header: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub idempotency_ttl_seconds: u64,
    pub max_quantity: u32,
    /// How long after a sale ended (and settled) its Redis keys stay.
    pub retention_seconds: u64,
    /// Requests of one sale carried by one script call at most (group
    /// commit); 1: one call per request.
    pub max_batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub reaper_interval_ms: u64,
    pub reaper_batch: u32,
    pub loader_interval_ms: u64,
    pub flush_interval_ms: u64,
    pub flush_batch: usize,
    pub flush_consumers: usize,
    pub claim_idle_ms: u64,
    pub max_backoff_ms: u64,
    pub reconcile_interval_ms: u64,
}

/// Deliveries of events to the store's endpoints (Standard Webhooks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Endpoints may be plain `http://` (tests, a receiver on a private
    /// network the operator trusts).
    pub allow_http: bool,
    /// Endpoints may resolve to loopback, private, link-local, unique-local
    /// or unspecified addresses.
    pub allow_private_networks: bool,
    /// One attempt's whole budget: connect, send, read the status.
    pub timeout_ms: u64,
    /// The waits between attempts; attempts = 1 + its length.
    pub retry_schedule_seconds: Vec<u64>,
    /// How long the previous secret still signs after a rotation.
    pub rotation_grace_seconds: u64,
    /// Events and deliveries older than this are deleted.
    pub retention_days: u32,
    /// 32 bytes, base64: endpoint secrets are stored encrypted with it.
    pub secret_key: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration problem, already phrased as the one line to print.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Loads the layers in order; the first problem found is reported with
    /// the key it is about.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "--config {}: no such file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("FLASHSALE__").split("__"));
        let settings: Settings = figment.extract().map_err(describe)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("`{key}`: {why}")));
        let w = &self.webhooks;
        if !(100..=120_000).contains(&w.timeout_ms) {
            return bad("webhooks.timeout_ms", "must be 100 to 120000");
        }
        if w.retry_schedule_seconds.len() > 20
            || w.retry_schedule_seconds.iter().any(|s| *s > 7 * 86_400)
        {
            return bad(
                "webhooks.retry_schedule_seconds",
                "at most 20 waits, each at most 604800",
            );
        }
        if w.retention_days == 0 {
            return bad("webhooks.retention_days", "must be above 0");
        }
        self.webhook_secret_key().map(|_| ())
    }

    /// `webhooks.secret_key` decoded: 32 bytes, or `None` when unset.
    pub fn webhook_secret_key(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        use base64::Engine as _;
        let Some(key) = &self.webhooks.secret_key else {
            return Ok(None);
        };
        base64::engine::general_purpose::STANDARD
            .decode(key.expose_secret().trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Some)
            .ok_or_else(|| ConfigError("`webhooks.secret_key`: must be 32 bytes in base64".into()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("`{key}`: {why}")));
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty() || prefix.len() > 32 || prefix.contains(['{', '}', ' ']) {
            return bad(
                "redis.key_prefix",
                "must be 1 to 32 characters without braces or spaces",
            );
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return bad("redis.url", "must start with redis:// or rediss://");
        }
        for node in &self.redis.cluster_nodes {
            if !node.starts_with("redis://") && !node.starts_with("rediss://") {
                return bad(
                    "redis.cluster_nodes",
                    &format!("`{node}` must start with redis:// or rediss://"),
                );
            }
        }
        if self.redis.confirm_replicas > 16 {
            return bad("redis.confirm_replicas", "must be 0 to 16");
        }
        let db = self.database.url.expose_secret();
        if !db.starts_with("postgres://") && !db.starts_with("postgresql://") {
            return bad("database.url", "must start with postgres://");
        }
        self.validate_auth()?;
        self.validate_webhooks()?;
        if self.http.body_limit_bytes < 256 {
            return bad("http.body_limit_bytes", "must be at least 256");
        }
        for origin in &self.http.cors_allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.trim_end_matches('/').contains(['?', '#', ' '])
                && origin.splitn(4, '/').nth(3).is_none_or(str::is_empty);
            if !ok {
                return bad(
                    "http.cors_allowed_origins",
                    &format!("`{origin}` is not an origin such as https://shop.example"),
                );
            }
        }
        if let Err(why) = check_frame_ancestors(&self.http.frame_ancestors) {
            return bad("http.frame_ancestors", &why);
        }
        if !(100..=600_000).contains(&self.http.header_timeout_ms) {
            return bad("http.header_timeout_ms", "must be 100 to 600000");
        }
        if !(100..=3_600_000).contains(&self.http.send_timeout_ms) {
            return bad("http.send_timeout_ms", "must be 100 to 3600000");
        }
        for (key, value) in [
            ("http.max_connections", self.http.max_connections),
            (
                "http.max_connections_per_ip",
                self.http.max_connections_per_ip,
            ),
            ("http.max_streams", self.http.max_streams),
        ] {
            if value == 0 {
                return bad(key, "must be above 0");
            }
        }
        if self.redis.timeout_ms == 0 {
            return bad("redis.timeout_ms", "must be above 0");
        }
        if self.database.timeout_ms == 0 {
            return bad("database.timeout_ms", "must be above 0");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be above 0");
        }
        if self.engine.max_quantity == 0 {
            return bad("engine.max_quantity", "must be above 0");
        }
        if !(1..=1000).contains(&self.engine.max_batch) {
            return bad("engine.max_batch", "must be 1 to 1000");
        }
        if self.engine.idempotency_ttl_seconds == 0 {
            return bad("engine.idempotency_ttl_seconds", "must be above 0");
        }
        if self.worker.reaper_interval_ms == 0 || self.worker.reaper_interval_ms > 1000 {
            return bad(
                "worker.reaper_interval_ms",
                "must be 1 to 1000 (holds are reaped within 1 s)",
            );
        }
        if self.worker.reaper_batch == 0 {
            return bad("worker.reaper_batch", "must be above 0");
        }
        for (key, value) in [
            ("worker.loader_interval_ms", self.worker.loader_interval_ms),
            ("worker.flush_interval_ms", self.worker.flush_interval_ms),
            ("worker.claim_idle_ms", self.worker.claim_idle_ms),
            ("worker.max_backoff_ms", self.worker.max_backoff_ms),
            (
                "worker.reconcile_interval_ms",
                self.worker.reconcile_interval_ms,
            ),
        ] {
            if value == 0 {
                return bad(key, "must be above 0");
            }
        }
        if !(1..=16).contains(&self.worker.flush_consumers) {
            return bad("worker.flush_consumers", "must be 1 to 16");
        }
        if !(1..=10_000).contains(&self.worker.flush_batch) {
            return bad("worker.flush_batch", "must be 1 to 10000");
        }
        if self.limits.enabled
            && (self.limits.per_customer_per_second == 0 || self.limits.per_ip_per_second == 0)
        {
            return bad(
                "limits.per_customer_per_second",
                "per-second limits must be above 0 while limits are enabled",
            );
        }
        if self.limits.enabled && self.limits.public_per_ip_per_second == 0 {
            return bad(
                "limits.public_per_ip_per_second",
                "must be above 0 while limits are enabled",
            );
        }
        if let Err(e) = self
            .log
            .level
            .parse::<tracing_subscriber::filter::EnvFilter>()
        {
            return Err(ConfigError(format!("`log.level`: {e}")));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("`{key}`: {why}")));
        let a = &self.auth;
        if let Some(secret) = &a.jwt_secret {
            let secret = secret.expose_secret();
            if secret.len() < 16 {
                return bad("auth.jwt_secret", "must be at least 16 bytes long");
            }
            if secret == DEV_JWT_SECRET && a.has_public_keys() {
                return bad(
                    "auth.jwt_secret",
                    "the development secret is refused beside public keys \
                     (auth.jwt_public_keys, auth.jwks_url): set a secret of your own or none",
                );
            }
        }
        if !a.jwks_url.is_empty() {
            let ok = reqwest::Url::parse(&a.jwks_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return bad("auth.jwks_url", "must be an http:// or https:// URL");
            }
        }
        if a.jwks_min_refresh_seconds == 0 {
            return bad("auth.jwks_min_refresh_seconds", "must be above 0");
        }
        if a.jwks_max_age_seconds < a.jwks_min_refresh_seconds {
            return bad(
                "auth.jwks_max_age_seconds",
                "must be at least auth.jwks_min_refresh_seconds",
            );
        }
        if a.token_cache_entries > 10_000_000 {
            return bad("auth.token_cache_entries", "must be 0 to 10000000");
        }
        if a.leeway_seconds > 300 {
            return bad("auth.leeway_seconds", "must be 0 to 300");
        }
        for (key, claim) in [
            ("auth.customer_claim", &a.customer_claim),
            ("auth.role_claim", &a.role_claim),
        ] {
            if claim.is_empty() || claim.len() > 64 {
                return bad(key, "must be a claim name of 1 to 64 characters");
            }
        }
        for path in &a.jwt_public_keys {
            let text = std::fs::read(path).map_err(|e| {
                ConfigError(format!("`auth.jwt_public_keys`: cannot read {path}: {e}"))
            })?;
            if let Err(why) = crate::auth::keys::public_from_pem(&text) {
                return Err(ConfigError(format!(
                    "`auth.jwt_public_keys`: {path}: {why}"
                )));
            }
        }
        Ok(())
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis.timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.http.header_timeout_ms)
    }

    pub fn database_timeout(&self) -> Duration {
        Duration::from_millis(self.database.timeout_ms)
    }
}

/// Turns figment's error into one line that names the key.
fn describe(err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.join(".");
    let what = match &err.kind {
        Kind::UnknownField(field, _) => {
            path = join(&path, field);
            "unknown key".to_string()
        }
        Kind::MissingField(field) => {
            path = join(&path, field);
            "missing key".to_string()
        }
        other => other.to_string(),
    };
    let source = match err.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(src) => format!(" (in {src})"),
            None => format!(" (from {})", m.name),
        },
        None => String::new(),
    };
    if path.is_empty() {
        ConfigError(format!("{what}{source}"))
    } else {
        ConfigError(format!("`{path}`: {what}{source}"))
    }
}

/// figment's path sometimes already ends with the field.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else if path == field || path.ends_with(&format!(".{field}")) {
        path.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The sources go into the landing page's Content-Security-Policy as they
/// are, so none may hold what would end the directive (`;`, `,`), add another
/// source (whitespace) or a keyword (a quote): only the two keywords that
/// make sense here are taken whole.
fn check_frame_ancestors(sources: &[String]) -> Result<(), String> {
    const KEYWORDS: [&str; 2] = ["'none'", "'self'"];
    if sources.is_empty() {
        return Err("must name at least one source, or 'none'".into());
    }
    let plain = |c: char| c.is_ascii_graphic() && !matches!(c, ';' | ',' | '\'' | '"');
    for source in sources {
        let ok = KEYWORDS.contains(&source.as_str())
            || (!source.is_empty() && source.chars().all(plain));
        if !ok {
            return Err(format!(
                "{source:?} is not a source such as https://shop.example, 'self' or 'none'"
            ));
        }
    }
    if sources.len() > 1 && sources.iter().any(|s| s == "'none'") {
        return Err("'none' cannot stand beside other sources".into());
    }
    Ok(())
}

/// A list in TOML, or a comma-separated string from an environment variable.
fn list_or_commas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("fs-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, text).unwrap();
        let r = Settings::load(Some(&file));
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.redis.key_prefix, "fs");
        assert!(s.limits.enabled);
        assert!(s.http.pages);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_toml("[http]\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("`http.bogus`: unknown key"), "{e}");
        let e = load_toml("[redis]\nkey_prefix = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`redis.key_prefix`"), "{e}");
        let e = load_toml("[redis]\nkey_prefix = \"a{b}\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`redis.key_prefix`"), "{e}");
        let e = load_toml("[worker]\nreaper_interval_ms = 5000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`worker.reaper_interval_ms`"), "{e}");
        for bad in [
            "[http]\nheader_timeout_ms = 0\n",
            "[http]\nmax_connections = 0\n",
            "[http]\nmax_connections_per_ip = -1\n",
            "[http]\nmax_streams = 0\n",
            "[http]\nsend_timeout_ms = 5\n",
        ] {
            let key = bad.lines().nth(1).unwrap().split(' ').next().unwrap();
            let e = load_toml(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`http.{key}`")), "{bad}: {e}");
        }
        let e = load_toml("[limits]\npublic_per_ip_per_second = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`limits.public_per_ip_per_second`"), "{e}");
        let e = load_toml("not toml [").unwrap_err().to_string();
        assert!(e.starts_with("configuration error"), "{e}");
    }

    #[test]
    fn origins_take_a_list_or_commas() {
        let s = load_toml("[http]\ncors_allowed_origins = [\"https://a.example\"]\n").unwrap();
        assert_eq!(s.http.cors_allowed_origins, vec!["https://a.example"]);
        let s =
            load_toml("[http]\ncors_allowed_origins = \"https://a.example, https://b.example\"\n")
                .unwrap();
        assert_eq!(s.http.cors_allowed_origins.len(), 2);
    }
}
