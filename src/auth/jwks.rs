//! The store's JWKS (`auth.jwks_url`): fetched at start, kept in memory,
//! fetched again every `auth.jwks_max_age_seconds` (so a key the store
//! removed stops verifying) and when a token names an unknown `kid`, at most
//! once per `auth.jwks_min_refresh_seconds` (so a flood of made-up kids
//! cannot turn the gateway into a client hammering the store). A failed
//! fetch keeps the keys already known: the store's sign-in being down must
//! not sign every buyer out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::keys::{from_jwk, VerifyKey};

/// A JWKS larger than this is refused: real ones are a few kB.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The keys of one successful fetch.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys published without a `kid`: tried for tokens that name none.
    unnamed: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.by_kid.get(kid).cloned()
    }

    pub fn unnamed(&self) -> &[Arc<VerifyKey>] {
        &self.unnamed
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every key of `self` is still in `newer` (no key was removed).
    fn kept_in(&self, newer: &KeySet) -> bool {
        self.by_kid.keys().all(|k| newer.by_kid.contains_key(k))
            && self.unnamed.len() <= newer.unnamed.len()
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started, successful or not: the unknown-kid
    /// refresh waits `min_refresh` from it.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; the requests that asked for one meanwhile wait
    /// for it and then look again, instead of fetching too.
    fetching: tokio::sync::Mutex<()>,
    /// Bumped whenever a fetch removed a key: verified tokens remembered
    /// before it are verified again.
    generation: AtomicU64,
}

impl Jwks {
    pub fn new(url: &str, min_refresh: Duration, max_age: Duration) -> Result<Jwks, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Jwks {
            url: url.to_string(),
            client,
            min_refresh,
            max_age,
            keys: RwLock::default(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    /// The keys as last fetched.
    pub fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn due(&self, every: Duration) -> bool {
        let last = match self.last_attempt.lock() {
            Ok(l) => *l,
            Err(poisoned) => *poisoned.into_inner(),
        };
        last.is_none_or(|t| t.elapsed() >= every)
    }

    /// Fetches now, whatever the last fetch was. Returns how many keys the
    /// set has; on failure the known keys stay.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        self.fetch_and_keep().await
    }

    /// A token named a `kid` we do not know: the store may have rotated its
    /// key. Fetches unless a fetch started less than `min_refresh` ago.
    pub async fn refresh_for_unknown_kid(&self) {
        if !self.due(self.min_refresh) {
            return;
        }
        let _one = self.fetching.lock().await;
        // Whoever held the lock before us may have just fetched.
        if !self.due(self.min_refresh) {
            return;
        }
        if let Err(e) = self.fetch_and_keep().await {
            tracing::warn!(url = %self.url, error = %e, "JWKS fetch for an unknown kid failed; known keys kept");
        }
    }

    async fn fetch_and_keep(&self) -> Result<usize, String> {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        crate::metrics::jwks_fetch();
        let set = self.fetch().await?;
        let n = set.len();
        let set = Arc::new(set);
        let mut keys = match self.keys.write() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !keys.kept_in(&set) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        *keys = set;
        Ok(n)
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let mut res = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET failed: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("GET answered {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let raw: RawSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS ({e})"))?;
        let mut set = KeySet::default();
        // One key we cannot use must not cost the others: each is taken
        // or skipped on its own.
        for value in raw.keys {
            let kid = value
                .get("kid")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            let key = serde_json::from_value(value)
                .map_err(|e| format!("not a JWK ({e})"))
                .and_then(|jwk| from_jwk(&jwk));
            match key {
                Ok(k) => match k.kid.clone() {
                    Some(kid) => {
                        set.by_kid.insert(kid, Arc::new(k));
                    }
                    None => set.unnamed.push(Arc::new(k)),
                },
                Err(why) => tracing::warn!(url = %self.url, %kid, %why, "JWKS key skipped"),
            }
        }
        Ok(set)
    }

    /// Fetches every `max_age` until `stop`; after a failure, again after
    /// `min_refresh` (the known keys stay meanwhile).
    pub async fn keep_fresh(self: Arc<Self>, stop: CancellationToken) {
        let mut wait = self.max_age;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = match self.refresh().await {
                Ok(_) => self.max_age,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; known keys kept");
                    self.min_refresh.min(self.max_age)
                }
            };
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}
