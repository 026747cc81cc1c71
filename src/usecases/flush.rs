//! Flushing a sale's outbox: confirmed orders go from its Redis stream to
//! the Postgres `orders` table, and its events for the store from theirs to
//! `events` (with a `reservation.confirmed` for every order, and a pending
//! delivery per subscribed endpoint), exactly once through crashes and
//! outages.
//!
//! - Both streams are flushed together: one transaction writes a batch of
//!   each, and both are acknowledged after its commit.
//! - Entries are read through a consumer group (`engine::ops::outbox`), so
//!   several workers share the work without two of them holding the same
//!   entry.
//! - A batch is one INSERT ... SELECT FROM UNNEST, ON CONFLICT DO NOTHING:
//!   flushing an entry twice (after a crash between commit and ack) writes no
//!   second row.
//! - Entries are acknowledged (and deleted from the stream) only after the
//!   commit. Until then they stay pending for this consumer, which re-reads
//!   them after a failure; entries left pending by a dead consumer are claimed
//!   once idle for `worker.claim_idle_ms`.
//! - An entry Postgres rejects for good is moved to the sale's dead-letter
//!   stream with the reason; the entries behind it flush.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::event::Event;
use crate::domain::SaleId;
use crate::engine::ops::outbox::{Delivery, Entry, Settle, Stream};
use crate::engine::{Engine, EngineError};
use crate::store::{self, NewOrder};

/// A consumer idle this many claim periods, with nothing pending, stopped.
const PRUNE_AFTER_CLAIMS: u32 = 10;

/// Why a flush stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("{0}")]
    Redis(#[from] EngineError),
    #[error("postgres unavailable: {0}")]
    Postgres(#[source] sqlx::Error),
}

/// What one flush of one sale did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Entries written (or found already written) and acknowledged.
    pub orders: usize,
    /// Event entries written (or found already written) and acknowledged.
    pub events: usize,
    /// Entries moved to the dead letters.
    pub dead: usize,
    /// Entries taken over from a consumer that stopped acknowledging.
    pub claimed: usize,
}

impl Flushed {
    pub fn is_idle(&self) -> bool {
        *self == Flushed::default()
    }

    pub fn add(&mut self, other: Flushed) {
        self.orders += other.orders;
        self.events += other.events;
        self.dead += other.dead;
        self.claimed += other.claimed;
    }
}

/// One flusher: a consumer of the outboxes' group, writing what it reads
/// to Postgres.
#[derive(Clone)]
pub struct Flusher {
    engine: Engine,
    db: PgPool,
    consumer: String,
    batch: usize,
    claim_idle: Duration,
    /// Checked between batches: on shutdown the batch in flight finishes
    /// (commit, then ack) and no new one starts.
    stop: CancellationToken,
}

impl Flusher {
    pub fn new(
        engine: Engine,
        db: PgPool,
        batch: usize,
        claim_idle: Duration,
        stop: CancellationToken,
    ) -> Flusher {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        Flusher {
            consumer: format!("{host}-{}-{}", std::process::id(), Uuid::new_v4().simple()),
            engine,
            db,
            batch,
            claim_idle,
            stop,
        }
    }

    /// The same outbox under a fixed consumer name. One-shot commands use
    /// one (`reconcile`), so runs share one consumer, a crashed run's
    /// pending entries are the next run's own, and no run leaves a new one.
    pub fn with_consumer(mut self, name: &str) -> Flusher {
        self.consumer = name.to_string();
        self
    }

    /// Removes this consumer from the sale's group if it holds nothing.
    pub async fn leave(&self, sale_id: &SaleId) -> Result<bool, FlushError> {
        Ok(self.engine.outbox_leave(sale_id, &self.consumer).await?)
    }

