//! A store's webhook receiver at its cheapest, for `bench/webhooks.sh`: every
//! POST is answered 204 without reading more than the request needs, and the
//! number received is printed on SIGTERM (or Ctrl-C), so the benchmark can
//! check that each delivery arrived.
//!
//! ```sh
//! cargo run --release --example webhook_receiver -- --addr 127.0.0.1:18140
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Answers 204 to every webhook delivery")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18140")]
    addr: std::net::SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    println!("received {}", received.load(Ordering::Relaxed));
    Ok(())
}
