//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//! Every metric this service records is named here, and described in
//! [`describe`]: `promtool check metrics` (CI) refuses a family without HELP,
//! and `deploy/` (the dashboard and alert rules) names only these.
//!
//! A sale's series (label `sale_id`) are dropped once the sale is archived
//! ([`forget_sale`], [`per_sale`]): the exporter alone would keep them for
//! the life of the process.

mod per_sale;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The installed recorder's two halves: the exporter's, and a sale's series.
pub struct Installed {
    prometheus: PrometheusHandle,
    sales: Arc<per_sale::Sales>,
}

static HANDLE: OnceLock<Option<Installed>> = OnceLock::new();

/// Installs the recorder on first use. `None` when another recorder was
/// installed first (metrics are then recorded there, not rendered here).
pub fn handle() -> Option<&'static Installed> {
    HANDLE
        .get_or_init(|| {
            let rest = PrometheusBuilder::new()
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
                .and_then(|b| {
                    // From the change to the 2xx: milliseconds when healthy,
                    // hours when an endpoint was down and the schedule ran.
                    b.set_buckets_for_metric(
                        Matcher::Full("flashsale_webhook_delivery_latency_seconds".into()),
                        &[
                            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1800.0,
                            7200.0, 36000.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("flashsale_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1000.0],
                    )
                })
                .ok()?
                .build_recorder();
            let installed = Installed {
                prometheus: rest.handle(),
                sales: Arc::new(per_sale::Sales::new()),
            };
            let sales = installed.sales.clone();
            metrics::set_global_recorder(per_sale::Routed { rest, sales }).ok()?;
            describe();
            Some(installed)
        })
        .as_ref()
}

/// HELP text (and unit) of every family. Registered once, right after the
/// recorder is installed: a description given to no recorder is lost, and a
/// family is rendered with its HELP line from then on, whenever it appears.
fn describe() {
    describe_histogram!(
        "flashsale_http_request_seconds",
        Unit::Seconds,
        "HTTP request latency by matched route pattern, method and status code."
    );
    describe_counter!(
        "flashsale_reservations_total",
        Unit::Count,
        "Reserve requests by outcome: held, or the contract code they were refused with."
    );
    describe_counter!(
        "flashsale_orders_flushed_total",
        Unit::Count,
        "Confirmed orders written from a sale's outbox to Postgres and acknowledged."
    );
    describe_counter!(
        "flashsale_events_flushed_total",
        Unit::Count,
        "Events for the store (confirms, expiries, releases, sell-outs) written to Postgres `events` for the first time, by type."
    );
    describe_counter!(
        "flashsale_dead_letters_total",
        Unit::Count,
        "Outbox entries Postgres rejected for good, moved to the sale's dead-letter stream."
    );
    describe_histogram!(
        "flashsale_flush_batch_size",
        Unit::Count,
        "Outbox entries per committed flush batch (orders and dead letters)."
    );
    describe_histogram!(
        "flashsale_batch_size",
        Unit::Count,
        "Requests of one sale carried by one Redis script call (group commit), by operation: reserve, confirm, release."
    );
    describe_histogram!(
        "flashsale_flush_seconds",
        Unit::Seconds,
        "Time to write one outbox batch to Postgres and acknowledge it."
    );
    describe_counter!(
        "flashsale_outbox_claimed_total",
        Unit::Count,
        "Outbox entries taken over from a flush consumer that stopped acknowledging them."
    );
    describe_gauge!(
        "flashsale_outbox_pending",
        Unit::Count,
        "Confirmed orders in a live sale's outbox, not yet in Postgres."
    );
    describe_gauge!(
        "flashsale_outbox_oldest_age_seconds",
        Unit::Seconds,
        "How long the oldest order in a live sale's outbox has waited for Postgres (0 when empty)."
    );
    describe_gauge!(
        "flashsale_dead_letters",
        Unit::Count,
        "Entries in a live sale's dead-letter stream: orders that need a human."
    );
    describe_gauge!(
        "flashsale_reconcile_drift",
        Unit::Count,
        "Drift found between Redis and Postgres by the worker's reconcile loop, per sale and kind (0 when none)."
    );
    describe_gauge!(
        "flashsale_stock",
        Unit::Count,
        "A live sale's stock in Redis by figure: total, available, held, sold."
    );
    describe_counter!(
        "flashsale_holds_reaped_total",
        Unit::Count,
        "Expired holds the reaper returned to stock."
    );
    describe_counter!(
        "flashsale_queue_admissions_total",
        Unit::Count,
        "Admission tokens the worker issued to buyers waiting in sales' waiting rooms."
    );
    describe_counter!(
        "flashsale_redis_faults_total",
        Unit::Count,
        "Redis scripts or commands that failed with an error that will repeat (each one also a 500)."
    );
    describe_counter!(
        "flashsale_sale_load_failures_total",
        Unit::Count,
        "Sales the loader could not load into Redis."
    );
    describe_gauge!(
        "flashsale_redis_used_memory_bytes",
        Unit::Bytes,
        "Redis's used_memory."
    );
    describe_gauge!(
        "flashsale_sale_keys",
        Unit::Count,
        "Redis keys of one live sale, its idempotency keys included."
    );
    describe_gauge!(
        "flashsale_active_sales",
        Unit::Count,
        "Sales the worker's loops visit (the ones not over yet)."
    );
    describe_counter!(
        "flashsale_sales_archived_total",
        Unit::Count,
        "Sales whose Redis keys were removed after their retention."
    );
    describe_counter!(
        "flashsale_connections_refused_total",
        Unit::Count,
        "Client connections closed at accept by a cap (total or per_ip)."
    );
    describe_gauge!(
        "flashsale_connections_open",
        Unit::Count,
        "Client connections open now."
    );
    describe_counter!(
        "flashsale_connections_dropped_total",
        Unit::Count,
        "Connections the gateway closed itself, by reason."
    );
    describe_counter!(
        "flashsale_accept_errors_total",
        Unit::Count,
        "accept() calls that failed (out of file descriptors, mostly)."
    );
    describe_gauge!(
        "flashsale_streams_open",
        Unit::Count,
        "Server-sent event streams open now."
    );
    describe_counter!(
        "flashsale_streams_refused_total",
        Unit::Count,
        "Event streams refused by http.max_streams."
    );
    describe_counter!(
        "flashsale_jwks_fetches_total",
        Unit::Count,
        "Fetches of auth.jwks_url (at the start, at each refresh, and for an unknown kid at most once per auth.jwks_min_refresh_seconds)."
    );
    describe_counter!(
        "flashsale_tokens_refused_total",
        Unit::Count,
        "Bearer tokens refused (401), by reason: expired, invalid, subject, unknown_key."
    );
    describe_counter!(
        "flashsale_replicas_missed_total",
        Unit::Count,
        "Waits for redis.confirm_replicas that ended with too few replicas (the confirm is 503, the flush waits)."
    );
    describe_counter!(
        "flashsale_public_reads_limited_total",
        Unit::Count,
        "Public reads refused by the per-address limit."
    );
    describe_gauge!(
        "flashsale_redis_up",
        "1 while Redis answers this gateway's PING, else 0."
    );
    describe_gauge!(
        "flashsale_postgres_up",
        "1 while Postgres answers this gateway's SELECT 1, else 0."
    );
    describe_counter!(
        "flashsale_webhook_delivered_total",
        Unit::Count,
        "Event deliveries an endpoint answered with a 2xx, per endpoint."
    );
    describe_counter!(
        "flashsale_webhook_retries_total",
        Unit::Count,
        "Delivery attempts that failed (not a 2xx, a timeout, a refused connection) and will be retried on webhooks.retry_schedule_seconds, per endpoint."
    );
    describe_counter!(
        "flashsale_webhook_failed_total",
        Unit::Count,
        "Deliveries whose retry schedule ran out (status failed; replay brings them back), per endpoint."
    );
    describe_gauge!(
        "flashsale_webhook_pending",
        Unit::Count,
        "Deliveries of an endpoint not yet delivered nor failed (a disabled endpoint's wait)."
    );
    describe_gauge!(
        "flashsale_webhook_oldest_pending_age_seconds",
        Unit::Seconds,
        "How long the oldest pending delivery of an endpoint has waited since it was created (0 when none)."
    );
    describe_histogram!(
        "flashsale_webhook_delivery_latency_seconds",
        Unit::Seconds,
        "From an event's row in Postgres to the 2xx of its delivery, retries included (every endpoint)."
    );
    // Counters of rare events exist from the start, at 0: `increase()` over
    // a series born at 1 misses that first event, and an alert or panel on
    // a series that does not exist yet says nothing at all.
    for name in [
        "flashsale_holds_reaped_total",
        "flashsale_queue_admissions_total",
        "flashsale_sale_load_failures_total",
        "flashsale_sales_archived_total",
        "flashsale_accept_errors_total",
        "flashsale_streams_refused_total",
        "flashsale_public_reads_limited_total",
        "flashsale_replicas_missed_total",
        "flashsale_jwks_fetches_total",
    ] {
        counter!(name).absolute(0);
    }
    for cap in ["total", "per_ip"] {
        counter!("flashsale_connections_refused_total", "cap" => cap).absolute(0);
    }
    counter!("flashsale_connections_dropped_total", "why" => "send_stalled").absolute(0);
    // The family from the start; another reason's series is born at its first.
    counter!("flashsale_tokens_refused_total", "why" => "invalid").absolute(0);
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
            _ = every.tick() => h.prometheus.run_upkeep(),
        }
    }
}

