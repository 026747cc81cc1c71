//! The gateway's shared view of each sale, behind every public read:
//! `GET /v1/sales`, `GET /v1/sales/{id}` and the stock stream.
//!
//! Public reads need no account, so their cost to Redis must not grow with
//! the number of readers: a sale is read from Redis (one script call) at most
//! once per [`EVERY`] for all readers together, and concurrent readers of a
//! stale sale wait for the same call instead of each making one. The
//! registry of sale ids is shared the same way (one SMEMBERS per interval).
//!
//! Freshness for writers: a client that just wrote to a sale through this
//! gateway (reserve, confirm, release, adjust) must not read figures from
//! before its own write. Writes are noted per client address; a read from
//! that address accepts only a snapshot whose Redis read started after the
//! address's last write. Everybody else keeps the shared snapshot, so a storm
//! of reserves does not turn every reader's request into a Redis call.
//! Creating a sale refreshes the whole view for everyone (admin writes are
//! rare).
//!
//! The stream: one poller per watched sale reads through the same view every
//! 100 ms while anyone is subscribed and publishes into a `watch` channel
//! only when status or stock changed. A watch keeps just the latest value: a
//! slow client skips to the newest state and never holds anyone back; when
//! the last subscriber leaves, the poller stops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;

use super::{Engine, EngineError, EngineResult, Refusal};
use crate::domain::{Sale, SaleId};

/// The longest a public reader may be shown figures of the past.
pub const EVERY: Duration = Duration::from_millis(100);

/// Sales nobody read for this long leave the view (a sale asked for once,
/// an unknown id, a sale archived since).
const IDLE: Duration = Duration::from_secs(30);

type Channel = watch::Sender<Option<Arc<Sale>>>;

/// What a read produced, in a form every waiter can clone.
#[derive(Debug, Clone)]
struct Failure(EngineError);

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        Failure(e)
    }
}

impl From<Failure> for EngineError {
    fn from(f: Failure) -> EngineError {
        f.0
    }
}

type Fetched<T> = Result<Arc<T>, Failure>;
type Pending<T> = Shared<BoxFuture<'static, Fetched<T>>>;

/// One shared value: the last good read, the read in flight, and who wrote
/// lately.
struct Slot<T> {
    /// The last answer worth keeping (a value or "not found"), and when the
    /// Redis read that produced it started.
    value: Option<(Instant, Fetched<T>)>,
    /// The read in flight, and when it started.
    pending: Option<(Instant, Pending<T>)>,
    /// Every reader needs a value read after this (a create, for everyone).
    fresh_after: Option<Instant>,
    /// Recent writes through this gateway, by client address. Writes older
    /// than `EVERY` are pruned: the interval already covers them.
    writes: HashMap<IpAddr, Instant>,
    writes_pruned: Instant,
    last_used: Instant,
}

impl<T> Slot<T> {
    fn new(now: Instant) -> Slot<T> {
        Slot {
            value: None,
            pending: None,
            fresh_after: None,
            writes: HashMap::new(),
            writes_pruned: now,
            last_used: now,
        }
    }

    /// The earliest start of a read this reader may be answered from.
    fn needs(&self, now: Instant, reader: Option<IpAddr>) -> Instant {
        let mut need = now.checked_sub(EVERY).unwrap_or(now);
        if let Some(t) = self.fresh_after {
            need = need.max(t);
        }
        if let Some(t) = reader.and_then(|ip| self.writes.get(&ip)) {
            need = need.max(*t);
        }
        need
    }

    fn wrote(&mut self, ip: IpAddr, now: Instant) {
        if now.duration_since(self.writes_pruned) > EVERY {
            let horizon = now.checked_sub(EVERY).unwrap_or(now);
            self.writes.retain(|_, t| *t >= horizon);
            self.writes_pruned = now;
        }
        self.writes.insert(ip, now);
    }

    /// A kept value good enough for this reader, or the read to wait for
    /// (joining one in flight when it is recent enough, else starting one).
    fn lookup(
        &mut self,
        now: Instant,
        reader: Option<IpAddr>,
        start: impl FnOnce() -> BoxFuture<'static, Fetched<T>>,
    ) -> Result<Fetched<T>, (Instant, Pending<T>)> {
        self.last_used = now;
        let need = self.needs(now, reader);
        if let Some((at, v)) = &self.value {
            if *at >= need {
                return Ok(v.clone());
            }
        }
        if let Some((at, p)) = &self.pending {
            if *at >= need {
                return Err((*at, p.clone()));
            }
        }
        let p = start().shared();
        self.pending = Some((now, p.clone()));
        Err((now, p))
    }

    /// Keeps a finished read's answer, unless a newer one is kept already.
    /// Failures of Redis are not kept: the next reader tries again.
    fn settle(&mut self, started: Instant, got: &Fetched<T>) {
        if self.pending.as_ref().is_some_and(|(at, _)| *at == started) {
            self.pending = None;
        }
        let keep = matches!(
            got,
            Ok(_) | Err(Failure(EngineError::Refused(Refusal::SaleNotFound)))
        );
        if keep && self.value.as_ref().is_none_or(|(at, _)| *at < started) {
            self.value = Some((started, got.clone()));
        }
    }
}

