//! What Redis durability costs the confirm path: confirm throughput and
//! latency against one or more Redis servers, e.g. the same redis-server
//! started with no persistence, with AOF `appendfsync everysec` and with AOF
//! `appendfsync always`.
//!
//! For each target and round: a fresh sale is created through the engine
//! (`Engine::create_sale`, the real script; Postgres is not involved),
//! `--holds` holds are reserved (one customer each, quantity 1; not timed),
//! then all of them are confirmed through `Engine::confirm` (the real
//! confirm script: held -> sold plus one XADD to the outbox) with
//! `--concurrency` calls in flight. That second phase is timed, per call and
//! as a whole. Afterwards the sale must show `sold == holds` and its outbox
//! `holds` entries; then its keys are deleted, so every run starts from the
//! same empty sale.
//!
//! Targets alternate within each round and the first target rotates between
//! rounds. The persistence settings each server reports (`CONFIG GET`) are
//! printed beside its figures. Keys are under a random `cbench-<hex>` prefix
//! and are deleted at the end.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/confirm_bench --holds 20000 --concurrency 64 --rounds 3 \
//!   --target none=redis://127.0.0.1:7301 --target everysec=redis://127.0.0.1:7302 \
//!   --target always=redis://127.0.0.1:7303
//! # group commit: the same Redis, batched and one call per confirm (bench/batch.sh)
//! target/release/examples/confirm_bench --holds 20000 --concurrency 64 --rounds 2 \
//!   --target batched=redis://127.0.0.1:6379 --target single=redis://127.0.0.1:6379 \
//!   --max-batch single=1
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use flashsale::engine::Engine;

#[derive(Debug, Parser)]
#[command(about = "Confirm throughput and latency per Redis server (e.g. per AOF setting)")]
struct Args {
    /// `label=redis://host:port`, repeatable; ratios are against the first.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Holds reserved, then confirmed, per run.
    #[arg(long, default_value_t = 20_000)]
    holds: usize,
    /// Confirm calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Reserve calls in flight while preparing the holds.
    #[arg(long, default_value_t = 64)]
    reserve_concurrency: usize,
    /// Runs of every target.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Per-call timeout (redis.timeout_ms).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// `label=N`: the target `label`'s engine carries at most N requests
    /// per script call (`engine.max_batch`; 1: one call per request), so
    /// that the same Redis can be measured batched and not, side by side.
    #[arg(long = "max-batch", value_name = "LABEL=N")]
    max_batch: Vec<String>,
}

struct Target {
    label: String,
    url: String,
    engine: Engine,
    persistence: String,
}

struct Run {
    label: String,
    round: usize,
    reserves_per_s: f64,
    confirms_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(args.threads)?.block_on(run_and_clean(args))
}

async fn run_and_clean(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.holds > 0 && args.concurrency > 0 && args.reserve_concurrency > 0 && args.rounds > 0,
        "--holds, --concurrency, --reserve-concurrency and --rounds must be at least 1"
    );
    let prefix = format!(
        "cbench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut targets = Vec::new();
    for t in &args.targets {
        let (label, url) = t
            .split_once('=')
            .with_context(|| format!("--target {t}: expected label=redis://host:port"))?;
        let mut s = flashsale::config::Settings::load(None)?;
        s.redis.url = url.to_string();
        s.redis.key_prefix = prefix.clone();
        s.redis.timeout_ms = args.timeout_ms;
        for m in &args.max_batch {
            let (l, n) = m
                .split_once('=')
                .with_context(|| format!("--max-batch {m}: expected label=N"))?;
            if l == label {
                s.engine.max_batch = n
                    .parse()
                    .with_context(|| format!("--max-batch {m}: N is a number"))?;
            }
        }
        let engine = Engine::new(&s).with_context(|| format!("--target {t}"))?;
        engine
            .ping()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let persistence = persistence(&engine).await?;
        eprintln!(
            "{label}: {url} ({persistence}; engine.max_batch {})",
            s.engine.max_batch
        );
        targets.push(Target {
            label: label.to_string(),
            url: url.to_string(),
            engine,
            persistence,
        });
    }
    eprintln!("key prefix {prefix}");

    let outcome = bench(&args, &targets).await;
    let mut cleaned = Ok(());
    for t in &targets {
        if let Err(e) = support::delete_prefix(&t.engine, &prefix).await {
            cleaned = Err(e.context(format!("cleaning {}", t.url)));
        }
    }
    let runs = outcome?;
    cleaned?;
    eprintln!("deleted the keys under {prefix}");
    print_tables(&args, &targets, &runs);
    Ok(())
}

/// The server's persistence settings, as it reports them.
async fn persistence(engine: &Engine) -> anyhow::Result<String> {
    let mut conn = engine.connection();
    let mut parts = Vec::new();
    for name in ["appendonly", "appendfsync", "save"] {
        let kv: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("CONFIG GET {name}"))?;
        let value = kv.get(1).cloned().unwrap_or_default();
        parts.push(format!("{name}={value:?}"));
    }
    Ok(parts.join(" "))
}

