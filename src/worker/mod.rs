//! Background work beside the gateway (or alone, as `flashsale worker`),
//! as loops and nothing else: the outbox flush (`usecases::flush`), the
//! reaper (`usecases::reap`), the loader of sales not yet in Redis
//! (`usecases::schedule::load_pending`), the archiver (`usecases::archive`),
//! the waiting rooms (`usecases::waiting_room::tend`), the live reconcile
//! (`usecases::reconcile::watch_live`), the deliveries of events to the
//! store's endpoints (`usecases::deliver`), the retention of the events
//! (`usecases::events::prune`) and the backlog gauges.
//!
//! Each step is a use case: idempotent, returning what it did, so tests
//! drive it one step at a time; the loops here only repeat the steps, back
//! off while a store is down, and stop when asked.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::SaleId;
use crate::engine::{Engine, EngineError};
use crate::store::deliveries::{Next, Outcome};
use crate::usecases::flush::{flush_once, Flusher};
use crate::usecases::reap::reap_once;

mod pace;

/// The flush loop: a pass every `flush_interval_ms` while there is work,
/// backing off (capped, doubling) while Postgres or Redis is down.
///
/// `report` makes this loop the one that exports the backlog gauges.
async fn flush_loop(
    settings: &Settings,
    engine: Engine,
    db: PgPool,
    stop: CancellationToken,
    report: bool,
) {
    let w = &settings.worker;
    let claim_idle = Duration::from_millis(w.claim_idle_ms);
    let outbox = Flusher::new(engine.clone(), db, w.flush_batch, claim_idle, stop.clone());
    let interval = Duration::from_millis(w.flush_interval_ms);
    let max_backoff = Duration::from_millis(w.max_backoff_ms);
    let mut delay = Duration::ZERO;
    let mut failing = false;
    // Claim on the first pass: a worker restarting after a crash finds its
    // predecessor's entries.
    let mut last_claim: Option<Instant> = None;
    let mut last_gauges = Instant::now();
    // The sales the backlog gauges were last set for.
    let mut reported: HashSet<SaleId> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        let claim = last_claim.is_none_or(|t| t.elapsed() >= claim_idle / 2);
        match flush_once(&outbox, claim).await {
            Ok(done) => {
                if claim {
                    last_claim = Some(Instant::now());
                }
                if failing {
                    failing = false;
                    tracing::info!("outbox flush recovered");
                }
                if !done.is_idle() {
                    tracing::debug!(?done, "outbox flushed");
                }
                delay = if done.orders + done.events + done.dead > 0 {
                    Duration::ZERO
                } else {
                    interval
                };
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "outbox flush failing; orders wait in Redis, retrying with backoff");
                }
                delay = (delay * 2).clamp(Duration::from_millis(100), max_backoff);
            }
        }
        if report && last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = Instant::now();
            if let Some(now) = backlog_gauges(&engine, &reported).await {
                reported = now;
            }
            if let Ok(bytes) = engine.memory_used().await {
                crate::metrics::redis_memory(bytes);
            }
        }
    }
}

