//! Probes. `/readyz` is about the hot path: it is ready while Redis answers,
//! and reports Postgres beside it, since confirmed orders wait in Redis while
//! Postgres is down.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::AppState;

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "probes",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    #[schema(value_type = UpDown)]
    redis: &'static str,
    #[schema(value_type = UpDown)]
    postgres: &'static str,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // The words of `Readiness`, for the document.
enum UpDown {
    Up,
    Down,
}

fn word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

/// 200 while Redis (the hot path) answers, else 503; Postgres is reported
/// beside it, since orders wait in Redis while it is down.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Redis does not answer", body = Readiness),
    ))]
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
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}
