//! What the waiting room costs: joins per second, and a reserve behind a
//! room (its admission token checked and used up in the reserve script)
//! beside a reserve on a sale without one, in the same run.
//!
//! Each round, on one Redis, through the engine (the real scripts; no HTTP,
//! no Postgres):
//! - `join`: `--buyers` customers join a room (`Engine::join`) with
//!   `--concurrency` calls in flight: joins per second;
//! - the room is sealed and published and every member admitted (not
//!   timed);
//! - `plain` and `room` (alternating which goes first): `--buyers` reserves
//!   of one unit each, on a sale without a room and on the room's sale with
//!   each buyer's admission token: reserves per second, and Redis's own
//!   time per reserve (`INFO commandstats`: EVALSHA usec delta / reserves;
//!   on a Redis shared with other work it includes theirs: use a private
//!   one).
//!
//! ```text
//! cargo build --release --examples
//! redis-server --port 7390 --save '' --appendonly no --daemonize yes
//! target/release/examples/room_bench --redis redis://127.0.0.1:7390 --buyers 20000 --rounds 3
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use flashsale::domain::{CustomerId, SaleId, WaitingRoomDef};
use flashsale::engine::ops::waiting_room::Joined;
use flashsale::engine::{Engine, ReserveRequest};

#[derive(Debug, Parser)]
#[command(about = "Joins per second, and the cost a waiting room adds to a reserve")]
struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    #[arg(long, default_value_t = 20_000)]
    buyers: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// EVALSHA (calls, usec) so far.
async fn evalsha(engine: &Engine) -> anyhow::Result<(u64, u64)> {
    let mut conn = engine.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .context("INFO")?;
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("");
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("calls="), field("usec=")))
}

