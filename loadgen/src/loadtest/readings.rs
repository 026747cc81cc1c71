//! Readings of the sale's stock: every few milliseconds during the storm,
//! and once after each phase that moves it. A store that loses or doubles
//! an update shows it here first, before any order is counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::setup::get_stock;
use super::Stock;

/// What the readings so far showed.
#[derive(Debug)]
pub(super) struct Readings {
    /// Taken during the storm.
    pub(super) samples: u64,
    /// Taken after it.
    pub(super) extra: u64,
    pub(super) errors: u64,
    pub(super) min_available: i64,
    pub(super) negative: u64,
    pub(super) not_adding_up: u64,
}

impl Default for Readings {
    fn default() -> Readings {
        Readings {
            samples: 0,
            extra: 0,
            errors: 0,
            min_available: i64::MAX,
            negative: 0,
            not_adding_up: 0,
        }
    }
}

impl Readings {
    fn record(&mut self, s: &Stock) {
        self.min_available = self.min_available.min(s.available);
        if s.available < 0 || s.held < 0 || s.sold < 0 {
            self.negative += 1;
        }
        if s.available + s.held + s.sold != s.total {
            self.not_adding_up += 1;
        }
    }

    /// A reading after the storm.
    pub(super) fn see(&mut self, s: &Stock) {
        self.extra += 1;
        self.record(s);
    }
}

/// Reads the stock every `every` until the storm is over.
pub(super) async fn sample_stock(
    http: reqwest::Client,
    base: String,
    sale_id: String,
    every: Duration,
    done: Arc<AtomicBool>,
) -> Readings {
    let mut readings = Readings::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        match get_stock(&http, &base, &sale_id).await {
            Ok(s) => {
                readings.samples += 1;
                readings.record(&s);
            }
            Err(_) => readings.errors += 1,
        }
    }
    readings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_flag_what_does_not_add_up() {
        let mut r = Readings::default();
        r.see(&Stock {
            total: 10,
            available: 3,
            held: 2,
            sold: 5,
        });
        assert_eq!((r.negative, r.not_adding_up, r.min_available), (0, 0, 3));
        // The naive store's lost update: more left than sold allows.
        r.see(&Stock {
            total: 10,
            available: 4,
            held: 0,
            sold: 12,
        });
        // And its stale decrement: it adds up, but below zero.
        r.see(&Stock {
            total: 10,
            available: -2,
            held: 0,
            sold: 12,
        });
        assert_eq!((r.negative, r.not_adding_up, r.min_available), (1, 1, -2));
    }
}
