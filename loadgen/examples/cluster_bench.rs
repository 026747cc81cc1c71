//! Reserves and confirms per second through the engine on one Redis and on
//! a Redis Cluster, with and without `redis.confirm_replicas`, in one run;
//! how the calls spread over the primaries (INFO commandstats per node) and
//! what each primary spends per reserve (INFO cpu per node). BENCHMARKS.md,
//! section J; bench/cluster.sh starts the servers and runs it.
//!
//! For each target and round: `--sales` fresh sales, `--holds` holds spread
//! round-robin over them (one customer each, quantity 1; timed: the reserve
//! phase), then every hold confirmed (timed: the confirm phase), with
//! `--concurrency` calls in flight. Each primary's `used_cpu_sys +
//! used_cpu_user` and `cmdstat_evalsha` calls are read before and after
//! each phase, straight from the node (not through the cluster client).
//! Afterwards the sales must show every hold sold.
//!
//! ```text
//! target/release/examples/cluster_bench --sales 12 --holds 24000 --rounds 2 \
//!   --target one=redis://127.0.0.1:7400 \
//!   --target cluster=redis://127.0.0.1:31001,redis://127.0.0.1:31002 \
//!   --target cluster+wait=redis://127.0.0.1:31001,redis://127.0.0.1:31002 \
//!   --replicas cluster+wait=1
//! ```
//! A target with one URL is one Redis (`redis.url`); with several, they are
//! a cluster's seed nodes (`redis.cluster_nodes`). The servers should be
//! private to the run: the node figures are whole-server deltas.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use flashsale::engine::{ConfirmRequest, Engine};

#[derive(Debug, Parser)]
#[command(about = "Reserves and confirms per second on one Redis and on a Redis Cluster")]
struct Args {
    /// `label=redis://host:port[,redis://host:port...]`, repeatable; ratios
    /// are against the first.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// `label=N`: `redis.confirm_replicas` of that target (default 0).
    #[arg(long = "replicas", value_name = "LABEL=N")]
    replicas: Vec<String>,
    /// Sales the holds spread over (their hash tags spread them over a
    /// cluster's primaries).
    #[arg(long, default_value_t = 12)]
    sales: usize,
    /// Holds reserved, then confirmed, per run.
    #[arg(long, default_value_t = 24_000)]
    holds: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Runs of every target; the first target rotates between rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

struct Target {
    label: String,
    engine: Engine,
    replicas: u32,
    /// `host:port` of each primary, and a plain connection to it.
    primaries: Vec<(String, redis::aio::MultiplexedConnection)>,
}

/// One node's counters at one moment.
#[derive(Clone, Copy, Default)]
struct NodeStats {
    cpu_s: f64,
    evalsha: u64,
}

struct Phase {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
    /// Per primary: (CPU seconds, EVALSHA calls, holds of its sales).
    nodes: BTreeMap<String, (f64, u64, usize)>,
}

struct Run {
    label: String,
    round: usize,
    reserve: Phase,
    confirm: Phase,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(args.threads)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.holds > 0 && args.sales > 0 && args.concurrency > 0 && args.rounds > 0,
        "--holds, --sales, --concurrency and --rounds must be at least 1"
    );
    let prefix = format!("clbench-{}", support::short_id());
    let mut targets = Vec::new();
    for t in &args.targets {
        let (label, urls) = t
            .split_once('=')
            .with_context(|| format!("--target {t}: expected label=redis://host:port,..."))?;
        let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
        let mut s = flashsale::config::Settings::load(None)?;
        s.redis.key_prefix = prefix.clone();
        s.redis.timeout_ms = 5000;
        if urls.len() == 1 {
            s.redis.url = urls[0].clone();
        } else {
            s.redis.cluster_nodes = urls.clone();
        }
        for r in &args.replicas {
            let (l, n) = r
                .split_once('=')
                .with_context(|| format!("--replicas {r}: expected label=N"))?;
            if l == label {
                s.redis.confirm_replicas = n
                    .parse()
                    .with_context(|| format!("--replicas {r}: N is a number"))?;
            }
        }
        let engine = Engine::new(&s).with_context(|| format!("--target {t}"))?;
        engine
            .ping()
            .await
            .with_context(|| format!("cannot reach {t}"))?;
        let mut primaries = Vec::new();
        for addr in engine.connection().primaries().await? {
            // The one server of a standalone target reports itself as "redis".
            let url = if addr == "redis" {
                urls[0].clone()
            } else {
                format!("redis://{addr}")
            };
            let conn = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            primaries.push((url.trim_start_matches("redis://").to_string(), conn));
        }
        eprintln!(
            "{label}: {} primaries ({}), confirm_replicas {}",
            primaries.len(),
            primaries
                .iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            s.redis.confirm_replicas
        );
        targets.push(Target {
            label: label.to_string(),
            engine,
            replicas: s.redis.confirm_replicas,
            primaries,
        });
    }

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        let n = targets.len();
        for k in 0..n {
            let t = &mut targets[(k + round - 1) % n];
            let run = run_once(&args, t, round).await?;
            eprintln!(
                "round {round} {:<14} reserve {:>7.0}/s  confirm {:>7.0}/s",
                run.label, run.reserve.per_s, run.confirm.per_s
            );
            runs.push(run);
        }
    }
    print_tables(&args, &targets, &runs);
    Ok(())
}

