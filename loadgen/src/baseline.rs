//! The baselines flashsale is compared with: a store that keeps its stock in
//! one Postgres row, sold through four mechanisms, behind the gateway's own
//! paths so that `flashsale-loadtest --target-kind baseline` plays the same
//! sale against them.
//!
//! - [`Mode::Naive`]: `SELECT stock`, then `UPDATE stock = <value read> - n`
//!   and `INSERT` the order, three statements with no transaction and no
//!   lock. Two buyers who read the same figure both succeed and the second
//!   write erases the first (a lost update): units are sold twice and the
//!   counter shows more stock than there is.
//! - [`Mode::NaiveDecrement`]: the same read and check, then `UPDATE stock =
//!   stock - n`. Nothing is lost, but buyers who all saw the last units all
//!   take them: the counter goes negative (the 12.12 store's "some negative").
//! - [`Mode::RowLock`]: `SELECT ... FOR UPDATE`, `UPDATE`, `INSERT` in one
//!   transaction. Correct; every buyer queues on the one row for four round
//!   trips and a commit.
//! - [`Mode::Conditional`]: one statement, `UPDATE ... SET stock = stock - n
//!   WHERE id = $1 AND stock >= n` with the order's `INSERT` in the same
//!   statement (a data-modifying CTE). Correct; the row is locked for one
//!   round trip and the commit.
//!
//! A 201 here writes the order at once (there is no hold to confirm), and
//! the reservation's `status` says `held` only to keep the gateway's shape.
//! Tokens are not verified: the bearer's `sub` is read as the customer id.
//! The sale window and `per_customer_limit` are stored but not enforced:
//! these are stock mechanisms, nothing more.
//!
//! Served by `examples/baseline_server.rs`, and by `tests/loadtest_checker.rs`
//! on port 0; the gateway's crate knows nothing of it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The database the bench uses when none is given.
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres@127.0.0.1:5432/flashsale_bench_baseline";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Naive,
    NaiveDecrement,
    #[value(name = "rowlock")]
    RowLock,
    Conditional,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::NaiveDecrement => "naive-decrement",
            Mode::RowLock => "rowlock",
            Mode::Conditional => "conditional",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub database_url: String,
    /// Postgres connections of the server.
    pub pool_size: u32,
    /// Time the naive modes spend between their read and their write, as an
    /// application does (a price lookup, a log line). Zero still yields to
    /// the scheduler once there, which is where another request's read slips
    /// in.
    pub naive_pause: Duration,
}

