//! What verifying the store's tokens costs (issue 17; BENCHMARKS.md,
//! section H): HS256 against RS256 and ES256, in one run.
//!
//! 1. Verification alone: `Auth::verify` over distinct tokens of each kind,
//!    cache off (microseconds per token).
//! 2. Reserves through two real gateways in this process (the same Redis),
//!    one verifying every token and one with the verified-token cache, each
//!    buyer sending its own token with every reserve. Phases alternate
//!    (kind x cache, `--rounds` times) so a machine that gets busier over the
//!    run does not favour one of them.
//!
//! Keys are made with the `openssl` CLI in a temporary directory. Needs
//! Redis on 127.0.0.1:6379 (`--redis`); the sale is created through the
//! engine, so Postgres is not involved. Run:
//!
//!   cargo run --release -p flashsale-loadgen --example auth_bench

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flashsale::auth::Auth;
use flashsale::config::Settings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Distinct buyers (tokens) per kind; each reserves again and again.
    #[arg(long, default_value_t = 2000)]
    buyers: usize,
    /// Seconds per reserve phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the six phases.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Reserves in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

const SECRET: &str = "auth-bench-secret-of-some-length";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hs256,
    Rs256,
    Es256,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hs256 => "HS256",
            Kind::Rs256 => "RS256",
            Kind::Es256 => "ES256",
        }
    }
}

const KINDS: [Kind; 3] = [Kind::Hs256, Kind::Rs256, Kind::Es256];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(None)?.block_on(run(args))
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// (private PEM, public PEM path) of a fresh key.
fn keypair(dir: &std::path::Path, name: &str, gen: &[&str]) -> anyhow::Result<(Vec<u8>, PathBuf)> {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let p = private.to_str().context("path")?;
    let mut a = vec!["genpkey"];
    a.extend_from_slice(gen);
    a.extend_from_slice(&["-out", p]);
    openssl(&a)?;
    openssl(&[
        "pkey",
        "-in",
        p,
        "-pubout",
        "-out",
        public.to_str().context("path")?,
    ])?;
    Ok((std::fs::read(&private)?, public))
}

fn tokens(kind: Kind, key: &EncodingKey, n: usize, tag: &str) -> anyhow::Result<Vec<String>> {
    let alg = match kind {
        Kind::Hs256 => Algorithm::HS256,
        Kind::Rs256 => Algorithm::RS256,
        Kind::Es256 => Algorithm::ES256,
    };
    (0..n)
        .map(|i| {
            flashsale::auth::sign(&Header::new(alg), &format!("{tag}{i}"), None, 7200, key)
                .map_err(Into::into)
        })
        .collect()
}

struct Gateway {
    base: String,
    stop: CancellationToken,
}

async fn gateway(settings: Settings) -> anyhow::Result<Gateway> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(flashsale::serve(
        Arc::new(settings),
        listener,
        false,
        stop.clone(),
    ));
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return Ok(Gateway { base, stop });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("gateway did not start")
}

