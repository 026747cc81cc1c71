//! The crowd of the storm: buyer tasks that take request numbers until the
//! storm is over, each keeping a [`Tally`] of what it was answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use rand::Rng;
use serde_json::json;

use crate::conn;

use super::{Hold, Latency, Play};

/// What every buyer task shares.
pub(super) struct Crowd {
    http: reqwest::Client,
    /// The reserve URL on each gateway: buyer i reserves through the
    /// i-th modulo their number.
    urls: Vec<String>,
    /// The same when every one is plain `http://`: the storm then goes
    /// through one bare connection per buyer task and gateway (see [`conn`]).
    plain: Option<Vec<conn::Target>>,
    tokens: Vec<String>,
    /// `Bearer <token>` of each token, for [`conn`].
    bearers: Vec<HeaderValue>,
    /// The next request's number: request i comes from buyer i % customers.
    next: AtomicU64,
    /// Requests answered so far (for the progress bar).
    pub(super) done: AtomicU64,
    requests: u64,
    /// With `--duration`: no request starts after it.
    deadline: Option<Instant>,
    max_quantity: u32,
}

impl Crowd {
    /// The buyers holding `tokens`, one each, for a storm from `started`.
    pub(super) fn new(
        play: &Play<'_>,
        tokens: Vec<String>,
        started: Instant,
    ) -> anyhow::Result<Crowd> {
        let o = play.o;
        let urls: Vec<String> = play
            .bases
            .iter()
            .map(|b| format!("{b}/v1/sales/{}/reservations", play.sale_id))
            .collect();
        Ok(Crowd {
            http: play.http.clone(),
            plain: urls
                .iter()
                .map(|u| conn::Target::parse(u))
                .collect::<Option<Vec<_>>>(),
            urls,
            bearers: tokens
                .iter()
                .map(|t| conn::bearer(t).context("a token that is not a header value"))
                .collect::<anyhow::Result<_>>()?,
            tokens,
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            requests: o.requests,
            deadline: o.duration.map(|d| started + Duration::from_secs_f64(d)),
            max_quantity: o.max_quantity.min(o.limit),
        })
    }
}

/// What one buyer task (or, merged, the crowd) saw.
pub(super) struct Tally {
    /// `"<status> <code>"` -> count.
    pub(super) codes: BTreeMap<String, u64>,
    pub(super) held: Vec<Hold>,
    /// Microseconds per reserve.
    latency: Histogram<u64>,
    pub(super) answered: u64,
    /// 5xx answers and transport errors.
    pub(super) failed: u64,
    /// The first few, verbatim.
    pub(super) transport_errors: Vec<String>,
}

impl Tally {
    pub(super) fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            codes: BTreeMap::new(),
            held: Vec::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            answered: 0,
            failed: 0,
            transport_errors: Vec::new(),
        })
    }

    pub(super) fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.held.extend(other.held);
        self.latency.add(&other.latency)?;
        self.answered += other.answered;
        self.failed += other.failed;
        for e in other.transport_errors {
            if self.transport_errors.len() < 5 {
                self.transport_errors.push(e);
            }
        }
        Ok(())
    }

    pub(super) fn latency(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.latency.is_empty() {
            return Latency::default();
        }
        Latency {
            mean: self.latency.mean() / 1000.0,
            p50: ms(self.latency.value_at_quantile(0.50)),
            p90: ms(self.latency.value_at_quantile(0.90)),
            p99: ms(self.latency.value_at_quantile(0.99)),
            p999: ms(self.latency.value_at_quantile(0.999)),
            max: ms(self.latency.max()),
        }
    }
}

/// One buyer task: takes request numbers until the storm is over.
pub(super) async fn buyer(crowd: Arc<Crowd>) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let customers = crowd.tokens.len() as u64;
    // One kept-alive connection per buyer task (and gateway), as a browser
    // tab would have.
    let mut conns: Vec<conn::Conn> = match &crowd.plain {
        Some(targets) => targets.iter().map(|_| conn::Conn::default()).collect(),
        None => Vec::new(),
    };
    loop {
        let i = crowd.next.fetch_add(1, Ordering::Relaxed);
        let over = match crowd.deadline {
            Some(deadline) => Instant::now() >= deadline,
            None => i >= crowd.requests,
        };
        if over {
            return Ok(tally);
        }
        let buyer = (i % customers) as usize;
        let quantity = if crowd.max_quantity <= 1 {
            1
        } else {
            rand::thread_rng().gen_range(1..=crowd.max_quantity)
        };
        let t = Instant::now();
        let gateway = buyer % crowd.urls.len();
        let answer = match (&crowd.plain, conns.get_mut(gateway)) {
            (Some(targets), Some(conn)) => {
                let target = &targets[gateway];
                let body = Bytes::from(format!("{{\"quantity\":{quantity}}}"));
                match conn.post(target, &crowd.bearers[buyer], body).await {
                    Ok((status, body)) => Ok(read_answer(status, &body)),
                    Err(e) => Err(e.to_string()),
                }
            }
            _ => reserve(
                &crowd.http,
                &crowd.urls[gateway],
                &crowd.tokens[buyer],
                quantity,
            )
            .await
            .map_err(|e| e.to_string()),
        };
        tally
            .latency
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
        tally.answered += 1;
        crowd.done.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(Answer { code, held }) => {
                if code.starts_with('5') {
                    tally.failed += 1;
                }
                *tally.codes.entry(code).or_default() += 1;
                tally.held.extend(held);
            }
            Err(e) => {
                tally.failed += 1;
                *tally.codes.entry("transport error".into()).or_default() += 1;
                if tally.transport_errors.len() < 5 {
                    tally.transport_errors.push(e);
                }
            }
        }
    }
}

/// One reserve's answer: `"<status> <code>"`, and the hold when it was granted.
struct Answer {
    code: String,
    held: Option<Hold>,
}

/// A reserve through reqwest (URLs the storm's own client does not speak).
async fn reserve(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    quantity: u32,
) -> Result<Answer, reqwest::Error> {
    let res = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "quantity": quantity }))
        .send()
        .await?;
    let status = res.status().as_u16();
    let body = res.bytes().await?;
    Ok(read_answer(status, &body))
}

fn read_answer(status: u16, body: &[u8]) -> Answer {
    if status == 201 {
        return match serde_json::from_slice::<Hold>(body) {
            Ok(r) => Answer {
                code: "201 held".into(),
                held: Some(r),
            },
            Err(_) => Answer {
                code: "201 unreadable reservation".into(),
                held: None,
            },
        };
    }
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Answer {
        code: format!("{status} {}", body["code"].as_str().unwrap_or("?")),
        held: None,
    }
}
