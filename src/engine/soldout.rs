//! The sold-out fast path: once a sale is sold out or not live, this gateway
//! answers further reserves from memory, without a Redis round trip. That is
//! what keeps Redis calm in the minutes after a sell-out, when traffic peaks
//! and almost every request is a loser.
//!
//! A poller re-reads the marked sales every 50 ms (one pipelined HMGET each,
//! never a script), so stock that comes back (a release, an expiry, added
//! stock, a sale that opens) is reservable again within ~50 ms.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use redis::Value;
use tokio_util::sync::CancellationToken;

use super::{Engine, Refusal};
use crate::domain::Window;

pub const POLL: Duration = Duration::from_millis(50);

/// Sales known to refuse every reserve, with the refusal.
#[derive(Default)]
pub struct SoldOut {
    // std RwLock: held for a lookup only, never across an await.
    marks: RwLock<HashMap<String, Refusal>>,
}

impl SoldOut {
    pub fn get(&self, sale_id: &str) -> Option<Refusal> {
        self.marks.read().ok()?.get(sale_id).copied()
    }

    /// Remembers a refusal that holds for every buyer (sold out, not live).
    pub fn learn(&self, sale_id: &str, refusal: Refusal) {
        if matches!(refusal, Refusal::SoldOut | Refusal::SaleNotLive) {
            if let Ok(mut m) = self.marks.write() {
                m.insert(sale_id.to_string(), refusal);
            }
        }
    }

    /// Stock may be back (this gateway released a hold or changed the
    /// sale): ask Redis again from the next reserve on.
    pub fn forget(&self, sale_id: &str) {
        self.set(sale_id, None);
    }

    fn marked(&self) -> Vec<String> {
        self.marks
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn set(&self, sale_id: &str, refusal: Option<Refusal>) {
        if let Ok(mut m) = self.marks.write() {
            match refusal {
                Some(r) => m.insert(sale_id.to_string(), r),
                None => m.remove(sale_id),
            };
        }
    }
}

/// Re-reads every marked sale until `stop`; clears the marks of sales that
/// are live with stock again.
pub async fn poll(engine: Engine, stop: CancellationToken) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let sales = engine.soldout.marked();
        if sales.is_empty() {
            continue;
        }
        if engine.is_cluster() {
            // A pipeline stays in one slot, and each sale is judged by the
            // clock of its own primary: one [TIME, HMGET] per sale.
            let reads = sales.iter().map(|id| {
                let engine = engine.clone();
                async move { (id, read(&engine, std::slice::from_ref(id)).await) }
            });
            for (id, marks) in futures::future::join_all(reads).await {
                if let Some(mut marks) = marks {
                    engine.soldout.set(id, marks.pop().flatten());
                }
            }
        } else if let Some(marks) = read(&engine, &sales).await {
            for (id, mark) in sales.iter().zip(marks) {
                engine.soldout.set(id, mark);
            }
        }
    }
}

/// The marks `sales` should have now, in one pipeline; `None` while Redis
/// does not answer (the marks stay; the next tick tries again).
async fn read(engine: &Engine, sales: &[String]) -> Option<Vec<Option<Refusal>>> {
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for id in sales {
        pipe.cmd("HMGET").arg(&engine.keys(id).sale).arg(&[
            "available",
            "starts_ms",
            "ends_ms",
            "paused",
        ]);
    }
    let mut conn = engine.connection();
    let replies = engine
        .bounded(pipe.query_async::<Vec<Value>>(&mut conn))
        .await
        .ok()?;
    let mut replies = replies.into_iter();
    let now = replies.next().and_then(|t| server_ms(&t))?;
    Some(replies.map(|reply| still_refused(&reply, now)).collect())
}

fn server_ms(time: &Value) -> Option<i64> {
    let Value::Array(parts) = time else {
        return None;
    };
    let secs = super::int(parts.first()?)?;
    let micros = super::int(parts.get(1)?)?;
    Some(secs * 1000 + micros / 1000)
}

/// The refusal the sale would give every buyer now, if any. An ended sale
/// keeps no mark: polling it would cost a read every 50 ms for every sale
/// ever refused, for ever. A reserve on it goes to Redis once, is refused,
/// and marks it again until the next poll.
fn still_refused(hmget: &Value, now: i64) -> Option<Refusal> {
    let Value::Array(f) = hmget else {
        return None;
    };
    let field = |i: usize| f.get(i).and_then(super::int);
    let (available, starts, ends) = (field(0)?, field(1)?, field(2)?);
    match Window::at(now, starts, ends, field(3) == Some(1)) {
        Window::Ended => None,
        Window::Scheduled | Window::Paused => Some(Refusal::SaleNotLive),
        Window::Open if available <= 0 => Some(Refusal::SoldOut),
        Window::Open => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(available: i64, starts: i64, ends: i64, paused: i64) -> Value {
        Value::Array([available, starts, ends, paused].map(Value::Int).to_vec())
    }

    #[test]
    fn marks_follow_the_sale_and_ended_sales_keep_none() {
        assert_eq!(
            still_refused(&sale(0, 0, 100, 0), 50),
            Some(Refusal::SoldOut)
        );
        assert_eq!(
            still_refused(&sale(3, 0, 100, 1), 50),
            Some(Refusal::SaleNotLive)
        );
        assert_eq!(
            still_refused(&sale(3, 60, 100, 0), 50),
            Some(Refusal::SaleNotLive)
        );
        assert_eq!(still_refused(&sale(3, 0, 100, 0), 50), None);
        assert_eq!(
            still_refused(&sale(0, 0, 100, 0), 100),
            None,
            "ended: dropped"
        );
        assert_eq!(still_refused(&Value::Nil, 50), None);
    }
}