/// CPU seconds this process (the client and both gateways) has used: on a
/// machine shared with others, CPU per reserve moves far less than
/// reserves per second do.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line, in clock ticks (100 a second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Reserves per second for `seconds`, buyers taking turns with their
/// tokens, and the CPU microseconds per reserve.
async fn phase(
    http: &reqwest::Client,
    url: &str,
    tokens: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: u64,
) -> (f64, f64, u64) {
    let cpu_before = cpu_seconds();
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, tokens) = (http.clone(), url.to_string(), tokens.clone());
        let (ok, bad, next) = (ok.clone(), bad.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % tokens.len();
                let res = http
                    .post(&url)
                    .bearer_auth(&tokens[i])
                    .json(&serde_json::json!({"quantity": 1}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 201 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = started.elapsed().as_secs_f64();
    let done = ok.load(Ordering::Relaxed).max(1) as f64;
    let cpu_us = (cpu_seconds() - cpu_before) * 1e6 / done;
    (done / took, cpu_us, bad.load(Ordering::Relaxed))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fs-auth-bench-{}", support::short_id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    let (rsa_private, rsa_public) = keypair(
        dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )?;
    let (ec_private, ec_public) = keypair(
        dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )?;
    let keys = [
        (Kind::Hs256, EncodingKey::from_secret(SECRET.as_bytes())),
        (Kind::Rs256, EncodingKey::from_rsa_pem(&rsa_private)?),
        (Kind::Es256, EncodingKey::from_ec_pem(&ec_private)?),
    ];

    let prefix = format!("authbench{}", support::short_id());
    let mut settings = Settings::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    settings.redis.url = args.redis.clone();
    settings.redis.key_prefix = prefix.clone();
    settings.limits.enabled = false;
    settings.http.max_connections_per_ip = 100_000;
    settings.auth.jwt_secret = Some(SecretString::from(SECRET));
    settings.auth.jwt_public_keys = vec![
        rsa_public.display().to_string(),
        ec_public.display().to_string(),
    ];
    settings.auth.token_cache_entries = 0;
    settings.log.level = "warn".into();

    println!(
        "# auth bench {}, {} cores, load {}",
        time::OffsetDateTime::now_utc(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    // 1. Verification alone, every token distinct, no cache.
    let auth = Auth::from_settings(&settings.auth).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut per_kind = Vec::new();
    println!(
        "\n## verification alone (cache off), {} tokens each",
        args.buyers
    );
    println!("| kind | µs per verify | vs HS256 |");
    println!("|---|---:|---:|");
    let mut hs_us = 0.0;
    for (kind, key) in &keys {
        let toks = tokens(*kind, key, args.buyers, kind.name())?;
        let started = Instant::now();
        for t in &toks {
            auth.verify(t)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", kind.name()))?;
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / toks.len() as f64;
        if *kind == Kind::Hs256 {
            hs_us = us;
        }
        println!("| {} | {us:.1} | {:.1}x |", kind.name(), us / hs_us);
        per_kind.push((*kind, Arc::new(toks)));
    }

    // 2. Reserves through a gateway without and one with the cache.
    let engine = flashsale::engine::Engine::new(&settings)?;
    let mut def = support::sale_def(
        &support::sale_id(&format!("auth-{}", support::short_id()))?,
        100_000_000,
        "auth bench",
    );
    def.per_customer_limit = 1_000_000;
    engine.create_sale(&def).await?;
    let plain = gateway(settings.clone()).await?;
    let mut cached_settings = settings.clone();
    cached_settings.auth.token_cache_entries = 100_000;
    let cached = gateway(cached_settings).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut rates: Vec<(Kind, bool, Vec<f64>, Vec<f64>)> = Vec::new();
    for (kind, _) in &per_kind {
        for cache in [false, true] {
            rates.push((*kind, cache, Vec::new(), Vec::new()));
        }
    }
    let mut refused = 0;
    for round in 0..args.rounds {
        for (kind, toks) in &per_kind {
            for cache in [false, true] {
                let g = if cache { &cached } else { &plain };
                let url = format!("{}/v1/sales/{}/reservations", g.base, def.id);
                let (rps, cpu_us, bad) =
                    phase(&http, &url, toks, args.concurrency, args.seconds).await;
                refused += bad;
                eprintln!(
                    "round {round} {} cache {}: {rps:.0} reserves/s, {cpu_us:.0} µs CPU each",
                    kind.name(),
                    if cache { "on" } else { "off" }
                );
                if let Some(r) = rates.iter_mut().find(|r| r.0 == *kind && r.1 == cache) {
                    r.2.push(rps);
                    r.3.push(cpu_us);
                }
            }
        }
    }
    let median_of = |kind: Kind, cache: bool| {
        rates
            .iter()
            .find(|r| r.0 == kind && r.1 == cache)
            .map_or((0.0, 0.0), |r| {
                (support::median(r.2.clone()), support::median(r.3.clone()))
            })
    };
    let (base, base_cpu) = median_of(Kind::Hs256, false);
    println!(
        "\n## reserves/s, median of {} phases of {} s, {} in flight, {} buyers per kind",
        args.rounds, args.seconds, args.concurrency, args.buyers
    );
    println!("(CPU: microseconds of this process, client and gateway, per reserve)");
    println!("| kind | cache off | vs HS256 | CPU µs | cache on | vs HS256 (off) | CPU µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for kind in KINDS {
        let ((off, off_cpu), (on, on_cpu)) = (median_of(kind, false), median_of(kind, true));
        println!(
            "| {} | {off:.0} | {:.2} | {off_cpu:.0} ({:.2}) | {on:.0} | {:.2} | {on_cpu:.0} ({:.2}) |",
            kind.name(),
            off / base,
            off_cpu / base_cpu,
            on / base,
            on_cpu / base_cpu
        );
    }
    println!("\nrequests not answered 201: {refused}");
    plain.stop.cancel();
    cached.stop.cancel();
    support::delete_prefix(&engine, &prefix).await?;
    Ok(())
}
