//! Outbox flush throughput: how fast a backlog of confirmed orders drains
//! from Redis into Postgres, beside a baseline of one INSERT per order.
//!
//! Case `flush(B)`: a backlog of `--orders` real confirmed orders is built
//! through the engine (the real reserve and confirm scripts, quantity 1, one
//! customer per order, `--build-concurrency` calls in flight), so the sale's
//! outbox stream holds one entry per order exactly as production writes
//! them. Then the real worker code (`flush::Flusher::flush_sale`,
//! batch size B) is called until it reports nothing left; that loop is timed.
//! Afterwards `orders` holds exactly `--orders` rows of the sale, the outbox
//! and the dead letters are empty, and the sale's `sold` counter matches.
//!
//! `flush(B) xK` runs K `Flusher`s (K consumers of the group, as K
//! workers would be) on the same backlog at once.
//!
//! `insert only(B)` (with `--insert-only`): the same number of orders,
//! synthesised, written by `store::insert_orders` in batches of B in
//! sequence, with no Redis involved: the Postgres share of a flush.
//!
//! Baselines, same run, same table: `--baseline-orders` orders of the same
//! shape (synthesised, for a second sale row so nothing conflicts) written
//! one at a time, one round trip and one commit each:
//!
//! - `one-by-one`: `store::insert_orders` with a slice of one order, in
//!   sequence: the flush's own statement without the batching;
//! - `one-by-one VALUES`: a plain `INSERT ... VALUES ($1..$9)`, in sequence
//!   (whether the one-row UNNEST costs anything extra);
//! - `one-by-one xC`: `insert_orders` of one order, C inserters at once.
//!
//! Every case starts from an empty `orders` table (TRUNCATE; the database is
//! private to the benchmark) and the cases rotate between rounds. Redis keys
//! are under a random `fbench-<hex>` prefix and are deleted at the end.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/flush_bench --orders 100000 --batch 500,1000,5000 --rounds 2
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use time::OffsetDateTime;

use flashsale::domain::{from_ms, new_reservation_id, to_ms, SaleDef, SaleId};
use flashsale::engine::Engine;
use flashsale::store::{self, NewOrder};
use flashsale::usecases::flush::Flusher;

#[derive(Debug, Parser)]
#[command(about = "Outbox flush throughput vs one INSERT per order")]
struct Args {
    /// Confirmed orders in each flushed backlog.
    #[arg(long, default_value_t = 100_000)]
    orders: usize,
    /// Flush batch sizes (comma separated); each is a case of its own.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    batch: Vec<usize>,
    /// Concurrent flushers (consumers of the group) per flush case (comma
    /// separated); each count is a case of its own, with every batch size.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    consumers: Vec<usize>,
    /// Also time `store::insert_orders` alone in batches of each `--batch`
    /// (`--orders` synthesised orders, no Redis).
    #[arg(long)]
    insert_only: bool,
    /// Orders written by each one-by-one baseline (a sample: the rate is
    /// what is compared).
    #[arg(long, default_value_t = 10_000)]
    baseline_orders: usize,
    /// Inserters of the concurrent one-by-one baseline (0: skip it).
    #[arg(long, default_value_t = 16)]
    baseline_concurrency: usize,
    /// Skip the plain `INSERT ... VALUES` baseline.
    #[arg(long)]
    no_values: bool,
    /// Reserve+confirm calls in flight while building a backlog.
    #[arg(long, default_value_t = 256)]
    build_concurrency: usize,
    /// Runs of every case.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/flashsale_bench_flush"
    )]
    database_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Flush { batch: usize, consumers: usize },
    InsertOnly(usize),
    OneByOne,
    Values,
    Concurrent(usize),
}

impl Case {
    fn name(&self) -> String {
        match self {
            Case::Flush {
                batch,
                consumers: 1,
            } => format!("flush(batch {batch})"),
            Case::Flush { batch, consumers } => format!("flush(batch {batch}) x{consumers}"),
            Case::InsertOnly(b) => format!("insert only(batch {b})"),
            Case::OneByOne => "one-by-one".into(),
            Case::Values => "one-by-one VALUES".into(),
            Case::Concurrent(c) => format!("one-by-one x{c}"),
        }
    }
}

struct Run {
    case: Case,
    round: usize,
    orders: usize,
    secs: f64,
    /// Backlog build rate (reserve+confirm pairs per second), flush cases.
    build_rate: Option<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.secs
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    support::runtime(args.threads)?.block_on(run_and_clean(args))
}

