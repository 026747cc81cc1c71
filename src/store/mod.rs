//! Postgres: the durable record. `sales` is what marketing scheduled (and the
//! base for rebuilding Redis), `orders` what customers bought,
//! `sale_adjustments` the audit of admin changes.
//!
//! Nothing on the reserve path touches Postgres: a spike lands on Redis only.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::config::Settings;

mod adjustments;
pub mod deliveries;
mod events;
mod orders;
mod sales;
mod waiting_room;
mod webhooks;

pub use crate::domain::NewOrder;
pub use adjustments::{
    keep_response, keyed_adjustment, pending_adjustments, record_adjustment, rekey_adjustment,
    settle_adjustment, settled_adjustments, Adjustment, AdjustmentKey, AdjustmentState,
    KeyedAdjustment, Settlement, VOIDED,
};
pub use events::{delete_old_events, insert_deliveries, insert_events, sold_outs};
pub use orders::{insert_orders, keep_dead_letters, order_of, units_per_customer};
pub use sales::{
    archived_among, closed_sale, insert_sale, keep_final, ledger, load_error, mark_archived,
    mark_load_failed, mark_loaded, sale, sales, sales_not_loaded, sales_to_archive, Ledger,
    Scheduled,
};
pub use waiting_room::{
    commit_seed, keep_admitted, keep_members, set_waiting_room, waiting_room,
    waiting_rooms_to_tend, WaitingRoom,
};
pub use webhooks::{
    delete_endpoint, deliveries, endpoint, endpoints, insert_endpoint, replay, rotate_secret,
    update_endpoint, Delivery, Endpoint, EndpointChange, DISABLED_BY_ADMIN, ENDPOINT_DELETED,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres did not answer, or answered with an error (the source says
    /// which; callers that care ask `is_permanent`).
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    BadUrl(#[source] sqlx::Error),
    /// A sale's row conflicted on insert, then was gone when read: it was
    /// deleted in between (by hand; flashsale never deletes sales).
    #[error("sale `{0}` vanished after a conflicting insert")]
    SaleVanished(String),
    /// A row holds text that breaks a rule every writer keeps (an id that is
    /// not one): changed by hand, reported rather than passed on.
    #[error("corrupt row in `{table}`: {what}")]
    CorruptRow { table: &'static str, what: String },
}

impl StoreError {
    /// A bad id read from `table`.
    pub(crate) fn bad_id(table: &'static str, text: String) -> StoreError {
        StoreError::CorruptRow {
            table,
            what: format!("bad id `{text}`"),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A pool that connects lazily: the gateway starts (and serves the hot path)
/// while Postgres is down.
pub fn pool(settings: &Settings) -> StoreResult<PgPool> {
    pool_of(settings, settings.database.max_connections)
}

/// A lazy pool of at most `max_connections`, for work that keeps its own
/// (the webhook deliveries).
pub fn pool_of(settings: &Settings, max_connections: u32) -> StoreResult<PgPool> {
    let opts = connect_options(settings.database.url.expose_secret())?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(settings.database_timeout())
        .connect_lazy_with(opts))
}

fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(StoreError::BadUrl)
}

/// Creates the database if missing, then applies the migrations. Idempotent.
pub async fn migrate(url: &str) -> StoreResult<()> {
    if !Postgres::database_exists(url).await? {
        // Two migrators racing: the loser's CREATE fails, the database exists.
        if let Err(e) = Postgres::create_database(url).await {
            if !Postgres::database_exists(url).await? {
                return Err(e.into());
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options(url)?)
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Opens a transaction that a cancelled caller cannot leave open. sqlx 0.8
/// sends BEGIN and counts the transaction only once Postgres answers; a
/// caller dropped in between (an aborted task, a timeout, a client that hung
/// up) returned the connection to the pool inside a transaction nothing
/// ends, so every later borrower's writes ran in it and were lost
/// (launchbadge/sqlx#2054, still open for Postgres in 0.8.6). Begun in a
/// task of its own, the BEGIN always completes; a caller gone by then drops
/// the transaction, which rolls back before the connection is reused.
pub async fn begin(db: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let db = db.clone();
    #[allow(clippy::disallowed_methods)] // the one place it is safe
    let begun = tokio::spawn(async move { db.begin().await });
    match begun.await {
        Ok(tx) => tx,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(sqlx::Error::Io(std::io::Error::other(e))),
    }
}

pub async fn ping(db: &PgPool) -> StoreResult<()> {
    sqlx::query_scalar!("SELECT 1 AS ping")
        .fetch_one(db)
        .await?;
    Ok(())
}

/// Whether Postgres refused the data itself (it will refuse it again) rather
/// than failing to answer: integrity (class 23) and data (class 22) errors.
pub fn is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}