/// Runs the background loops until `stop` is cancelled. Failures are logged
/// once per change of state (down, then back up), not once per attempt.
pub async fn run(settings: &Settings, engine: Engine, db: PgPool, stop: CancellationToken) {
    // Sales registered before the active set existed (or after it was lost)
    // come back into the loops; those that are over leave on the first pass.
    if let Err(e) = engine.activate_all().await {
        tracing::warn!(error = %e, "cannot refresh the active sales; the loops use the set as it is");
    }
    // Several consumers per worker: one reads and acknowledges in Redis while
    // another writes to Postgres (the group never hands both the same entry).
    let flush = futures::future::join_all(
        (0..settings.worker.flush_consumers)
            .map(|i| flush_loop(settings, engine.clone(), db.clone(), stop.clone(), i == 0)),
    );
    let reaper = {
        let engine = engine.clone();
        let every = Duration::from_millis(settings.worker.reaper_interval_ms);
        let batch = settings.worker.reaper_batch;
        every_tick("reaper", every, stop.clone(), move || {
            let engine = engine.clone();
            async move {
                let r = reap_once(&engine, batch).await?;
                crate::metrics::reaped(r.expired);
                if r.expired > 0 {
                    tracing::info!(expired = r.expired, "reaped expired holds");
                }
                Ok::<(), EngineError>(())
            }
        })
    };
    let loader = {
        let every = Duration::from_millis(settings.worker.loader_interval_ms);
        let (engine, db) = (engine.clone(), db.clone());
        every_tick("loader", every, stop.clone(), move || {
            let (engine, db) = (engine.clone(), db.clone());
            async move {
                crate::usecases::schedule::load_pending(&engine, &db)
                    .await
                    .map(drop)
            }
        })
    };
    let archiver = {
        let every = Duration::from_millis(settings.worker.loader_interval_ms);
        let retention = Duration::from_secs(settings.engine.retention_seconds);
        let (engine, db) = (engine.clone(), db.clone());
        every_tick("archiver", every, stop.clone(), move || {
            let (engine, db) = (engine.clone(), db.clone());
            async move {
                crate::usecases::archive::archive_due(&engine, &db, retention)
                    .await
                    .map(drop)
            }
        })
    };
    let events_retention = {
        let keep = Duration::from_secs(u64::from(settings.webhooks.retention_days) * 86_400);
        let db = db.clone();
        every_tick(
            "events retention",
            EVENTS_RETENTION_INTERVAL,
            stop.clone(),
            move || {
                let db = db.clone();
                async move {
                    let n = crate::usecases::events::prune(&db, keep).await?;
                    if n > 0 {
                        tracing::info!(deleted = n, "events past their retention deleted");
                    }
                    Ok::<(), crate::store::StoreError>(())
                }
            },
        )
    };
    let deliveries = deliveries_beside_the_hot_path(settings, stop.clone());
    let webhook_gauges = {
        let reported = Arc::new(tokio::sync::Mutex::new(HashSet::new()));
        let db = db.clone();
        every_tick(
            "webhook gauges",
            WEBHOOK_GAUGES_INTERVAL,
            stop.clone(),
            move || {
                let (db, reported) = (db.clone(), reported.clone());
                async move { webhook_gauges(&db, &mut *reported.lock().await).await }
            },
        )
    };
    let rooms = waiting_rooms_loop(engine.clone(), db.clone(), stop.clone());
    let reconciler = {
        let every = Duration::from_millis(settings.worker.reconcile_interval_ms);
        let drifting = Arc::new(tokio::sync::Mutex::new(HashSet::new()));
        every_tick("reconcile", every, stop.clone(), move || {
            let (engine, db, drifting) = (engine.clone(), db.clone(), drifting.clone());
            async move {
                let mut drifting = drifting.lock().await;
                crate::usecases::reconcile::watch_live(&engine, &db, &mut drifting).await
            }
        })
    };
    tokio::join!(
        flush,
        reaper,
        loader,
        archiver,
        reconciler,
        rooms,
        events_retention,
        deliveries,
        webhook_gauges
    );
}

/// One pass of the backlog gauges; returns the sales it reported (None:
/// Redis did not answer, nothing changed). It reads the active sales and
/// those it reported last time: a sale that retired since (ended, nothing
/// held, outbox empty) is still read while it keeps dead letters, until a
/// human clears them or the archive removes the sale, so its gauge follows
/// them instead of freezing at an alert nothing could clear. Every other
/// sale that left is reported `gone` (its gauges at 0).
async fn backlog_gauges(engine: &Engine, reported: &HashSet<SaleId>) -> Option<HashSet<SaleId>> {
    let active: HashSet<SaleId> = engine.active_ids().await.ok()?.into_iter().collect();
    let mut live = Vec::with_capacity(active.len());
    let mut now = HashSet::with_capacity(active.len());
    for id in active.union(reported) {
        // inspect.lua dates the oldest entry by Redis's clock, the one that
        // stamped it: no skew with this host's.
        let Ok(Some(i)) = engine
            .inspect(id, crate::usecases::reconcile::GRACE_MS)
            .await
        else {
            continue;
        };
        if !active.contains(id) && i.dead_letters <= 0 {
            continue;
        }
        if let Ok(keys) = engine.key_count(id).await {
            crate::metrics::sale_keys(id, keys);
        }
        now.insert(id.clone());
        live.push(crate::metrics::Backlog {
            sale_id: id.to_string(),
            pending: u64::try_from(i.outbox).unwrap_or(0),
            dead: u64::try_from(i.dead_letters).unwrap_or(0),
            oldest_age: Duration::from_millis(u64::try_from(i.oldest_outbox_age_ms).unwrap_or(0)),
        });
    }
    let gone: Vec<String> = reported.difference(&now).map(ToString::to_string).collect();
    crate::metrics::backlog(&live, &gone);
    crate::metrics::active_sales(active.len());
    Some(now)
}

