//! The storm: the crowd's reserves, with a reader of the stock beside them
//! and a progress bar on a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::crowd::{buyer, Crowd, Tally};
use super::readings::{sample_stock, Readings};
use super::{Options, Play, Stock};

/// What the storm left: the answers, and the stock as it was read.
pub(super) struct Storm {
    pub(super) tally: Tally,
    /// Wall time of the reserves.
    pub(super) elapsed: Duration,
    pub(super) ended_at: time::OffsetDateTime,
    /// Every reading of the stock so far, during the storm and after.
    pub(super) readings: Readings,
    /// The figures right after the storm.
    pub(super) after: Stock,
}

impl Storm {
    /// Units of the 201 answers.
    pub(super) fn units_granted(&self) -> i64 {
        self.tally.held.iter().map(|r| i64::from(r.quantity)).sum()
    }

    /// The most units granted to one buyer.
    pub(super) fn max_units_per_customer(&self) -> u32 {
        let mut per_customer: HashMap<&str, u32> = HashMap::new();
        for r in &self.tally.held {
            *per_customer.entry(&r.customer_id).or_default() += r.quantity;
        }
        per_customer.values().copied().max().unwrap_or(0)
    }

    /// Units granted during the storm are bounded by the stock only while no
    /// hold could expire (and hand its units to another buyer) mid-storm.
    pub(super) fn none_expired(&self) -> bool {
        self.tally.held.iter().all(|r| !r.expired_by(self.ended_at))
    }

    /// Reserves per second.
    pub(super) fn throughput(&self) -> f64 {
        self.tally.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Play<'_> {
    pub(super) async fn storm(&self) -> anyhow::Result<Storm> {
        let o = self.o;
        let tokens: Vec<String> = (0..o.customers)
            .map(|i| self.auth.issue(&format!("buyer-{i}"), None, 3600))
            .collect::<Result<_, _>>()?;
        let what = match o.duration {
            Some(d) => format!("reserve requests for {d} s"),
            None => format!("{} reserve requests", o.requests),
        };
        self.out.say(format!(
            "{} buyers send {what}, {} at a time...",
            o.customers, o.concurrency
        ));

        let storm_done = Arc::new(AtomicBool::new(false));
        let sampler = (o.sample_ms > 0).then(|| {
            tokio::spawn(sample_stock(
                self.http.clone(),
                self.base().to_string(),
                self.sale_id.clone(),
                Duration::from_millis(o.sample_ms),
                storm_done.clone(),
            ))
        });
        let started = Instant::now();
        let crowd = Arc::new(Crowd::new(self, tokens, started)?);
        let bar = progress_bar(o, crowd.clone(), started);
        let workers: Vec<_> = (0..o.concurrency)
            .map(|_| tokio::spawn(buyer(crowd.clone())))
            .collect();
        let mut tally = Tally::new()?;
        for w in workers {
            tally.merge(w.await??)?;
        }
        let elapsed = started.elapsed();
        storm_done.store(true, Ordering::Relaxed);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let ended_at = time::OffsetDateTime::now_utc();
        let mut readings = match sampler {
            Some(s) => s.await?,
            None => Readings::default(),
        };
        let after = self.stock().await?;
        readings.see(&after);
        Ok(Storm {
            tally,
            elapsed,
            ended_at,
            readings,
            after,
        })
    }
}

/// A bar on the terminal while the storm runs; none when output is piped.
fn progress_bar(o: &Options, crowd: Arc<Crowd>, started: Instant) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    let (len, template) = match o.duration {
        Some(d) => (
            (d * 1000.0) as u64,
            "{spinner} [{elapsed_precise}] [{wide_bar}] {msg}",
        ),
        None => (
            o.requests,
            "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} {msg}",
        ),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticker = bar.clone();
    let by_time = o.duration.is_some();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !ticker.is_finished() {
            every.tick().await;
            let done = crowd.done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            ticker.set_position(if by_time {
                started.elapsed().as_millis() as u64
            } else {
                done
            });
            ticker.set_message(format!("{done} answered, {:.0} req/s", done as f64 / secs));
        }
    });
    Some(bar)
}