/// The text exposition format.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.prometheus.run_upkeep();
            let mut text = h.prometheus.render();
            h.sales.render(&mut text);
            text
        }
        None => String::new(),
    }
}

/// The sales this process has series of.
pub fn sales_with_series() -> Vec<String> {
    handle().map_or_else(Vec::new, |h| h.sales.ids().into_iter().collect())
}

/// Drops every series of an archived sale, from this process's `/metrics`
/// and its memory. Its counters (`flashsale_orders_flushed_total`, ...)
/// lose their values with them: that is the point, the sale is over, and
/// Prometheus keeps what it scraped. A sale that has not left yet keeps its
/// series, at their last values (its gauges at 0 once it retired).
pub fn forget_sale(sale_id: &str) {
    if let Some(h) = handle() {
        h.sales.forget(sale_id);
    }
}

/// One HTTP request's latency, by route pattern, method and status. The
/// labels are `'static` so that recording allocates nothing: this runs on
/// every request of the hot path.
pub fn request(route: &'static str, method: &'static str, status: &'static str, took: Duration) {
    static RESOLVED: Resolved<[At; 3], metrics::Histogram> = Resolved::new();
    let key = [at(route), at(method), at(status)];
    RESOLVED
        .get(key, || {
            histogram!(
                "flashsale_http_request_seconds",
                "route" => route,
                "method" => method,
                "status" => status
            )
        })
        .record(took.as_secs_f64());
}

