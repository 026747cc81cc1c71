//! Pool or multiplexed connection for the reserve path? Measures it.
//!
//! Runs the engine's real reserve script (prelude + `lua/reserve.lua`, one
//! EVALSHA per call, quantity 1, a distinct customer per call, no
//! Idempotency-Key) against a private sale created by the real
//! `create_sale` script, at a fixed concurrency, over several connection
//! modes:
//!
//! - `pool(P)`: a deadpool-redis pool of P connections; every call checks a
//!   connection out (deadpool-redis recycles it with an `UNWATCH`+`PING`
//!   round trip on each checkout) and returns it;
//! - `mux(1)`: one `flashsale::engine::Conn` (multiplexed), cloned per
//!   task: what the engine does;
//! - `mux(N)`: N connection managers, tasks spread round-robin over them;
//! - `bare(P)` (unless `--no-bare`): a plain pool of P multiplexed
//!   connections with exclusive checkout but no health check on checkout,
//!   to tell deadpool's recycle round trip from the cost of exclusivity.
//!
//! Modes alternate within each round (and the first mode rotates between
//! rounds) so machine noise falls on all of them. The sale is deleted and
//! created again before every measured run, so each run starts from the same
//! empty hashes. Every key is under a random `bench-<uuid>` prefix and is
//! deleted at the end.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/redis_conn --requests 200000 --concurrency 64 --rounds 3
//! ```

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use flashsale::domain::{from_ms, new_reservation_id, to_ms, SaleDef, SaleId};
use flashsale::engine::SaleKeys;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{Script, Value};

const PRELUDE: &str = include_str!("../../lua/prelude.lua");
const SALE_ID: &str = "bench";
const STOCK: i64 = 100_000_000;
const PER_CUSTOMER_LIMIT: u32 = 1_000_000;
const HOLD_SECONDS: u32 = 600;
/// As the engine: `redis.timeout_ms` and `engine.idempotency_ttl_seconds`.
const TIMEOUT: Duration = Duration::from_millis(1000);
const IDEMPOTENCY_TTL: u64 = 86_400;

#[derive(Debug, Parser)]
#[command(about = "Reserve EVALSHA throughput and latency: deadpool pool vs multiplexed")]
struct Args {
    /// Reserve calls per measured run.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Concurrent tokio tasks issuing calls.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Size of the deadpool-redis pool.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// Measured runs of every mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Extra multiplexed modes: how many connection managers, round-robin
    /// (comma separated; `mux(1)` always runs; `--mux 1` adds none).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    mux: Vec<usize>,
    /// Unmeasured calls per mode before the first round.
    #[arg(long, default_value_t = 10_000)]
    warmup: usize,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the `bare(P)` mode (a pool without deadpool's recycle PING).
    #[arg(long)]
    no_bare: bool,
}

/// How one mode's tasks reach Redis.
#[derive(Clone)]
enum Handle {
    Pool(deadpool_redis::Pool),
    Bare(Arc<BarePool>),
    Mux(Vec<ConnectionManager>),
}

/// P connections, one task at a time on each, no check on checkout.
struct BarePool {
    permits: tokio::sync::Semaphore,
    conns: std::sync::Mutex<Vec<MultiplexedConnection>>,
}

/// A checked-out connection; goes back to the pool when dropped, also when
/// the call is cancelled by the timeout.
struct Lease<'a> {
    pool: &'a BarePool,
    conn: Option<MultiplexedConnection>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl BarePool {
    async fn get(&self) -> anyhow::Result<Lease<'_>> {
        let permit = self.permits.acquire().await?;
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .context("bare pool empty")?;
        Ok(Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
        }
    }
}

struct Mode {
    name: String,
    handle: Handle,
}

/// What the tasks of one run share.
struct Shared {
    reserve: Script,
    keys: SaleKeys,
    next: AtomicUsize,
    total: usize,
}

