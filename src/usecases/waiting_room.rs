//! The waiting room: who may reserve a sale behind one, and when.
//!
//! Buyers join between `opens_at` and the end of the sale and get tickets
//! 0, 1, 2, … in order of arrival. When the room opens a random seed is
//! committed (Postgres first) and its SHA-256 published; at the sale's start
//! the room is sealed: the tickets taken before it are the members, placed
//! by [`permutation::position`] (a keyed permutation anyone can recompute
//! once the seed is published), and later tickets queue after them in order
//! of arrival. The worker admits positions in order at the sale's pace
//! ([`tend`]); an admitted buyer's token is used up by the reserve script in
//! the same step as the hold.
//!
//! Why Postgres keeps the seed and the member count before anyone sees
//! them: Redis can lose a room (a rebuild, a failover); the published order
//! must not change with it, so Redis copies Postgres, never the reverse.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::domain::permutation;
use crate::domain::{from_ms, rfc3339_ms, CustomerId, SaleId};
use crate::engine::ops::waiting_room::{Joined, Ticket, WaitingRoomState};
use crate::engine::{Engine, EngineError, Refusal};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WaitingRoomError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Admissions one worker pass hands out per room at most: a burst of many
/// thousands is spread over a few passes, each one short script call.
const ADMIT_CHUNK: u64 = 500;

/// A ticket as its holder sees it (`POST /v1/sales/{id}/queue`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TicketView {
    /// The join index: 0 for the first to join, then 1, 2, …
    pub ticket: u64,
    pub status: TicketStatus,
    #[schema(format = DateTime)]
    pub joined_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Waiting,
    Admitted,
    Expired,
    Used,
}

impl TicketStatus {
    fn of(t: &Ticket, now_ms: i64) -> TicketStatus {
        match t.record.s.as_str() {
            "used" => TicketStatus::Used,
            "admitted" if t.record.x.is_some_and(|x| now_ms >= x) => TicketStatus::Expired,
            "admitted" => TicketStatus::Admitted,
            _ => TicketStatus::Waiting,
        }
    }
}

fn ticket_view(t: &Ticket, now_ms: i64) -> TicketView {
    TicketView {
        ticket: t.number,
        status: TicketStatus::of(t, now_ms),
        joined_at: rfc3339_ms(from_ms(t.record.j)),
    }
}

/// The customer joins; `(ticket, new)`. Opens the room first if its time
/// has come and no one has opened it yet.
pub async fn join(
    engine: &Engine,
    db: &PgPool,
    sale_id: &SaleId,
    customer: &CustomerId,
) -> Result<(TicketView, bool), WaitingRoomError> {
    for _ in 0..2 {
        match engine.join_waiting_room(sale_id, customer).await? {
            Joined::New(t) => return Ok((ticket_view(&t, t.record.j), true)),
            Joined::Existing(t, now_ms) => return Ok((ticket_view(&t, now_ms), false)),
            Joined::Opening => open(engine, db, sale_id).await?,
        }
    }
    Err(EngineError::Corrupt("the waiting room did not open".into()).into())
}

/// A new seed: 256 bits from the operating system's generator (two v4
/// UUIDs carry 244 random bits; a third tops them up), as lowercase hex.
fn new_seed() -> String {
    (0..3)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect::<String>()
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Opens the sale's room: commits a seed in Postgres (or finds the one
/// committed), then copies it to Redis with the configuration Postgres
/// holds. Safe to run any number of times, from any gateway or worker.
pub async fn open(engine: &Engine, db: &PgPool, sale_id: &SaleId) -> Result<(), WaitingRoomError> {
    let seed = new_seed();
    let room = store::commit_seed(db, sale_id, &seed, &sha256_hex(&seed))
        .await?
        .ok_or(EngineError::Refused(Refusal::WaitingRoomNotFound))?;
    restore(engine, &room).await
}

/// Copies what Postgres keeps of a room to Redis (a no-op when Redis has
/// it already).
async fn restore(engine: &Engine, room: &store::WaitingRoom) -> Result<(), WaitingRoomError> {
    if let Some((seed, sha)) = &room.seed {
        engine
            .open_waiting_room(&room.sale_id, &room.config, seed, sha, room.members)
            .await?;
    }
    Ok(())
}

/// What one pass did for one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tended {
    pub issued: u64,
}