/// How often the worker deletes the events past `webhooks.retention_days`:
/// a retention counted in days needs no finer step.
const EVENTS_RETENTION_INTERVAL: Duration = Duration::from_secs(300);

/// How often the worker tends the waiting rooms: the granularity of their
/// pace (admissions come in steps of at most this long).
const WAITING_ROOM_INTERVAL: Duration = Duration::from_millis(100);

/// The waiting rooms' loop: opens, seals and admits ([`crate::usecases::waiting_room::tend`]).
/// The list of rooms comes from Postgres; while Postgres is down the last
/// list is used, so admission goes on from Redis alone.
async fn waiting_rooms_loop(engine: Engine, db: PgPool, stop: CancellationToken) {
    let rooms = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let mut listed = Instant::now() - Duration::from_secs(3600);
    let listed_every = Duration::from_secs(1);
    every_tick("rooms", WAITING_ROOM_INTERVAL, stop, move || {
        let (engine, db, rooms) = (engine.clone(), db.clone(), rooms.clone());
        let refresh = listed.elapsed() >= listed_every;
        if refresh {
            listed = Instant::now();
        }
        async move {
            let mut rooms = rooms.lock().await;
            if refresh {
                if let Ok(fresh) = crate::store::waiting_rooms_to_tend(&db).await {
                    *rooms = fresh;
                }
            }
            let mut failure = None;
            for room in rooms.iter() {
                if let Err(e) = crate::usecases::waiting_room::tend(&engine, &db, room).await {
                    failure = Some(format!("room of sale {}: {e}", room.sale_id));
                }
            }
            failure.map_or(Ok(()), Err)
        }
    })
    .await
}

async fn every_tick<F, Fut, E>(name: &str, every: Duration, stop: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match step().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(task = name, "recovered");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(task = name, error = %e, "failing; retrying quietly until it recovers");
            }
            Err(_) => {}
        }
    }
}

/// Connections the deliveries keep to Postgres, beside `database.max_connections`.
const DELIVERY_CONNECTIONS: u32 = 4;
/// The nice value of the delivery threads: the lowest priority.
const DELIVERY_NICE: i32 = 19;

/// Runs [`deliver_loop`] on a thread of its own, with its own runtime and
/// its own few Postgres connections, at the lowest CPU priority. A drain of
/// a webhook backlog costs CPU in this process, in Postgres and in the
/// receiver (BENCHMARKS.md M), and on a machine the gateway shares nothing
/// told it to make room: reserves ran at half speed beside it (section O).
/// At nice 19 the scheduler gives this thread only the CPU the hot path
/// leaves, and [`pace`] bounds what it hands Postgres and the receiver
/// (section P); deliveries slow down while a sale peaks (the oldest-pending
/// gauge shows it) and catch up when it eases. Its own pool keeps a backlog
/// from taking the connections the flush needs.
async fn deliveries_beside_the_hot_path(settings: &Settings, stop: CancellationToken) {
    let settings = settings.clone();
    // Dropped with this future (the worker dropped without a stop), the
    // guard still ends the thread.
    let stop = stop.child_token();
    let _ends_thread = stop.clone().drop_guard();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || {
            lower_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_start(lower_priority)
                .build();
            match runtime {
                Ok(rt) => rt.block_on(async {
                    match crate::store::pool_of(&settings, DELIVERY_CONNECTIONS) {
                        Ok(db) => deliver_loop(&settings, db, stop).await,
                        Err(e) => tracing::error!(error = %e, "webhook deliveries cannot start"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "webhook deliveries cannot start"),
            }
            let _ = done.send(());
        });
    match thread {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => tracing::error!(error = %e, "webhook deliveries cannot start"),
    }
}

/// Lowers the calling thread's CPU priority (on Linux a nice value is a
/// thread's own, and the threads it starts inherit it).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority and gettid only read their arguments.
        let rc = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                DELIVERY_NICE,
            )
        };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the webhook deliveries' priority; they compete with the hot path");
        }
    }
}

