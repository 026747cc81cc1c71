//! Does any call grow with the sale? For sales of 10k, 100k and 1M holds:
//! Redis's memory, and the time Redis itself spent in one call (SLOWLOG,
//! threshold 0: every call is logged with its duration; p99 / longest of the
//! sampled calls, or the one call) for
//! reserve, confirm, expiry, inspect, a recount and a rebuild of the
//! surviving sale; beside them, as the baseline of the same run, a recount
//! that reads every record (what every recount did before the tallies: the
//! sale's `tallied` flag cleared, so it counts its records once).
//!
//! Run it against a private redis-server (it changes the SLOWLOG settings):
//!
//! ```text
//! bash bench/size.sh            # starts one, runs this, stops it
//! target/release/examples/size_bench --redis-url redis://127.0.0.1:7401 --sizes 10000,100000
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use flashsale::engine::{ConfirmRequest, Engine, Known, Restore};

#[derive(Debug, Parser)]
#[command(about = "Longest Redis call and memory against sale size")]
struct Args {
    #[arg(long)]
    redis_url: String,
    /// Sale sizes (holds), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Calls measured per operation (reserve, confirm, expire).
    #[arg(long, default_value_t = 1000)]
    sample: usize,
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(None)?.block_on(run(args))
}

/// What Redis logged since the last reset: the longest call and the 99th
/// percentile, in microseconds (one call: both are that call).
async fn longest(conn: &mut flashsale::engine::Conn) -> anyhow::Result<(u64, u64)> {
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut us: Vec<u64> = log
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(fields) => match fields.get(2) {
                Some(redis::Value::Int(us)) => Some(*us as u64),
                _ => None,
            },
            _ => None,
        })
        .collect();
    us.sort_unstable();
    let max = us.last().copied().unwrap_or(0);
    let p99 = us
        .get((us.len() * 99 / 100).min(us.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    Ok((max, p99))
}

async fn reset(conn: &mut flashsale::engine::Conn) -> anyhow::Result<()> {
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

async fn memory(engine: &Engine) -> anyhow::Result<u64> {
    Ok(engine.memory_used().await?)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut settings = flashsale::config::Settings::load(None)?;
    settings.redis.url = args.redis_url.clone();
    settings.redis.key_prefix = format!("size-{}", support::short_id());
    settings.redis.timeout_ms = 60_000;
    let engine = Engine::new(&settings).context("redis url")?;
    let mut conn = engine.connection();
    for (k, v) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "100000"),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async::<()>(&mut conn)
            .await?;
    }
    println!("| holds | Redis memory | reserve | confirm | expire | inspect | recount | rebuild (surviving) | baseline: recount reading every record |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &size in &args.sizes {
        let sale = support::sale_id(&format!("s-{}", support::short_id()))?;
        let def = support::sale_def(&sale, size + args.sample, "size bench");
        engine.create_sale(&def).await?;
        let before = memory(&engine).await?;
        let fill = size - args.sample;
        let mut holds: Vec<_> = futures::stream::iter(0..fill)
            .map(|i| support::hold_one(&engine, &sale, i))
            .buffer_unordered(args.concurrency)
            .try_collect()
            .await?;
        // The last `sample` reserves are the measured ones.
        reset(&mut conn).await?;
        let last: Vec<_> = futures::stream::iter(fill..size)
            .map(|i| support::hold_one(&engine, &sale, i))
            .buffer_unordered(args.concurrency)
            .try_collect()
            .await?;
        let reserve = longest(&mut conn).await?;
        holds.extend(last);
        let bytes = memory(&engine).await?.saturating_sub(before);

        reset(&mut conn).await?;
        for (rid, customer) in holds.iter().take(args.sample) {
            engine
                .confirm(&ConfirmRequest {
                    sale_id: &sale,
                    reservation_id: rid,
                    customer,
                    payment_ref: "pay",
                })
                .await?;
        }
        let confirm = longest(&mut conn).await?;

        let due = engine.keys(&sale).due.clone();
        for (rid, _) in holds.iter().skip(args.sample).take(args.sample) {
            redis::cmd("ZADD")
                .arg(&due)
                .arg(0)
                .arg(rid.as_str())
                .query_async::<()>(&mut conn)
                .await?;
        }
        reset(&mut conn).await?;
        while engine.expire_due(&sale, 500).await?.more_due {}
        let expire = longest(&mut conn).await?;

        reset(&mut conn).await?;
        engine.inspect(&sale, 1000).await?;
        let inspect = longest(&mut conn).await?;

        let known = Known {
            total: def.stock,
            sold: 0,
            applied: &[],
            per_customer: &[],
        };
        reset(&mut conn).await?;
        engine.recount(&sale, &known).await?;
        let recount = longest(&mut conn).await?;

        redis::cmd("HSET")
            .arg(&engine.keys(&sale).sale)
            .arg("tallied")
            .arg(0)
            .query_async::<()>(&mut conn)
            .await?;
        reset(&mut conn).await?;
        engine.recount(&sale, &known).await?;
        let full_pass = longest(&mut conn).await?;

        reset(&mut conn).await?;
        engine
            .rebuild(&Restore {
                def: &def,
                known,
                ends_ms: flashsale::domain::to_ms(def.ends_at),
                paused: false,
                rejected: &[],
                sold_outs: 0,
            })
            .await?;
        let rebuild = longest(&mut conn).await?;

        let ms = |(max, p99): &(u64, u64)| {
            if max == p99 {
                format!("{:.2} ms", *max as f64 / 1000.0)
            } else {
                format!(
                    "{:.2} / {:.2} ms",
                    *p99 as f64 / 1000.0,
                    *max as f64 / 1000.0
                )
            }
        };
        println!(
            "| {size} | {:.1} MB | {} | {} | {} | {} | {} | {} | {} |",
            bytes as f64 / 1e6,
            ms(&reserve),
            ms(&confirm),
            ms(&expire),
            ms(&inspect),
            ms(&recount),
            ms(&rebuild),
            ms(&full_pass),
        );
        support::delete_prefix(&engine, &settings.redis.key_prefix).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
