//! The hold operations (reserve, confirm, release) as requests of the group
//! commit: what one request carries, and how a batch of them becomes one
//! script call. A batch of one is the single-request script (`reserve.lua`,
//! ...), which is what every call was before batching and what
//! `engine.max_batch = 1` keeps; a larger batch is the batch script
//! (`reserve_batch.lua`, ...), which runs the same Lua function per member.

use super::hold::{ConfirmRequest, Confirmed, ReserveRequest, ServiceConfirm};
use crate::domain::{CustomerId, Reservation, ReservationId};
use crate::engine::batch::{self, Job, Lanes};
use crate::engine::reply::Reply;
use crate::engine::{BatchStats, Engine, EngineError, EngineResult, Refusal, SaleKeys};

/// The lanes of each operation.
pub(in crate::engine) struct Batches {
    pub reserve: Lanes<ReserveJob>,
    pub confirm: Lanes<ConfirmJob>,
    pub release: Lanes<ReleaseJob>,
}

impl Batches {
    pub fn new(max: usize) -> Batches {
        Batches {
            reserve: Lanes::new(max),
            confirm: Lanes::new(max),
            release: Lanes::new(max),
        }
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            reserve: self.reserve.sizes(),
            confirm: self.confirm.sizes(),
            release: self.release.sizes(),
        }
    }
}

/// A reserve waiting for its call (owned: it may run in another task).
pub(in crate::engine) struct ReserveJob {
    /// Made here, before the call, so a retried call is the same hold.
    rid: String,
    customer: String,
    quantity: u32,
    /// `(Idempotency-Key, fingerprint)`.
    idempotency: Option<(String, String)>,
    /// The admission token; empty when none was sent.
    admission: String,
}

impl ReserveJob {
    pub fn new(req: &ReserveRequest<'_>) -> ReserveJob {
        ReserveJob {
            rid: crate::domain::new_reservation_id(req.sale_id),
            customer: req.customer.to_string(),
            quantity: req.quantity,
            idempotency: req
                .idempotency
                .as_ref()
                .map(|(key, fp)| (key.to_string(), fp.clone())),
            admission: req.admission.unwrap_or_default().to_string(),
        }
    }

    /// The idempotency key and fingerprint the scripts take. Without a
    /// header the key is never read (the fingerprint is empty), but a key
    /// is passed so that the key list is fixed: the sale's index of them,
    /// which is in the sale's slot and costs no string to build.
    fn idempotency<'k>(&'k self, k: &'k SaleKeys) -> (std::borrow::Cow<'k, str>, &'k str) {
        match &self.idempotency {
            Some((key, fp)) => (k.idempotency(&self.customer, key).into(), fp.as_str()),
            None => (k.idempotency_index.as_str().into(), ""),
        }
    }
}

impl Job for ReserveJob {
    type Out = Reservation;
    const OP: &'static str = "reserve";

    fn lanes(engine: &Engine) -> &Lanes<Self> {
        &engine.batches.reserve
    }

    async fn run(
        engine: &Engine,
        sale_id: &str,
        jobs: Vec<Self>,
    ) -> Vec<EngineResult<Reservation>> {
        let k = engine.keys(sale_id);
        let replies = if let [job] = jobs.as_slice() {
            let (idem, fp) = job.idempotency(&k);
            let mut call = Engine::hold_call(&engine.scripts.reserve, &k);
            call.key(idem.as_ref())
                .key(&k.idempotency_index)
                .key(&k.tickets)
                .key(&k.events)
                .arg(&job.rid)
                .arg(&job.customer)
                .arg(job.quantity)
                .arg(fp)
                .arg(engine.idempotency_ttl)
                .arg(&job.admission);
            vec![engine.run(&call).await]
        } else {
            let mut call = Engine::hold_call(&engine.scripts.reserve_batch, &k);
            call.key(&k.idempotency_index)
                .key(&k.tickets)
                .key(&k.events);
            for job in &jobs {
                call.key(job.idempotency(&k).0.as_ref());
            }
            call.arg(engine.idempotency_ttl);
            for job in &jobs {
                call.arg(&job.rid)
                    .arg(&job.customer)
                    .arg(job.quantity)
                    .arg(job.idempotency(&k).1)
                    .arg(&job.admission);
            }
            batch::members("reserve_batch", jobs.len(), engine.invoke(&call).await)
        };
        // The sold-out fast path, member by member: sent one at a time,
        // the requests after a `sold_out` (or `sale_not_live`) would have
        // been refused from memory with that word, never reaching the
        // script, so a member behind one in the same batch answers it too
        // (its own refusal, such as `limit_exceeded`, changed nothing).
        let mut mark = engine.soldout.get(sale_id);
        jobs.iter()
            .zip(replies)
            .map(|(job, reply)| {
                let answer = reply.and_then(|r| {
                    let (rid, rec) = r.expect(&["held"])?.record()?;
                    Ok(rec.reservation(&rid, sale_id))
                });
                match (&answer, mark) {
                    (Err(EngineError::Refused(_)), Some(m)) if job.idempotency.is_none() => {
                        return Err(EngineError::Refused(m));
                    }
                    (Err(EngineError::Refused(r)), _)
                        if matches!(r, Refusal::SoldOut | Refusal::SaleNotLive) =>
                    {
                        mark = Some(*r);
                    }
                    _ => {}
                }
                answer
            })
            .collect()
    }
}

/// A confirm waiting for its call.
pub(in crate::engine) struct ConfirmJob {
    rid: String,
    /// Must own the hold; empty for a service (any customer's hold).
    customer: String,
    payment_ref: String,
    /// The order's id if this confirm is the first.
    order_id: String,
    /// The service that confirmed it; empty when the customer did.
    confirmed_by: String,
}