async fn run_and_clean(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.orders > 0 && args.baseline_orders > 0 && args.rounds > 0,
        "--orders, --baseline-orders and --rounds must be at least 1"
    );
    ensure!(
        args.batch.iter().all(|&b| b > 0)
            && args.consumers.iter().all(|&c| c > 0)
            && args.build_concurrency > 0,
        "--batch, --consumers and --build-concurrency must be at least 1"
    );
    let prefix = format!(
        "fbench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut s = flashsale::config::Settings::load(None)?;
    s.redis.url = args.redis_url.clone();
    s.redis.key_prefix = prefix.clone();
    s.redis.timeout_ms = 5000;
    s.database.url = secrecy::SecretString::from(args.database_url.clone());
    s.database.max_connections = (args.baseline_concurrency as u32).max(4) + 2;
    s.database.timeout_ms = 10_000;

    store::migrate(&args.database_url)
        .await
        .with_context(|| format!("creating and migrating {}", args.database_url))?;
    let (engine, db) = flashsale::connect(&s)?;
    engine.ping().await.context("redis")?;
    eprintln!("key prefix {prefix}, database {}", args.database_url);

    let outcome = bench(&args, &engine, &db).await;
    let cleaned = support::delete_prefix(&engine, &prefix).await;
    db.close().await;
    let runs = outcome?;
    cleaned?;
    eprintln!("deleted the keys under {prefix}");
    print_tables(&args, &runs);
    Ok(())
}

async fn bench(args: &Args, engine: &Engine, db: &PgPool) -> anyhow::Result<Vec<Run>> {
    let settings: Vec<(String, String)> = {
        let mut v = Vec::new();
        for name in [
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "shared_buffers",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(db)
                .await
                .with_context(|| format!("SHOW {name}"))?;
            v.push((name.to_string(), value));
        }
        v
    };
    eprintln!(
        "postgres: {}",
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut cases = Vec::new();
    for &consumers in &args.consumers {
        for &batch in &args.batch {
            cases.push(Case::Flush { batch, consumers });
        }
    }
    if args.insert_only {
        cases.extend(args.batch.iter().map(|&b| Case::InsertOnly(b)));
    }
    cases.push(Case::OneByOne);
    if !args.no_values {
        cases.push(Case::Values);
    }
    if args.baseline_concurrency > 0 {
        cases.push(Case::Concurrent(args.baseline_concurrency));
    }

    // The baseline's orders belong to a sale of their own.
    let base_sale = support::sale_def(
        &support::sale_id(&format!("base-{}", support::short_id()))?,
        args.baseline_orders,
        "outbox flush benchmark",
    );
    store::insert_sale(db, &base_sale).await?;

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for k in 0..cases.len() {
            let case = cases[(k + round - 1) % cases.len()];
            sqlx::query("TRUNCATE orders")
                .execute(db)
                .await
                .context("TRUNCATE orders")?;
            let run = match case {
                Case::Flush { batch, consumers } => {
                    flush_case(args, engine, db, batch, consumers, round).await?
                }
                Case::InsertOnly(batch) => {
                    insert_only_case(args, db, &base_sale, batch, round).await?
                }
                _ => baseline_case(args, db, &base_sale, case, round).await?,
            };
            eprintln!(
                "round {round} {:<20} {:>7} orders {:>8.2} s {:>9.0} orders/s{}",
                case.name(),
                run.orders,
                run.secs,
                run.rate(),
                run.build_rate
                    .map(|r| format!("  (backlog built at {r:.0} confirms/s)"))
                    .unwrap_or_default()
            );
            runs.push(run);
        }
    }
    sqlx::query("TRUNCATE orders").execute(db).await?;
    Ok(runs)
}

