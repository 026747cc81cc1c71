//! Decide: the buyers who were granted holds pay for them (confirm), give
//! them back (release) or walk away, in the shares the options ask for.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use flashsale::auth::Auth;

use super::storm::Storm;
use super::{Hold, Play, Stock};

/// Tries of one confirm or release answered 429 (each after its Retry-After).
const MAX_DECISION_TRIES: usize = 30;

/// What became of the units granted in the storm.
pub(super) struct Decided {
    /// Holds confirmed: one order each.
    pub(super) confirmed: i64,
    pub(super) confirmed_units: i64,
    pub(super) released_units: i64,
    /// Units of the holds nobody decided on, left to expire.
    pub(super) abandoned_units: i64,
    /// Confirms and releases refused because the hold had expired.
    pub(super) late: usize,
    /// Confirms and releases not answered as the contract says.
    pub(super) failures: Vec<String>,
    /// The figures once the buyers have decided.
    pub(super) now: Stock,
}

impl Decided {
    /// No hold decided on; the figures `now`.
    pub(super) fn nothing(now: Stock) -> Decided {
        Decided {
            confirmed: 0,
            confirmed_units: 0,
            released_units: 0,
            abandoned_units: 0,
            late: 0,
            failures: Vec::new(),
            now,
        }
    }
}

impl Play<'_> {
    /// Confirms and releases a random share of the storm's holds, round-robin
    /// over the gateways, then reads the figures.
    pub(super) async fn decide_holds(&self, storm: &mut Storm) -> anyhow::Result<Decided> {
        let o = self.o;
        let mut holds = storm.tally.held.clone();
        holds.shuffle(&mut rand::thread_rng());
        let n_confirm = (holds.len() as f64 * o.confirm_share).round() as usize;
        let n_release = (holds.len() as f64 * o.release_share).round() as usize;
        let n_decide = (n_confirm + n_release).min(holds.len());
        let decisions: Vec<Decision> = stream::iter(holds[..n_decide].iter().enumerate())
            .map(|(i, h)| {
                let base = &self.bases[i % self.bases.len()];
                decide(&self.http, base, &self.auth, h, i, i < n_confirm)
            })
            .buffer_unordered(o.concurrency)
            .collect()
            .await;
        let now = self.stock().await?;
        storm.readings.see(&now);
        let mut decided = Decided::nothing(now);
        for d in decisions {
            match d {
                Decision::Confirmed(q) => {
                    decided.confirmed += 1;
                    decided.confirmed_units += q;
                }
                Decision::Released(q) => decided.released_units += q,
                Decision::Late => decided.late += 1,
                Decision::Failed(f) => decided.failures.push(f),
            }
        }
        decided.abandoned_units = holds[n_decide..]
            .iter()
            .map(|h| i64::from(h.quantity))
            .sum();
        Ok(decided)
    }
}

/// What a buyer did with a hold.
enum Decision {
    Confirmed(i64),
    Released(i64),
    /// Too late to pay or give back: honest only past the hold's deadline.
    Late,
    Failed(String),
}

async fn decide(
    http: &reqwest::Client,
    base: &str,
    auth: &Auth,
    h: &Hold,
    i: usize,
    confirm: bool,
) -> Decision {
    let token = match auth.issue(&h.customer_id, None, 3600) {
        Ok(t) => t,
        Err(e) => return Decision::Failed(format!("token for {}: {e}", h.customer_id)),
    };
    let verb = if confirm { "confirm" } else { "release" };
    // A buyer told 429 comes back after `Retry-After`, as the contract asks;
    // the jitter keeps a crowd told the same second from coming back at once.
    for _ in 0..MAX_DECISION_TRIES {
        let req = if confirm {
            http.post(format!("{base}/v1/reservations/{}/confirm", h.id))
                .json(&json!({"payment_ref": format!("pay-{i}")}))
        } else {
            http.delete(format!("{base}/v1/reservations/{}", h.id))
        };
        let res = match req.bearer_auth(&token).send().await {
            Ok(res) => res,
            Err(e) => return Decision::Failed(format!("{verb} {}: {e}", h.id)),
        };
        return match res.status().as_u16() {
            200 if confirm => Decision::Confirmed(i64::from(h.quantity)),
            200 => Decision::Released(i64::from(h.quantity)),
            410 | 409 if h.expired_by(time::OffsetDateTime::now_utc()) => Decision::Late,
            429 => {
                let after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite())
                    .unwrap_or(1.0)
                    .clamp(0.05, 5.0);
                let jitter = rand::thread_rng().gen_range(0.0..0.25);
                tokio::time::sleep(Duration::from_secs_f64(after + jitter)).await;
                continue;
            }
            other => Decision::Failed(format!("{verb} {}: {other}", h.id)),
        };
    }
    Decision::Failed(format!(
        "{verb} {}: still 429 after {MAX_DECISION_TRIES} tries",
        h.id
    ))
}
