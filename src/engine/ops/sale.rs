//! A sale's life in Redis: created once (`lua/create_sale.lua`), read with
//! its live figures (`lua/sale_state.lua`), registered for the worker's loops
//! and retired from them when over (`lua/retire.lua`).

use redis::AsyncCommands;

use super::waiting_room::{config_args, read_config};
use crate::domain::{from_ms, to_ms, Sale, SaleDef, SaleId, Stock, WaitingRoomDef};
use crate::engine::reply::Reply;
use crate::engine::{keys, Engine, EngineError, EngineResult};

/// A sale as the gateway created it: new, or the same one again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// `sale_state.lua`'s `ok` reply: the definition, the live figures, and
/// the waiting room as it stands when the sale has one.
struct SaleState {
    def: SaleDef,
    stock: Stock,
    ends_ms: i64,
    paused: bool,
    waiting_room: Option<WaitingRoomDef>,
}

impl SaleState {
    fn parse(r: &Reply) -> EngineResult<SaleState> {
        let mut f = r.fields();
        let def = serde_json::from_str(&f.text()?)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        Ok(SaleState {
            def,
            stock: Stock {
                total: f.int()?,
                available: f.int()?,
                held: f.int()?,
                sold: f.int()?,
            },
            ends_ms: f.int()?,
            paused: f.int()? == 1,
            waiting_room: if f.more() {
                Some(read_config(&mut f)?)
            } else {
                None
            },
        })
    }
}

impl Engine {
    /// Loads a sale scheduled in Postgres. Safe to repeat: an existing sale
    /// with the same definition is left as it is (its counters untouched).
    pub async fn create_sale(&self, def: &SaleDef) -> EngineResult<Created> {
        let k = self.keys(&def.id);
        let json = serde_json::to_string(def)
            .map_err(|e| EngineError::Corrupt(format!("sale definition: {e}")))?;
        // The registry first: a crash after it leaves an id the reaper skips,
        // never a sale the reaper cannot find.
        self.register(&def.id).await?;
        let reply = self
            .run(
                self.scripts
                    .create_sale
                    .key(&k.sale)
                    .key(&k.waiting_room)
                    .arg(json)
                    .arg(def.stock)
                    .arg(to_ms(def.starts_at))
                    .arg(to_ms(def.ends_at))
                    .arg(def.per_customer_limit)
                    .arg(i64::from(def.hold_seconds) * 1000)
                    .arg(def.price_cents)
                    .arg(&def.currency)
                    .arg(def.queue.as_ref().map(config_args)),
            )
            .await?
            .expect(&["created", "exists"])?;
        Ok(if reply.word == "created" {
            Created::New
        } else {
            Created::Existing
        })
    }

    /// The sale with its live figures, or `SaleNotFound`.
    pub async fn sale(&self, sale_id: &SaleId) -> EngineResult<Sale> {
        let k = self.keys(sale_id);
        let mut call = self.scripts.sale_state.key(&k.sale);
        call.key(&k.waiting_room);
        let r = self.run(&call).await?.expect(&["ok"])?;
        let state = SaleState::parse(&r)?;
        let mut sale = Sale::new(
            state.def,
            state.stock,
            from_ms(state.ends_ms),
            state.paused,
            from_ms(r.now_ms),
        );
        // The room as it stands (an admin may have set it after the start
        // of the sale's definition).
        if state.waiting_room.is_some() {
            sale.queue = state.waiting_room;
        }
        Ok(sale)
    }

    /// Every registered sale.
    pub async fn sale_ids(&self) -> EngineResult<Vec<SaleId>> {
        let mut conn = self.conn.clone();
        let registry = keys::registry(&self.prefix);
        let ids: Vec<String> = self
            .bounded(async move { conn.smembers(registry).await })
            .await?;
        parse_ids(ids)
    }

    /// The sales the worker's loops visit: every sale not retired.
    pub async fn active_ids(&self) -> EngineResult<Vec<SaleId>> {
        let mut conn = self.conn.clone();
        let active = keys::active(&self.prefix);
        let ids: Vec<String> = self
            .bounded(async move { conn.smembers(active).await })
            .await?;
        parse_ids(ids)
    }

    /// Puts a sale in the registry and in the worker's loops.
    pub(in crate::engine) async fn register(&self, sale_id: &str) -> EngineResult<()> {
        // Two calls: on a cluster the two sets live on different primaries.
        for set in [keys::registry(&self.prefix), keys::active(&self.prefix)] {
            let mut conn = self.conn.clone();
            self.bounded(async move { conn.sadd::<_, _, ()>(set, sale_id).await })
                .await?;
        }
        Ok(())
    }

    /// Takes every registered sale back into the worker's loops: a worker
    /// starting on a Redis written by a version without the active set, or
    /// after on-call deleted it, finds every sale again. Sales that are over
    /// retire again on the next pass.
    pub async fn activate_all(&self) -> EngineResult<()> {
        // Read, then add (not SUNIONSTORE): on a cluster the two sets live on
        // different primaries. A sale registered in between is added by its
        // own registration.
        let ids = self.sale_ids().await?;
        let ids: Vec<&str> = ids.iter().map(SaleId::as_str).collect();
        for chunk in ids.chunks(1000) {
            let mut conn = self.conn.clone();
            let active = keys::active(&self.prefix);
            self.bounded(async move { conn.sadd::<_, _, ()>(active, chunk).await })
                .await?;
        }
        Ok(())
    }

    /// Takes a sale out of the worker's loops if it is over (ended, nothing
    /// held, outbox empty). Returns whether it left.
    ///
    /// The sale is marked retired in its own hash first (one script, so the
    /// check and the mark are atomic), then removed from the active set, then
    /// the mark is read again: an adjustment that reopened the sale in
    /// between cleared the mark before it re-added the sale, so whichever
    /// order the two removals and additions take, a reopened sale ends up in
    /// the set.
    pub async fn retire_if_over(&self, sale_id: &SaleId) -> EngineResult<bool> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .retire
                    .key(&k.sale)
                    .key(&k.outbox)
                    .key(&k.events),
            )
            .await?;
        match r.word.as_str() {
            "retired" => {}
            "sale_not_found" => {
                // Registered but gone (Redis lost it): a rebuild registers
                // it again; until then nothing of it is left to visit.
            }
            _ => {
                r.expect(&["active"])?;
                return Ok(false);
            }
        }
        let mut conn = self.conn.clone();
        let active = keys::active(&self.prefix);
        let id = sale_id.to_string();
        self.bounded(async move { conn.srem::<_, _, ()>(active, id).await })
            .await?;
        let mut conn = self.conn.clone();
        let sale = k.sale.clone();
        let retired: Option<i64> = self
            .bounded(async move { conn.hget(sale, "retired").await })
            .await?;
        if retired == Some(0) {
            self.register(sale_id).await?;
            return Ok(false);
        }
        Ok(true)
    }
}

/// The sets hold only ids the engine registered, which were parsed; anything
/// else is corruption, reported rather than visited.
fn parse_ids(ids: Vec<String>) -> EngineResult<Vec<SaleId>> {
    ids.into_iter()
        .map(|id| {
            SaleId::try_from(id)
                .map_err(|id| EngineError::Corrupt(format!("sale id {id:?} in a registry")))
        })
        .collect()
}