async fn node_stats(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<NodeStats> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(conn)
        .await
        .context("INFO")?;
    let mut s = NodeStats::default();
    for line in info.lines() {
        let line = line.trim();
        if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            s.cpu_s += v.parse::<f64>().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("cmdstat_evalsha:calls=") {
            s.evalsha = rest
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(s)
}

async fn snapshot(t: &mut Target) -> anyhow::Result<Vec<NodeStats>> {
    let mut out = Vec::new();
    for (_, conn) in &mut t.primaries {
        out.push(node_stats(conn).await?);
    }
    Ok(out)
}

/// The primary that holds `key`: the one whose plain connection finds it
/// (another node answers MOVED).
async fn owner(t: &mut Target, key: &str) -> anyhow::Result<String> {
    for (addr, conn) in &mut t.primaries {
        let found: redis::RedisResult<i64> = redis::cmd("EXISTS").arg(key).query_async(conn).await;
        if matches!(found, Ok(1)) {
            return Ok(addr.clone());
        }
    }
    anyhow::bail!("no primary holds {key}")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[idx.saturating_sub(1).min(sorted.len() - 1)]
}

/// Timed calls of `f(i)` for every i < n, `c` at a time: (calls/s, p50, p99).
async fn timed<F, Fut>(n: usize, c: usize, f: F) -> anyhow::Result<(f64, u64, u64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut lat: Vec<u64> = futures::stream::iter(0..n)
        .map(|i| {
            let call = f(i);
            async move {
                let t0 = Instant::now();
                call.await?;
                anyhow::Ok(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX))
            }
        })
        .buffer_unordered(c)
        .try_collect()
        .await?;
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok((per_s, percentile(&lat, 0.50), percentile(&lat, 0.99)))
}

fn phase(
    t: &Target,
    (per_s, p50_us, p99_us): (f64, u64, u64),
    before: &[NodeStats],
    after: &[NodeStats],
    holds_on: &BTreeMap<String, usize>,
) -> Phase {
    let nodes = t
        .primaries
        .iter()
        .zip(before.iter().zip(after))
        .map(|((addr, _), (b, a))| {
            (
                addr.clone(),
                (
                    a.cpu_s - b.cpu_s,
                    a.evalsha.saturating_sub(b.evalsha),
                    holds_on.get(addr).copied().unwrap_or(0),
                ),
            )
        })
        .collect();
    Phase {
        per_s,
        p50_us,
        p99_us,
        nodes,
    }
}

async fn run_once(args: &Args, t: &mut Target, round: usize) -> anyhow::Result<Run> {
    let run_id = support::short_id();
    let per_sale = args.holds.div_ceil(args.sales);
    let mut sales = Vec::new();
    let mut holds_on: BTreeMap<String, usize> = BTreeMap::new();
    for s in 0..args.sales {
        let def = support::sale_def(
            &support::sale_id(&format!("cl-{run_id}-{s}"))?,
            per_sale,
            "cluster benchmark",
        );
        t.engine.create_sale(&def).await?;
        let node = owner(t, &t.engine.keys(&def.id).sale).await?;
        // Hold i goes to sale i % sales.
        let holds = (0..args.holds).filter(|i| i % args.sales == s).count();
        *holds_on.entry(node).or_default() += holds;
        sales.push(def.id.clone());
    }
    let engine = t.engine.clone();
    let (engine, sales) = (&engine, &sales);

    let before = snapshot(t).await?;
    let held = std::sync::Mutex::new(vec![None; args.holds]);
    let held_ref = &held;
    let reserve = timed(args.holds, args.concurrency, |i| async move {
        let h = support::hold_one(engine, &sales[i % sales.len()], i).await?;
        held_ref.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = Some(h);
        Ok(())
    })
    .await?;
    let mid = snapshot(t).await?;
    let held = held.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let held = &held;
    let confirm = timed(args.holds, args.concurrency, |i| async move {
        let Some((rid, customer)) = &held[i] else {
            anyhow::bail!("hold {i} was not made");
        };
        engine
            .confirm(&ConfirmRequest {
                sale_id: &sales[i % sales.len()],
                reservation_id: rid,
                customer,
                payment_ref: "pay",
            })
            .await
            .context("confirm")?;
        Ok(())
    })
    .await?;
    let after = snapshot(t).await?;

    let mut sold = 0;
    for s in sales {
        sold += engine.sale(s).await?.stock.sold;
    }
    ensure!(
        sold == args.holds as i64,
        "sold {sold}, expected {}",
        args.holds
    );
    Ok(Run {
        label: t.label.clone(),
        round,
        reserve: phase(t, reserve, &before, &mid, &holds_on),
        confirm: phase(t, confirm, &mid, &after, &holds_on),
    })
}

fn print_tables(args: &Args, targets: &[Target], runs: &[Run]) {
    let median = |label: &str, f: fn(&Run) -> f64| -> f64 {
        support::median(runs.iter().filter(|r| r.label == label).map(f).collect())
    };
    let base = &targets[0].label;
    let (base_r, base_c) = (
        median(base, |r| r.reserve.per_s),
        median(base, |r| r.confirm.per_s),
    );
    println!();
    println!(
        "{} holds over {} sales, reserved then confirmed through the engine, {} in flight, {} rounds",
        args.holds, args.sales, args.concurrency, args.rounds
    );
    println!();
    println!("| round | target | confirm_replicas | reserves/s | p50 / p99 ms | confirms/s | p50 / p99 ms |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for r in runs {
        let replicas = targets
            .iter()
            .find(|t| t.label == r.label)
            .map_or(0, |t| t.replicas);
        println!(
            "| {} | {} | {replicas} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} |",
            r.round,
            r.label,
            r.reserve.per_s,
            r.reserve.p50_us as f64 / 1000.0,
            r.reserve.p99_us as f64 / 1000.0,
            r.confirm.per_s,
            r.confirm.p50_us as f64 / 1000.0,
            r.confirm.p99_us as f64 / 1000.0,
        );
    }
    println!();
    println!("Median over rounds (ratios against `{base}`):");
    println!();
    println!("| target | reserves/s | x | confirms/s | x |");
    println!("|---|---:|---:|---:|---:|");
    for t in targets {
        let (r, c) = (
            median(&t.label, |r| r.reserve.per_s),
            median(&t.label, |r| r.confirm.per_s),
        );
        println!(
            "| {} | {r:.0} | {:.2} | {c:.0} | {:.2} |",
            t.label,
            r / base_r,
            c / base_c
        );
    }
    println!();
    println!("Per primary, summed over rounds: holds of its sales, EVALSHA calls and Redis CPU (INFO cpu sys+user) in each phase; µs of CPU per reserve and per confirm, and what one core per primary would serve of this phase alone:");
    println!();
    println!("| target | primary | holds | reserve: EVALSHA / holds per call / CPU s / µs per reserve / reserves/s per core | confirm: EVALSHA / CPU s / µs per confirm |");
    println!("|---|---|---:|---|---|");
    for t in targets {
        let mut sum: BTreeMap<&str, [f64; 5]> = BTreeMap::new();
        for r in runs.iter().filter(|r| r.label == t.label) {
            for (addr, (cpu, calls, holds)) in &r.reserve.nodes {
                let e = sum.entry(addr).or_default();
                e[0] += *holds as f64;
                e[1] += *calls as f64;
                e[2] += cpu;
            }
            for (addr, (cpu, calls, _)) in &r.confirm.nodes {
                let e = sum.entry(addr).or_default();
                e[3] += *calls as f64;
                e[4] += cpu;
            }
        }
        for (addr, [holds, r_calls, r_cpu, c_calls, c_cpu]) in sum {
            let us = |cpu: f64| {
                if holds > 0.0 {
                    cpu * 1e6 / holds
                } else {
                    0.0
                }
            };
            let per_core = if us(r_cpu) > 0.0 {
                1e6 / us(r_cpu)
            } else {
                0.0
            };
            println!(
                "| {} | {addr} | {holds:.0} | {r_calls:.0} / {:.2} / {r_cpu:.2} / {:.1} / {per_core:.0} | {c_calls:.0} / {c_cpu:.2} / {:.1} |",
                t.label,
                holds / r_calls.max(1.0),
                us(r_cpu),
                us(c_cpu)
            );
        }
    }
}
