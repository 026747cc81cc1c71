//! Memory stays bounded with nobody scraping `/metrics`: the recorder's
//! upkeep drains histogram samples on its own schedule.
//!
//! Measured with a counting allocator (this test binary's own): the live
//! bytes of the process from early in a flood of requests to its end.
//! Without the upkeep they grow by every request's sample (~8 bytes each:
//! an f64 in a block of 64); with it they stay within the samples of the
//! last upkeep periods: one period's, plus the blocks the previous upkeep
//! drained, which the recorder frees later, through crossbeam's epochs.
//!
//! A binary of its own: the counting allocator is the process's, and so is
//! what it counts; another test's gateway in the same process would be
//! counted too.

// `tests/api` uses every shared helper (and would warn of one left unused);
// this test needs only a gateway.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
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
async fn a_flood_of_requests_unscraped_leaves_memory_flat() {
    // A route of the API (probes record no latency sample), answered from
    // the gateway's shared view without a Redis call, with no limit to
    // turn the flood into 429s.
    let app = spawn_app_with(|s| s.limits.enabled = false).await;
    let period = flashsale::METRICS_UPKEEP;
    let done_at = Times::new();
    let started = Instant::now();
    // Enough that, on a loaded machine whose pace changes mid-flood, the
    // last two periods stay a small part of it.
    let n = 150_000usize;
    // Long enough that two periods are a small part of the flood.
    let at_least = (period * 12).max(Duration::from_secs(12));
    let warm = period * 2;
    let workers = 32;
    let early = std::sync::Mutex::new(None);
    let counts = join_all((0..workers).map(|w| {
        let (app, done_at, early) = (&app, &done_at, &early);
        async move {
            let mut sent = 0usize;
            let mut i = w;
            while i < n || started.elapsed() < at_least {
                let res = app.http.get(app.url("/v1/sales")).send().await.unwrap();
                assert_eq!(res.status(), 200);
                let _ = res.bytes().await;
                let at = started.elapsed();
                done_at.note(at);
                if at >= warm {
                    let mut e = early.lock().unwrap();
                    if e.is_none() {
                        *e = Some((LIVE.load(Ordering::Relaxed), at));
                    }
                }
                sent += 1;
                i += workers;
            }
            sent
        }
    }))
    .await;
    let end = LIVE.load(Ordering::Relaxed);
    let sent: usize = counts.iter().sum();
    let elapsed = started.elapsed();
    assert!(sent >= n);
    let (start, warm_at) = early
        .into_inner()
        .unwrap()
        .expect("the flood outlived the warm-up");

    let since_warm = done_at.since(warm_at) as i64;
    let last_two = done_at.since(elapsed.saturating_sub(period * 2)) as i64;
    let grew = end - start;
    eprintln!(
        "{sent} requests in {elapsed:?}, {since_warm} after the warm-up, {last_two} in the \
         last two periods; live bytes grew by {grew} over them"
    );
    // Loose: connections, buffers and the worker allocate too.
    let bound = last_two * SAMPLE_BYTES * 5 / 4 + 512 * 1024;
    assert!(
        bound < since_warm * SAMPLE_BYTES,
        "the flood was too short to tell two periods from all of it"
    );
    assert!(
        grew <= bound,
        "live bytes grew by {grew} over {since_warm} requests (bound {bound})"
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
