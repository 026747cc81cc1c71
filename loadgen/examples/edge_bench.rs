//! Reserve throughput alone and during a flood of public reads from other
//! addresses, in one run (`bench/edge.sh` starts the gateway; BENCHMARKS.md,
//! section E).
//!
//! Reserves come from 127.0.0.1 (many customers, one address: the gateway
//! under test lifts the per-address limits for it). The readers come from
//! 127.0.0.2 and up, each paced just below the public read limit, half
//! `GET /v1/sales` (a page of 100 of the registered sales) and half
//! `GET /v1/sales/{id}`. Phases alternate (alone, flood, alone, flood, ...)
//! so a machine that gets busier over the run does not favour one of them.

#[path = "support/mod.rs"]
mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flashsale::auth::Auth;
use futures::future::join_all;
use secrecy::SecretString;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:18095")]
    url: String,
    #[arg(long, default_value = flashsale::config::DEV_JWT_SECRET)]
    secret: String,
    /// Sales registered besides the one reserved (what the list shows).
    #[arg(long, default_value_t = 200)]
    sales: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of (alone, flood).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Reserves in flight at once (from 127.0.0.1).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Reading addresses (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 8)]
    readers: usize,
    /// Reads a second per address (keep it below limits.public_per_ip_per_second).
    #[arg(long, default_value_t = 90)]
    read_rate: u64,
    /// Distinct customers the reserves rotate through (per-customer limits).
    #[arg(long, default_value_t = 20_000)]
    customers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(None)?.block_on(run(args))
}

fn sale_body(id: &str) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc();
    json!({
        "id": id, "sku": "BENCH", "name": "edge bench", "price_cents": 100, "currency": "IDR",
        "stock": 1_000_000_000i64,
        "starts_at": flashsale::domain::rfc3339_ms(now - Duration::from_secs(60)),
        "ends_at": flashsale::domain::rfc3339_ms(now + Duration::from_secs(86_400)),
        "per_customer_limit": 1_000_000, "hold_seconds": 3600,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let auth = Auth::new(&SecretString::from(args.secret.clone()));
    let admin = auth.issue("bench-admin", Some("admin"), 7200)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .build()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let hot = format!("edge-{run_id}-hot");
    let mut ids = Vec::new();
    for i in 0..=args.sales {
        let id = if i == 0 {
            hot.clone()
        } else {
            format!("edge-{run_id}-{i:04}")
        };
        let res = http
            .post(format!("{}/v1/sales", args.url))
            .bearer_auth(&admin)
            .json(&sale_body(&id))
            .send()
            .await
            .context("create a sale")?;
        anyhow::ensure!(res.status().is_success(), "create: {}", res.status());
        ids.push(id);
    }
    eprintln!("{} sales registered", ids.len());
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..args.customers)
            .map(|i| auth.issue(&format!("edge-c{i}"), None, 7200))
            .collect::<Result<_, _>>()?,
    );
    let ids = Arc::new(ids);

    println!(
        "| round | phase | reserves/s | reserve p99 ms | reads/s | read 429s | other errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut alone = Vec::new();
    let mut flooded = Vec::new();
    for round in 1..=args.rounds {
        for flood in [false, true] {
            let m = phase(&args, &http, &hot, &ids, &tokens, flood).await;
            println!(
                "| {round} | {} | {:.0} | {:.1} | {:.0} | {} | {} |",
                if flood { "during read flood" } else { "alone" },
                m.reserves,
                m.p99_ms,
                m.reads,
                m.read_limited,
                m.errors
            );
            if flood {
                flooded.push(m.reserves);
            } else {
                alone.push(m.reserves);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, f) = (median(&mut alone), median(&mut flooded));
    println!();
    println!(
        "median reserves/s: alone {a:.0}, during the read flood {f:.0}: ratio {:.2} (target >= 0.80)",
        f / a
    );
    Ok(())
}

struct Measured {
    reserves: f64,
    p99_ms: f64,
    reads: f64,
    read_limited: u64,
    errors: u64,
}

async fn phase(
    args: &Args,
    http: &reqwest::Client,
    hot: &str,
    ids: &Arc<Vec<String>>,
    tokens: &Arc<Vec<String>>,
    flood: bool,
) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let reserved = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let url = format!("{}/v1/sales/{hot}/reservations", args.url);
    let reservers = (0..args.concurrency).map(|_| {
        let (http, url, tokens, stop, reserved, errors, next) = (
            http.clone(),
            url.clone(),
            tokens.clone(),
            stop.clone(),
            reserved.clone(),
            errors.clone(),
            next.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % tokens.len();
                let started = Instant::now();
                let res = http
                    .post(&url)
                    .bearer_auth(&tokens[i])
                    .json(&json!({"quantity": 1}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        reserved.fetch_add(1, Ordering::Relaxed);
                        latencies.push(started.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        })
    });
    let reservers: Vec<_> = reservers.collect();
    let readers: Vec<_> = if flood {
        (0..args.readers)
            .map(|r| {
                let from: IpAddr = format!("127.0.0.{}", 2 + r)
                    .parse()
                    .unwrap_or([127, 0, 0, 2].into());
                let client = reqwest::Client::builder()
                    .local_address(from)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap_or_else(|_| http.clone());
                let (base, ids, stop, reads, limited, errors) = (
                    args.url.clone(),
                    ids.clone(),
                    stop.clone(),
                    reads.clone(),
                    limited.clone(),
                    errors.clone(),
                );
                let every = Duration::from_secs_f64(1.0 / args.read_rate.max(1) as f64);
                tokio::spawn(async move {
                    // Paced: one read every `every`, on up to 4 connections.
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let mut n = r;
                    let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                            continue;
                        };
                        n += 1;
                        let path = if n % 2 == 0 {
                            "/v1/sales".to_string()
                        } else {
                            format!("/v1/sales/{}", ids[n % ids.len()])
                        };
                        let (client, base, reads, limited, errors) = (
                            client.clone(),
                            base.clone(),
                            reads.clone(),
                            limited.clone(),
                            errors.clone(),
                        );
                        tokio::spawn(async move {
                            match client.get(format!("{base}{path}")).send().await {
                                Ok(r) if r.status() == 200 => {
                                    let _ = r.bytes().await;
                                    reads.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(r) if r.status() == 429 => {
                                    limited.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            drop(permit);
                        });
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = join_all(reservers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect();
    let _ = join_all(readers).await;
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    Measured {
        reserves: reserved.load(Ordering::Relaxed) as f64 / elapsed,
        p99_ms: p99.as_secs_f64() * 1000.0,
        reads: reads.load(Ordering::Relaxed) as f64 / elapsed,
        read_limited: limited.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}