/// Builds a backlog of `args.orders` confirmed orders, then times the flush.
async fn flush_case(
    args: &Args,
    engine: &Engine,
    db: &PgPool,
    batch: usize,
    consumers: usize,
    round: usize,
) -> anyhow::Result<Run> {
    let n = args.orders;
    let sale_id = support::sale_id(&format!("flush-{}", support::short_id()))?;
    let def = support::sale_def(&sale_id, n, "outbox flush benchmark");
    // Postgres first (orders reference sales), then Redis, as the API does.
    store::insert_sale(db, &def).await?;
    engine.create_sale(&def).await?;

    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let sale_id = &sale_id;
            async move {
                let (rid, customer) = support::hold_one(engine, sale_id, i).await?;
                engine
                    .confirm(&flashsale::engine::ConfirmRequest {
                        sale_id,
                        reservation_id: &rid,
                        customer: &customer,
                        payment_ref: "pay",
                    })
                    .await
                    .context("confirm")?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.build_concurrency)
        .try_collect::<()>()
        .await?;
    let build_rate = n as f64 / started.elapsed().as_secs_f64();

    // One handle per consumer: each has its own consumer name in the group.
    let outboxes: Vec<Flusher> = (0..consumers)
        .map(|_| {
            Flusher::new(
                engine.clone(),
                db.clone(),
                batch,
                Duration::from_secs(5),
                tokio_util::sync::CancellationToken::new(),
            )
        })
        .collect();
    let outbox = &outboxes[0];
    let (pending, _) = outbox.backlog(&sale_id).await?;
    ensure!(
        pending == n as u64,
        "outbox holds {pending} entries, expected {n}"
    );

    // Timed: what the worker's loop does, until a pass finds nothing (every
    // consumer at once when there are several).
    let started = Instant::now();
    let per_consumer =
        futures::future::try_join_all(outboxes.iter().map(|o| drain(o, &sale_id))).await?;
    let secs = started.elapsed().as_secs_f64();
    let flushed: usize = per_consumer.iter().map(|d| d.0).sum();
    let dead: usize = per_consumer.iter().map(|d| d.1).sum();

    ensure!(
        flushed == n && dead == 0,
        "flushed {flushed}, dead {dead}, expected {n} and 0"
    );
    ensure_rows(db, &sale_id, n).await?;
    let (pending, dead_letters) = outbox.backlog(&sale_id).await?;
    ensure!(
        pending == 0 && dead_letters == 0,
        "outbox XLEN {pending}, dead letters {dead_letters} after the flush"
    );
    let sale = engine.sale(&sale_id).await?;
    ensure!(
        sale.stock.sold == n as i64,
        "sold {} != {n}",
        sale.stock.sold
    );
    delete_sale(engine, &sale_id).await?;
    Ok(Run {
        case: Case::Flush { batch, consumers },
        round,
        orders: n,
        secs,
        build_rate: Some(build_rate),
    })
}

/// Calls `flush_sale` until a call finds nothing; returns (orders, dead).
async fn drain(outbox: &Flusher, sale_id: &SaleId) -> anyhow::Result<(usize, usize)> {
    let (mut flushed, mut dead) = (0, 0);
    loop {
        let done = outbox.flush_sale(sale_id, false).await?;
        flushed += done.orders;
        dead += done.dead;
        if done.orders == 0 && done.dead == 0 {
            return Ok((flushed, dead));
        }
    }
}

