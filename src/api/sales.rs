//! Sales: create (admin), list, read, adjust (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::auth::Admin;
use super::error::ApiError;
use super::extract::{Body, IdempotencyKey, PathId};
use super::{db_call, AppState};
use crate::domain::{valid_sale_id, Sale, SaleInput, MAX_UNITS};
use crate::{adjust, schedule};

pub(super) fn sale_id(PathId(id): PathId) -> Result<String, ApiError> {
    if valid_sale_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::InvalidRequest(
            "sale id must match [a-z0-9_-]{1,64}".into(),
        ))
    }
}

/// Postgres first, then Redis. A crash between the two leaves a row without
/// `loaded_at`, which the worker (or this same request, retried) loads: the
/// sale is never half created, and Redis never holds a sale Postgres lacks.
#[tracing::instrument(skip_all, fields(sale_id))]
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Body(input): Body<SaleInput>,
) -> Result<(StatusCode, Json<Sale>), ApiError> {
    let def = input
        .validate(|| format!("s-{}", uuid::Uuid::new_v4().simple()))
        .map_err(ApiError::InvalidRequest)?;
    tracing::Span::current().record("sale_id", def.id.as_str());
    let outcome = db_call(&state, schedule::schedule(&state.engine, &state.db, &def)).await?;
    let status = match outcome {
        schedule::Outcome::Created => {
            tracing::info!(admin = %admin.subject, stock = def.stock, "sale scheduled");
            StatusCode::CREATED
        }
        schedule::Outcome::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(state.engine.sale(&def.id).await?)))
}

#[derive(Serialize)]
pub struct SaleList {
    sales: Vec<Sale>,
}

pub async fn list(State(state): State<AppState>) -> Result<Json<SaleList>, ApiError> {
    Ok(Json(SaleList {
        sales: state.engine.sales().await?,
    }))
}

pub async fn get(State(state): State<AppState>, id: PathId) -> Result<Json<Sale>, ApiError> {
    let id = sale_id(id)?;
    match state.engine.sale(&id).await {
        Err(e) if crate::archive::not_in_redis(&e) => archived(&state, &id, e).await.map(Json),
        found => Ok(Json(found?)),
    }
}

/// A sale Redis no longer holds: archived, it answers from Postgres.
pub(super) async fn archived(
    state: &AppState,
    id: &str,
    not_found: crate::engine::EngineError,
) -> Result<Sale, ApiError> {
    super::db_call(state, crate::archive::sale(&state.db, id))
        .await?
        .ok_or_else(|| not_found.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalePatch {
    #[serde(default)]
    stock_delta: i64,
    #[serde(default, with = "time::serde::rfc3339::option")]
    ends_at: Option<OffsetDateTime>,
    paused: Option<bool>,
}

/// Recorded in Postgres as pending, applied once in Redis (by the
/// adjustment's id), then settled with the figures before and after; safe
/// to retry with an `Idempotency-Key` (see `crate::adjust`).
#[tracing::instrument(skip_all, fields(sale_id))]
pub async fn patch(
    State(state): State<AppState>,
    Admin(admin): Admin,
    id: PathId,
    IdempotencyKey(key): IdempotencyKey,
    Body(patch): Body<SalePatch>,
) -> Result<Json<adjust::Answer>, ApiError> {
    let sale_id = sale_id(id)?;
    tracing::Span::current().record("sale_id", sale_id.as_str());
    if patch.stock_delta.abs() > MAX_UNITS {
        return Err(ApiError::InvalidRequest(format!(
            "`stock_delta` must be within ±{MAX_UNITS}"
        )));
    }
    if patch.stock_delta == 0 && patch.ends_at.is_none() && patch.paused.is_none() {
        return Err(ApiError::InvalidRequest(
            "give at least one of `stock_delta`, `ends_at`, `paused`".into(),
        ));
    }
    let current = state.engine.sale(&sale_id).await?;
    if let Some(ends_at) = patch.ends_at {
        if ends_at <= current.starts_at || ends_at.year() > 9999 {
            return Err(ApiError::InvalidRequest(
                "`ends_at` must be after `starts_at`".into(),
            ));
        }
    }
    let request = adjust::Request {
        sale_id: &sale_id,
        actor: &admin.subject,
        stock_delta: patch.stock_delta,
        ends_at: patch.ends_at,
        paused: patch.paused,
        idempotency_key: key.as_deref(),
    };
    let answer = adjust::adjust(
        &state.engine,
        &state.db,
        state.settings.database_timeout(),
        &request,
    )
    .await?;
    Ok(Json(answer))
}
