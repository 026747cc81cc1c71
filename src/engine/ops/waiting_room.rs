//! The waiting room's Redis side: joining, reading, opening, sealing and
//! admitting, each one script (`lua/waiting_room_*.lua`). What the room means
//! (positions, pace, tokens) is `crate::usecases::waiting_room`'s; here are only the calls.

use serde::Deserialize;

use crate::domain::{from_ms, CustomerId, SaleId, WaitingRoomDef};
use crate::engine::reply::{Fields, Reply};
use crate::engine::{Engine, EngineError, EngineResult, Refusal};

/// The configuration arguments of a room, as the scripts take them
/// (opens_at ms, per second, burst, admission ms).
pub(super) fn config_args(q: &WaitingRoomDef) -> Vec<i64> {
    vec![
        crate::domain::to_ms(q.opens_at),
        i64::from(q.admit_per_second),
        i64::from(q.admit_burst),
        i64::from(q.admission_seconds) * 1000,
    ]
}

/// A room's configuration from the four reply fields at the cursor, as
/// [`config_args`] passes them.
pub(super) fn read_config(f: &mut Fields<'_>) -> EngineResult<WaitingRoomDef> {
    let opens_ms = f.int()?;
    let mut number = || -> EngineResult<u32> {
        u32::try_from(f.int()?).map_err(|_| corrupt("room configuration"))
    };
    Ok(WaitingRoomDef {
        opens_at: from_ms(opens_ms),
        admit_per_second: number()?,
        admit_burst: number()?,
        admission_seconds: number()? / 1000,
    })
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("waiting room: {what}"))
}

/// A ticket as Redis keeps it.
#[derive(Debug, Clone, Deserialize)]
pub struct TicketRecord {
    /// The customer.
    pub c: String,
    /// Joined at, ms.
    pub j: i64,
    /// `waiting`, `admitted` or `used` (an admission past `x` has expired).
    pub s: String,
    /// The admission token's secret.
    #[serde(default)]
    pub k: Option<String>,
    /// The admission's deadline, ms.
    #[serde(default)]
    pub x: Option<i64>,
    /// The hold the admission made, once used.
    #[serde(default)]
    pub r: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub number: u64,
    pub record: TicketRecord,
}

/// What a join did.
#[derive(Debug, Clone)]
pub enum Joined {
    New(Ticket),
    /// The customer's active ticket, unchanged, and the Redis clock (ms)
    /// that judged it active.
    Existing(Ticket, i64),
    /// The room's time has come but its seed is not committed: open it
    /// (`crate::usecases::waiting_room::open`) and join again.
    Opening,
}

/// A room as it stands, read in one step, with one customer's ticket.
#[derive(Debug, Clone)]
pub struct WaitingRoomState {
    pub now_ms: i64,
    pub config: WaitingRoomDef,
    pub seed_sha256: Option<String>,
    pub seed: Option<String>,
    /// Tickets handed out so far.
    pub next: u64,
    /// Set at the seal.
    pub members: Option<u64>,
    /// The seal is kept in Postgres: the seed and members may be shown.
    pub published: bool,
    /// Positions handed an admission (or skipped) so far.
    pub admitted: u64,
    pub issued: u64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub ticket: Option<Ticket>,
}

fn ticket(number: i64, enc: &str) -> EngineResult<Ticket> {
    let record = serde_json::from_str(enc).map_err(|e| corrupt(&format!("ticket: {e}")))?;
    Ok(Ticket {
        number: u64::try_from(number).map_err(|_| corrupt("ticket number"))?,
        record,
    })
}

fn count(f: &mut Fields<'_>) -> EngineResult<u64> {
    u64::try_from(f.int()?).map_err(|_| corrupt("count"))
}

impl WaitingRoomState {
    /// `waiting_room_view.lua`'s `ok` reply.
    fn parse(r: &Reply) -> EngineResult<WaitingRoomState> {
        let mut f = r.fields();
        Ok(WaitingRoomState {
            now_ms: r.now_ms,
            config: read_config(&mut f)?,
            seed_sha256: f.opt_text()?,
            seed: f.opt_text()?,
            next: count(&mut f)?,
            members: f
                .opt_text()?
                .map(|m| m.parse::<u64>().map_err(|_| corrupt("members")))
                .transpose()?,
            published: f.flag()?,
            admitted: count(&mut f)?,
            issued: count(&mut f)?,
            starts_ms: f.int()?,
            ends_ms: f.int()?,
            ticket: match (f.try_int(), f.try_text()) {
                (Some(n), Some(enc)) => Some(ticket(n, &enc)?),
                _ => None,
            },
        })
    }
}

