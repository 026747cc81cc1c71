//! A baseline store behind the gateway's paths, for `bench/compare.sh`:
//!
//! ```sh
//! cargo run --release --example baseline_server -- --mode naive|naive-decrement|rowlock|conditional \
//!     --addr 127.0.0.1:18101 --database-url postgres://postgres@127.0.0.1:5432/flashsale_bench_baseline
//! ```
//!
//! then `flashsale-loadtest --url http://127.0.0.1:18101 --target-kind baseline
//! --database-url ...` plays a sale against it. The mechanisms are described
//! in `src/baseline.rs`. Stops on SIGTERM or Ctrl-C.

use std::time::Duration;

use clap::Parser;
use flashsale_loadgen::baseline;

#[derive(Debug, Parser)]
#[command(about = "A Postgres-only stock baseline speaking the gateway's reserve paths")]
struct Args {
    /// How the stock is taken.
    #[arg(long, value_enum)]
    mode: baseline::Mode,
    #[arg(long, default_value = "127.0.0.1:18101")]
    addr: std::net::SocketAddr,
    /// Created (with its tables) if missing.
    #[arg(long, default_value = baseline::DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Postgres connections.
    #[arg(long, default_value_t = 32)]
    pool: u32,
    /// Microseconds the naive modes spend between their read and their write
    /// (0: they only yield to the scheduler there).
    #[arg(long, default_value_t = 0)]
    naive_pause_us: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("baseline_server: {e:#}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = baseline::Config::new(args.mode, &args.database_url);
    config.pool_size = args.pool;
    config.naive_pause = Duration::from_micros(args.naive_pause_us);
    let state = baseline::connect(&config).await?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.addr))?;
    eprintln!(
        "baseline {} listening on {} ({}, {} connections)",
        args.mode.name(),
        listener.local_addr()?,
        baseline::redact(&args.database_url),
        config.pool_size
    );
    baseline::serve(listener, state, stopped()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn stopped() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
