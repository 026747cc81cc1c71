//! flashsale: a flash-sale reservation gateway that never sells a unit twice.
//!
//! The folders are the layers. A line belongs to the first of these that
//! fits it:
//!
//! - The three ways in: `http` (the router and its
//!   state, the extractors, `http::error`, the only place that knows a status
//!   code, the read view that gives a writer its own writes, the accept
//!   loop, one file of routes per resource: sales, reservations, the waiting
//!   room), [`cli`] (the `flashsale` commands, a file per family) and
//!   [`worker`] (the background loops and signals, nothing else).
//! - [`usecases`]: what the ways in ask for, each told once over both
//!   stores: `schedule` (create a sale, load the ones whose creation was
//!   interrupted), `adjust` (an admin's change, applied once), `flush` (a
//!   sale's outbox to Postgres, exactly once, by a `Flusher`), `reap` (holds
//!   past their deadline back to stock), `reconcile` (inspect, `--apply`,
//!   `--rebuild`), `archive` (a finished sale's keys out of Redis, its
//!   figures kept in Postgres), `waiting_room` (who may reserve a sale
//!   behind one, and when) and `webhooks` (the store's endpoints: their URL
//!   rules, secrets and replays).
//! - [`engine`]: the only code that speaks Redis. `engine/ops/<family>.rs`
//!   sits beside the `lua/` scripts it calls (sale, hold, adjust, repair,
//!   archive, waiting room, outbox), each with its keys, arguments and typed
//!   reply; around them the script registry, the refusals (words and codes,
//!   no HTTP), the group commit, the sold-out marks and the live view.
//! - [`store`]: the only code that speaks Postgres, a file per table family
//!   (sales, orders, adjustments, waiting rooms) and the migrations.
//! - [`domain`]: the nouns, one per file (ids, sale, reservation, waiting
//!   room, time, the room's permutation) and the rules of their input; and
//!   beside every layer [`config`], [`auth`] (bearer tokens: the HS256
//!   secret, the store's PEM keys and JWKS, the verified-token cache; roles
//!   customer, admin and service), metrics and telemetry.
//!
//! Who calls whom: `http`, `cli` and `worker` call `usecases` (and the
//! engine or the store directly for what touches one of them only: the hot
//! path's one script per reserve, confirm, release or extend, a plain read,
//! `migrate`); `usecases` call `engine` and `store`; `engine` and `store`
//! never import each other; every layer may use `domain`. Beside the crate, not in it: the load generator
//! (`loadgen/`, `flashsale-loadtest`), built on this library.
//!
//! A tour. **A reserve**: `http::reservations::reserve` checks the token, the
//! rate limits and the body (the ids are parsed once, there), then
//! `Engine::reserve` (`engine/ops/hold.rs`) runs `lua/reserve.lua`: one
//! EVALSHA that checks the window, the customer's limit and the stock and
//! moves units from available to held, with a deadline, by Redis's clock;
//! the handler leaves the sale it wrote on its response, and
//! `http::read_view` makes the writer's next read see it. **A confirm**:
//! `Engine::confirm` runs `lua/confirm.lua`, which judges the deadline,
//! moves the units from held to sold and appends the order to the sale's
//! outbox stream, in one atomic step; a service (the store's backend)
//! confirms any buyer's hold and is kept in the order as `confirmed_by`, and
//! may first move its deadline (`lua/extend.lua`, the same clock and step as
//! expiry). **An order**: the worker's flush (`usecases::flush::Flusher`)
//! reads the outbox through a consumer group, writes a batch to Postgres with
//! `ON CONFLICT DO NOTHING`, and only then acknowledges it; the reaper
//! returns holds past their deadline to stock. **A repair**:
//! `usecases::reconcile` compares both stores and, asked to, repairs without
//! ever offering a unit that is held or sold (invariant 6).

pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
mod http;
mod metrics;
pub mod store;
mod telemetry;
pub mod usecases;
pub mod worker;

/// How often the metrics recorder drains its samples, scraped or not.
pub use metrics::UPKEEP as METRICS_UPKEEP;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use config::Settings;
use engine::Engine;

/// The engine and the Postgres pool. Neither connects yet: a service that is
/// down at start-up is reported by `/readyz` and retried, not fatal.
pub fn connect(settings: &Settings) -> anyhow::Result<(Engine, sqlx::PgPool)> {
    let engine = Engine::new(settings).context("`redis.url` is not a valid Redis URL")?;
    let db = store::pool(settings).context("`database.url` is not a valid Postgres URL")?;
    Ok((engine, db))
}