impl Engine {
    /// The customer takes a ticket (or finds their active one).
    pub async fn join_waiting_room(
        &self,
        sale_id: &SaleId,
        customer: &CustomerId,
    ) -> EngineResult<Joined> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.waiting_room_join.key(&k.sale);
        call.key(&k.waiting_room)
            .key(&k.tickets)
            .key(&k.queuers)
            .arg(customer.as_str());
        let r = self
            .run(&call)
            .await?
            .expect(&["joined", "existing", "queue_opening"])?;
        if r.word == "queue_opening" {
            return Ok(Joined::Opening);
        }
        let mut f = r.fields();
        let t = ticket(f.int()?, &f.text()?)?;
        Ok(if r.word == "joined" {
            Joined::New(t)
        } else {
            Joined::Existing(t, r.now_ms)
        })
    }

    /// The room, and `customer`'s latest ticket if they have one.
    pub async fn waiting_room(
        &self,
        sale_id: &SaleId,
        customer: Option<&CustomerId>,
    ) -> EngineResult<WaitingRoomState> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.waiting_room_view.key(&k.sale);
        call.key(&k.waiting_room)
            .key(&k.tickets)
            .key(&k.queuers)
            .arg(customer.map_or("", CustomerId::as_str));
        let r = self.run(&call).await?.expect(&["ok"])?;
        WaitingRoomState::parse(&r)
    }

    /// Opens the room with the seed Postgres committed, or restores what
    /// Postgres keeps of it (`members`: the sealed count, once kept).
    pub async fn open_waiting_room(
        &self,
        sale_id: &SaleId,
        config: &WaitingRoomDef,
        seed: &str,
        seed_sha256: &str,
        members: Option<u64>,
    ) -> EngineResult<()> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.waiting_room_open.key(&k.sale);
        call.key(&k.waiting_room)
            .arg(config_args(config))
            .arg(seed)
            .arg(seed_sha256)
            .arg(members.map_or(String::new(), |m| m.to_string()));
        self.run(&call).await?.expect(&["opened", "open"])?;
        Ok(())
    }

    /// Seals the room if the sale has started: `(members, published)`, or
    /// `None` before the start.
    pub async fn seal_waiting_room(&self, sale_id: &SaleId) -> EngineResult<Option<(u64, bool)>> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.waiting_room_seal.key(&k.sale);
        call.key(&k.waiting_room);
        let r = self.run(&call).await?.expect(&["sealed", "not_due"])?;
        if r.word == "not_due" {
            return Ok(None);
        }
        let mut f = r.fields();
        Ok(Some((count(&mut f)?, f.flag()?)))
    }

    /// Admits positions `from, from + 1, …` (their tickets and token
    /// secrets in `next`), as far as the pace allows now. `(positions
    /// advanced, tokens issued)`, or `None` when another worker moved the
    /// cursor first (or the room is not published).
    pub async fn admit(
        &self,
        sale_id: &SaleId,
        from: u64,
        next: &[(u64, String)],
    ) -> EngineResult<Option<(u64, u64)>> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.waiting_room_admit.key(&k.sale);
        call.key(&k.waiting_room).key(&k.tickets).arg(from);
        for (ticket, secret) in next {
            call.arg(ticket).arg(secret);
        }
        let r = self
            .run(&call)
            .await?
            .expect(&["admitted", "moved", "not_published"])?;
        if r.word != "admitted" {
            return Ok(None);
        }
        let mut f = r.fields();
        Ok(Some((count(&mut f)?, count(&mut f)?)))
    }

    /// Sets the room of a sale whose room has not opened; `false` if it
    /// has (it keeps its configuration).
    pub async fn set_waiting_room(
        &self,
        sale_id: &SaleId,
        config: &WaitingRoomDef,
    ) -> EngineResult<bool> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.waiting_room_set.key(&k.sale);
        call.key(&k.waiting_room).arg(config_args(config));
        let r = self.run(&call).await?;
        match r.word.as_str() {
            "queue_opened" => Ok(false),
            _ => r.expect(&["set"]).map(|_| true),
        }
    }
}

/// A refusal of the room's scripts that is not a contract code of its own.
pub fn is_missing(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Refused(Refusal::WaitingRoomNotFound | Refusal::SaleNotFound)
    )
}
