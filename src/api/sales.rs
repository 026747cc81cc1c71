//! Sales: create (admin), list, read, adjust (admin).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::auth::{Admin, PublicReader};
use super::error::ApiError;
use super::extract::{Body, IdempotencyKey};
use super::{db_call, AppState};
use crate::domain::{valid_sale_id, Sale, SaleId, SaleInput, MAX_UNITS};
use crate::{adjust, schedule};

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
    sales: Vec<Shown>,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `?limit=` (default 100, at most 500) and `?cursor=` (a `next_cursor`).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 500;

/// A position in the order of the list, (start in ms, id): the cursor is
/// the last sale of the page, `<ms>.<id>`. Opaque to clients; a sale created
/// while someone pages through lands in its place, and every sale present
/// from start to end is seen exactly once.
fn cursor_of(sale: &Sale) -> String {
    format!("{}.{}", crate::domain::to_ms(sale.starts_at), sale.id)
}

fn parse_cursor(text: &str) -> Option<(i64, &str)> {
    let (ms, id) = text.split_once('.')?;
    let ms = ms.parse().ok()?;
    valid_sale_id(id).then_some((ms, id))
}

/// Public, answered from the gateway's shared view (`engine::live`), so a
/// crowd of readers costs Redis one read per sale per 100 ms.
pub async fn list(
    State(state): State<AppState>,
    PublicReader(ip): PublicReader,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SaleList>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::InvalidRequest(format!("invalid query: {}", e.body_text())))?;
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE as u32).contains(&n) => n as usize,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "`limit` must be 1 to {MAX_PAGE}"
            )))
        }
    };
    let after = match &query.cursor {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            ApiError::InvalidRequest("`cursor` is not a cursor this API gave".into())
        })?),
    };
    let all = state.live.sales(&state.engine, Some(ip)).await?;
    let start = match after {
        None => 0,
        Some((ms, id)) => {
            all.partition_point(|s| (crate::domain::to_ms(s.starts_at), s.id.as_str()) <= (ms, id))
        }
    };
    let page: Vec<Shown> = all
        .iter()
        .skip(start)
        .take(limit)
        .cloned()
        .map(Shown)
        .collect();
    let next_cursor = (start + page.len() < all.len())
        .then(|| page.last().map(|s| cursor_of(&s.0)))
        .flatten();
    Ok(Json(SaleList {
        sales: page,
        next_cursor,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    PublicReader(ip): PublicReader,
    id: SaleId,
) -> Result<Json<Shown>, ApiError> {
    match state.live.sale(&state.engine, &id, Some(ip)).await {
        Err(e) if crate::archive::not_in_redis(&e) => {
            Ok(Json(Shown(Arc::new(archived(&state, &id, e).await?))))
        }
        found => Ok(Json(Shown(found?))),
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

/// A sale of the shared view, shown as the sale itself (no copy per reader).
pub struct Shown(Arc<Sale>);

impl Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
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
    sale_id: SaleId,
    IdempotencyKey(key): IdempotencyKey,
    Body(patch): Body<SalePatch>,
) -> Result<Json<adjust::Answer>, ApiError> {
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
