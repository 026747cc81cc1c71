//! The soak (`bench/soak.sh` starts the gateway; BENCHMARKS.md, section F):
//! mixed buyers against one gateway for a while, with nobody scraping
//! `/metrics`, and the gateway's RSS, open files and threads read from
//! `/proc/<pid>` once a minute.
//!
//! The crowd: buyers reserve and then confirm, release or walk away
//! (abandoned holds expire after 5 s); watchers open a sale's stream, read
//! it for a few seconds and close it; idlers open connections that send
//! nothing (half-open) or one request and then nothing (kept alive), which
//! the gateway closes after its header timeout, and open them again.
//! Buyers come from 127.0.0.1, watchers and idlers from 127.0.0.2 and up.
//!
//! Prints one row a minute and at the end whether any figure grew past
//! minute 1 by more than 10 %, and every 5xx other than 503 (exit 1 if any).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flashsale::auth::Auth;
use rand::Rng;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:18096")]
    url: String,
    /// The gateway's process id (its /proc is read).
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    #[arg(long, default_value = flashsale::config::DEV_JWT_SECRET)]
    secret: String,
    #[arg(long, default_value_t = 32)]
    buyers: usize,
    #[arg(long, default_value_t = 20)]
    watchers: usize,
    #[arg(long, default_value_t = 100)]
    idlers: usize,
    #[arg(long, default_value_t = 50_000)]
    customers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(None)?.block_on(run(args))
}

#[derive(Default)]
struct Counts {
    statuses: Mutex<BTreeMap<u16, u64>>,
    transport_errors: AtomicU64,
}

impl Counts {
    fn status(&self, s: u16) {
        if let Ok(mut m) = self.statuses.lock() {
            *m.entry(s).or_default() += 1;
        }
    }
}

