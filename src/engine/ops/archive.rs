//! Closing a sale that is over (`lua/archive.lua`) and removing its keys.

use redis::AsyncCommands;

use crate::domain::{SaleId, Stock};
use crate::engine::{keys, Engine, EngineResult};

/// Idempotency keys removed per call when a sale is archived.
const REMOVE_CHUNK: usize = 500;

/// `archive.lua`'s `archived` reply: the sale's final figures.
struct Archived {
    total: i64,
    sold: i64,
}

impl Archived {
    fn parse(r: &crate::engine::reply::Reply) -> EngineResult<Archived> {
        let mut f = r.fields();
        Ok(Archived {
            total: f.int()?,
            sold: f.int()?,
        })
    }
}

impl Engine {
    /// Closes a sale that is over (see `lua/archive.lua`): its final
    /// figures, or `None` while it is not over.
    /// `dead_copied`: the dead letters already copied to Postgres; the sale
    /// closes only if that is all of them.
    pub async fn archive(
        &self,
        sale_id: &SaleId,
        dead_copied: usize,
    ) -> EngineResult<Option<Stock>> {
        let k = self.keys(sale_id);
        let r = self
            .run(
                self.scripts
                    .archive
                    .key(&k.sale)
                    .key(&k.outbox)
                    .key(&k.dead_letters)
                    .key(&k.events)
                    .arg(dead_copied),
            )
            .await?;
        match r.word.as_str() {
            "not_over" | "sale_not_found" => Ok(None),
            _ => {
                let Archived { total, sold } = Archived::parse(&r.expect(&["archived"])?)?;
                Ok(Some(Stock {
                    total,
                    available: total - sold,
                    held: 0,
                    sold,
                }))
            }
        }
    }

    /// Removes every Redis key of a closed sale: its idempotency keys a
    /// chunk at a time (from the sale's index of them), then its own keys,
    /// UNLINKed so that even a sale of millions of holds is freed in the
    /// background and no call blocks Redis; then the registries forget it.
    pub async fn remove_sale(&self, sale_id: &SaleId) -> EngineResult<()> {
        let k = self.keys(sale_id);
        loop {
            let mut conn = self.conn.clone();
            let index = k.idempotency_index.clone();
            let names: Vec<String> = self
                .bounded(async move {
                    redis::cmd("SRANDMEMBER")
                        .arg(&index)
                        .arg(REMOVE_CHUNK)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if names.is_empty() {
                break;
            }
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(&names).ignore();
            pipe.cmd("SREM")
                .arg(&k.idempotency_index)
                .arg(&names)
                .ignore();
            self.bounded(async move { pipe.query_async::<()>(&mut conn).await })
                .await?;
        }
        // One call per slot: on a cluster the sale's keys and the two
        // registries live on different primaries.
        let mut conn = self.conn.clone();
        let all = k.all();
        self.bounded(async move {
            redis::cmd("UNLINK")
                .arg(&all[..])
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        for set in [keys::active(&self.prefix), keys::registry(&self.prefix)] {
            let mut conn = self.conn.clone();
            self.bounded(async move { conn.srem::<_, _, ()>(set, sale_id.as_str()).await })
                .await?;
        }
        self.soldout.forget(sale_id);
        Ok(())
    }

    /// How many Redis keys the sale has now: its own (those that exist) and
    /// its idempotency keys (by its index of them; some may have expired).
    pub async fn key_count(&self, sale_id: &SaleId) -> EngineResult<u64> {
        let k = self.keys(sale_id);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&k.all()[..]);
        pipe.cmd("SCARD").arg(&k.idempotency_index);
        let (own, idem): (u64, u64) = self
            .bounded(async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(own + idem)
    }
}
