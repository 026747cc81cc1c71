//! The command line: one clap enum of subcommands over the library.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(name = "flashsale", version, about = "Flash-sale reservation gateway")]
pub struct Cli {
    /// A TOML file layered over config/default.toml.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP gateway (and the background worker unless --no-worker).
    Serve {
        #[arg(long)]
        no_worker: bool,
    },
    /// Run only the background worker (expired-hold reaper, sale loader).
    Worker,
    /// Create the database if missing and apply migrations (idempotent).
    Migrate,
    /// Print a signed bearer token (HS256 JWT).
    Token {
        /// The customer id (`sub`), 1 to 64 printable characters.
        #[arg(long)]
        sub: String,
        /// `admin` for the admin endpoints.
        #[arg(long)]
        role: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Play a flash sale against a running gateway and check the invariants.
    Loadtest(crate::loadtest::Options),
}

/// Exit codes: 0 success, 1 a check failed, 2 bad configuration, bad usage
/// or an unreachable service for a one-shot command.
pub async fn run(cli: Cli) -> i32 {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    crate::telemetry::init(&settings);
    match cli.command {
        Command::Serve { no_worker } => serve(settings, !no_worker).await,
        Command::Worker => worker(settings).await,
        Command::Migrate => migrate(&settings).await,
        Command::Token { sub, role, ttl } => token(&settings, &sub, role.as_deref(), ttl),
        Command::Loadtest(opts) => crate::loadtest::run(&settings, opts).await,
    }
}

async fn serve(settings: Arc<Settings>, with_worker: bool) -> i32 {
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

async fn worker(settings: Arc<Settings>) -> i32 {
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

async fn migrate(settings: &Settings) -> i32 {
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

fn token(settings: &Settings, sub: &str, role: Option<&str>, ttl: u64) -> i32 {
    if !crate::domain::valid_customer_id(sub) {
        eprintln!("--sub must be 1 to 64 printable ASCII characters");
        return 2;
    }
    if role.is_some_and(|r| r != "admin") {
        eprintln!("--role takes only `admin`");
        return 2;
    }
    match Auth::new(&settings.auth.jwt_secret).issue(sub, role, ttl) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("cannot sign a token: {e}");
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

/// A URL without its password, for error lines.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        let (auth, host) = rest.split_once('@')?;
        let user = auth.split(':').next().unwrap_or("");
        Some(format!("{scheme}://{user}@{host}"))
    }) {
        Some(u) => u,
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