#[derive(Default)]
struct Inner {
    // std Mutexes: held to look up or update a slot, never across an await.
    sales: Mutex<HashMap<String, Slot<Sale>>>,
    registry: Mutex<Option<Slot<Vec<SaleId>>>>,
    channels: Mutex<HashMap<String, Channel>>,
    swept: Mutex<Option<Instant>>,
}

#[derive(Clone, Default)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Live {
    /// The sale as the view holds it: at most `EVERY` old, and never older
    /// than `reader`'s own last write to it through this gateway.
    pub async fn sale(
        &self,
        engine: &Engine,
        sale_id: &SaleId,
        reader: Option<IpAddr>,
    ) -> EngineResult<Arc<Sale>> {
        let now = Instant::now();
        self.sweep(now);
        let found = {
            let Ok(mut sales) = self.inner.sales.lock() else {
                return engine.sale(sale_id).await.map(Arc::new);
            };
            let slot = sales
                .entry(sale_id.to_string())
                .or_insert_with(|| Slot::new(now));
            slot.lookup(now, reader, || {
                let (engine, id) = (engine.clone(), sale_id.clone());
                async move { engine.sale(&id).await.map(Arc::new).map_err(Failure::from) }.boxed()
            })
        };
        let got = match found {
            Ok(v) => v,
            Err((started, pending)) => {
                let got = pending.await;
                if let Ok(mut sales) = self.inner.sales.lock() {
                    if let Some(slot) = sales.get_mut(sale_id.as_str()) {
                        slot.settle(started, &got);
                    }
                }
                got
            }
        };
        got.map_err(EngineError::from)
    }

    /// Every sale in the registry that Redis holds, by start time then id.
    pub async fn sales(
        &self,
        engine: &Engine,
        reader: Option<IpAddr>,
    ) -> EngineResult<Vec<Arc<Sale>>> {
        let ids = self.sale_ids(engine).await?;
        let found =
            futures::future::join_all(ids.iter().map(|id| self.sale(engine, id, reader))).await;
        let mut sales = Vec::with_capacity(found.len());
        for sale in found {
            match sale {
                Ok(s) => sales.push(s),
                Err(EngineError::Refused(Refusal::SaleNotFound)) => {}
                Err(e) => return Err(e),
            }
        }
        // By the millisecond, as the list's cursors compare.
        let key = |s: &Sale| (crate::domain::to_ms(s.starts_at), s.id.clone());
        sales.sort_by_cached_key(|s| key(s));
        Ok(sales)
    }

    async fn sale_ids(&self, engine: &Engine) -> EngineResult<Arc<Vec<SaleId>>> {
        let now = Instant::now();
        let found = {
            let Ok(mut registry) = self.inner.registry.lock() else {
                return engine.sale_ids().await.map(Arc::new);
            };
            registry
                .get_or_insert_with(|| Slot::new(now))
                .lookup(now, None, || {
                    let engine = engine.clone();
                    async move { engine.sale_ids().await.map(Arc::new).map_err(Failure::from) }
                        .boxed()
                })
        };
        let got = match found {
            Ok(v) => v,
            Err((started, pending)) => {
                let got = pending.await;
                if let Ok(mut registry) = self.inner.registry.lock() {
                    if let Some(slot) = registry.as_mut() {
                        slot.settle(started, &got);
                    }
                }
                got
            }
        };
        got.map_err(EngineError::from)
    }

    /// `ip` wrote to the sale through this gateway: its next reads of the
    /// sale see figures read after now.
    pub fn wrote(&self, sale_id: &SaleId, ip: IpAddr) {
        let now = Instant::now();
        if let Ok(mut sales) = self.inner.sales.lock() {
            // A sale nobody reads through the view needs no note.
            if let Some(slot) = sales.get_mut(sale_id.as_str()) {
                slot.wrote(ip, now);
            }
        }
    }

    /// Everything read from now on is read again (a sale was created or
    /// changed by an admin): for every reader, not only the writer.
    pub fn refresh_all(&self) {
        let now = Instant::now();
        if let Ok(mut sales) = self.inner.sales.lock() {
            for slot in sales.values_mut() {
                slot.fresh_after = Some(now);
            }
        }
        if let Ok(mut registry) = self.inner.registry.lock() {
            if let Some(slot) = registry.as_mut() {
                slot.fresh_after = Some(now);
            }
        }
    }

    /// Forgets sales nobody read for a while (checked at most once a second).
    fn sweep(&self, now: Instant) {
        {
            let Ok(mut swept) = self.inner.swept.lock() else {
                return;
            };
            if swept.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *swept = Some(now);
        }
        if let Ok(mut sales) = self.inner.sales.lock() {
            sales.retain(|_, slot| now.duration_since(slot.last_used) < IDLE);
        }
    }

    /// A receiver of the sale's latest snapshot (`None` until the first
    /// poll). Starts the sale's poller if nobody watched it yet.
    pub fn subscribe(
        &self,
        engine: &Engine,
        sale_id: &SaleId,
    ) -> watch::Receiver<Option<Arc<Sale>>> {
        let Ok(mut channels) = self.inner.channels.lock() else {
            // A poisoned map: give a channel that never changes.
            return watch::channel(None).1;
        };
        if let Some(tx) = channels.get(sale_id.as_str()) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        channels.insert(sale_id.to_string(), tx.clone());
        tokio::spawn(poll(self.clone(), engine.clone(), sale_id.clone(), tx));
        rx
    }
}