impl ConfirmJob {
    pub fn new(req: &ConfirmRequest<'_>) -> ConfirmJob {
        ConfirmJob {
            rid: req.reservation_id.to_string(),
            customer: req.customer.to_string(),
            payment_ref: req.payment_ref.to_string(),
            order_id: uuid::Uuid::now_v7().to_string(),
            confirmed_by: String::new(),
        }
    }

    pub fn for_service(req: &ServiceConfirm<'_>) -> ConfirmJob {
        ConfirmJob {
            rid: req.reservation_id.to_string(),
            customer: String::new(),
            payment_ref: req.payment_ref.to_string(),
            order_id: uuid::Uuid::now_v7().to_string(),
            confirmed_by: req.service.to_string(),
        }
    }
}

impl Job for ConfirmJob {
    type Out = Confirmed;
    const OP: &'static str = "confirm";

    fn lanes(engine: &Engine) -> &Lanes<Self> {
        &engine.batches.confirm
    }

    async fn run(engine: &Engine, sale_id: &str, jobs: Vec<Self>) -> Vec<EngineResult<Confirmed>> {
        let k = engine.keys(sale_id);
        let replies = if let [job] = jobs.as_slice() {
            let mut call = Engine::hold_call(&engine.scripts.confirm, &k);
            call.key(&k.outbox)
                .key(&k.events)
                .arg(&job.rid)
                .arg(&job.customer)
                .arg(&job.order_id)
                .arg(&job.payment_ref)
                .arg(sale_id)
                .arg(&job.confirmed_by);
            vec![engine.run(&call).await]
        } else {
            let mut call = Engine::hold_call(&engine.scripts.confirm_batch, &k);
            call.key(&k.outbox).key(&k.events).arg(sale_id);
            for job in &jobs {
                call.arg(&job.rid)
                    .arg(&job.customer)
                    .arg(&job.order_id)
                    .arg(&job.payment_ref)
                    .arg(&job.confirmed_by);
            }
            batch::members("confirm_batch", jobs.len(), engine.invoke(&call).await)
        };
        let answers: Vec<_> = replies
            .into_iter()
            .map(|reply| confirmed(reply, sale_id))
            .collect();
        // One wait for the whole batch (`redis.confirm_replicas`): the fence
        // is written after every member, replays included, so a reached
        // fence covers each member's order, and each late confirm's
        // `reservation.expired`.
        replicated(engine, sale_id, answers).await
    }
}

/// Holds the batch's answers until `redis.confirm_replicas` replicas have
/// what the scripts wrote, when any member wrote something an answer makes
/// known: an order, a release, an expiry found late (refused, but recorded
/// with its event). A refusal that changed nothing waits too: rare, and not
/// worth telling apart here.
async fn replicated<T>(
    engine: &Engine,
    sale_id: &str,
    answers: Vec<EngineResult<T>>,
) -> Vec<EngineResult<T>> {
    let wrote = answers
        .iter()
        .any(|a| matches!(a, Ok(_) | Err(EngineError::Refused(_))));
    if wrote {
        if let Err(e) = engine.replicated(sale_id).await {
            return answers.into_iter().map(|a| a.and(Err(e.clone()))).collect();
        }
    }
    answers
}

fn confirmed(reply: EngineResult<Reply>, sale_id: &str) -> EngineResult<Confirmed> {
    let (rid, rec) = reply?.expect(&["confirmed"])?.record()?;
    let order = rec
        .order(&rid, sale_id)
        .ok_or_else(|| EngineError::Corrupt("confirmed record without order".into()))?;
    Ok(Confirmed {
        reservation: rec.reservation(&rid, sale_id),
        order,
    })
}

/// A release waiting for its call.
pub(in crate::engine) struct ReleaseJob {
    rid: String,
    /// `None` when an admin releases.
    customer: Option<String>,
}

impl ReleaseJob {
    pub fn new(reservation_id: &ReservationId, customer: Option<&CustomerId>) -> ReleaseJob {
        ReleaseJob {
            rid: reservation_id.to_string(),
            customer: customer.map(CustomerId::to_string),
        }
    }
}

impl Job for ReleaseJob {
    type Out = Reservation;
    const OP: &'static str = "release";

    fn lanes(engine: &Engine) -> &Lanes<Self> {
        &engine.batches.release
    }

    async fn run(
        engine: &Engine,
        sale_id: &str,
        jobs: Vec<Self>,
    ) -> Vec<EngineResult<Reservation>> {
        let k = engine.keys(sale_id);
        let script = if jobs.len() == 1 {
            &engine.scripts.release
        } else {
            &engine.scripts.release_batch
        };
        // The single script's arguments are one member's: the same layout.
        let mut call = Engine::hold_call(script, &k);
        call.key(&k.events);
        for job in &jobs {
            call.arg(&job.rid)
                .arg(job.customer.as_deref().unwrap_or(""));
        }
        let replies = if jobs.len() == 1 {
            vec![engine.run(&call).await]
        } else {
            batch::members("release_batch", jobs.len(), engine.invoke(&call).await)
        };
        let answers = replies
            .into_iter()
            .map(|reply| {
                let (rid, rec) = reply?.expect(&["released"])?.record()?;
                Ok(rec.reservation(&rid, sale_id))
            })
            .collect();
        // A release answered 200 is as durable as a confirm: its event, and
        // the units back in stock, are on the replicas first.
        replicated(engine, sale_id, answers).await
    }
}
