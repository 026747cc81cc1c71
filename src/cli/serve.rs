//! The long-running commands (`serve`, `worker`) and `migrate`.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::redact;
use crate::config::Settings;

pub(super) async fn serve(settings: Arc<Settings>, with_worker: bool) -> i32 {
    let listener = match tokio::net::TcpListener::bind(settings.http.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on `http.addr` {}: {e}", settings.http.addr);
            return 2;
        }
    };
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    match crate::serve(settings, listener, with_worker, stop).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e:#}");
            2
        }
    }
}

pub(super) async fn worker(settings: Arc<Settings>) -> i32 {
    let (engine, db) = match crate::connect(&settings) {
        Ok(handles) => handles,
        Err(e) => {
            eprintln!("{e:#}");
            return 2;
        }
    };
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    crate::metrics::handle();
    tracing::info!("worker started");
    crate::worker::run(&settings, engine, db, stop).await;
    0
}

pub(super) async fn migrate(settings: &Settings) -> i32 {
    let url = settings.database.url.expose_secret();
    match crate::store::migrate(url).await {
        Ok(()) => {
            println!("migrations applied");
            0
        }
        Err(e) => {
            eprintln!("migrate failed for `database.url` {}: {e}", redact(url));
            2
        }
    }
}

/// SIGTERM or Ctrl-C cancels `stop`.
async fn stop_on_signal(stop: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    stop.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining requests");
    stop.cancel();
}