struct TaskResult {
    latencies_us: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

struct RunStats {
    mode: String,
    round: usize,
    rps: f64,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    max_us: u32,
    errors: usize,
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(args.threads)?.block_on(run_and_clean(args))
}

async fn run_and_clean(args: Args) -> anyhow::Result<()> {
    if args.requests == 0 || args.concurrency == 0 || args.pool_size == 0 || args.rounds == 0 {
        bail!("--requests, --concurrency, --pool-size and --rounds must be at least 1");
    }
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let keys = SaleKeys::new(&prefix, SALE_ID);
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to {}", args.redis_url))?;
    eprintln!("key prefix {prefix}");
    let outcome = bench(&args, &client, &mut admin, &keys).await;
    // Always clean up, even after a failed run.
    let cleaned = delete_sale(&mut admin, &keys).await;
    outcome?;
    cleaned?;
    eprintln!("deleted the keys under {prefix}");
    Ok(())
}

async fn delete_sale(
    admin: &mut redis::aio::MultiplexedConnection,
    keys: &SaleKeys,
) -> anyhow::Result<()> {
    redis::cmd("DEL")
        .arg(&keys.all()[..])
        .query_async::<()>(admin)
        .await
        .context("DEL of the sale's keys")
}

/// Deletes the sale and creates it again with the real create_sale script.
async fn fresh_sale(
    admin: &mut redis::aio::MultiplexedConnection,
    create: &Script,
    keys: &SaleKeys,
) -> anyhow::Result<()> {
    delete_sale(admin, keys).await?;
    let now = from_ms(to_ms(time::OffsetDateTime::now_utc()));
    let def = SaleDef {
        id: SaleId::parse(SALE_ID).context("SALE_ID is a sale id")?,
        sku: "BENCH-1".into(),
        name: "connection benchmark".into(),
        price_cents: 100,
        currency: "IDR".into(),
        stock: STOCK,
        starts_at: now - time::Duration::minutes(1),
        ends_at: now + time::Duration::days(1),
        per_customer_limit: PER_CUSTOMER_LIMIT,
        hold_seconds: HOLD_SECONDS,
        queue: None,
    };
    // ARGV order as in Engine::create_sale.
    let reply: Value = create
        .key(&keys.sale)
        .arg(serde_json::to_string(&def)?)
        .arg(def.stock)
        .arg(to_ms(def.starts_at))
        .arg(to_ms(def.ends_at))
        .arg(def.per_customer_limit)
        .arg(i64::from(def.hold_seconds) * 1000)
        .arg(def.price_cents)
        .arg(&def.currency)
        .invoke_async(admin)
        .await
        .context("create_sale")?;
    match outcome(&reply).as_deref() {
        Some("created") => Ok(()),
        other => bail!("create_sale answered {other:?}"),
    }
}

fn outcome(reply: &Value) -> Option<String> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

async fn bench(
    args: &Args,
    client: &redis::Client,
    admin: &mut redis::aio::MultiplexedConnection,
    keys: &SaleKeys,
) -> anyhow::Result<()> {
    let reserve = with_prelude(include_str!("../../lua/reserve.lua"));
    let create = with_prelude(include_str!("../../lua/create_sale.lua"));
    reserve
        .prepare_invoke()
        .load_async(admin)
        .await
        .context("SCRIPT LOAD reserve")?;

    let modes = connect_modes(args, client).await?;
    eprintln!(
        "{} requests x {} rounds per mode, concurrency {}, modes: {}",
        args.requests,
        args.rounds,
        args.concurrency,
        modes
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    if args.warmup > 0 {
        for mode in &modes {
            fresh_sale(admin, &create, keys).await?;
            let (_, r) = run_once(args, &reserve, keys, mode, args.warmup).await?;
            if r.errors > 0 {
                bail!(
                    "warm-up of {}: {} errors, first: {:?}",
                    mode.name,
                    r.errors,
                    r.first_error
                );
            }
        }
    }

    let mut stats = Vec::new();
    for round in 1..=args.rounds {
        for k in 0..modes.len() {
            let mode = &modes[(k + round - 1) % modes.len()];
            fresh_sale(admin, &create, keys).await?;
            let (secs, r) = run_once(args, &reserve, keys, mode, args.requests).await?;
            let ok = args.requests - r.errors;
            check_counters(admin, keys, ok).await?;
            let s = summarize(&mode.name, round, secs, r);
            eprintln!(
                "round {round} {:<8} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                s.mode,
                s.rps,
                ms(s.p50_us),
                ms(s.p99_us),
                s.errors
            );
            stats.push(s);
        }
    }
    print_tables(args, &modes, &stats);
    let errors: usize = stats.iter().map(|s| s.errors).sum();
    if errors > 0 {
        bail!("{errors} calls failed");
    }
    Ok(())
}

async fn connect_modes(args: &Args, client: &redis::Client) -> anyhow::Result<Vec<Mode>> {
    let mut cfg = deadpool_redis::Config::from_url(args.redis_url.as_str());
    cfg.pool = Some(deadpool_redis::PoolConfig::new(args.pool_size));
    let pool = cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    // Open all P connections now, so that no measured call pays a connect.
    let held = futures::future::try_join_all((0..args.pool_size).map(|_| pool.get()))
        .await
        .context("filling the pool")?;
    drop(held);

    let mut modes = vec![Mode {
        name: format!("pool({})", args.pool_size),
        handle: Handle::Pool(pool),
    }];
    if !args.no_bare {
        let mut conns = Vec::with_capacity(args.pool_size);
        for _ in 0..args.pool_size {
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .context("bare pool connection")?,
            );
        }
        modes.push(Mode {
            name: format!("bare({})", args.pool_size),
            handle: Handle::Bare(Arc::new(BarePool {
                permits: tokio::sync::Semaphore::new(args.pool_size),
                conns: std::sync::Mutex::new(conns),
            })),
        });
    }
    let mut counts = vec![1];
    counts.extend(args.mux.iter().copied().filter(|&n| n > 1));
    for n in counts {
        let mut managers = Vec::with_capacity(n);
        for _ in 0..n {
            // As Engine::new configures its manager.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            managers.push(
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .context("connection manager")?,
            );
        }
        modes.push(Mode {
            name: format!("mux({n})"),
            handle: Handle::Mux(managers),
        });
    }
    Ok(modes)
}

