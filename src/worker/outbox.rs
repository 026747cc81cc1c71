//! The outbox flush: confirmed orders go from each sale's Redis stream to the
//! Postgres `orders` table, exactly once through crashes and outages.
//!
//! - Entries are read with a consumer group, so several workers share the
//!   work without two of them holding the same entry.
//! - A batch is one INSERT ... SELECT FROM UNNEST, ON CONFLICT DO NOTHING:
//!   flushing an entry twice (after a crash between commit and ack) writes no
//!   second row.
//! - Entries are acknowledged (and deleted from the stream) only after the
//!   commit. Until then they stay pending for this consumer, which re-reads
//!   them after a failure; entries left pending by a dead consumer are claimed
//!   (XAUTOCLAIM) once idle for `worker.claim_idle_ms`.
//! - An entry Postgres rejects for good is moved to the sale's dead-letter
//!   stream with the reason; the entries behind it flush.

use std::time::{Duration, Instant};

use redis::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::from_ms;
use crate::engine::{text, Engine, EngineError, SaleKeys};
use crate::store::{self, NewOrder};

/// The consumer group every worker joins on every outbox stream.
pub const GROUP: &str = "flushers";

/// Why a flush stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("{0}")]
    Redis(#[from] EngineError),
    #[error("postgres unavailable: {0}")]
    Postgres(String),
}

impl From<redis::RedisError> for FlushError {
    fn from(e: redis::RedisError) -> Self {
        FlushError::Redis(e.into())
    }
}

/// What one flush of one sale did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Entries written (or found already written) and acknowledged.
    pub orders: usize,
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
        self.dead += other.dead;
        self.claimed += other.claimed;
    }
}

/// One worker's handle on the outboxes.
#[derive(Clone)]
pub struct Outbox {
    engine: Engine,
    db: PgPool,
    consumer: String,
    batch: usize,
    claim_idle: Duration,
    /// Checked between batches: on shutdown the batch in flight finishes
    /// (commit, then ack) and no new one starts.
    stop: CancellationToken,
}

/// Where a read starts: this consumer's own pending entries (after a failed
/// flush), entries idle at a dead consumer, or new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Own,
    Claimed,
    New,
}

struct Entry {
    id: String,
    /// `None` for an entry deleted from the stream while it was pending:
    /// there is nothing left to write, only the acknowledgement.
    fields: Option<Vec<(String, String)>>,
}

