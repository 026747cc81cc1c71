//! The holds: reserve, confirm and release (one script each, batched by the
//! group commit in `hold_jobs.rs`), a service's extension
//! (`lua/extend.lua`), the reaper's expiry (`lua/expire.lua`) and the read of
//! one reservation.

use redis::AsyncCommands;
use serde::Deserialize;

use super::hold_jobs;
use crate::domain::{
    from_ms, rfc3339_ms, CustomerId, Order, Reservation, ReservationId, ReservationStatus, SaleId,
};
use crate::engine::reply::Reply;
use crate::engine::{Call, Engine, EngineError, EngineResult, Lua, Refusal, SaleKeys};

/// One reserve call, as the API validated it.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub sale_id: &'a SaleId,
    pub customer: &'a CustomerId,
    pub quantity: u32,
    /// `(Idempotency-Key, fingerprint of the request)`.
    pub idempotency: Option<(&'a str, String)>,
    /// The `Admission-Token` of a sale behind a waiting room.
    pub admission: Option<&'a str>,
}

/// One confirm call, as the API validated it.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmRequest<'a> {
    pub sale_id: &'a SaleId,
    pub reservation_id: &'a ReservationId,
    /// Must own the hold.
    pub customer: &'a CustomerId,
    pub payment_ref: &'a str,
}

/// A service's confirm of any customer's hold, as the API validated it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfirm<'a> {
    pub sale_id: &'a SaleId,
    pub reservation_id: &'a ReservationId,
    /// The service's subject, kept in the order as `confirmed_by`.
    pub service: &'a CustomerId,
    pub payment_ref: &'a str,
}

/// A confirmed reservation and its order.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub reservation: Reservation,
    pub order: Order,
}

/// What an extension did.
#[derive(Debug, Clone)]
pub enum Extension {
    /// The hold, with its new `expires_at`.
    Extended(Reservation),
    /// The new deadline would pass twice the sale's `hold_seconds` from the
    /// hold's creation; nothing changed. `latest` is the furthest allowed.
    PastLimit { latest: time::OffsetDateTime },
}

/// What one reaper step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub holds: u64,
    /// More holds were already due: go again.
    pub more_due: bool,
    /// The sale has ended with nothing held and nothing in its outbox.
    pub over: bool,
}

impl Expired {
    /// `expire.lua`'s `ok` reply.
    fn parse(r: &Reply) -> EngineResult<Expired> {
        let mut f = r.fields();
        Ok(Expired {
            holds: f.int()?.max(0) as u64,
            more_due: f.int()? == 1,
            over: f.int()? == 1,
        })
    }
}

/// A reservation as the scripts store it (one field of the reservations hash).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Record {
    c: String,
    q: u32,
    s: ReservationStatus,
    e: i64,
    pc: i64,
    cu: String,
    o: Option<String>,
    ct: Option<i64>,
    /// The payment reference of a confirmed record.
    #[serde(default)]
    pr: Option<String>,
    /// The service that confirmed it (absent: the customer did).
    #[serde(default)]
    cb: Option<String>,
}

impl Record {
    pub(super) fn reservation(&self, id: &str, sale_id: &str) -> Reservation {
        Reservation {
            id: id.to_string(),
            sale_id: sale_id.to_string(),
            customer_id: self.c.clone(),
            quantity: self.q,
            status: self.s,
            expires_at: rfc3339_ms(from_ms(self.e)),
        }
    }

    pub(super) fn order(&self, id: &str, sale_id: &str) -> Option<Order> {
        Some(Order {
            order_id: self.o.clone()?,
            reservation_id: id.to_string(),
            sale_id: sale_id.to_string(),
            customer_id: self.c.clone(),
            quantity: self.q,
            price_cents: self.pc,
            currency: self.cu.clone(),
            confirmed_at: rfc3339_ms(from_ms(self.ct?)),
            confirmed_by: self.cb.clone().filter(|c| !c.is_empty()),
            payment_ref: self.pr.clone()?,
        })
    }

    fn owned_by(&self, customer: &str) -> bool {
        self.c == customer
    }
}

impl Reply {
    /// `{word, now, reservation_id, record}` replies.
    pub(super) fn record(&self) -> EngineResult<(String, Record)> {
        let mut f = self.fields();
        let rid = f.text()?;
        let rec = serde_json::from_str(&f.text()?)
            .map_err(|e| EngineError::Corrupt(format!("reservation record: {e}")))?;
        Ok((rid, rec))
    }
}