/// The Postgres share of a flush: `insert_orders` in batches, no Redis.
async fn insert_only_case(
    args: &Args,
    db: &PgPool,
    sale: &SaleDef,
    batch: usize,
    round: usize,
) -> anyhow::Result<Run> {
    let orders = synth_orders(sale, args.orders);
    let started = Instant::now();
    for chunk in orders.chunks(batch) {
        store::insert_orders(db, chunk).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    ensure_rows(db, &sale.id, orders.len()).await?;
    Ok(Run {
        case: Case::InsertOnly(batch),
        round,
        orders: orders.len(),
        secs,
        build_rate: None,
    })
}

async fn baseline_case(
    args: &Args,
    db: &PgPool,
    sale: &SaleDef,
    case: Case,
    round: usize,
) -> anyhow::Result<Run> {
    let orders = synth_orders(sale, args.baseline_orders);
    let started = Instant::now();
    match case {
        Case::OneByOne => {
            for o in &orders {
                store::insert_orders(db, std::slice::from_ref(o)).await?;
            }
        }
        Case::Values => {
            for o in &orders {
                insert_values(db, o).await?;
            }
        }
        Case::Concurrent(c) => {
            futures::stream::iter(orders.iter())
                .map(|o| async move { store::insert_orders(db, std::slice::from_ref(o)).await })
                .buffer_unordered(c)
                .try_collect::<Vec<u64>>()
                .await?;
        }
        Case::Flush { .. } | Case::InsertOnly(_) => bail!("not a baseline"),
    }
    let secs = started.elapsed().as_secs_f64();
    ensure_rows(db, &sale.id, orders.len()).await?;
    Ok(Run {
        case,
        round,
        orders: orders.len(),
        secs,
        build_rate: None,
    })
}

/// The naive one-row statement, for comparison with a one-row UNNEST.
async fn insert_values(db: &PgPool, o: &NewOrder) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO orders (order_id, reservation_id, sale_id, customer_id, quantity,
                             price_cents, currency, payment_ref, confirmed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (reservation_id) DO NOTHING",
    )
    .bind(o.order_id)
    .bind(&o.reservation_id)
    .bind(&o.sale_id)
    .bind(&o.customer_id)
    .bind(o.quantity)
    .bind(o.price_cents)
    .bind(&o.currency)
    .bind(&o.payment_ref)
    .bind(o.confirmed_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Orders shaped as confirm.lua writes them: v7 order ids, reservation ids
/// `<sale>.<32 hex>`, one customer each, millisecond timestamps.
fn synth_orders(sale: &SaleDef, n: usize) -> Vec<NewOrder> {
    let now = to_ms(OffsetDateTime::now_utc());
    (0..n)
        .map(|i| NewOrder {
            order_id: uuid::Uuid::now_v7(),
            reservation_id: new_reservation_id(&sale.id),
            sale_id: sale.id.to_string(),
            customer_id: format!("c{i}"),
            quantity: 1,
            price_cents: sale.price_cents,
            currency: sale.currency.clone(),
            payment_ref: "pay".into(),
            confirmed_at: from_ms(now + i as i64),
            expires_at: Some(from_ms(now + 600_000)),
            confirmed_by: None,
        })
        .collect()
}

/// Frees the memory of a flushed sale before the next case.
async fn delete_sale(engine: &Engine, sale_id: &str) -> anyhow::Result<()> {
    let keys = engine.keys(sale_id);
    let mut conn = engine.connection();
    redis::cmd("DEL")
        .arg(&keys.all()[..])
        .query_async::<()>(&mut conn)
        .await
        .context("DEL of the sale's keys")
}

fn print_tables(args: &Args, runs: &[Run]) {
    let base = support::median(
        runs.iter()
            .filter(|r| r.case == Case::OneByOne)
            .map(Run::rate)
            .collect(),
    );
    let n = args.orders;
    println!();
    println!(
        "backlog {n} orders per flush case; baselines write {} orders (a sample) and the \
         seconds for {n} are projected from their rate",
        args.baseline_orders
    );
    println!();
    println!(
        "| round | case | orders | seconds | orders/s | x one-by-one | s for {n} | backlog built/s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1}{} | {} |",
            r.round,
            r.case.name(),
            r.orders,
            r.secs,
            r.rate(),
            r.rate() / base,
            n as f64 / r.rate(),
            if r.orders == n { "" } else { " (proj.)" },
            r.build_rate
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!();
    println!("Median over rounds:");
    println!();
    println!("| case | orders | seconds | orders/s | x one-by-one | s for {n} |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut seen: Vec<Case> = Vec::new();
    for r in runs {
        if seen.contains(&r.case) {
            continue;
        }
        seen.push(r.case);
        let of: Vec<&Run> = runs.iter().filter(|x| x.case == r.case).collect();
        let rate = support::median(of.iter().map(|x| x.rate()).collect());
        let secs = support::median(of.iter().map(|x| x.secs).collect());
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1}{} |",
            r.case.name(),
            r.orders,
            secs,
            rate,
            rate / base,
            n as f64 / rate,
            if r.orders == n { "" } else { " (proj.)" },
        );
    }
    println!();
    let flush_cases = seen
        .iter()
        .filter(|c| matches!(c, Case::Flush { .. }))
        .copied();
    for case in flush_cases {
        let of: Vec<&Run> = runs.iter().filter(|x| x.case == case).collect();
        let rate = support::median(of.iter().map(|x| x.rate()).collect());
        let worst = of.iter().map(|x| x.secs).fold(0.0, f64::max);
        let ok = rate / base >= 20.0 && worst < 10.0 && n >= 100_000;
        println!(
            "target (>= 20x one-by-one, {n} drained < 10 s in every round) for {}: {} \
             ({:.1}x, slowest drain {worst:.2} s)",
            case.name(),
            if ok { "met" } else { "NOT met" },
            rate / base
        );
    }
}

/// Every order of the run is one row in `orders`, no more, no fewer.
async fn ensure_rows(db: &PgPool, sale_id: &str, expected: usize) -> anyhow::Result<()> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE sale_id = $1")
        .bind(sale_id)
        .fetch_one(db)
        .await?;
    ensure!(
        rows == expected as i64,
        "orders holds {rows} rows, expected {expected}"
    );
    Ok(())
}
