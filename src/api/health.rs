//! Probes. `/readyz` is about the hot path: it is ready while Redis answers,
//! and reports Postgres beside it, since confirmed orders wait in Redis while
//! Postgres is down.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Serialize)]
pub struct Readiness {
    redis: &'static str,
    postgres: &'static str,
}

fn word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let pg = tokio::time::timeout(
        state.settings.database_timeout(),
        crate::store::ping(&state.db),
    );
    let (redis, pg) = tokio::join!(state.engine.ping(), pg);
    let redis_up = redis.is_ok();
    let pg_up = matches!(pg, Ok(Ok(())));
    let status = if redis_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            redis: word(redis_up),
            postgres: word(pg_up),
        }),
    )
}

/// Prometheus text format.
pub async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}
