//! Memory stays bounded with nobody scraping `/metrics`: the recorder's
//! upkeep drains histogram samples on its own schedule.
//!
//! Measured with a counting allocator (this test binary's own): after a
//! flood of requests, the bytes an explicit drain frees are the samples the
//! recorder still held. Without the upkeep that is every request of the
//! flood (~8 bytes a sample); with it, one upkeep period's worth, plus the
//! blocks the previous upkeep drained: the recorder's buckets free drained
//! blocks through crossbeam's epochs, later, so a drain also frees the
//! previous period's. Hence the bound of two periods.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - layout.size() as i64, Ordering::Relaxed);
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What one held histogram sample costs (an f64 in a block of 64, with the
/// block's header).
const SAMPLE_BYTES: i64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_requests_unscraped_leave_at_most_the_samples_of_the_last_upkeep_periods(
) {
    let app = spawn_app_with(|_| {}).await;
    let period = flashsale::metrics::UPKEEP;
    let done_at = Times::new();
    let started = Instant::now();
    let n = 100_000usize;
    // Long enough that one period is a small part of the flood.
    let at_least = period * 5;
    let workers = 32;
    let counts = join_all((0..workers).map(|w| {
        let (app, done_at) = (&app, &done_at);
        async move {
            let mut sent = 0usize;
            let mut i = w;
            while i < n || started.elapsed() < at_least {
                let res = app.http.get(app.url("/healthz")).send().await.unwrap();
                assert_eq!(res.status(), 200);
                let _ = res.bytes().await;
                done_at.note(started.elapsed());
                sent += 1;
                i += workers;
            }
            sent
        }
    }))
    .await;
    let sent: usize = counts.iter().sum();
    let elapsed = started.elapsed();
    assert!(sent >= n);

    // The requests of the last two periods (the most the upkeep can have
    // left, with the previous drain's blocks not yet freed).
    let recent = done_at.since(elapsed.saturating_sub(period * 2)) as i64;
    let handle = flashsale::metrics::handle().expect("the recorder is ours");
    let before = LIVE.load(Ordering::Relaxed);
    handle.run_upkeep();
    let freed = before - LIVE.load(Ordering::Relaxed);
    let held = freed / SAMPLE_BYTES;
    eprintln!(
        "{sent} requests in {elapsed:?}; {recent} in the last two periods; \
         a drain freed {freed} bytes (~{held} samples)"
    );
    // Loose: other threads allocate and free meanwhile.
    let bound = recent * 5 / 4 + 2_000;
    assert!(
        (bound as usize) < sent,
        "the flood was too short to tell two periods from all of it"
    );
    assert!(
        held <= bound,
        "the recorder held ~{held} samples; two periods are {recent} requests"
    );
}

/// Completion times in 10 ms buckets (a counter per bucket, no per-request
/// growth of its own).
struct Times {
    buckets: Vec<std::sync::atomic::AtomicU64>,
}

impl Times {
    fn new() -> Times {
        Times {
            buckets: (0..100_000)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    fn note(&self, at: Duration) {
        let i = (at.as_millis() / 10) as usize;
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn since(&self, from: Duration) -> u64 {
        let first = (from.as_millis() / 10) as usize;
        self.buckets
            .iter()
            .skip(first)
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}
