//! Group commit: the reserves (confirms, releases) of one sale that arrive
//! while a call for that sale is in flight wait, and go to Redis together as
//! one call of a batch script when it returns.
//!
//! One EVALSHA per request made Redis round trips the limit of the hot path.
//! Here a sale has at most one call of each kind in flight; whatever arrives
//! meanwhile (up to `engine.max_batch`) is the next call. There is no timer:
//! a request that finds its sale idle goes at once, alone, through the
//! single-request script, so an idle gateway answers as fast as before, and
//! batches form only when requests overlap.
//!
//! Lanes are per hash tag (the sale id today), so a batch's keys stay in one
//! Redis Cluster slot. Within a lane the order of arrival is kept: requests
//! are queued under one lock and each batch is taken from the front, after
//! the previous one returned, and the scripts apply their members in order.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redis::Value;
use tokio::sync::oneshot;

use super::{Engine, EngineError, EngineResult, Reply, Unavailable};

/// One kind of request that can share a call with others of its sale.
pub(crate) trait Job: Sized + Send + 'static {
    type Out: Send + 'static;
    /// The operation's name in metrics.
    const OP: &'static str;

    fn lanes(engine: &Engine) -> &Lanes<Self>;

    /// Runs `jobs` (one or more, in order) as one Redis call: one answer
    /// per job, in the same order.
    fn run(
        engine: &Engine,
        sale_id: &str,
        jobs: Vec<Self>,
    ) -> impl Future<Output = Vec<EngineResult<Self::Out>>> + Send;
}

type Waiting<J> = Vec<(J, oneshot::Sender<EngineResult<<J as Job>::Out>>)>;

/// The lanes of one kind of request: per sale, the requests waiting for the
/// call in flight to return. A sale is in the map exactly while a call of
/// this kind is in flight for it.
pub(crate) struct Lanes<J: Job> {
    max: usize,
    // std Mutex: held to queue a request or to take a batch, never across
    // an await.
    waiting: Mutex<HashMap<Arc<str>, Waiting<J>>>,
    calls: AtomicU64,
    members: AtomicU64,
    largest: AtomicU64,
}

/// How one kind of request went to Redis since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Redis calls made.
    pub calls: u64,
    /// Requests they carried.
    pub members: u64,
    /// The most requests one call carried.
    pub largest: u64,
}

impl Sizes {
    /// Requests per call.
    pub fn mean(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.members as f64 / self.calls as f64
        }
    }
}

/// [`Sizes`] of every kind of request that coalesces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub reserve: Sizes,
    pub confirm: Sizes,
    pub release: Sizes,
}

impl<J: Job> Lanes<J> {
    pub(crate) fn new(max: usize) -> Lanes<J> {
        Lanes {
            max: max.max(1),
            waiting: Mutex::default(),
            calls: AtomicU64::new(0),
            members: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        }
    }