/// How often a gateway checks that Redis and Postgres answer, for the
/// `flashsale_redis_up` and `flashsale_postgres_up` gauges: a PING and a
/// `SELECT 1`, well under one scrape interval.
const SERVICES_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the gateway on `listener` (and the worker, if asked) until `stop` is
/// cancelled; then in-flight requests drain and background loops end.
pub async fn serve(
    settings: Arc<Settings>,
    listener: tokio::net::TcpListener,
    with_worker: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let auth = Arc::new(
        auth::Auth::from_settings(&settings.auth)
            .map_err(|e| anyhow::anyhow!("configuration error: {e}"))?,
    );
    if settings.auth.uses_dev_secret() {
        tracing::warn!("auth.jwt_secret is the development secret: set FLASHSALE__AUTH__JWT_SECRET in production");
    } else if !auth.takes_hs256() {
        tracing::info!(
            "HS256 tokens are refused: public keys are configured and auth.jwt_secret is not set"
        );
    }
    if settings.webhooks.secret_key.is_none() {
        tracing::warn!("webhooks.secret_key is not set: endpoint secrets are stored as they are; set FLASHSALE__WEBHOOKS__SECRET_KEY (32 bytes, base64) to store them encrypted");
    }
    let customer_confirm = settings.auth.customer_confirm();
    let explicit = settings.auth.customer_confirm.is_some();
    if customer_confirm && settings.auth.has_public_keys() {
        tracing::warn!(
            explicit,
            "auth.customer_confirm is on beside the store's sign-in: buyers confirm their own holds with any payment_ref; only the store's backend knows a payment happened"
        );
    } else {
        tracing::info!(customer_confirm, explicit, "buyers' own confirms");
    }
    if let Some(jwks) = auth.jwks() {
        // The store's sign-in being down at our start is no reason not to
        // start: tokens with its keys are refused until a fetch succeeds.
        match jwks.refresh().await {
            Ok(n) => tracing::info!(url = %jwks.url(), keys = n, "JWKS fetched"),
            Err(e) => {
                tracing::warn!(url = %jwks.url(), error = %e, "JWKS not fetched at start; retrying")
            }
        }
        tokio::spawn(jwks.clone().keep_fresh(stop.clone()));
    }
    metrics::handle();
    tokio::spawn(metrics::upkeep(stop.clone()));
    let open_files = http::server::raise_open_file_limit();
    let (engine, db) = connect(&settings)?;
    tokio::spawn(http::watch_services(
        engine.clone(),
        db.clone(),
        settings.database_timeout(),
        SERVICES_PROBE,
        stop.clone(),
    ));
    let worker = with_worker.then(|| {
        let (settings, engine, db, stop) =
            (settings.clone(), engine.clone(), db.clone(), stop.clone());
        tokio::spawn(async move { worker::run(&settings, engine, db, stop).await })
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, with_worker, "gateway listening");
    let limits = Arc::new(
        http::limits::Limits::new(&settings.limits)
            .map_err(|e| anyhow::anyhow!("configuration error: {e}"))?,
    );
    tokio::spawn(sweep_limits(limits.clone(), stop.clone()));
    tokio::spawn(engine::soldout::poll(engine.clone(), stop.clone()));
    let reserved = http::server::RESERVED_FDS + u64::from(settings.database.max_connections);
    let edge = http::server::Edge {
        header_timeout: settings.header_timeout(),
        send_timeout: std::time::Duration::from_millis(settings.http.send_timeout_ms),
        max_connections: http::server::fit_connections(
            settings.http.max_connections,
            open_files,
            reserved,
        ),
        max_connections_per_ip: settings.http.max_connections_per_ip,
        uncapped: settings
            .limits
            .trusted_proxies
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
    };
    tracing::info!(
        max_connections = edge.max_connections,
        max_connections_per_ip = edge.max_connections_per_ip,
        open_file_limit = open_files,
        "connection caps"
    );
    let state = http::AppState::new(settings, auth, engine, db, limits, stop.clone());
    http::serve(listener, state, edge)
        .await
        .context("http server")?;
    stop.cancel();
    if let Some(w) = worker {
        let _ = w.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keyed limiters forget idle keys every few seconds: memory stays bounded
/// under millions of distinct customers and addresses.
async fn sweep_limits(limits: Arc<http::limits::Limits>, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => limits.sweep(),
        }
    }
}