impl Config {
    pub fn new(mode: Mode, database_url: &str) -> Config {
        Config {
            mode,
            database_url: database_url.to_string(),
            pool_size: 32,
            naive_pause: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
pub struct Baseline {
    db: PgPool,
    mode: Mode,
    naive_pause: Duration,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (
    id         text PRIMARY KEY,
    total      bigint NOT NULL,
    -- No CHECK (stock >= 0): the original store had none, and the naive
    -- modes are here to show what that lets through.
    stock      bigint NOT NULL,
    def        jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS orders (
    id             bigserial PRIMARY KEY,
    reservation_id text NOT NULL,
    sale_id        text NOT NULL,
    customer_id    text NOT NULL,
    quantity       integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_sale_id ON orders (sale_id);
";

/// Creates the database if missing and its two tables, and returns a pool.
pub async fn connect(config: &Config) -> anyhow::Result<Baseline> {
    let url = config.database_url.as_str();
    if !Postgres::database_exists(url)
        .await
        .with_context(|| format!("reaching Postgres at {}", redact(url)))?
    {
        // Two servers starting at once: the loser's CREATE fails, the database exists.
        if let Err(e) = Postgres::create_database(url).await {
            if !Postgres::database_exists(url).await? {
                return Err(e).context("creating the baseline database");
            }
        }
    }
    let db = PgPoolOptions::new()
        .max_connections(config.pool_size.max(1))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(PgConnectOptions::from_str(url)?)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    // One creator at a time: concurrent CREATE ... IF NOT EXISTS can still
    // collide in the catalog.
    let mut tx = flashsale::store::begin(&db).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(727274)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Baseline {
        db,
        mode: config.mode,
        naive_pause: config.naive_pause,
    })
}

impl Baseline {
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

pub fn router(state: Baseline) -> Router {
    Router::new()
        .route("/v1/sales", post(create_sale))
        .route("/v1/sales/{sale_id}", get(get_sale))
        .route("/v1/sales/{sale_id}/reservations", post(reserve))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
        .fallback(|| async { Problem::NotFound("not_found", "no such path here".into()) })
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Baseline,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error as the gateway shapes it: problem+json with a `code`.
#[derive(Debug)]
enum Problem {
    Unauthorized,
    NotFound(&'static str, String),
    SoldOut,
    InsufficientStock,
    Invalid(String),
    Unavailable(String),
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, code, detail) = match self {
            Problem::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token with a `sub` is required".to_string(),
            ),
            Problem::NotFound(code, detail) => (StatusCode::NOT_FOUND, code, detail),
            Problem::SoldOut => (
                StatusCode::CONFLICT,
                "sold_out",
                "nothing is available".to_string(),
            ),
            Problem::InsufficientStock => (
                StatusCode::CONFLICT,
                "insufficient_stock",
                "less is available than asked".to_string(),
            ),
            Problem::Invalid(detail) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
            }
            Problem::Unavailable(detail) => {
                // The detail goes to the log, not to the client.
                eprintln!("baseline: postgres: {detail}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database did not answer".to_string(),
                )
            }
        };
        let body = json!({
            "type": format!("https://flashsale.dev/problems/{code}"),
            "title": code.replace('_', " "),
            "status": status.as_u16(),
            "detail": detail,
            "code": code,
        });
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Problem {
        Problem::Unavailable(e.to_string())
    }
}

async fn readyz(State(s): State<Baseline>) -> Response {
    match sqlx::query("SELECT 1").execute(&s.db).await {
        Ok(_) => (StatusCode::OK, Json(json!({"postgres": "ok"}))).into_response(),
        Err(e) => Problem::Unavailable(e.to_string()).into_response(),
    }
}

/// The customer is the token's `sub`; the signature is not checked.
fn customer(headers: &HeaderMap) -> Result<String, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Problem::Unauthorized)?;
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
    }
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(b""), &v)
            .map_err(|_| Problem::Unauthorized)?;
    let sub = data.claims.sub;
    if sub.is_empty() || sub.len() > 64 {
        return Err(Problem::Unauthorized);
    }
    Ok(sub)
}

fn valid_sale_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn now_rfc3339(plus: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() + plus;
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `POST /v1/sales`: the gateway's body; 201 when new, 200 when the id exists.
async fn create_sale(
    State(s): State<Baseline>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    customer(&headers)?;
    let mut def: Value = serde_json::from_slice(&body)
        .map_err(|e| Problem::Invalid(format!("the body is not JSON: {e}")))?;
    let obj = def
        .as_object_mut()
        .ok_or_else(|| Problem::Invalid("the body must be a JSON object".into()))?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            obj.insert("id".into(), Value::String(id.clone()));
            id
        }
        Some(v) => v
            .as_str()
            .filter(|id| valid_sale_id(id))
            .ok_or_else(|| Problem::Invalid("`id` must match [a-z0-9_-]{1,64}".into()))?
            .to_string(),
    };
    let stock = obj
        .get("stock")
        .and_then(Value::as_i64)
        .filter(|n| (0..=1_000_000_000).contains(n))
        .ok_or_else(|| Problem::Invalid("`stock` must be 0 to 1000000000".into()))?;
    if !obj
        .get("hold_seconds")
        .and_then(Value::as_u64)
        .is_some_and(|h| (1..=86_400).contains(&h))
    {
        return Err(Problem::Invalid("`hold_seconds` must be 1 to 86400".into()));
    }
    let inserted = sqlx::query(
        "INSERT INTO stock (id, total, stock, def) VALUES ($1, $2, $2, $3)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(stock)
    .bind(&def)
    .execute(&s.db)
    .await?
    .rows_affected()
        == 1;
    let view = sale_view(&s.db, &id).await?;
    let status = if inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// The sale as the gateway shows it. One statement, so one snapshot: the
/// counter and the orders are read at the same moment. `available` is the
/// counter as it stands (negative if it went so), `sold` the units ordered,
/// `held` 0 (orders are written at once).
async fn sale_view(db: &PgPool, id: &str) -> Result<Value, Problem> {
    let row: Option<(i64, i64, Value, i64)> = sqlx::query_as(
        "SELECT total, stock, def,
                (SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1)
         FROM stock WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let (total, available, mut def, sold) =
        row.ok_or_else(|| Problem::NotFound("sale_not_found", format!("no sale `{id}`")))?;
    if let Some(obj) = def.as_object_mut() {
        obj.insert(
            "status".into(),
            json!(if available > 0 { "live" } else { "sold_out" }),
        );
        obj.insert(
            "stock".into(),
            json!({"total": total, "available": available, "held": 0, "sold": sold}),
        );
        obj.insert("server_time".into(), json!(now_rfc3339(Duration::ZERO)));
    }
    Ok(def)
}

async fn get_sale(State(s): State<Baseline>, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(Json(sale_view(&s.db, &id).await?).into_response())
}

/// `POST /v1/sales/{id}/reservations` with `{"quantity": n}`: 201 and the
/// order (shaped as a held reservation), or 409 `sold_out` /
/// `insufficient_stock`.
async fn reserve(
    State(s): State<Baseline>,
    Path(sale_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let customer = customer(&headers)?;
    if !valid_sale_id(&sale_id) {
        return Err(Problem::NotFound("sale_not_found", "no such sale".into()));
    }
    let quantity = if body.is_empty() {
        1
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Problem::Invalid(format!("the body is not JSON: {e}")))?;
        match v.get("quantity") {
            None => 1,
            Some(q) => q
                .as_i64()
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| Problem::Invalid("`quantity` must be 1 to 100".into()))?,
        }
    };
    let rid = format!("{sale_id}.{}", uuid::Uuid::new_v4().simple());
    let hold_seconds = match s.mode {
        Mode::Naive | Mode::NaiveDecrement => {
            naive(&s, &sale_id, &customer, &rid, quantity).await?
        }
        Mode::RowLock => row_lock(&s.db, &sale_id, &customer, &rid, quantity).await?,
        Mode::Conditional => conditional(&s.db, &sale_id, &customer, &rid, quantity).await?,
    };
    let reservation = json!({
        "id": rid,
        "sale_id": sale_id,
        "customer_id": customer,
        "quantity": quantity,
        "status": "held",
        "expires_at": now_rfc3339(Duration::from_secs(hold_seconds)),
    });
    Ok((StatusCode::CREATED, Json(reservation)).into_response())
}

fn refusal(available: i64) -> Problem {
    if available <= 0 {
        Problem::SoldOut
    } else {
        Problem::InsufficientStock
    }
}

const HOLD_SECONDS: &str = "coalesce((def->>'hold_seconds')::bigint, 600)";

/// Read, check, write: three statements, each its own transaction. Between
/// the read and the write any number of other requests read the same figure.
async fn naive(
    s: &Baseline,
    sale: &str,
    customer: &str,
    rid: &str,
    n: i64,
) -> Result<u64, Problem> {
    let row: Option<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT stock, {HOLD_SECONDS} FROM stock WHERE id = $1"
    ))
    .bind(sale)
    .fetch_optional(&s.db)
    .await?;
    let (read, hold) =
        row.ok_or_else(|| Problem::NotFound("sale_not_found", "no such sale".into()))?;
    if read < n {
        return Err(refusal(read));
    }
    // The application works a little between its read and its write (a
    // price lookup, a log line): the window the race needs is there in any
    // real store, this only makes it as wide on an idle test machine.
    if s.naive_pause.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(s.naive_pause).await;
    }
    let update = if s.mode == Mode::Naive {
        // The figure read, minus what this buyer takes: a write that erases
        // every other buyer's since the read.
        sqlx::query("UPDATE stock SET stock = $2 WHERE id = $1")
            .bind(sale)
            .bind(read - n)
    } else {
        // A decrement, judged on a figure that may be stale by now.
        sqlx::query("UPDATE stock SET stock = stock - $2 WHERE id = $1")
            .bind(sale)
            .bind(n)
    };
    update.execute(&s.db).await?;
    insert_order(&s.db, sale, customer, rid, n).await?;
    Ok(hold.max(0) as u64)
}