/// Where a `'static` label lives: its address and length.
type At = (usize, usize);

fn at(label: &'static str) -> At {
    (label.as_ptr() as usize, label.len())
}

/// Handles of series whose labels come from sets the code fixes (route
/// patterns, methods, status codes, outcomes, operations) and that are never
/// removed, resolved once: the hot path then skips building a key and
/// looking it up in the registry. Keyed by the labels' places (they are
/// `'static`; two copies of one word at two addresses are two keys for one
/// series, which is harmless). Never for a sale's series, which
/// [`forget_sale`] removes: a kept handle would write to a series no
/// longer rendered.
struct Resolved<K, H> {
    handles: std::sync::RwLock<Option<std::collections::HashMap<K, H>>>,
}

impl<K: std::hash::Hash + Eq + Copy, H: Clone> Resolved<K, H> {
    const fn new() -> Resolved<K, H> {
        Resolved {
            handles: std::sync::RwLock::new(None),
        }
    }

    fn get(&self, key: K, make: impl FnOnce() -> H) -> H {
        // Before the recorder is installed a handle is a no-op one: keeping
        // it would lose the series for good.
        if HANDLE.get().is_none() {
            return make();
        }
        if let Some(h) = self
            .handles
            .read()
            .ok()
            .and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned()))
        {
            return h;
        }
        let h = make();
        if let Ok(mut m) = self.handles.write() {
            m.get_or_insert_with(Default::default)
                .entry(key)
                .or_insert_with(|| h.clone());
        }
        h
    }
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
    static RESOLVED: Resolved<At, metrics::Counter> = Resolved::new();
    RESOLVED
        .get(
            at(outcome),
            || counter!("flashsale_reservations_total", "outcome" => outcome),
        )
        .increment(1);
}