impl Engine {
    /// Starts a call of one of the hold scripts (reserve, confirm, release,
    /// expire): they all take the sale, its reservations, its customers and
    /// its deadline index as their first four keys.
    pub(super) fn hold_call<'a>(script: &'a Lua, k: &SaleKeys) -> Call<'a> {
        let mut call = script.key(&k.sale);
        call.key(&k.reservations).key(&k.customers).key(&k.due);
        call
    }

    /// Takes `quantity` units for the customer and returns the hold.
    ///
    /// A sale this gateway knows to be sold out (or not live) is refused from
    /// memory, with no Redis call, unless the request carries an
    /// Idempotency-Key: its first attempt may have succeeded, and only the
    /// script can replay it. Otherwise the reserve shares a call with the
    /// other reserves of its sale that wait for one ([`batch`]).
    pub async fn reserve(&self, req: &ReserveRequest<'_>) -> EngineResult<Reservation> {
        if req.idempotency.is_none() {
            if let Some(refusal) = self.soldout.get(req.sale_id) {
                return Err(EngineError::Refused(refusal));
            }
        }
        let job = hold_jobs::ReserveJob::new(req);
        let held = self.batches.reserve.submit(self, req.sale_id, job).await;
        if let Err(EngineError::Refused(refusal)) = &held {
            self.soldout.learn(req.sale_id, *refusal);
        }
        held
    }

    /// Confirms the customer's hold; confirming again returns the same order.
    pub async fn confirm(&self, req: &ConfirmRequest<'_>) -> EngineResult<Confirmed> {
        let job = hold_jobs::ConfirmJob::new(req);
        self.batches.confirm.submit(self, req.sale_id, job).await
    }

    /// Confirms any customer's hold for a service (the store's backend),
    /// recording its subject in the order as `confirmed_by`.
    pub async fn confirm_as_service(&self, req: &ServiceConfirm<'_>) -> EngineResult<Confirmed> {
        let job = hold_jobs::ConfirmJob::for_service(req);
        self.batches.confirm.submit(self, req.sale_id, job).await
    }

    /// Moves a held reservation's deadline `seconds` later, for a service
    /// whose payment is slower than the hold (see `lua/extend.lua`).
    pub async fn extend(
        &self,
        sale_id: &SaleId,
        reservation_id: &ReservationId,
        seconds: u32,
    ) -> EngineResult<Extension> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                Self::hold_call(&self.scripts.extend, &k)
                    .key(&k.events)
                    .arg(reservation_id.as_str())
                    .arg(i64::from(seconds) * 1000),
            )
            .await?;
        // An extension, or an expiry found here, is on the replicas before
        // it is answered, as a confirm is.
        if matches!(r.word.as_str(), "extended" | "hold_expired") {
            self.replicated(sale_id).await?;
        }
        if r.word == "too_long" {
            return Ok(Extension::PastLimit {
                latest: from_ms(r.fields().int()?),
            });
        }
        let r = r.expect(&["extended"])?;
        let (rid, rec) = r.record()?;
        Ok(Extension::Extended(rec.reservation(&rid, sale_id)))
    }

    /// Releases a hold. `customer` is `None` when an admin releases.
    pub async fn release(
        &self,
        sale_id: &SaleId,
        reservation_id: &ReservationId,
        customer: Option<&CustomerId>,
    ) -> EngineResult<Reservation> {
        let job = hold_jobs::ReleaseJob::new(reservation_id, customer);
        let released = self.batches.release.submit(self, sale_id, job).await?;
        self.soldout.forget(sale_id);
        Ok(released)
    }

    /// Reads a reservation (and its order once confirmed). `customer` is
    /// `None` for an admin; another customer's reservation is not found.
    pub async fn reservation(
        &self,
        sale_id: &SaleId,
        reservation_id: &ReservationId,
        customer: Option<&CustomerId>,
    ) -> EngineResult<(Reservation, Option<Order>)> {
        let k = self.keys(sale_id);
        let mut conn = self.conn.clone();
        let field = reservation_id.to_string();
        let raw: Option<String> = self
            .bounded(async move { conn.hget(&k.reservations, field).await })
            .await?;
        let raw = raw.ok_or(EngineError::Refused(Refusal::ReservationNotFound))?;
        let rec: Record = serde_json::from_str(&raw)
            .map_err(|e| EngineError::Corrupt(format!("reservation record: {e}")))?;
        if customer.is_some_and(|c| !rec.owned_by(c)) {
            return Err(EngineError::Refused(Refusal::ReservationNotFound));
        }
        Ok((
            rec.reservation(reservation_id, sale_id),
            rec.order(reservation_id, sale_id),
        ))
    }

    /// One reaper step for one sale: expires up to `batch` holds past their
    /// deadline.
    pub async fn expire_due(&self, sale_id: &SaleId, batch: u32) -> EngineResult<Expired> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                Self::hold_call(&self.scripts.expire, &k)
                    .key(&k.outbox)
                    .key(&k.events)
                    .arg(batch),
            )
            .await?
            .expect(&["ok"])?;
        Expired::parse(&r)
    }
}