async fn insert_order<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    sale: &str,
    customer: &str,
    rid: &str,
    n: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (reservation_id, sale_id, customer_id, quantity) VALUES ($1, $2, $3, $4)",
    )
    .bind(rid)
    .bind(sale)
    .bind(customer)
    .bind(n as i32)
    .execute(db)
    .await
    .map(|_| ())
}

/// The classic fix: lock the row, check, write, commit. Every buyer of the
/// sale waits for the lock, held across four round trips and the commit.
async fn row_lock(
    db: &PgPool,
    sale: &str,
    customer: &str,
    rid: &str,
    n: i64,
) -> Result<u64, Problem> {
    let mut tx = flashsale::store::begin(db).await?;
    let row: Option<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT stock, {HOLD_SECONDS} FROM stock WHERE id = $1 FOR UPDATE"
    ))
    .bind(sale)
    .fetch_optional(&mut *tx)
    .await?;
    let (stock, hold) =
        row.ok_or_else(|| Problem::NotFound("sale_not_found", "no such sale".into()))?;
    if stock < n {
        tx.rollback().await?;
        return Err(refusal(stock));
    }
    sqlx::query("UPDATE stock SET stock = stock - $2 WHERE id = $1")
        .bind(sale)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    insert_order(&mut *tx, sale, customer, rid, n).await?;
    tx.commit().await?;
    Ok(hold.max(0) as u64)
}

