//! Delivering events to the store's endpoints: one attempt of one claimed
//! delivery (the Standard Webhooks request, signed), and what its answer
//! means for the delivery (2xx delivered, 410 gone, anything else retried
//! on `webhooks.retry_schedule_seconds` with jitter, then failed).
//!
//! The HTTP client is the only one that may reach the store's endpoints,
//! and it is built so that a URL cannot point it anywhere it should not go:
//! no proxy from the environment, no redirects, https only and public
//! addresses only (unless configured), checked on the addresses it actually
//! connects to ([`GuardedResolver`]), not on a lookup made beforehand that
//! DNS could answer differently a moment later.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use time::OffsetDateTime;

use crate::config::{ConfigError, Settings};
use crate::domain::webhook::{public_address, signature, Secret};
use crate::store::deliveries::{Claimed, Next, Outcome};

/// How many of one endpoint's deliveries may be in flight at once, across
/// all workers together: a slow endpoint holds at most this many leases.
pub const IN_FLIGHT_PER_ENDPOINT: i64 = 64;

/// How much of a failed answer's body is kept in `last_error`.
const BODY_BOUND: usize = 4096;

/// The lease outlasts an attempt's whole budget, with room to record its
/// outcome: a lease that runs out means the worker died.
pub fn lease(settings: &Settings) -> Duration {
    Duration::from_millis(settings.webhooks.timeout_ms) + Duration::from_secs(5)
}

/// Resolves a host name, then keeps only the public addresses (all of
/// them when private networks are allowed). A name none of whose addresses
/// may be reached fails to resolve, so nothing is connected to.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || public_address(a.ip()))
                .collect();
            if kept.is_empty() && !found.is_empty() {
                return Err(format!(
                    "refused: `{host}` resolves only to non-public addresses \
                     (webhooks.allow_private_networks is off)"
                )
                .into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// What delivers: the guarded client and the settings an attempt needs.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    allow_http: bool,
    allow_private: bool,
    schedule: Arc<Vec<u64>>,
    key: Option<[u8; 32]>,
}

impl Deliverer {
    pub fn new(settings: &Settings) -> Result<Deliverer, DeliverError> {
        let w = &settings.webhooks;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(w.timeout_ms))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: w.allow_private_networks,
            }))
            .https_only(!w.allow_http)
            .tcp_nodelay(true)
            .user_agent(concat!("flashsale-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DeliverError::Client(e.to_string()))?;
        Ok(Deliverer {
            client,
            allow_http: w.allow_http,
            allow_private: w.allow_private_networks,
            schedule: Arc::new(w.retry_schedule_seconds.clone()),
            key: settings.webhook_secret_key()?,
        })
    }

    /// One attempt of `d`: the request, signed now, and the outcome to
    /// record. Never fails: whatever went wrong is the outcome's error.
    pub async fn attempt(&self, d: &Claimed) -> (Outcome, Option<Duration>) {
        let sent = self.send(d).await;
        let (code, error) = match sent {
            Ok((code, _)) if (200..300).contains(&code) => {
                let latency = (OffsetDateTime::now_utc() - d.event_created_at)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                return (
                    self.outcome(d, Next::Delivered, Some(code), None),
                    Some(latency),
                );
            }
            Ok((410, _)) => {
                let error = Some("410 Gone: the endpoint is disabled".to_string());
                return (self.outcome(d, Next::Gone, Some(410), error), None);
            }
            Ok((code, body)) => (Some(code), format!("answered {code}: {body}")),
            Err(e) => (None, e),
        };
        let attempts = d.attempts.saturating_add(1);
        let next = match usize::try_from(attempts - 1)
            .ok()
            .and_then(|i| self.schedule.get(i))
        {
            Some(wait) => Next::Retry {
                after_ms: jittered_ms(*wait),
            },
            None => Next::Failed,
        };
        (self.outcome(d, next, code, Some(error)), None)
    }

    fn outcome(
        &self,
        d: &Claimed,
        next: Next,
        code: Option<i32>,
        error: Option<String>,
    ) -> Outcome {
        Outcome {
            endpoint_id: d.endpoint_id,
            event_id: d.event_id.clone(),
            leased_until: d.leased_until,
            next,
            status_code: code,
            error,
        }
    }

    /// The status and (for a non-2xx) the start of the body; Err: why no
    /// answer came, in words that hold no secret and no URL.
    async fn send(&self, d: &Claimed) -> Result<(i32, String), String> {
        let url = reqwest::Url::parse(&d.url).map_err(|e| format!("bad url: {e}"))?;
        self.check_url(&url)?;
        let mut secrets = vec![Secret::open(self.key.as_ref(), &d.secret, d.secret_sealed)
            .map_err(|e| e.to_string())?];
        if let Some((bytes, sealed)) = &d.previous {
            // A previous secret that no longer opens must not stop the
            // current one from signing.
            if let Ok(s) = Secret::open(self.key.as_ref(), bytes, *sealed) {
                secrets.push(s);
            }
        }
        let refs: Vec<&Secret> = secrets.iter().collect();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let sig = signature(&refs, &d.event_id, now, d.body.as_bytes());
        let res = self
            .client
            .post(url)
            .header("webhook-id", d.event_id.as_str())
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig)
            .header("content-type", "application/json")
            .body(d.body.clone())
            .send()
            .await;
        let mut res = res.map_err(describe)?;
        let code = i32::from(res.status().as_u16());
        if (200..300).contains(&code) {
            return Ok((code, String::new()));
        }
        let mut body = Vec::new();
        while body.len() < BODY_BOUND {
            match res.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(BODY_BOUND);
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The scheme, and a host given as an address (which no resolver sees).
    fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => {
                return Err(format!(
                    "refused: scheme `{other}` (only https unless webhooks.allow_http)"
                ))
            }
        }
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !self.allow_private && !public_address(ip) {
                return Err(format!(
                    "refused: {ip} is not a public address \
                     (webhooks.allow_private_networks is off)"
                ));
            }
        }
        Ok(())
    }
}

/// `wait` seconds, ±10 %, in milliseconds: retries of many deliveries that
/// failed together spread out instead of arriving together.
fn jittered_ms(wait: u64) -> i64 {
    let ms = wait.saturating_mul(1000) as f64;
    let factor = 0.9 + fastrand::f64() * 0.2;
    (ms * factor) as i64
}

/// A client error as the delivery log keeps it: the chain of causes,
/// without the URL (which may carry a token).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut out = kind.to_string();
    let e = e.without_url();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("the webhook HTTP client: {0}")]
    Client(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let ms = jittered_ms(10);
            assert!((9000..=11000).contains(&ms), "{ms}");
        }
    }
}
