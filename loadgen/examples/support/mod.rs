//! Helpers shared by the benchmark examples (included with `#[path]`; not an
//! example of its own).
#![allow(dead_code)]

use anyhow::Context;
use flashsale::domain::{from_ms, to_ms, CustomerId, ReservationId, SaleDef, SaleId};
use flashsale::engine::{Engine, ReserveRequest};
use time::OffsetDateTime;

/// A multi-threaded runtime, with `threads` workers when given.
pub fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n);
    }
    Ok(rt.enable_all().build()?)
}

/// A sale open from a minute ago for a day, with room for every call.
pub fn sale_def(id: &SaleId, stock: usize, what: &str) -> SaleDef {
    let now = from_ms(to_ms(OffsetDateTime::now_utc()));
    SaleDef {
        id: id.clone(),
        sku: "BENCH".into(),
        name: what.into(),
        price_cents: 100,
        currency: "IDR".into(),
        stock: stock as i64,
        starts_at: now - time::Duration::minutes(1),
        ends_at: now + time::Duration::days(1),
        per_customer_limit: 10,
        hold_seconds: 3600,
        queue: None,
    }
}

pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Every key under the run's private prefix (sales, registry, idempotency).
pub async fn delete_prefix(engine: &Engine, prefix: &str) -> anyhow::Result<()> {
    let mut conn = engine.connection();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .context("SCAN")?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await
                .context("DEL")?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The id of a sale a benchmark defined.
pub fn sale_id(id: &str) -> anyhow::Result<SaleId> {
    SaleId::parse(id).with_context(|| format!("{id:?} is not a sale id"))
}

/// Holds one unit of the sale for customer `c{i}`: the setup both the flush
/// and the confirm benchmarks need. Returns (reservation id, customer).
pub async fn hold_one(
    engine: &Engine,
    sale_id: &SaleId,
    i: usize,
) -> anyhow::Result<(ReservationId, CustomerId)> {
    let customer = CustomerId::parse(format!("c{i}")).context("customer id")?;
    let held = engine
        .reserve(&ReserveRequest {
            sale_id,
            customer: &customer,
            quantity: 1,
            idempotency: None,
            admission: None,
        })
        .await
        .context("reserve")?;
    let rid = ReservationId::parse(held.id).context("the engine's reservation id")?;
    Ok((rid, customer))
}