async fn poll(live: Live, engine: Engine, sale_id: SaleId, tx: Channel) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Unsubscribed by everyone: stop, and let the next subscriber start
        // a fresh poller (checked under the lock so none can slip in).
        if tx.receiver_count() == 0 {
            if let Ok(mut channels) = live.inner.channels.lock() {
                if tx.receiver_count() == 0 {
                    channels.remove(sale_id.as_str());
                    return;
                }
            }
        }
        // Gone (Redis lost it): nothing to stream until it is back. Redis
        // down: keep the last state; the stream's comments keep the
        // connections open until it is back.
        if let Ok(sale) = live.sale(&engine, &sale_id, None).await {
            tx.send_if_modified(|current| {
                let changed = current
                    .as_ref()
                    .is_none_or(|c| c.status != sale.status || c.stock != sale.stock);
                if changed {
                    *current = Some(sale);
                }
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(v: u32) -> BoxFuture<'static, Fetched<u32>> {
        async move { Ok(Arc::new(v)) }.boxed()
    }

    #[test]
    fn readers_share_a_read_within_the_interval() {
        let t0 = Instant::now();
        let mut slot: Slot<u32> = Slot::new(t0);
        let (started, _) = slot.lookup(t0, None, || ready(1)).unwrap_err();
        slot.settle(started, &Ok(Arc::new(1)));
        let later = t0 + Duration::from_millis(50);
        let got = slot
            .lookup(later, None, || panic!("no second read within the interval"))
            .unwrap();
        assert_eq!(*got.unwrap(), 1);
        // Past the interval: read again.
        let much_later = t0 + Duration::from_millis(150);
        assert!(slot.lookup(much_later, None, || ready(2)).is_err());
    }

    #[test]
    fn a_writer_never_reads_from_before_its_write_and_others_keep_the_shared_value() {
        let t0 = Instant::now();
        let mut slot: Slot<u32> = Slot::new(t0);
        let (started, _) = slot.lookup(t0, None, || ready(1)).unwrap_err();
        slot.settle(started, &Ok(Arc::new(1)));
        let writer: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t1 = t0 + Duration::from_millis(10);
        slot.wrote(writer, t1);
        let t2 = t0 + Duration::from_millis(20);
        assert!(slot
            .lookup(t2, Some(other), || panic!("no read for others"))
            .is_ok());
        let (joined, _) = slot.lookup(t2, Some(writer), || ready(2)).unwrap_err();
        assert_eq!(joined, t2);
        // A read that started before the write (in flight, or kept) does not
        // answer the writer, even if it finishes after it.
        slot.settle(t0 + Duration::from_millis(5), &Ok(Arc::new(9)));
        assert!(slot
            .lookup(t2, Some(writer), || panic!("joins the read in flight"))
            .is_err());
        slot.settle(joined, &Ok(Arc::new(2)));
        let got = slot.lookup(t2, Some(writer), || panic!("kept")).unwrap();
        assert_eq!(*got.unwrap(), 2);
    }

    #[test]
    fn failures_of_redis_are_not_kept_but_not_found_is() {
        let t0 = Instant::now();
        let mut slot: Slot<u32> = Slot::new(t0);
        let (s, _) = slot.lookup(t0, None, || ready(1)).unwrap_err();
        let down = EngineError::Unavailable(crate::engine::Unavailable::TimedOut(1));
        slot.settle(s, &Err(Failure(down)));
        assert!(slot.value.is_none());
        let (s, _) = slot.lookup(t0, None, || ready(1)).unwrap_err();
        let gone = || Failure(EngineError::Refused(Refusal::SaleNotFound));
        slot.settle(s, &Err(gone()));
        assert!(matches!(
            slot.lookup(t0, None, || panic!("kept")),
            Ok(Err(Failure(EngineError::Refused(Refusal::SaleNotFound))))
        ));
    }

    #[test]
    fn old_writes_are_pruned() {
        let t0 = Instant::now();
        let mut slot: Slot<u32> = Slot::new(t0);
        for i in 0..1000u32 {
            slot.wrote(IpAddr::from(std::net::Ipv4Addr::from(i)), t0);
        }
        slot.wrote("10.0.0.1".parse().unwrap(), t0 + Duration::from_millis(500));
        assert_eq!(slot.writes.len(), 1);
    }
}