/// One script call of the hot path carried `n` requests of operation `op`
/// (reserve, confirm, release).
pub fn batch_size(op: &'static str, n: u64) {
    static RESOLVED: Resolved<At, metrics::Histogram> = Resolved::new();
    RESOLVED
        .get(at(op), || histogram!("flashsale_batch_size", "op" => op))
        .record(n as f64);
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

/// Events for the store written to Postgres for the first time, by type
/// (a batch flushed again counts nothing).
pub fn events_flushed(kind: &str, n: u64) {
    counter!("flashsale_events_flushed_total", "type" => kind.to_string()).increment(n);
}

/// Entries taken over from a consumer that stopped acknowledging them.
pub fn claimed(sale_id: &str, n: usize) {
    counter!("flashsale_outbox_claimed_total", "sale_id" => sale_id.to_string())
        .increment(n as u64);
}

/// One live sale's outbox, as the flush loop reads it.
pub struct Backlog {
    pub sale_id: String,
    pub pending: u64,
    pub dead: u64,
    pub oldest_age: Duration,
}

/// Orders waiting in each live sale's outbox and for how long, and its dead
/// letters. `gone` are sales reported before that left: retired with an
/// empty outbox and no dead letter, or archived (dead letters copied to
/// Postgres's `dead_letters`, keys removed). A gauge left at its last
/// reading would page on-call, for ever, about a backlog that is not there.
///
/// No all-sales total: `sum(flashsale_outbox_pending)` is one, and an
/// unlabelled sample in the same family would be counted twice by it.
pub fn backlog(live: &[Backlog], gone: &[String]) {
    for b in live {
        let sale = &b.sale_id;
        gauge!("flashsale_outbox_pending", "sale_id" => sale.clone()).set(b.pending as f64);
        gauge!("flashsale_outbox_oldest_age_seconds", "sale_id" => sale.clone())
            .set(b.oldest_age.as_secs_f64());
        gauge!("flashsale_dead_letters", "sale_id" => sale.clone()).set(b.dead as f64);
    }
    for sale in gone {
        gauge!("flashsale_outbox_pending", "sale_id" => sale.clone()).set(0.0);
        gauge!("flashsale_outbox_oldest_age_seconds", "sale_id" => sale.clone()).set(0.0);
        gauge!("flashsale_dead_letters", "sale_id" => sale.clone()).set(0.0);
        gauge!("flashsale_sale_keys", "sale_id" => sale.clone()).set(0.0);
    }
}

/// Whether Redis and Postgres answered the last probe.
pub fn services_up(redis: bool, postgres: bool) {
    gauge!("flashsale_redis_up").set(f64::from(u8::from(redis)));
    gauge!("flashsale_postgres_up").set(f64::from(u8::from(postgres)));
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

pub fn admitted(n: u64) {
    counter!("flashsale_queue_admissions_total").increment(n);
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

/// A wait for `redis.confirm_replicas` that came back short.
pub fn replicas_missed() {
    counter!("flashsale_replicas_missed_total").increment(1);
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

/// The outcomes of delivery attempts to one endpoint, once recorded:
/// `latencies` of the 2xx ones (from the event to the answer).
pub fn webhook_attempts(endpoint_id: &str, latencies: &[Duration], retries: u64, failed: u64) {
    let endpoint = || endpoint_id.to_string();
    if !latencies.is_empty() {
        counter!("flashsale_webhook_delivered_total", per_sale::ENDPOINT => endpoint())
            .increment(latencies.len() as u64);
        let h = histogram!("flashsale_webhook_delivery_latency_seconds");
        for l in latencies {
            h.record(l.as_secs_f64());
        }
    }
    if retries > 0 {
        counter!("flashsale_webhook_retries_total", per_sale::ENDPOINT => endpoint())
            .increment(retries);
    }
    if failed > 0 {
        counter!("flashsale_webhook_failed_total", per_sale::ENDPOINT => endpoint())
            .increment(failed);
    }
}

/// One endpoint's backlog, as the delivery loop reads it.
pub struct WebhookBacklog {
    pub endpoint_id: String,
    pub pending: u64,
    pub oldest_age: Duration,
}

/// The backlog of each endpoint delivered to. Every series of an endpoint
/// in `deleted` (reported before, deleted or disabled since) is dropped, counters too: its
/// label would otherwise stay in `/metrics` for the life of the process.
/// The counters exist from an endpoint's first reading, at 0, so that
/// `increase()` sees its first delivery, retry or failure.
pub fn webhook_backlog(live: &[WebhookBacklog], deleted: &[String]) {
    for b in live {
        let e = &b.endpoint_id;
        gauge!("flashsale_webhook_pending", per_sale::ENDPOINT => e.clone()).set(b.pending as f64);
        gauge!("flashsale_webhook_oldest_pending_age_seconds", per_sale::ENDPOINT => e.clone())
            .set(b.oldest_age.as_secs_f64());
        for name in [
            "flashsale_webhook_delivered_total",
            "flashsale_webhook_retries_total",
            "flashsale_webhook_failed_total",
        ] {
            counter!(name, per_sale::ENDPOINT => e.clone()).increment(0);
        }
    }
    if let Some(h) = handle() {
        for e in deleted {
            h.sales.forget_labelled(per_sale::ENDPOINT, e);
        }
    }
}