/// How often the delivery loop looks for due deliveries when nothing woke
/// it earlier (an attempt finishing wakes it at once).
const DELIVERY_INTERVAL: Duration = Duration::from_millis(200);
/// Deliveries in flight in one worker, across its endpoints (each endpoint
/// also has its own bound across all workers, `IN_FLIGHT_PER_ENDPOINT`).
const DELIVERIES_IN_FLIGHT: usize = 256;
/// Outcomes written per round trip.
const OUTCOMES_PER_WRITE: usize = 1000;
const WEBHOOK_GAUGES_INTERVAL: Duration = Duration::from_secs(2);

type Done = (Outcome, Option<Duration>, tokio::sync::OwnedSemaphorePermit);

/// The delivery loop: claims due deliveries (as many as it has room for),
/// sends each in a task of its own, so that an endpoint that hangs holds
/// only its own leases, and hands the outcomes to [`record_loop`], which
/// writes them in batches. Postgres down: claims and writes back off and
/// retry; the outcomes wait in memory (holding their room, so no more is
/// claimed) and their leases fence them, so nothing is lost or written
/// over another worker's attempt. On stop, attempts in flight are dropped
/// and their leases given back.
async fn deliver_loop(settings: &Settings, db: PgPool, stop: CancellationToken) {
    use crate::usecases::deliver::{lease, Deliverer, IN_FLIGHT_PER_ENDPOINT};
    let deliverer = match Deliverer::new(settings) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "webhook deliveries cannot start");
            return;
        }
    };
    let lease_ms = i64::try_from(lease(settings).as_millis()).unwrap_or(i64::MAX);
    let max_backoff = Duration::from_millis(settings.worker.max_backoff_ms);
    let room = Arc::new(tokio::sync::Semaphore::new(DELIVERIES_IN_FLIGHT));
    let wake = Arc::new(tokio::sync::Notify::new());
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let recorder = tokio::spawn(record_loop(
        db.clone(),
        done_rx,
        wake.clone(),
        stop.clone(),
        max_backoff,
    ));
    let mut pace = pace::Pace::new();
    let mut delay = Duration::ZERO;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
        let free = room.available_permits();
        if free == 0 {
            delay = DELIVERY_INTERVAL;
            continue;
        }
        let free = match pace.take(free) {
            Ok(n) => n,
            Err(wait) => {
                delay = wait;
                continue;
            }
        };
        let limit = i64::try_from(free).unwrap_or(0);
        match crate::store::deliveries::claim(&db, IN_FLIGHT_PER_ENDPOINT, lease_ms, limit).await {
            Ok(claimed) => {
                pace.claimed(free, claimed.len());
                if failing {
                    failing = false;
                    tracing::info!("webhook deliveries recovered");
                }
                delay = if claimed.is_empty() {
                    DELIVERY_INTERVAL
                } else {
                    Duration::ZERO
                };
                for d in claimed {
                    // The claim took at most `free`, and only this loop
                    // takes room.
                    let Ok(permit) = room.clone().try_acquire_owned() else {
                        break;
                    };
                    let (deliverer, done, stop) =
                        (deliverer.clone(), done_tx.clone(), stop.clone());
                    tokio::spawn(async move {
                        let outcome = tokio::select! {
                            o = deliverer.attempt(&d) => o,
                            _ = stop.cancelled() => (release(&d), None),
                        };
                        let _ = done.send((outcome.0, outcome.1, permit));
                    });
                }
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "webhook deliveries failing; they wait in Postgres, retrying with backoff");
                }
                delay = (delay * 2).clamp(Duration::from_millis(100), max_backoff);
            }
        }
    }
    drop(done_tx);
    // The attempts in flight end at once (stop is cancelled); their
    // outcomes get a moment to be written, else their leases run out.
    let _ = tokio::time::timeout(Duration::from_secs(3), recorder).await;
}

