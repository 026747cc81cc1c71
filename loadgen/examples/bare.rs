//! The bare reference service of `bench/overhead.sh` (issue 26): what a
//! reserve costs with nothing around the one Redis call that a reserve must
//! make, so that the gateway's own cost per request can be read as a ratio.
//!
//! ```sh
//! target/release/examples/bare --addr 127.0.0.1:18201 \
//!     --redis-url redis://127.0.0.1:PORT --prefix PREFIX
//! ```
//!
//! `GET /` answers `ok`. `POST /v1/sales/{sale}/reservations` takes the
//! gateway's body and bearer token and makes one EVALSHA of the gateway's own
//! reserve script (prelude + `lua/reserve.lua`) with the keys and arguments
//! the engine passes for a reserve without Idempotency-Key or admission
//! token, and answers the gateway's 201 JSON. Nothing else: no verification
//! of the token, no limits, metrics, spans or group commit.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use clap::Parser;
use flashsale::domain::{from_ms, new_reservation_id, rfc3339_ms, Reservation, ReservationStatus};
use flashsale::engine::SaleKeys;
use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use serde::Deserialize;

// The gateway's allocator, so that the ratio measures the gateway's work and
// not a choice of allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The script body exactly as the engine builds it (`engine::Lua::new`), so
// both services run the same SHA.
const PRELUDE: &str = include_str!("../../lua/prelude.lua");
const RESERVE: &str = include_str!("../../lua/reserve.lua");

#[derive(Debug, Parser)]
#[command(about = "A bare axum service making one reserve script call per request")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18201")]
    addr: std::net::SocketAddr,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The gateway's `redis.key_prefix`: the sales it created are reserved here.
    #[arg(long, default_value = "flashsale")]
    prefix: String,
    /// As the gateway's `engine.idempotency_ttl_seconds` (passed, never used
    /// without an Idempotency-Key).
    #[arg(long, default_value_t = 86400)]
    idempotency_ttl: u64,
}

struct Bare {
    conn: MultiplexedConnection,
    reserve: Script,
    prefix: String,
    idempotency_ttl: u64,
}

/// The gateway's reserve body: an empty object asks for one unit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// The part of the script's record that a 201 shows.
#[derive(Deserialize)]
struct Record {
    c: String,
    q: u32,
    s: ReservationStatus,
    e: i64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let state = Arc::new(Bare {
        conn,
        reserve: Script::new(&format!("{PRELUDE}\n{RESERVE}")),
        prefix: args.prefix,
        idempotency_ttl: args.idempotency_ttl,
    });
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/v1/sales/{sale}/reservations", post(reserve))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    eprintln!("bare listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn reserve(
    State(bare): State<Arc<Bare>>,
    Path(sale): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReserveBody>,
) -> Response {
    let Some(customer) = subject(&headers) else {
        return (StatusCode::UNAUTHORIZED, "no bearer token").into_response();
    };
    let k = SaleKeys::new(&bare.prefix, &sale);
    let rid = new_reservation_id(&sale);
    // KEYS and ARGV in the order of the engine's single reserve
    // (`holds::ReserveJob::run`, a batch of one): no Idempotency-Key (its key
    // is still passed, with an empty fingerprint) and no admission token.
    let mut call = bare.reserve.key(&k.sale);
    call.key(&k.reservations)
        .key(&k.customers)
        .key(&k.due)
        .key(k.idempotency(&customer, ""))
        .key(&k.idempotency_index)
        .key(&k.tickets)
        .arg(&rid)
        .arg(&customer)
        .arg(body.quantity)
        .arg("")
        .arg(bare.idempotency_ttl)
        .arg("");
    let mut conn = bare.conn.clone();
    let reply: Value = match call.invoke_async(&mut conn).await {
        Ok(v) => v,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    match held(reply, &sale) {
        Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
        Err(word) => (StatusCode::CONFLICT, word).into_response(),
    }
}

/// The token's `sub`, read without checking the signature: the bare service
/// stands for the work a reserve needs, and verification is the gateway's.
fn subject(headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Claims>(&json).ok().map(|c| c.sub)
}

/// `{held, now_ms, reservation_id, record}` as the gateway's 201 body; any
/// other reply as its word.
fn held(reply: Value, sale: &str) -> Result<Reservation, String> {
    let Value::Array(items) = reply else {
        return Err(format!("not an array: {reply:?}"));
    };
    let text = |i: usize| match items.get(i) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    };
    if text(0) != Some("held") {
        return Err(format!("{:?}", items.first()));
    }
    let (Some(id), Some(record)) = (text(2), text(3)) else {
        return Err("held without its record".into());
    };
    let rec: Record = serde_json::from_str(record).map_err(|e| e.to_string())?;
    Ok(Reservation {
        id: id.to_string(),
        sale_id: sale.to_string(),
        customer_id: rec.c,
        quantity: rec.q,
        status: rec.s,
        expires_at: rfc3339_ms(from_ms(rec.e)),
    })
}