    /// Flushes everything this worker can take from one sale's outbox:
    /// its own pending entries, then idle entries of dead consumers (when
    /// `claim` is set), then new ones, batch by batch until none are left.
    pub async fn flush_sale(&self, sale_id: &SaleId, claim: bool) -> Result<Flushed, FlushError> {
        let mut total = Flushed::default();
        let mut sources = vec![Delivery::Own];
        if claim {
            sources.push(Delivery::Claimed {
                min_idle: self.claim_idle,
            });
        }
        sources.push(Delivery::New);
        for source in sources {
            loop {
                if self.stop.is_cancelled() {
                    return Ok(total);
                }
                let take = |stream| {
                    self.engine
                        .outbox_take(sale_id, stream, &self.consumer, source, self.batch)
                };
                let orders = take(Stream::Orders).await?;
                let events = take(Stream::Events).await?;
                if orders.is_empty() && events.is_empty() {
                    break;
                }
                let n = orders.len() + events.len();
                let full = orders.len() == self.batch || events.len() == self.batch;
                let mut done = self.write(sale_id, orders, events).await?;
                if matches!(source, Delivery::Claimed { .. }) {
                    done.claimed = n;
                    crate::metrics::claimed(sale_id, n);
                }
                total.add(done);
                // Own pending entries come back whole in one read.
                if source == Delivery::Own || !full {
                    break;
                }
            }
        }
        if claim {
            // Whatever dead consumers held is claimed by now: their names go,
            // so the group does not grow by one per worker ever started.
            self.engine
                .outbox_prune(sale_id, self.claim_idle * PRUNE_AFTER_CLAIMS)
                .await?;
        }
        Ok(total)
    }

    /// Writes a batch of each stream in one transaction, then acknowledges
    /// both. Returns without acknowledging anything when Postgres does not
    /// answer: the entries stay pending.
    async fn write(
        &self,
        sale_id: &SaleId,
        orders: Vec<Entry>,
        events: Vec<Entry>,
    ) -> Result<Flushed, FlushError> {
        let started = Instant::now();
        let mut good: Vec<(&Entry, NewOrder)> = Vec::with_capacity(orders.len());
        let mut dead: Vec<(&Entry, String)> = Vec::new();
        let mut gone = Vec::new();
        for e in &orders {
            match e.order() {
                Some(Ok(order)) => good.push((e, order)),
                Some(Err(why)) => dead.push((e, why)),
                None => gone.push(e.id.as_str()),
            }
        }
        let mut good_events: Vec<(&Entry, Event)> = Vec::with_capacity(events.len());
        let mut dead_events: Vec<(&Entry, String)> = Vec::new();
        let mut gone_events = Vec::new();
        for e in &events {
            match e.event(sale_id) {
                Some(Ok(event)) => good_events.push((e, event)),
                Some(Err(why)) => dead_events.push((e, why)),
                None => gone_events.push(e.id.as_str()),
            }
        }
        // Only entries that reached `redis.confirm_replicas` replicas go to
        // Postgres: a replica promoted after a crash never sells a unit that
        // Postgres has sold, nor loses an event Postgres has. Not yet: they
        // stay pending for the next round.
        self.engine.replicated(sale_id).await?;
        let pg = FlushError::Postgres;
        let mut tx = store::begin(&self.db).await.map_err(pg)?;
        // Every order entry is also the record of its confirm: an order and
        // its `reservation.confirmed` are written together or not at all.
        let confirmed: Vec<Event> = good.iter().map(|(e, o)| confirmed(e, o)).collect();
        let all_orders: Vec<NewOrder> = good.iter().map(|(_, o)| o.clone()).collect();
        let all_events: Vec<Event> = confirmed
            .iter()
            .cloned()
            .chain(good_events.iter().map(|(_, e)| e.clone()))
            .collect();
        let inserted = match attempt(&mut tx, &all_orders, &all_events).await {
            Ok(inserted) => inserted,
            Err(e) if store::is_permanent(&e) => {
                // Somebody in the batch is poison: find out who, row by row.
                let mut inserted = Vec::new();
                let mut kept = Vec::with_capacity(good.len());
                for ((entry, order), event) in good.into_iter().zip(confirmed) {
                    let one = attempt(&mut tx, std::slice::from_ref(&order), &[event]).await;
                    match one {
                        Ok(rows) => {
                            inserted.extend(rows);
                            kept.push((entry, order));
                        }
                        Err(e) if store::is_permanent(&e) => dead.push((entry, e.to_string())),
                        Err(e) => return Err(pg(e)),
                    }
                }
                good = kept;
                let mut kept = Vec::with_capacity(good_events.len());
                for (entry, event) in good_events {
                    match attempt(&mut tx, &[], std::slice::from_ref(&event)).await {
                        Ok(rows) => {
                            inserted.extend(rows);
                            kept.push((entry, event));
                        }
                        Err(e) if store::is_permanent(&e) => {
                            dead_events.push((entry, e.to_string()));
                        }
                        Err(e) => return Err(pg(e)),
                    }
                }
                good_events = kept;
                inserted
            }
            Err(e) => return Err(pg(e)),
        };
        store::insert_deliveries(&mut *tx, &inserted)
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        let settle = [
            Settle {
                stream: Stream::Orders,
                done: good
                    .iter()
                    .map(|(e, _)| e.id.as_str())
                    .chain(gone.iter().copied())
                    .collect(),
                dead,
            },
            Settle {
                stream: Stream::Events,
                done: good_events
                    .iter()
                    .map(|(e, _)| e.id.as_str())
                    .chain(gone_events.iter().copied())
                    .collect(),
                dead: dead_events,
            },
        ];
        self.engine.outbox_settle(sale_id, &settle).await?;
        let [orders_settled, events_settled] = &settle;
        let flushed = Flushed {
            orders: good.len(),
            events: good_events.len(),
            dead: orders_settled.dead.len() + events_settled.dead.len(),
            claimed: 0,
        };
        crate::metrics::flushed(sale_id, flushed.orders, flushed.dead, started.elapsed());
        let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, kind) in &inserted {
            *by_type.entry(kind.as_str()).or_default() += 1;
        }
        for (kind, n) in by_type {
            crate::metrics::events_flushed(kind, n);
        }
        for s in &settle {
            for (entry, why) in &s.dead {
                tracing::error!(stream = s.stream.name(), entry = %entry.id, reason = %why,
                    "outbox entry moved to the dead letters");
            }
        }
        Ok(flushed)
    }

    /// Entries not yet in Postgres (delivered or not) and dead letters.
    pub async fn backlog(&self, sale_id: &SaleId) -> Result<(u64, u64), FlushError> {
        Ok(self.engine.outbox_backlog(sale_id).await?)
    }
}