fn release(d: &crate::store::deliveries::Claimed) -> Outcome {
    Outcome {
        endpoint_id: d.endpoint_id,
        event_id: d.event_id.clone(),
        leased_until: d.leased_until,
        next: Next::Released,
        status_code: None,
        error: None,
    }
}

/// Writes the outcomes as they come, in batches, until every sender is
/// gone; each written batch frees its room and wakes the claim.
async fn record_loop(
    db: PgPool,
    mut done: tokio::sync::mpsc::UnboundedReceiver<Done>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    max_backoff: Duration,
) {
    let mut batch: Vec<Done> = Vec::new();
    let mut failing = false;
    while let Some(first) = done.recv().await {
        batch.push(first);
        while batch.len() < OUTCOMES_PER_WRITE {
            match done.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let outcomes: Vec<Outcome> = batch.iter().map(|(o, ..)| o.clone()).collect();
        let mut delay = Duration::from_millis(100);
        loop {
            match crate::store::deliveries::record(&db, &outcomes).await {
                Ok(_) => {
                    if failing {
                        failing = false;
                        tracing::info!("webhook outcomes recorded again");
                    }
                    break;
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "cannot record webhook outcomes; retrying with backoff");
                    }
                    // Once stopping, the leases are left to run out: the
                    // deliveries come back to any worker (at least once).
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max_backoff);
                }
            }
        }
        count_outcomes(&outcomes, &batch);
        batch.clear();
        wake.notify_one();
    }
}

fn count_outcomes(outcomes: &[Outcome], batch: &[Done]) {
    use std::collections::HashMap;
    // endpoint -> (latencies, retries, failed)
    let mut per: HashMap<uuid::Uuid, (Vec<Duration>, u64, u64)> = HashMap::new();
    for (o, (_, latency, _)) in outcomes.iter().zip(batch) {
        let e = per.entry(o.endpoint_id).or_default();
        match o.next {
            Next::Delivered => e.0.push(latency.unwrap_or_default()),
            Next::Retry { .. } => e.1 += 1,
            Next::Failed => e.2 += 1,
            Next::Gone => {
                tracing::warn!(endpoint_id = %o.endpoint_id, "endpoint answered 410 Gone: disabled");
            }
            Next::Released => {}
        }
    }
    for (endpoint, (latencies, retries, failed)) in per {
        crate::metrics::webhook_attempts(&endpoint.to_string(), &latencies, retries, failed);
    }
}

/// The endpoints' backlog gauges; an endpoint reported before and deleted
/// or disabled since loses its series.
async fn webhook_gauges(
    db: &PgPool,
    reported: &mut HashSet<String>,
) -> Result<(), crate::store::StoreError> {
    let backlogs = crate::store::deliveries::backlogs(db).await?;
    let live: Vec<crate::metrics::WebhookBacklog> = backlogs
        .iter()
        .map(|b| crate::metrics::WebhookBacklog {
            endpoint_id: b.endpoint_id.to_string(),
            pending: u64::try_from(b.pending).unwrap_or(0),
            oldest_age: Duration::from_secs_f64(b.oldest_age_seconds.clamp(0.0, 1e9)),
        })
        .collect();
    let now: HashSet<String> = live.iter().map(|b| b.endpoint_id.clone()).collect();
    let deleted: Vec<String> = reported.difference(&now).cloned().collect();
    crate::metrics::webhook_backlog(&live, &deleted);
    *reported = now;
    Ok(())
}
