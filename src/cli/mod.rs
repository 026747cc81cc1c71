//! The command line: one clap enum of subcommands over the library.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Settings;

mod reconcile;
mod sales;
mod serve;
mod token;
mod webhooks;

use reconcile::reconcile;
use sales::{sales_list, sales_load};
use serve::{migrate, serve, worker};
use token::token;
use webhooks::{webhooks_list, webhooks_replay};

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
    /// Run only the background worker: the reaper, the outbox flush, the
    /// sale loader, the archiver, the waiting rooms, the live reconcile.
    Worker,
    /// Create the database if missing and apply migrations (idempotent).
    Migrate,
    /// Print a signed bearer token (HS256 JWT with auth.jwt_secret, or
    /// signed with a private key given with --key).
    Token {
        /// The customer id (`sub`), 1 to 64 printable characters.
        #[arg(long)]
        sub: String,
        /// `admin` for the admin endpoints, `service` for the store's backend.
        #[arg(long, value_parser = ["admin", "service"])]
        role: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Sign with this PEM private key instead: RSA signs RS256, EC
        /// P-256 ES256, Ed25519 EdDSA (as the store's sign-in would).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The `kid` to put in the header (the key's id in the JWKS).
        #[arg(long, requires = "key")]
        kid: Option<String>,
    },
    /// Schedule sales from a file, or list them with their live stock.
    #[command(subcommand)]
    Sales(SalesCommand),
    /// Compare Redis and Postgres per sale; exit 0 consistent, 1 drift, 2 error.
    Reconcile {
        /// Only this sale.
        #[arg(long)]
        sale: Option<String>,
        /// Repair what can be repaired safely, then exit 0 if consistent.
        #[arg(long)]
        apply: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Restore the sale's Redis state from Postgres (needs --sale).
        #[arg(long, requires = "sale", conflicts_with = "apply")]
        rebuild: bool,
    },
    /// The store's webhook endpoints: list them, or deliver events again.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// One line per endpoint: id, status, pending and failed deliveries,
    /// types (`*`: every type), url.
    List,
    /// Deliver again the endpoint's events since TIME (with their original
    /// ids); prints `queued N`. Exit 2 on an unknown endpoint or a bad time.
    Replay {
        /// The endpoint's id (`webhooks list`).
        #[arg(long, value_name = "ID")]
        endpoint: String,
        /// RFC 3339, e.g. 2026-12-06T09:00:00Z.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// RFC 3339; absent: until now.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SalesCommand {
    /// Schedule the `[[sale]]` tables of a TOML file (idempotent by sale id).
    Load {
        file: PathBuf,
        /// Validate and show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// One line per sale with its live stock.
    List,
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
        Command::Token {
            sub,
            role,
            ttl,
            key,
            kid,
        } => token(
            &settings,
            &sub,
            role.as_deref(),
            ttl,
            key.as_deref().map(|k| (k, kid.as_deref())),
        ),
        Command::Sales(SalesCommand::Load { file, dry_run }) => {
            sales_load(&settings, &file, dry_run).await
        }
        Command::Sales(SalesCommand::List) => sales_list(&settings).await,
        Command::Reconcile {
            sale,
            apply,
            json,
            rebuild,
        } => reconcile(&settings, sale.as_deref(), apply, json, rebuild).await,
        Command::Webhooks(WebhooksCommand::List) => webhooks_list(&settings).await,
        Command::Webhooks(WebhooksCommand::Replay {
            endpoint,
            since,
            until,
        }) => webhooks_replay(&settings, &endpoint, &since, until.as_deref()).await,
    }
}

/// The handles a one-shot command needs, after checking both services
/// answer: an unreachable one is exit 2 with one line naming its URL.
async fn one_shot(settings: &Settings) -> Result<(crate::engine::Engine, sqlx::PgPool), i32> {
    let (engine, db) = crate::connect(settings).map_err(|e| {
        eprintln!("{e:#}");
        2
    })?;
    if let Err(e) = engine.ping().await {
        eprintln!(
            "cannot reach `redis.url` {}: {e}",
            redact(&settings.redis.url)
        );
        return Err(2);
    }
    if let Err(e) = crate::store::ping(&db).await {
        eprintln!(
            "cannot reach `database.url` {}: {e}",
            redact(settings.database.url.expose_secret())
        );
        return Err(2);
    }
    Ok((engine, db))
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