/// One worker pass over one room: open it when its time comes, restore it
/// where Redis lost it, keep the seal in Postgres and publish it, then
/// admit the next positions as far as the pace allows.
pub async fn tend(
    engine: &Engine,
    db: &PgPool,
    room: &store::WaitingRoom,
) -> Result<Tended, WaitingRoomError> {
    let id = &room.sale_id;
    let state = match engine.waiting_room(id, None).await {
        Ok(s) => s,
        // The sale is not (or no longer) in Redis: the loader or a rebuild
        // brings it back, and the next pass restores its room.
        Err(e) if crate::engine::ops::waiting_room::is_missing(&e) => {
            if room.seed.is_some() {
                match restore(engine, room).await {
                    Ok(()) | Err(WaitingRoomError::Engine(EngineError::Refused(_))) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(Tended::default());
        }
        Err(e) => return Err(e.into()),
    };
    if state.seed_sha256.is_none() || (room.members.is_some() && !state.published) {
        if room.seed.is_some() {
            restore(engine, room).await?;
        } else if state.now_ms >= crate::domain::to_ms(state.config.opens_at) {
            open(engine, db, id).await?;
        }
        return Ok(Tended::default());
    }
    if !state.published {
        let Some((members, _)) = engine.seal_waiting_room(id).await? else {
            return Ok(Tended::default());
        };
        // Postgres keeps the first count it is given; Redis publishes
        // that one, whatever it counted itself.
        if let Some(kept) = store::keep_members(db, id, members).await? {
            restore(engine, &kept).await?;
        }
        return Ok(Tended::default());
    }
    admit(engine, id, &state).await
}

/// Admits the next positions of a published room.
async fn admit(
    engine: &Engine,
    sale_id: &SaleId,
    state: &WaitingRoomState,
) -> Result<Tended, WaitingRoomError> {
    let (Some(seed), Some(members)) = (&state.seed, state.members) else {
        return Ok(Tended::default());
    };
    let due = budget(state, state.now_ms).min(state.next);
    let upto = due.min(state.admitted + ADMIT_CHUNK);
    if upto <= state.admitted {
        return Ok(Tended::default());
    }
    let next: Vec<(u64, String)> = (state.admitted..upto)
        .map(|p| {
            let ticket = if p < members {
                permutation::ticket_at(seed, members, p)
            } else {
                p
            };
            (ticket, uuid::Uuid::new_v4().simple().to_string())
        })
        .collect();
    let issued = match engine.admit(sale_id, state.admitted, &next).await? {
        Some((_, issued)) => issued,
        None => 0,
    };
    if issued > 0 {
        crate::metrics::admitted(issued);
    }
    Ok(Tended { issued })
}

/// Positions that may hold an admission by `now_ms`: `admit_burst +
/// admit_per_second · seconds since the start` (the same rule the admit
/// script enforces on the Redis clock).
fn budget(state: &WaitingRoomState, now_ms: i64) -> u64 {
    let elapsed = u64::try_from(now_ms - state.starts_ms).unwrap_or(0);
    u64::from(state.config.admit_burst) + u64::from(state.config.admit_per_second) * elapsed / 1000
}

/// The public view of a room (`GET /v1/sales/{id}/queue`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// The API document keeps the name it was published with.
#[schema(as = PublicRoom)]
pub struct PublicWaitingRoom {
    #[schema(format = DateTime)]
    pub opens_at: String,
    /// The start of the sale, once the room is sealed and the seal kept.
    #[schema(format = DateTime)]
    pub sealed_at: Option<String>,
    /// Lowercase hex SHA-256 of the seed's UTF-8 bytes, from the opening.
    pub seed_sha256: Option<String>,
    /// Published at the seal.
    pub seed: Option<String>,
    /// Tickets taken so far; once sealed, the tickets taken before it.
    pub members: u64,
    /// Positions admitted so far.
    pub admitted: u64,
    /// The function mapping (seed, ticket, members) to a position.
    pub permutation: &'static str,
    pub admit_per_second: u32,
    pub admit_burst: u32,
    pub admission_seconds: u32,
    #[schema(format = DateTime)]
    pub server_time: String,
}

pub fn public(state: &WaitingRoomState) -> PublicWaitingRoom {
    let sealed = state.published.then_some(state.members).flatten();
    PublicWaitingRoom {
        opens_at: rfc3339_ms(state.config.opens_at),
        sealed_at: sealed.map(|_| rfc3339_ms(from_ms(state.starts_ms))),
        seed_sha256: state.seed_sha256.clone(),
        seed: sealed.and(state.seed.clone()),
        members: sealed.unwrap_or(state.next),
        admitted: state.admitted,
        permutation: permutation::NAME,
        admit_per_second: state.config.admit_per_second,
        admit_burst: state.config.admit_burst,
        admission_seconds: state.config.admission_seconds,
        server_time: rfc3339_ms(from_ms(state.now_ms)),
    }
}

/// The public view of an archived sale's room, from what Postgres keeps: the
/// seed, the member count and the admissions stay verifiable after Redis
/// forgot the room. A room sealed at the sale's start, as [`public`] shows it.
pub fn archived(room: &store::WaitingRoom, starts_at: OffsetDateTime) -> PublicWaitingRoom {
    let seed = room.seed.as_ref();
    PublicWaitingRoom {
        opens_at: rfc3339_ms(room.config.opens_at),
        sealed_at: room.members.map(|_| rfc3339_ms(starts_at)),
        seed_sha256: seed.map(|(_, sha)| sha.clone()),
        seed: room.members.and(seed.map(|(seed, _)| seed.clone())),
        members: room.members.unwrap_or(0),
        admitted: room.admitted.unwrap_or(0),
        permutation: permutation::NAME,
        admit_per_second: room.config.admit_per_second,
        admit_burst: room.config.admit_burst,
        admission_seconds: room.config.admission_seconds,
        server_time: rfc3339_ms(OffsetDateTime::now_utc()),
    }
}

/// An admission: the token for `Admission-Token`, and its deadline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Admission {
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// A buyer's place (`GET /v1/sales/{id}/queue/me`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MyPlace {
    pub ticket: u64,
    pub status: TicketStatus,
    /// Null until the room is sealed (and the seal kept).
    pub position: Option<u64>,
    /// Positions before this one not yet admitted; null until sealed.
    pub ahead: Option<u64>,
    /// Seconds until the admission is expected at the room's pace (before
    /// the seal: until the start); 0 once admitted; null once used or
    /// expired.
    pub eta_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
    /// The hold the admission made, once `used` (a page reloaded after the
    /// reserve finds it again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    #[schema(format = DateTime)]
    pub joined_at: String,
    #[schema(format = DateTime)]
    pub server_time: String,
}

pub fn my_place(state: &WaitingRoomState) -> Option<MyPlace> {
    let t = state.ticket.as_ref()?;
    let now = state.now_ms;
    let status = TicketStatus::of(t, now);
    let position = match (state.published, &state.seed, state.members) {
        (true, Some(seed), Some(members)) => Some(if t.number < members {
            permutation::position(seed, members, t.number)
        } else {
            t.number
        }),
        _ => None,
    };
    let ahead = position.map(|p| match status {
        TicketStatus::Waiting => p.saturating_sub(state.admitted),
        _ => 0,
    });
    let eta_seconds = match (status, position) {
        (TicketStatus::Admitted, _) => Some(0),
        (TicketStatus::Used | TicketStatus::Expired, _) => None,
        (TicketStatus::Waiting, None) => Some(
            u64::try_from((state.starts_ms - now).max(0))
                .unwrap_or(0)
                .div_ceil(1000),
        ),
        (TicketStatus::Waiting, Some(p)) => {
            // Position p is admitted once burst + rate · t > p.
            let cfg = &state.config;
            let need = (p + 1).saturating_sub(u64::from(cfg.admit_burst));
            let at_ms = state.starts_ms
                + i64::try_from(need * 1000 / u64::from(cfg.admit_per_second.max(1)))
                    .unwrap_or(i64::MAX / 2);
            Some(
                u64::try_from((at_ms - now).max(0))
                    .unwrap_or(0)
                    .div_ceil(1000),
            )
        }
    };
    let admission = match (status, &t.record.k, t.record.x) {
        (TicketStatus::Admitted, Some(secret), Some(x)) => Some(Admission {
            token: format!("{}.{secret}", t.number),
            expires_at: rfc3339_ms(from_ms(x)),
        }),
        _ => None,
    };
    Some(MyPlace {
        ticket: t.number,
        status,
        position,
        ahead,
        eta_seconds,
        admission,
        reservation_id: t.record.r.clone().filter(|_| status == TicketStatus::Used),
        joined_at: rfc3339_ms(from_ms(t.record.j)),
        server_time: rfc3339_ms(from_ms(now)),
    })
}