/// (RSS in kB, open files, threads) of the gateway.
fn sample(pid: u32) -> anyhow::Result<(u64, usize, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((field("VmRSS:"), fds, field("Threads:") as usize))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let auth = Auth::new(&SecretString::from(args.secret.clone()));
    let admin = auth.issue("soak-admin", Some("admin"), 86_400)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let now = time::OffsetDateTime::now_utc();
    let mut sales = Vec::new();
    for i in 0..4 {
        let id = format!("soak-{run_id}-{i}");
        let res = http
            .post(format!("{}/v1/sales", args.url))
            .bearer_auth(&admin)
            .json(&json!({
                "id": id, "sku": "SOAK", "name": "soak", "price_cents": 100, "currency": "IDR",
                "stock": 1_000_000_000i64,
                "starts_at": flashsale::domain::rfc3339_ms(now - Duration::from_secs(60)),
                "ends_at": flashsale::domain::rfc3339_ms(now + Duration::from_secs(86_400)),
                "per_customer_limit": 1_000_000, "hold_seconds": 5,
            }))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "create: {}", res.status());
        sales.push(id);
    }
    let sales = Arc::new(sales);
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..args.customers)
            .map(|i| auth.issue(&format!("soak-c{i}"), None, 86_400))
            .collect::<Result<_, _>>()?,
    );
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let to: SocketAddr = args
        .url
        .trim_start_matches("http://")
        .parse()
        .context("--url must be http://ip:port")?;
    let mut tasks = Vec::new();

    let stride = args.buyers;
    for b in 0..args.buyers {
        let (http, base, sales, tokens, counts, stop) = (
            http.clone(),
            args.url.clone(),
            sales.clone(),
            tokens.clone(),
            counts.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = b;
            while !stop.load(Ordering::Relaxed) {
                // Each buyer walks its own customers, so no customer is
                // hammered by several buyers at once (per-customer limits).
                n += stride;
                let token = &tokens[n % tokens.len()];
                let sale = &sales[n % sales.len()];
                let res = http
                    .post(format!("{base}/v1/sales/{sale}/reservations"))
                    .bearer_auth(token)
                    .json(&json!({"quantity": 1}))
                    .send()
                    .await;
                let Ok(res) = res else {
                    counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                counts.status(res.status().as_u16());
                let Ok(body) = res.json::<serde_json::Value>().await else {
                    continue;
                };
                let Some(rid) = body["id"].as_str() else {
                    continue;
                };
                let roll: u8 = rand::thread_rng().gen_range(0..10);
                let next = match roll {
                    0..=3 => Some(
                        http.post(format!("{base}/v1/reservations/{rid}/confirm"))
                            .bearer_auth(token)
                            .json(&json!({"payment_ref": "soak"})),
                    ),
                    4..=6 => Some(
                        http.delete(format!("{base}/v1/reservations/{rid}"))
                            .bearer_auth(token),
                    ),
                    // Walks away: the hold expires after 5 s.
                    _ => None,
                };
                if let Some(req) = next {
                    match req.send().await {
                        Ok(r) => {
                            counts.status(r.status().as_u16());
                            let _ = r.bytes().await;
                        }
                        Err(_) => {
                            counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }

    for w in 0..args.watchers {
        let (base, sales, counts, stop) = (
            args.url.clone(),
            sales.clone(),
            counts.clone(),
            stop.clone(),
        );
        let from: IpAddr = [127, 0, 0, 2 + (w % 8) as u8].into();
        tasks.push(tokio::spawn(async move {
            let Ok(client) = reqwest::Client::builder().local_address(from).build() else {
                return;
            };
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sale = &sales[n % sales.len()];
                let watch_for = Duration::from_millis(rand::thread_rng().gen_range(1000..8000));
                match client
                    .get(format!("{base}/v1/sales/{sale}/stream"))
                    .send()
                    .await
                {
                    Ok(mut res) => {
                        counts.status(res.status().as_u16());
                        let until = tokio::time::Instant::now() + watch_for;
                        while let Ok(Ok(Some(_))) =
                            tokio::time::timeout_at(until, res.chunk()).await
                        {
                        }
                    }
                    Err(_) => {
                        counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }

    for i in 0..args.idlers {
        let stop = stop.clone();
        let from: IpAddr = [127, 0, 0, 10 + (i % 8) as u8].into();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind(SocketAddr::new(from, 0)).is_err() {
                    return;
                }
                let Ok(mut s) = socket.connect(to).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                // Half of them half-open, half kept alive after one request.
                let req: &[u8] = if i % 2 == 0 {
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                } else {
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                };
                let _ = s.write_all(req).await;
                // Until the gateway closes it (its header timeout).
                let mut buf = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
        }));
    }

    println!("| minute | RSS MB | open files | threads | requests so far |");
    println!("|---|---|---|---|---|");
    let started = Instant::now();
    let mut rows = Vec::new();
    for minute in 1..=args.minutes {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + Duration::from_secs(60 * minute),
        ))
        .await;
        let (rss, fds, threads) = sample(args.pid)?;
        let total: u64 = counts
            .statuses
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0);
        println!(
            "| {minute} | {:.1} | {fds} | {threads} | {total} |",
            rss as f64 / 1024.0
        );
        rows.push((rss, fds, threads));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let statuses = counts
        .statuses
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    println!();
    println!(
        "answers by status: {statuses:?}; transport errors: {}",
        counts.transport_errors.load(Ordering::Relaxed)
    );
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let within = |a: f64, b: f64| b <= a * 1.10;
    let flat = within(first.0 as f64, last.0 as f64)
        && within(first.1 as f64, last.1 as f64)
        && within(first.2 as f64, last.2 as f64);
    let bad_5xx: u64 = statuses
        .iter()
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .map(|(_, n)| n)
        .sum();
    println!(
        "last minute vs minute 1: RSS {:+.1} %, open files {:+.1} %, threads {:+.1} %: {}",
        (last.0 as f64 / first.0 as f64 - 1.0) * 100.0,
        (last.1 as f64 / first.1.max(1) as f64 - 1.0) * 100.0,
        (last.2 as f64 / first.2.max(1) as f64 - 1.0) * 100.0,
        if flat { "flat (within 10 %)" } else { "GREW" }
    );
    println!("5xx other than 503: {bad_5xx}");
    if !flat || bad_5xx > 0 {
        std::process::exit(1);
    }
    Ok(())
}
