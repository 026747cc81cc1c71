//! Probes. `/readyz` is about the hot path: it is ready while Redis answers,
//! and reports Postgres beside it, since confirmed orders wait in Redis while
//! Postgres is down. The same probe runs on its own every few seconds for
//! the `flashsale_redis_up` and `flashsale_postgres_up` gauges the alerts read.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::engine::Engine;

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "probes",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `up` while at least one primary answers.
    #[schema(value_type = UpDown)]
    redis: &'static str,
    #[schema(value_type = UpDown)]
    postgres: &'static str,
    /// On a Redis Cluster: each primary (`host:port`) and whether it answers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    primaries: Vec<Primary>,
}

#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct Primary {
    node: String,
    #[schema(value_type = UpDown)]
    redis: &'static str,
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

/// Whether Redis and Postgres answer now (Postgres within the database
/// timeout; the engine bounds its own calls), also exported as the
/// `flashsale_*_up` gauges.
/// On a cluster, Redis is up while any primary answers: a load balancer
/// that drained every gateway because one primary is down would stop every
/// sale, where only that primary's sales are 503s.
async fn probe(engine: &Engine, db: &PgPool, timeout: Duration) -> (bool, bool, Vec<Primary>) {
    let pg = tokio::time::timeout(timeout, crate::store::ping(db));
    let (primaries, pg) = tokio::join!(engine.primaries_up(), pg);
    let redis_up = primaries.iter().any(|(_, up)| *up);
    let pg_up = matches!(pg, Ok(Ok(())));
    crate::metrics::services_up(redis_up, pg_up);
    let primaries = if engine.is_cluster() {
        primaries
            .into_iter()
            .map(|(node, up)| Primary {
                node,
                redis: word(up),
            })
            .collect()
    } else {
        Vec::new()
    };
    (redis_up, pg_up, primaries)
}

/// Probes every `every` until `stop`, so the up gauges are fresh at each
/// scrape whether or not anything polls `/readyz`, and an alert sees an
/// outage the moment it starts rather than at the next failed request.
pub async fn watch_services(
    engine: Engine,
    db: PgPool,
    timeout: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        probe(&engine, &db, timeout).await;
    }
}

/// 200 while Redis (the hot path) answers, else 503; Postgres is reported
/// beside it, since orders wait in Redis while it is down. Probed at most
/// once a second per gateway, however many ask.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Redis does not answer", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let ready = state.ready.answer(&state).await;
    let status = if ready.redis == "up" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ready))
}

/// How long one probe answers `/readyz`.
const READY_FOR: Duration = Duration::from_secs(1);

/// The last `/readyz` probe of this gateway. `/readyz` is public: without
/// this, anyone could make every gateway ask Redis and Postgres as often as
/// they like. Callers that come while a probe runs wait for it (the lock is
/// held across it), so a burst costs one probe, never one each.
#[derive(Default)]
pub struct ReadyCache(tokio::sync::Mutex<Option<(tokio::time::Instant, Readiness)>>);

impl ReadyCache {
    async fn answer(&self, state: &AppState) -> Readiness {
        let mut last = self.0.lock().await;
        if let Some((at, ready)) = last.as_ref() {
            if at.elapsed() < READY_FOR {
                return ready.clone();
            }
        }
        let (redis_up, pg_up, primaries) =
            probe(&state.engine, &state.db, state.settings.database_timeout()).await;
        let ready = Readiness {
            redis: word(redis_up),
            postgres: word(pg_up),
            primaries,
        };
        // Stamped when the answer arrived: a slow probe still serves a
        // whole second after it.
        *last = Some((tokio::time::Instant::now(), ready.clone()));
        ready
    }
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