impl Outbox {
    pub fn new(
        engine: Engine,
        db: PgPool,
        batch: usize,
        claim_idle: Duration,
        stop: CancellationToken,
    ) -> Outbox {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        Outbox {
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
    pub fn with_consumer(mut self, name: &str) -> Outbox {
        self.consumer = name.to_string();
        self
    }

    /// Removes this consumer from the sale's group once it holds no pending
    /// entry (removing it with some would strand them: delivered, never
    /// acknowledged, and no longer anyone's to re-read). Returns whether it
    /// was removed.
    pub async fn leave(&self, sale_id: &str) -> Result<bool, FlushError> {
        let keys = self.engine.keys(sale_id);
        let mut conn = self.engine.connection();
        let mut pending = redis::cmd("XPENDING");
        pending
            .arg(&keys.outbox)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.consumer);
        let held: Vec<Value> = match self.engine.bounded(pending.query_async(&mut conn)).await {
            Ok(v) => v,
            Err(e) if e.redis_code() == Some("NOGROUP") => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if !held.is_empty() {
            return Ok(false);
        }
        let mut del = redis::cmd("XGROUP");
        del.arg("DELCONSUMER")
            .arg(&keys.outbox)
            .arg(GROUP)
            .arg(&self.consumer);
        self.engine
            .bounded(del.query_async::<()>(&mut conn))
            .await?;
        Ok(true)
    }

    /// Flushes everything this worker can take from one sale's outbox:
    /// its own pending entries, then idle entries of dead consumers (when
    /// `claim` is set), then new ones, batch by batch until none are left.
    pub async fn flush_sale(&self, sale_id: &str, claim: bool) -> Result<Flushed, FlushError> {
        let keys = self.engine.keys(sale_id);
        let mut total = Flushed::default();
        let mut sources = vec![Source::Own];
        if claim {
            sources.push(Source::Claimed);
        }
        sources.push(Source::New);
        for source in sources {
            loop {
                if self.stop.is_cancelled() {
                    return Ok(total);
                }
                let entries = self.read(&keys, source).await?;
                if entries.is_empty() {
                    break;
                }
                let n = entries.len();
                let mut done = self.write(sale_id, &keys, entries).await?;
                if source == Source::Claimed {
                    done.claimed = n;
                    crate::metrics::claimed(sale_id, n);
                }
                total.add(done);
                // Own pending entries come back whole in one read.
                if source == Source::Own || n < self.batch {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn read(&self, keys: &SaleKeys, source: Source) -> Result<Vec<Entry>, FlushError> {
        let mut conn = self.engine.connection();
        let cmd = match source {
            Source::Claimed => {
                let mut c = redis::cmd("XAUTOCLAIM");
                c.arg(&keys.outbox)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(self.claim_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(self.batch);
                c
            }
            Source::Own | Source::New => {
                let mut c = redis::cmd("XREADGROUP");
                c.arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(self.batch)
                    .arg("STREAMS")
                    .arg(&keys.outbox)
                    .arg(if source == Source::New { ">" } else { "0" });
                c
            }
        };
        let reply: Value = match self.engine.bounded(cmd.query_async(&mut conn)).await {
            Err(e) if e.redis_code() == Some("NOGROUP") => {
                self.create_group(keys).await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        Ok(match source {
            // [next-id, [entries], [deleted ids]]
            Source::Claimed => match reply {
                Value::Array(mut parts) if parts.len() >= 2 => entries(parts.swap_remove(1)),
                _ => Vec::new(),
            },
            // [[stream, [entries]]] or nil
            _ => match reply {
                Value::Array(streams) => streams
                    .into_iter()
                    .flat_map(|s| match s {
                        Value::Array(mut kv) if kv.len() == 2 => entries(kv.swap_remove(1)),
                        _ => Vec::new(),
                    })
                    .collect(),
                _ => Vec::new(),
            },
        })
    }

    async fn create_group(&self, keys: &SaleKeys) -> Result<(), FlushError> {
        let mut conn = self.engine.connection();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&keys.outbox)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.engine.bounded(cmd.query_async::<()>(&mut conn)).await {
            Err(e) if e.redis_code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Writes a batch, then acknowledges it. Returns without acknowledging
    /// anything when Postgres does not answer: the entries stay pending.
    async fn write(
        &self,
        sale_id: &str,
        keys: &SaleKeys,
        entries: Vec<Entry>,
    ) -> Result<Flushed, FlushError> {
        let started = Instant::now();
        let mut good = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        let mut gone = Vec::new();
        for e in entries {
            match e.fields.as_deref().map(parse) {
                Some(Ok(order)) => good.push((e, order)),
                Some(Err(why)) => dead.push((e, why)),
                None => gone.push(e.id),
            }
        }
        let orders: Vec<NewOrder> = good.iter().map(|(_, o)| o.clone()).collect();
        match store::insert_orders(&self.db, &orders).await {
            Ok(_) => {}
            Err(e) if store::is_permanent(&e) => {
                // Somebody in the batch is poison: find out who, row by row.
                let mut kept = Vec::with_capacity(good.len());
                for (entry, order) in good {
                    match store::insert_orders(&self.db, std::slice::from_ref(&order)).await {
                        Ok(_) => kept.push((entry, order)),
                        Err(e) if store::is_permanent(&e) => dead.push((entry, e.to_string())),
                        Err(e) => return Err(FlushError::Postgres(e.to_string())),
                    }
                }
                good = kept;
            }
            Err(e) => return Err(FlushError::Postgres(e.to_string())),
        }
        let ids: Vec<&str> = good
            .iter()
            .map(|(e, _)| e.id.as_str())
            .chain(gone.iter().map(String::as_str))
            .collect();
        self.acknowledge(keys, &ids, &dead).await?;
        let flushed = Flushed {
            orders: good.len(),
            dead: dead.len(),
            claimed: 0,
        };
        crate::metrics::flushed(sale_id, flushed.orders, flushed.dead, started.elapsed());
        for (entry, why) in &dead {
            tracing::error!(entry = %entry.id, reason = %why, "outbox entry moved to the dead letters");
        }
        Ok(flushed)
    }

    /// One MULTI: dead letters are copied with their reason, then every
    /// handled entry is acknowledged and deleted, so an entry is never both
    /// dead-lettered and pending, nor lost between the two.
    async fn acknowledge(
        &self,
        keys: &SaleKeys,
        flushed: &[&str],
        dead: &[(Entry, String)],
    ) -> Result<(), FlushError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (entry, why) in dead {
            let cmd = pipe.cmd("XADD").arg(&keys.dead_letters).arg("*");
            cmd.arg("reason").arg(why).arg("entry_id").arg(&entry.id);
            for (k, v) in entry.fields.iter().flatten() {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        let ids: Vec<&str> = flushed
            .iter()
            .copied()
            .chain(dead.iter().map(|(e, _)| e.id.as_str()))
            .collect();
        if !ids.is_empty() {
            pipe.cmd("XACK")
                .arg(&keys.outbox)
                .arg(GROUP)
                .arg(&ids)
                .ignore();
            pipe.cmd("XDEL").arg(&keys.outbox).arg(&ids).ignore();
        }
        let mut conn = self.engine.connection();
        self.engine
            .bounded(pipe.query_async::<()>(&mut conn))
            .await?;
        Ok(())
    }

    /// Entries not yet in Postgres (delivered or not) and dead letters.
    pub async fn backlog(&self, sale_id: &str) -> Result<(u64, u64), FlushError> {
        let keys = self.engine.keys(sale_id);
        let mut conn = self.engine.connection();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&keys.outbox)
            .cmd("XLEN")
            .arg(&keys.dead_letters);
        Ok(self.engine.bounded(pipe.query_async(&mut conn)).await?)
    }
}

fn entries(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = match pair.pop()? {
                Value::Array(kv) => Some(
                    kv.chunks(2)
                        .filter_map(|c| Some((text(&c[0])?, text(c.get(1)?)?)))
                        .collect(),
                ),
                _ => None,
            };
            Some(Entry {
                id: text(&pair[0])?,
                fields,
            })
        })
        .collect()
}

/// An outbox entry as confirm.lua writes it; anything else is poison.
fn parse(fields: &[(String, String)]) -> Result<NewOrder, String> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("missing field `{name}`"))
    };
    let num = |name: &str| -> Result<i64, String> {
        get(name)?
            .parse::<i64>()
            .map_err(|_| format!("field `{name}` is not an integer"))
    };
    let quantity = num("quantity")?;
    Ok(NewOrder {
        order_id: get("order_id")?
            .parse()
            .map_err(|_| "field `order_id` is not a UUID".to_string())?,
        reservation_id: get("reservation_id")?.to_string(),
        sale_id: get("sale_id")?.to_string(),
        customer_id: get("customer_id")?.to_string(),
        quantity: i32::try_from(quantity).map_err(|_| "field `quantity` is out of range")?,
        price_cents: num("price_cents")?,
        currency: get("currency")?.to_string(),
        payment_ref: get("payment_ref").unwrap_or("").to_string(),
        confirmed_at: from_ms(num("confirmed_ms")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_what_confirm_writes_and_refuses_the_rest() {
        let good = fields(&[
            ("order_id", "01a21314-8098-7226-a01e-da2f129451e2"),
            ("reservation_id", "tv.0123"),
            ("sale_id", "tv"),
            ("customer_id", "alice"),
            ("quantity", "2"),
            ("price_cents", "100"),
            ("currency", "IDR"),
            ("payment_ref", "p"),
            ("confirmed_ms", "1765497600123"),
        ]);
        let order = parse(&good).unwrap();
        assert_eq!(order.quantity, 2);
        let mut bad = good.clone();
        bad[4].1 = "two".into();
        assert!(parse(&bad).unwrap_err().contains("quantity"));
        assert!(parse(&good[1..]).unwrap_err().contains("order_id"));
    }
}
