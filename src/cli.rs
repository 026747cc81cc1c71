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

async fn sales_load(settings: &Settings, file: &std::path::Path, dry_run: bool) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return 2;
        }
    };
    let defs = match crate::schedule::parse_file(&text) {
        Ok(d) => d,
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!("nothing loaded: {} problem(s)", problems.len());
            return 1;
        }
    };
    let (engine, db) = match one_shot(settings).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    match crate::schedule::load(&engine, &db, &defs, dry_run).await {
        Ok(plan) => {
            for (id, what) in &plan {
                let what = if dry_run {
                    format!("would be {what}")
                } else {
                    what.to_string()
                };
                println!("{id}: {what}");
            }
            let created = plan.iter().filter(|(_, w)| *w == "created").count();
            println!(
                "{} sale(s): {created} {}, {} unchanged",
                plan.len(),
                if dry_run { "to create" } else { "created" },
                plan.len() - created
            );
            0
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!("nothing loaded: {} problem(s)", problems.len());
            1
        }
    }
}

async fn sales_list(settings: &Settings) -> i32 {
    let (engine, db) = match one_shot(settings).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    let defs = match crate::store::sales(&db).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    println!(
        "{:<24} {:<10} {:>9} {:>7} {:>7} {:>7}  {:<20} {:<20} name",
        "sale", "status", "available", "held", "sold", "total", "starts_at", "ends_at"
    );
    for def in defs {
        let line = match engine.sale(&def.id).await {
            Ok(s) => format!(
                "{:<24} {:<10} {:>9} {:>7} {:>7} {:>7}  {:<20} {:<20} {}",
                s.id,
                serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                s.stock.available,
                s.stock.held,
                s.stock.sold,
                s.stock.total,
                crate::domain::rfc3339_ms(s.starts_at)
                    .get(..19)
                    .unwrap_or(""),
                crate::domain::rfc3339_ms(s.ends_at).get(..19).unwrap_or(""),
                s.name
            ),
            Err(crate::engine::EngineError::Refused(_)) => {
                match crate::archive::sale(&db, &def.id).await {
                    Ok(Some(s)) => format!(
                        "{:<24} {:<10} {:>9} {:>7} {:>7} {:>7}  (archived: final figures from Postgres)",
                        s.id, "archived", s.stock.available, s.stock.held, s.stock.sold, s.stock.total
                    ),
                    _ => format!(
                        "{:<24} {:<10} (not in Redis: see `flashsale reconcile`)",
                        def.id, "missing"
                    ),
                }
            }
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        };
        println!("{line}");
    }
    0
}

async fn reconcile(
    settings: &Settings,
    only: Option<&str>,
    apply: bool,
    json: bool,
    rebuild: bool,
) -> i32 {
    use crate::reconcile as rc;
    let (engine, db) = match one_shot(settings).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    let outbox = crate::flush::Outbox::new(
        engine.clone(),
        db.clone(),
        settings.worker.flush_batch,
        std::time::Duration::from_millis(settings.worker.claim_idle_ms),
        CancellationToken::new(),
    )
    .with_consumer("reconcile");
    let now = std::time::Duration::ZERO;
    let run = async {
        let mut reports = Vec::new();
        for def in rc::sales(&db, only).await? {
            let report = if rebuild {
                let stock = rc::rebuild(&engine, &db, &outbox, &def).await?;
                let mut r = rc::inspect(&engine, &db, &def, now).await?;
                r.repairs.push(format!(
                    "rebuilt from Postgres: total {} sold {} available {} held 0",
                    stock.total, stock.sold, stock.available
                ));
                r
            } else {
                let report = rc::inspect(&engine, &db, &def, now).await?;
                if apply && !report.drift.is_empty() {
                    rc::apply(&engine, &db, &outbox, &def, report).await?
                } else {
                    report
                }
            };
            // Only a repair reads the outbox; it leaves no consumer behind.
            if rebuild || apply {
                outbox.leave(&def.id).await?;
            }
            report.export();
            reports.push(report);
        }
        Ok::<_, rc::ReconcileError>(reports)
    };
    match run.await {
        Ok(reports) => {
            if json {
                match serde_json::to_string_pretty(&serde_json::json!({ "sales": reports })) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("{e}");
                        return 2;
                    }
                }
            } else {
                print!("{}", rc::render(&reports));
            }
            if reports.iter().all(|r| r.drift.is_empty()) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("reconcile: {e}");
            2
        }
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

/// `key`: a PEM private key file and an optional `kid`, instead of the
/// HS256 secret.
fn token(
    settings: &Settings,
    sub: &str,
    role: Option<&str>,
    ttl: u64,
    key: Option<(&std::path::Path, Option<&str>)>,
) -> i32 {
    if !crate::domain::valid_customer_id(sub) {
        eprintln!("--sub must be 1 to 64 printable ASCII characters");
        return 2;
    }
    let signed = match key {
        Some((path, kid)) => {
            let text = match std::fs::read(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("--key {}: cannot read it: {e}", path.display());
                    return 2;
                }
            };
            let (alg, key) = match crate::auth::keys::signing_from_pem(&text) {
                Ok(k) => k,
                Err(why) => {
                    eprintln!("--key {}: {why}", path.display());
                    return 2;
                }
            };
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = kid.map(String::from);
            crate::auth::sign(&header, sub, role, ttl, &key)
        }
        None => match settings.auth.hs256_secret() {
            Some(secret) => Auth::new(&secret).issue(sub, role, ttl),
            None => {
                eprintln!("no HS256 secret: public keys are configured and `auth.jwt_secret` is not set (sign with --key FILE)");
                return 2;
            }
        },
    };
    match signed {
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