/// Timed reserves, one per buyer: (per second, Redis usec per reserve).
async fn reserves(
    engine: &Engine,
    sale: &SaleId,
    tokens: Option<&[String]>,
    args: &Args,
) -> anyhow::Result<(f64, f64)> {
    let before = evalsha(engine).await?;
    let started = Instant::now();
    futures::stream::iter(0..args.buyers)
        .map(|i| async move {
            let customer = CustomerId::parse(format!("c{i}")).context("customer id")?;
            engine
                .reserve(&ReserveRequest {
                    sale_id: sale,
                    customer: &customer,
                    quantity: 1,
                    idempotency: None,
                    admission: tokens.map(|t| t[i].as_str()),
                })
                .await
                .with_context(|| format!("reserve of c{i}"))
        })
        .buffer_unordered(args.concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let after = evalsha(engine).await?;
    let usec = (after.1 - before.1) as f64 / args.buyers as f64;
    Ok((args.buyers as f64 / secs, usec))
}

async fn round(
    engine: &Engine,
    prefix: &str,
    args: &Args,
    room_first: bool,
) -> anyhow::Result<[f64; 5]> {
    let n = args.buyers;
    let plain = support::sale_id(&format!("plain-{}", support::short_id()))?;
    engine
        .create_sale(&support::sale_def(&plain, n, "no room"))
        .await?;
    let roomed = support::sale_id(&format!("room-{}", support::short_id()))?;
    let mut def = support::sale_def(&roomed, n, "behind a room");
    let queue = WaitingRoomDef {
        opens_at: def.starts_at - time::Duration::minutes(1),
        admit_per_second: 1,
        // Everyone at once: the admissions are set up, not measured.
        admit_burst: u32::try_from(n)?,
        admission_seconds: 3600,
    };
    def.queue = Some(queue);
    engine.create_sale(&def).await?;
    let seed = "bench-seed";
    let sha = flashsale::usecases::waiting_room::sha256_hex(seed);
    // Before the start, so every join is a member: move the start ahead for
    // the joins, then back.
    let k = engine.keys(&roomed);
    let mut conn = engine.connection();
    let now_ms = flashsale::domain::to_ms(time::OffsetDateTime::now_utc());
    redis::cmd("HSET")
        .arg(&k.sale)
        .arg("starts_ms")
        .arg(now_ms + 3_600_000)
        .query_async::<()>(&mut conn)
        .await?;
    engine
        .open_waiting_room(&roomed, &queue, seed, &sha, None)
        .await?;

    let started = Instant::now();
    let room_id = &roomed;
    let tickets: Vec<(usize, u64)> = futures::stream::iter(0..n)
        .map(|i| async move {
            let customer = CustomerId::parse(format!("c{i}")).context("customer id")?;
            match engine.join_waiting_room(room_id, &customer).await? {
                Joined::New(t) => Ok((i, t.number)),
                other => anyhow::bail!("join of c{i}: {other:?}"),
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let joins = n as f64 / started.elapsed().as_secs_f64();

    redis::cmd("HSET")
        .arg(&k.sale)
        .arg("starts_ms")
        .arg(now_ms - 1000)
        .query_async::<()>(&mut conn)
        .await?;
    let (members, _) = engine
        .seal_waiting_room(&roomed)
        .await?
        .context("not sealed")?;
    ensure!(members == n as u64, "{members} members of {n}");
    engine
        .open_waiting_room(&roomed, &queue, seed, &sha, Some(members))
        .await?;
    let mut tokens = vec![String::new(); n];
    let mut by_position = vec![(0u64, String::new()); n];
    for (i, t) in &tickets {
        let p = flashsale::domain::permutation::position(seed, members, *t);
        let secret = uuid::Uuid::new_v4().simple().to_string();
        tokens[*i] = format!("{t}.{secret}");
        by_position[p as usize] = (*t, secret);
    }
    for (c, chunk) in by_position.chunks(500).enumerate() {
        engine
            .admit(&roomed, (c * 500) as u64, chunk)
            .await?
            .context("admit")?;
    }

    let (plain_rate, plain_us, room_rate, room_us) = if room_first {
        let r = reserves(engine, &roomed, Some(&tokens), args).await?;
        let p = reserves(engine, &plain, None, args).await?;
        (p.0, p.1, r.0, r.1)
    } else {
        let p = reserves(engine, &plain, None, args).await?;
        let r = reserves(engine, &roomed, Some(&tokens), args).await?;
        (p.0, p.1, r.0, r.1)
    };
    for sale in [&plain, &roomed] {
        let s = engine.sale(sale).await?;
        ensure!(
            s.stock.held == n as i64,
            "{sale}: {} held of {n}",
            s.stock.held
        );
    }
    support::delete_prefix(engine, prefix).await?;
    Ok([joins, plain_rate, plain_us, room_rate, room_us])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = support::runtime(None)?;
    rt.block_on(async {
        let prefix = format!("rbench-{}", support::short_id());
        let mut settings = flashsale::config::Settings::load(None)?;
        settings.redis.url = args.redis.clone();
        settings.redis.key_prefix = prefix.clone();
        let engine = Engine::new(&settings)?;
        println!("round  joins/s  plain/s  plain_us  room/s  room_us  room/plain");
        let mut all = Vec::new();
        for r in 0..args.rounds {
            let f = round(&engine, &prefix, &args, r % 2 == 1).await?;
            println!(
                "{r:>5}  {:>7.0}  {:>7.0}  {:>8.1}  {:>6.0}  {:>7.1}  {:>10.2}",
                f[0], f[1], f[2], f[3], f[4], f[3] / f[1]
            );
            all.push(f);
        }
        let med = |i: usize| support::median(all.iter().map(|f| f[i]).collect());
        println!(
            "median joins {:.0}/s; reserves plain {:.0}/s at {:.1} us of Redis, behind a room {:.0}/s at {:.1} us ({:.2}x the rate, +{:.1} us)",
            med(0),
            med(1),
            med(2),
            med(3),
            med(4),
            med(3) / med(1),
            med(4) - med(2)
        );
        Ok(())
    })
}