/// `total` calls at `--concurrency`; returns the wall time and the merged
/// task results.
async fn run_once(
    args: &Args,
    reserve: &Script,
    keys: &SaleKeys,
    mode: &Mode,
    total: usize,
) -> anyhow::Result<(f64, TaskResult)> {
    let shared = Arc::new(Shared {
        reserve: reserve.clone(),
        keys: keys.clone(),
        next: AtomicUsize::new(0),
        total,
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| tokio::spawn(task(shared.clone(), mode.handle.clone(), t)))
        .collect();
    let mut merged = TaskResult {
        latencies_us: Vec::with_capacity(total),
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        let r = t.await.context("a task panicked")?;
        merged.latencies_us.extend(r.latencies_us);
        merged.errors += r.errors;
        if merged.first_error.is_none() {
            merged.first_error = r.first_error;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = &merged.first_error {
        eprintln!("{}: {} errors, first: {e}", mode.name, merged.errors);
    }
    Ok((secs, merged))
}

async fn task(shared: Arc<Shared>, handle: Handle, index: usize) -> TaskResult {
    let mut r = TaskResult {
        latencies_us: Vec::with_capacity(shared.total / 8 + 16),
        errors: 0,
        first_error: None,
    };
    // A task keeps its multiplexed handle; a pool task checks out per call.
    let mut mux = match &handle {
        Handle::Mux(managers) => Some(managers[index % managers.len()].clone()),
        Handle::Pool(_) | Handle::Bare(_) => None,
    };
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.total {
            break;
        }
        let t0 = Instant::now();
        let call = async {
            match (&handle, mux.as_mut()) {
                (_, Some(conn)) => reserve_once(&shared, conn, i).await,
                (Handle::Pool(pool), None) => {
                    let mut conn = pool.get().await.context("pool checkout")?;
                    reserve_once(&shared, &mut conn, i).await
                }
                (Handle::Bare(pool), None) => {
                    let mut lease = pool.get().await?;
                    let conn = lease.conn.as_mut().context("lease without connection")?;
                    reserve_once(&shared, conn, i).await
                }
                (Handle::Mux(_), None) => unreachable!("mux tasks hold a handle"),
            }
        };
        // As Engine::bounded: every call gives up after redis.timeout_ms.
        let result = match tokio::time::timeout(TIMEOUT, call).await {
            Ok(res) => res,
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {} ms",
                TIMEOUT.as_millis()
            )),
        };
        r.latencies_us
            .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
        if let Err(e) = result {
            r.errors += 1;
            r.first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
    r
}

/// One reserve exactly as Engine::reserve sends it without an
/// Idempotency-Key.
async fn reserve_once<C: ConnectionLike>(
    shared: &Shared,
    conn: &mut C,
    i: usize,
) -> anyhow::Result<()> {
    let k = &shared.keys;
    let customer = format!("c{i}");
    let reply: Value = shared
        .reserve
        .key(&k.sale)
        .key(&k.reservations)
        .key(&k.customers)
        .key(&k.due)
        .key(k.idempotency(&customer, ""))
        .arg(new_reservation_id(SALE_ID))
        .arg(&customer)
        .arg(1u32)
        .arg("")
        .arg(IDEMPOTENCY_TTL)
        .invoke_async(conn)
        .await?;
    match outcome(&reply).as_deref() {
        Some("held") => Ok(()),
        other => bail!("reserve answered {other:?}"),
    }
}

/// The script's own invariant, checked after a run: every successful call
/// holds one unit.
async fn check_counters(
    admin: &mut redis::aio::MultiplexedConnection,
    keys: &SaleKeys,
    ok: usize,
) -> anyhow::Result<()> {
    let (available, held): (i64, i64) = redis::cmd("HMGET")
        .arg(&keys.sale)
        .arg("available")
        .arg("held")
        .query_async(admin)
        .await
        .context("HMGET counters")?;
    if held != ok as i64 || available + held != STOCK {
        bail!("counters off: available {available}, held {held}, successful calls {ok}");
    }
    Ok(())
}

fn summarize(mode: &str, round: usize, secs: f64, r: TaskResult) -> RunStats {
    let mut lat = r.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let idx = ((lat.len() as f64) * p).ceil() as usize;
        lat[idx.saturating_sub(1).min(lat.len() - 1)]
    };
    RunStats {
        mode: mode.to_string(),
        round,
        rps: lat.len() as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: lat.last().copied().unwrap_or(0),
        errors: r.errors,
    }
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn print_tables(args: &Args, modes: &[Mode], stats: &[RunStats]) {
    println!();
    println!(
        "requests {} per run, concurrency {}, pool size {}, rounds {}",
        args.requests, args.concurrency, args.pool_size, args.rounds
    );
    println!();
    println!("| round | mode | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for s in stats {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            s.round,
            s.mode,
            s.rps,
            ms(s.p50_us),
            ms(s.p99_us),
            ms(s.p999_us),
            ms(s.max_us),
            s.errors
        );
    }
    println!();
    println!("Median over rounds:");
    println!();
    println!("| mode | req/s | req/s min-max | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in modes {
        let of: Vec<&RunStats> = stats.iter().filter(|s| s.mode == m.name).collect();
        let col = |f: fn(&RunStats) -> f64| support::median(of.iter().map(|s| f(s)).collect());
        let lo = of.iter().map(|s| s.rps).fold(f64::INFINITY, f64::min);
        let hi = of.iter().map(|s| s.rps).fold(0.0, f64::max);
        println!(
            "| {} | {:.0} | {:.0}-{:.0} | {:.2} | {:.2} | {:.2} |",
            m.name,
            col(|s| s.rps),
            lo,
            hi,
            col(|s| ms(s.p50_us)),
            col(|s| ms(s.p99_us)),
            col(|s| ms(s.p999_us)),
        );
    }
}