    pub(crate) fn sizes(&self) -> Sizes {
        Sizes {
            calls: self.calls.load(Ordering::Relaxed),
            members: self.members.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Waiting<J>>> {
        // A panic while the lock was held cannot leave the map half
        // changed (each critical section is one insert, push or drain).
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, n: usize) {
        let n = n as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.members.fetch_add(n, Ordering::Relaxed);
        self.largest.fetch_max(n, Ordering::Relaxed);
        crate::metrics::batch_size(J::OP, n);
    }

    /// Runs `job` for `sale_id`: at once if no call of its kind is in flight
    /// for the sale, else with the others that wait for that call.
    pub(crate) async fn submit(
        &self,
        engine: &Engine,
        sale_id: &str,
        job: J,
    ) -> EngineResult<J::Out> {
        if self.max == 1 {
            // No lanes: one call per request, as many in flight as asked.
            self.record(1);
            return only(J::run(engine, sale_id, vec![job]).await);
        }
        let queued = {
            let mut lanes = self.lock();
            match lanes.get_mut(sale_id) {
                Some(waiting) => {
                    let (tx, rx) = oneshot::channel();
                    waiting.push((job, tx));
                    Ok(rx)
                }
                None => {
                    lanes.insert(Arc::from(sale_id), Vec::new());
                    Err(job)
                }
            }
        };
        match queued {
            Ok(rx) => rx
                .await
                .unwrap_or(Err(EngineError::Unavailable(Unavailable::Abandoned))),
            Err(job) => {
                // The sale was idle: this request goes now, alone. The turn
                // passes the lane on when this call returns, and also if
                // this future is dropped mid-call (the client went away),
                // so the requests queued behind it never wait for an owner
                // that is gone.
                let _turn = Turn::<J> {
                    engine,
                    sale_id,
                    kind: PhantomData,
                };
                self.record(1);
                only(J::run(engine, sale_id, vec![job]).await)
            }
        }
    }

    /// The next batch of the sale (the oldest waiting requests, at most
    /// `max`), or `None` after taking the sale out of the map when nothing
    /// waits.
    fn next(&self, sale_id: &str) -> Option<Waiting<J>> {
        let mut lanes = self.lock();
        let waiting = lanes.get_mut(sale_id)?;
        if waiting.is_empty() {
            lanes.remove(sale_id);
            return None;
        }
        let n = waiting.len().min(self.max);
        Some(waiting.drain(..n).collect())
    }

    /// The call in flight for the sale returned (or was dropped): the
    /// requests that waited for it go as the next call, in a task of their
    /// own, so that no client's disconnect can cancel other clients' call.
    fn pass_on(&self, engine: &Engine, sale_id: &str) {
        let Some(batch) = self.next(sale_id) else {
            return;
        };
        // Outside a runtime (it is shutting down) the batch is dropped and
        // its requests answer 503.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain::<J>(engine.clone(), Arc::from(sale_id), batch));
        }
    }
}

/// A sale's lane is in use until this is dropped; dropping it passes the
/// lane on to the requests that wait.
struct Turn<'a, J: Job> {
    engine: &'a Engine,
    sale_id: &'a str,
    kind: PhantomData<J>,
}

impl<J: Job> Drop for Turn<'_, J> {
    fn drop(&mut self) {
        J::lanes(self.engine).pass_on(self.engine, self.sale_id);
    }
}

/// One batch of waiting requests: one call, each request answered.
async fn drain<J: Job>(engine: Engine, sale_id: Arc<str>, batch: Waiting<J>) {
    // Also on a panic: the next batch still goes.
    let _turn = Turn::<J> {
        engine: &engine,
        sale_id: &sale_id,
        kind: PhantomData,
    };
    let (jobs, answer_to): (Vec<J>, Vec<_>) = batch.into_iter().unzip();
    J::lanes(&engine).record(jobs.len());
    let answers = J::run(&engine, &sale_id, jobs).await;
    for (tx, answer) in answer_to.into_iter().zip(answers) {
        // The client went away: nothing to tell.
        let _ = tx.send(answer);
    }
}

fn only<T>(answers: Vec<EngineResult<T>>) -> EngineResult<T> {
    answers
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(EngineError::Corrupt("a call without its answer".into())))
}

/// The members' replies of a batch script's reply: one per member, each as
/// the single script would have replied, or the member's own fault. A
/// failure of the whole call is every member's answer.
pub(super) fn members(
    op: &'static str,
    n: usize,
    value: EngineResult<Value>,
) -> Vec<EngineResult<Reply>> {
    let items = match value {
        Ok(Value::Array(items)) if items.len() == n => items,
        Ok(other) => {
            let e = EngineError::Corrupt(format!("{op} batch of {n}: {other:?}"));
            return (0..n).map(|_| Err(e.clone())).collect();
        }
        Err(e) => return (0..n).map(|_| Err(e.clone())).collect(),
    };
    items
        .into_iter()
        .map(|item| {
            let reply = Reply::parse(item)?;
            if reply.word == "fault" {
                let why = reply.fields().text().unwrap_or_default();
                crate::metrics::redis_fault(op);
                return Err(EngineError::Fault {
                    op,
                    source: redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                        "script error in one member of a batch",
                        why,
                    )),
                });
            }
            Ok(reply)
        })
        .collect()
}