/// One statement: the guarded decrement and the order's insert. Under READ
/// COMMITTED an UPDATE that waited for the row re-checks `stock >= n` on the
/// version it then locks, so no two buyers take the same unit.
async fn conditional(
    db: &PgPool,
    sale: &str,
    customer: &str,
    rid: &str,
    n: i64,
) -> Result<u64, Problem> {
    let row: Option<(i64,)> = sqlx::query_as(&format!(
        "WITH taken AS (
             UPDATE stock SET stock = stock - $2 WHERE id = $1 AND stock >= $2
             RETURNING id, {HOLD_SECONDS} AS hold
         ), ordered AS (
             INSERT INTO orders (reservation_id, sale_id, customer_id, quantity)
             SELECT $3, id, $4, $2::integer FROM taken
         )
         SELECT hold FROM taken"
    ))
    .bind(sale)
    .bind(n)
    .bind(rid)
    .bind(customer)
    .fetch_optional(db)
    .await?;
    match row {
        Some((hold,)) => Ok(hold.max(0) as u64),
        None => {
            // Refused: say why (a second read, only on this path).
            let stock: Option<(i64,)> = sqlx::query_as("SELECT stock FROM stock WHERE id = $1")
                .bind(sale)
                .fetch_optional(db)
                .await?;
            match stock {
                None => Err(Problem::NotFound("sale_not_found", "no such sale".into())),
                Some((available,)) => Err(refusal(available)),
            }
        }
    }
}

/// A URL without its password, for error lines.
pub use flashsale::cli::redact;
