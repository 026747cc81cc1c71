//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//! Every metric this service records is named here.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use. `None` when another recorder was
/// installed first (metrics are then recorded there, not rendered here).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("flashsale_flush_batch_size".into()),
                        &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
                    )
                })
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// How often the recorder drains its histogram samples on its own. Without
/// this, every sample of every request stayed in memory until the next
/// scrape: a gateway nobody scrapes grew by ~20 bytes a request.
pub const UPKEEP: Duration = Duration::from_secs(1);

/// Drains the recorder every [`UPKEEP`] until `stop`, whether or not anyone
/// scrapes: memory stays bounded by one period's samples.
pub async fn upkeep(stop: tokio_util::sync::CancellationToken) {
    let Some(h) = handle() else {
        return;
    };
    let mut every = tokio::time::interval(UPKEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => h.run_upkeep(),
        }
    }
}

/// The text exposition format.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// One HTTP request's latency, by route pattern, method and status. The
/// labels are `'static` so that recording allocates nothing: this runs on
/// every request of the hot path.
pub fn request(route: &'static str, method: &'static str, status: &'static str, took: Duration) {
    histogram!(
        "flashsale_http_request_seconds",
        "route" => route,
        "method" => method,
        "status" => status
    )
    .record(took.as_secs_f64());
}

/// A `'static` copy of a label from a small, fixed set (route patterns,
/// status codes): each distinct value is leaked once and then reused.
/// Callers pass only values from sets bounded by the code, never raw input.
pub fn label(value: &str) -> &'static str {
    use std::sync::RwLock;
    static SEEN: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());
    let find = |seen: &[&'static str]| seen.iter().find(|s| **s == value).copied();
    if let Some(found) = SEEN.read().ok().and_then(|seen| find(&seen)) {
        return found;
    }
    let Ok(mut seen) = SEEN.write() else {
        return "other";
    };
    if let Some(found) = find(&seen) {
        return found;
    }
    let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
    seen.push(leaked);
    leaked
}

/// One reserve's outcome: `held` or the contract code it was refused with.
pub fn reserved(outcome: &'static str) {
    counter!("flashsale_reservations_total", "outcome" => outcome).increment(1);
}

/// A batch of the outbox flush committed (and was acknowledged).
pub fn flushed(sale_id: &str, orders: usize, dead: usize, took: Duration) {
    let sale = sale_id.to_string();
    counter!("flashsale_orders_flushed_total", "sale_id" => sale.clone()).increment(orders as u64);
    if dead > 0 {
        counter!("flashsale_dead_letters_total", "sale_id" => sale).increment(dead as u64);
    }
    histogram!("flashsale_flush_batch_size").record((orders + dead) as f64);
    histogram!("flashsale_flush_seconds").record(took.as_secs_f64());
}

/// Entries taken over from a consumer that stopped acknowledging them.
pub fn claimed(sale_id: &str, n: usize) {
    counter!("flashsale_outbox_claimed_total", "sale_id" => sale_id.to_string())
        .increment(n as u64);
}

/// Orders waiting in each sale's outbox, and in all of them.
pub fn backlog(per_sale: &[(String, u64, u64)]) {
    let mut total = 0;
    for (sale, pending, dead) in per_sale {
        gauge!("flashsale_outbox_pending", "sale_id" => sale.clone()).set(*pending as f64);
        gauge!("flashsale_dead_letters", "sale_id" => sale.clone()).set(*dead as f64);
        total += pending;
    }
    gauge!("flashsale_outbox_pending_total").set(total as f64);
}

/// Drift found by reconcile (the command or the worker's loop): how many
/// of each kind (every kind is given, so a repaired one drops to 0).
pub fn drift(sale_id: &str, per_kind: impl IntoIterator<Item = (&'static str, usize)>) {
    for (kind, n) in per_kind {
        gauge!("flashsale_reconcile_drift", "sale_id" => sale_id.to_string(), "kind" => kind)
            .set(n as f64);
    }
}

/// A sale's live stock, for dashboards and alerts.
pub fn stock(sale_id: &str, stock: &crate::domain::Stock) {
    for (what, v) in [
        ("total", stock.total),
        ("available", stock.available),
        ("held", stock.held),
        ("sold", stock.sold),
    ] {
        gauge!("flashsale_stock", "sale_id" => sale_id.to_string(), "figure" => what).set(v as f64);
    }
}

/// Holds the reaper returned to stock.
pub fn reaped(n: u64) {
    counter!("flashsale_holds_reaped_total").increment(n);
}

/// A script or command that failed inside Redis with an error that will
/// repeat (a bug of ours or tampered data): each one is also a 500.
pub fn redis_fault(op: &'static str) {
    counter!("flashsale_redis_faults_total", "op" => op).increment(1);
}

/// A sale the loader could not load into Redis (it goes on with the others).
pub fn load_failed() {
    counter!("flashsale_sale_load_failures_total").increment(1);
}

/// Redis's `used_memory`: what every sale kept there costs, for the alert
/// that fires before `maxmemory` does.
pub fn redis_memory(bytes: u64) {
    gauge!("flashsale_redis_used_memory_bytes").set(bytes as f64);
}

/// Redis keys of one live sale (its own and its idempotency keys).
pub fn sale_keys(sale_id: &str, n: u64) {
    gauge!("flashsale_sale_keys", "sale_id" => sale_id.to_string()).set(n as f64);
}

/// Sales the worker's loops visit (the ones not over yet).
pub fn active_sales(n: usize) {
    gauge!("flashsale_active_sales").set(n as f64);
}

/// A sale archived: its Redis keys removed, its figures kept in Postgres.
pub fn archived() {
    counter!("flashsale_sales_archived_total").increment(1);
}

/// A connection turned away by a cap (`total` or `per_ip`).
pub fn connection_refused(cap: &'static str) {
    counter!("flashsale_connections_refused_total", "cap" => cap).increment(1);
}

/// Client connections open now.
pub fn connections_open(n: usize) {
    gauge!("flashsale_connections_open").set(n as f64);
}

/// A connection the gateway closed itself (`send_stalled`: the peer took
/// none of our bytes for the send timeout).
pub fn connection_dropped(why: &'static str) {
    counter!("flashsale_connections_dropped_total", "why" => why).increment(1);
}

/// An `accept` that failed (out of file descriptors, mostly).
pub fn accept_error() {
    counter!("flashsale_accept_errors_total").increment(1);
}

/// Event streams open now, and streams refused by `http.max_streams`.
pub fn streams_open(n: usize) {
    gauge!("flashsale_streams_open").set(n as f64);
}

pub fn stream_refused() {
    counter!("flashsale_streams_refused_total").increment(1);
}

/// A public read refused by the per-address limit.
pub fn public_read_limited() {
    counter!("flashsale_public_reads_limited_total").increment(1);
}

/// A fetch of the store's JWKS (at start, every max age, on an unknown kid).
pub fn jwks_fetch() {
    counter!("flashsale_jwks_fetches_total").increment(1);
}

/// A bearer token refused (`why`: expired, invalid, subject, unknown_key).
pub fn token_refused(why: &'static str) {
    counter!("flashsale_tokens_refused_total", "why" => why).increment(1);
}