async fn bench(args: &Args, targets: &[Target]) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for k in 0..targets.len() {
            let t = &targets[(k + round - 1) % targets.len()];
            let run = run_once(args, t, round).await?;
            eprintln!(
                "round {round} {:<10} reserve {:>7.0}/s  confirm {:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms",
                run.label,
                run.reserves_per_s,
                run.confirms_per_s,
                ms(run.p50_us),
                ms(run.p99_us),
                ms(run.p999_us)
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

async fn run_once(args: &Args, t: &Target, round: usize) -> anyhow::Result<Run> {
    let engine = &t.engine;
    let n = args.holds;
    let sale_id = &support::sale_id(&format!("confirm-{}", support::short_id()))?;
    let def = support::sale_def(sale_id, n, "confirm durability benchmark");
    engine.create_sale(&def).await?;

    // Not timed: the holds to confirm.
    let started = Instant::now();
    let holds: Vec<_> = futures::stream::iter(0..n)
        .map(|i| support::hold_one(engine, sale_id, i))
        .buffer_unordered(args.reserve_concurrency)
        .try_collect()
        .await?;
    let reserves_per_s = n as f64 / started.elapsed().as_secs_f64();

    // Timed: every hold confirmed, `--concurrency` at a time.
    let started = Instant::now();
    let mut lat_us: Vec<u64> = futures::stream::iter(holds.iter())
        .map(|(rid, customer)| async move {
            let t0 = Instant::now();
            engine
                .confirm(&flashsale::engine::ConfirmRequest {
                    sale_id,
                    reservation_id: rid,
                    customer,
                    payment_ref: "pay",
                })
                .await
                .context("confirm")?;
            anyhow::Ok(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX))
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let secs = started.elapsed().as_secs_f64();

    let sale = engine.sale(sale_id).await?;
    ensure!(
        sale.stock.sold == n as i64 && sale.stock.held == 0,
        "after the run: sold {}, held {}, expected {n} and 0",
        sale.stock.sold,
        sale.stock.held
    );
    let keys = engine.keys(sale_id);
    let mut conn = engine.connection();
    let xlen: u64 = redis::cmd("XLEN")
        .arg(&keys.outbox)
        .query_async(&mut conn)
        .await
        .context("XLEN")?;
    ensure!(
        xlen == n as u64,
        "outbox holds {xlen} entries, expected {n}"
    );
    redis::cmd("DEL")
        .arg(&keys.all()[..])
        .query_async::<()>(&mut conn)
        .await
        .context("DEL of the sale's keys")?;
    // Let an everysec fsync of the deletes pass before the next run starts.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    lat_us.sort_unstable();
    let pct = |p: f64| -> u64 {
        let idx = ((lat_us.len() as f64) * p).ceil() as usize;
        lat_us[idx.saturating_sub(1).min(lat_us.len() - 1)]
    };
    Ok(Run {
        label: t.label.clone(),
        round,
        reserves_per_s,
        confirms_per_s: n as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: lat_us.last().copied().unwrap_or(0),
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn print_tables(args: &Args, targets: &[Target], runs: &[Run]) {
    println!();
    println!(
        "{} confirms per run (after {} reserves, not timed), concurrency {}, rounds {}",
        args.holds, args.holds, args.concurrency, args.rounds
    );
    println!();
    println!(
        "| round | target | confirms/s | p50 ms | p99 ms | p99.9 ms | max ms | reserves/s (untimed phase) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            r.round,
            r.label,
            r.confirms_per_s,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            ms(r.max_us),
            r.reserves_per_s
        );
    }
    let of = |label: &str, f: fn(&Run) -> f64| -> f64 {
        support::median(runs.iter().filter(|r| r.label == label).map(f).collect())
    };
    let base_rate = of(&targets[0].label, |r| r.confirms_per_s);
    let base_p99 = of(&targets[0].label, |r| ms(r.p99_us));
    println!();
    println!(
        "Median over rounds (ratios against `{}`):",
        targets[0].label
    );
    println!();
    println!("| target | server settings | confirms/s | min-max | x confirms/s | p50 ms | p99 ms | x p99 |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for t in targets {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.label == t.label)
            .map(|r| r.confirms_per_s)
            .collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let rate = of(&t.label, |r| r.confirms_per_s);
        let p99 = of(&t.label, |r| ms(r.p99_us));
        println!(
            "| {} | {} | {:.0} | {:.0}-{:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            t.label,
            t.persistence,
            rate,
            lo,
            hi,
            rate / base_rate,
            of(&t.label, |r| ms(r.p50_us)),
            p99,
            p99 / base_p99
        );
    }
}
