//! The outbox streams, on Redis's side: each sale's confirmed orders, as
//! `lua/confirm.lua` appends them, and its events for the store (expiries,
//! releases, sell-outs: `lua/prelude.lua`), each read through one consumer
//! group so that several flushers share the work and none loses an entry.
//!
//! The format of an order entry is written by `confirm.lua` and read here,
//! and nowhere else; that of an event entry in `super::events`. The flush itself (Postgres, retries, dead letters) is the
//! use case in `crate::usecases::flush`.

use std::time::Duration;

use redis::Value;

use crate::domain::{from_ms, NewOrder, SaleId};
use crate::engine::{int, text, Engine, EngineResult, SaleKeys};

/// The consumer group every flusher joins on every outbox stream.
pub const GROUP: &str = "flushers";

/// The streams a sale's flush reads, both through [`GROUP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The orders (`SaleKeys::outbox`).
    Orders,
    /// The events for the store (`SaleKeys::events`).
    Events,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Orders, Stream::Events];

    fn key(self, k: &SaleKeys) -> &str {
        match self {
            Stream::Orders => &k.outbox,
            Stream::Events => &k.events,
        }
    }

    /// Its name in dead letters (`stream` field) and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Orders => "outbox",
            Stream::Events => "events",
        }
    }
}

/// What a flush hands back for one stream after its commit: entries to
/// acknowledge, and entries to move to the dead letters with their reason.
#[derive(Debug)]
pub struct Settle<'a> {
    pub stream: Stream,
    pub done: Vec<&'a str>,
    pub dead: Vec<(&'a Entry, String)>,
}

/// Where a read takes entries from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// This consumer's own pending entries (after a failed flush).
    Own,
    /// Entries pending at another consumer for at least `min_idle`: it
    /// stopped acknowledging (died), so this one takes them over.
    Claimed { min_idle: Duration },
    /// Entries never delivered to anyone.
    New,
}

/// One outbox entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// `None` for an entry deleted from the stream while it was pending:
    /// there is nothing left to write, only the acknowledgement.
    pub fields: Option<Vec<(String, String)>>,
}

impl Entry {
    /// The order the entry carries; `Err` for an entry that is not what
    /// confirm.lua writes (poison), `None` for a deleted one.
    pub fn order(&self) -> Option<Result<NewOrder, String>> {
        self.fields.as_deref().map(parse)
    }