/// The `reservation.confirmed` an order entry stands for, with the sale's
/// version when the entry has it (entries written before events were kept
/// have none).
fn confirmed(entry: &Entry, order: &NewOrder) -> Event {
    let version = entry.field("version").and_then(|v| v.parse().ok());
    Event::confirmed(order, version)
}

/// Writes orders and events inside a savepoint of the flush's transaction,
/// so that a rejected batch leaves the transaction usable for the row by
/// row retry. Returns the events inserted (not found already there).
/// (A savepoint cut while it begins is ended with the whole transaction,
/// which the caller's drop rolls back: no `store::begin` needed here.)
async fn attempt(
    conn: &mut PgConnection,
    orders: &[NewOrder],
    events: &[Event],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut sp = conn.begin().await?;
    let written = async {
        if !orders.is_empty() {
            store::insert_orders(&mut *sp, orders).await?;
        }
        store::insert_events(&mut *sp, events).await
    }
    .await;
    match written {
        Ok(inserted) => {
            sp.commit().await?;
            Ok(inserted)
        }
        Err(e) => {
            sp.rollback().await?;
            Err(e)
        }
    }
}

/// One pass of the outbox flush over every active sale (so sales created
/// after the worker started are found without scanning keys, and sales
/// that are over cost nothing). `claim` also takes over entries idle at
/// dead consumers. A Postgres failure stops the pass (it is down for every
/// sale); a Redis failure of one sale lets the others go on. The entries in
/// question stay pending and are retried.
pub async fn flush_once(flusher: &Flusher, claim: bool) -> Result<Flushed, FlushError> {
    let mut total = Flushed::default();
    let mut failed = None;
    for id in flusher.engine.active_ids().await? {
        match flusher.flush_sale(&id, claim).await {
            Ok(done) => total.add(done),
            Err(e @ FlushError::Postgres(_)) => return Err(e),
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(total), Err)
}