    /// A field's value, if the entry has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .flatten()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Engine {
    /// Takes up to `count` entries of one of the sale's streams for
    /// `consumer`. The group is created on first use (then nothing is
    /// returned yet).
    pub async fn outbox_take(
        &self,
        sale_id: &SaleId,
        stream: Stream,
        consumer: &str,
        from: Delivery,
        count: usize,
    ) -> EngineResult<Vec<Entry>> {
        let keys = self.keys(sale_id);
        let outbox = stream.key(&keys);
        let cmd = match from {
            Delivery::Claimed { min_idle } => {
                let mut c = redis::cmd("XAUTOCLAIM");
                c.arg(outbox)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count);
                c
            }
            Delivery::Own | Delivery::New => {
                let mut c = redis::cmd("XREADGROUP");
                c.arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(outbox)
                    .arg(if from == Delivery::New { ">" } else { "0" });
                c
            }
        };
        let mut conn = self.connection();
        let reply: Value = match self.bounded(cmd.query_async(&mut conn)).await {
            Err(e) if e.redis_code() == Some("NOGROUP") => {
                self.create_group(outbox).await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        Ok(match from {
            // [next-id, [entries], [deleted ids]]
            Delivery::Claimed { .. } => match reply {
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

    async fn create_group(&self, outbox: &str) -> EngineResult<()> {
        let mut conn = self.connection();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(outbox)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.bounded(cmd.query_async::<()>(&mut conn)).await {
            Err(e) if e.redis_code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// One MULTI over every stream of the flush: dead letters are copied
    /// with their reason (and, for events, the stream they came from), then
    /// every handled entry (`done` and the dead) is acknowledged and
    /// deleted, so an entry is never both dead-lettered and pending, nor
    /// lost between the two.
    pub async fn outbox_settle(&self, sale_id: &SaleId, settle: &[Settle<'_>]) -> EngineResult<()> {
        let keys = self.keys(sale_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut any = false;
        for s in settle {
            for (entry, why) in &s.dead {
                let cmd = pipe.cmd("XADD").arg(&keys.dead_letters).arg("*");
                cmd.arg("reason").arg(why).arg("entry_id").arg(&entry.id);
                // Order dead letters keep today's shape, which tools read.
                if s.stream != Stream::Orders {
                    cmd.arg("stream").arg(s.stream.name());
                }
                for (k, v) in entry.fields.iter().flatten() {
                    cmd.arg(k).arg(v);
                }
                cmd.ignore();
            }
            let ids: Vec<&str> = s
                .done
                .iter()
                .copied()
                .chain(s.dead.iter().map(|(e, _)| e.id.as_str()))
                .collect();
            if !ids.is_empty() {
                any = true;
                let key = s.stream.key(&keys);
                pipe.cmd("XACK").arg(key).arg(GROUP).arg(&ids).ignore();
                pipe.cmd("XDEL").arg(key).arg(&ids).ignore();
            }
        }
        if !any {
            return Ok(());
        }
        let mut conn = self.connection();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// Entries not yet in Postgres (delivered or not: orders and events)
    /// and dead letters.
    pub async fn outbox_backlog(&self, sale_id: &SaleId) -> EngineResult<(u64, u64)> {
        let keys = self.keys(sale_id);
        let mut conn = self.connection();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&keys.outbox)
            .cmd("XLEN")
            .arg(&keys.events)
            .cmd("XLEN")
            .arg(&keys.dead_letters);
        let (orders, events, dead): (u64, u64, u64) =
            self.bounded(pipe.query_async(&mut conn)).await?;
        Ok((orders + events, dead))
    }

    /// Removes `consumer` from the sale's groups (every stream) once it
    /// holds no pending entry in them. Returns whether it was removed from
    /// every one.
    pub async fn outbox_leave(&self, sale_id: &SaleId, consumer: &str) -> EngineResult<bool> {
        let mut all = true;
        for stream in Stream::ALL {
            all &= self.stream_leave(sale_id, stream, consumer).await?;
        }
        Ok(all)
    }

    /// Removes `consumer` from one stream's group once it holds no pending
    /// entry (removing it with some would strand them: delivered, never
    /// acknowledged, and no longer anyone's to re-read). A stream without
    /// the group has nothing of it: removed.
    async fn stream_leave(
        &self,
        sale_id: &SaleId,
        stream: Stream,
        consumer: &str,
    ) -> EngineResult<bool> {
        let keys = self.keys(sale_id);
        let outbox = stream.key(&keys);
        let mut conn = self.connection();
        let mut pending = redis::cmd("XPENDING");
        pending
            .arg(outbox)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(consumer);
        let held: Vec<Value> = match self.bounded(pending.query_async(&mut conn)).await {
            Ok(v) => v,
            Err(e) if e.redis_code() == Some("NOGROUP") => return Ok(stream != Stream::Orders),
            Err(e) => return Err(e),
        };
        if !held.is_empty() {
            return Ok(false);
        }
        let mut del = redis::cmd("XGROUP");
        del.arg("DELCONSUMER").arg(outbox).arg(GROUP).arg(consumer);
        self.bounded(del.query_async::<()>(&mut conn)).await?;
        Ok(true)
    }
}

impl Engine {
    /// Removes the sale's consumers that hold no pending entry and have not
    /// read for `idle`: the names of workers that stopped. A worker that is
    /// alive after all is only slow; its next read makes it a consumer
    /// again, and with nothing pending nothing is lost. Returns how many
    /// were removed.
    pub async fn outbox_prune(&self, sale_id: &SaleId, idle: Duration) -> EngineResult<usize> {
        let keys = self.keys(sale_id);
        let mut removed = 0;
        for stream in Stream::ALL {
            let mut conn = self.connection();
            let mut info = redis::cmd("XINFO");
            info.arg("CONSUMERS").arg(stream.key(&keys)).arg(GROUP);
            let consumers: Vec<Value> = match self.bounded(info.query_async(&mut conn)).await {
                Ok(v) => v,
                Err(e) if e.redis_code() == Some("NOGROUP") => continue,
                Err(e) => return Err(e),
            };
            for c in consumers {
                let Some((name, pending, idle_ms)) = consumer(&c) else {
                    continue;
                };
                if pending > 0 || idle_ms < idle.as_millis() as i64 {
                    continue;
                }
                // It may have read (and taken entries) since XINFO: only a
                // consumer that still holds nothing is removed.
                if self.stream_leave(sale_id, stream, &name).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl Engine {
    /// Up to `count` dead letters of the sale after entry `after` ("-" for
    /// the first ones), with every field (the reason among them).
    pub async fn dead_letters(
        &self,
        sale_id: &SaleId,
        after: &str,
        count: usize,
    ) -> EngineResult<Vec<Entry>> {
        let dead = self.keys(sale_id).dead_letters.clone();
        let start = if after == "-" {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let mut conn = self.connection();
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&dead).arg(start).arg("+").arg("COUNT").arg(count);
        let reply: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(entries(reply))
    }
}

/// `name`, `pending` and `idle` of one XINFO CONSUMERS entry.
fn consumer(v: &Value) -> Option<(String, i64, i64)> {
    let fields: Vec<(String, &Value)> = match v {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|c| Some((text(&c[0])?, c.get(1)?)))
            .collect(),
        Value::Map(kv) => kv.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
        _ => return None,
    };
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    Some((
        text(get("name")?)?,
        int(get("pending")?)?,
        int(get("idle")?)?,
    ))
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
        expires_at: match get("expires_ms") {
            Ok(_) => Some(from_ms(num("expires_ms")?)),
            Err(_) => None,
        },
        // Absent from entries written before services confirmed; empty
        // when the customer confirmed.
        confirmed_by: get("confirmed_by")
            .ok()
            .filter(|c| !c.is_empty())
            .map(String::from),
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
