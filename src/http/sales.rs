//! Sales: create (admin), list, read, adjust (admin).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::bearer::{Admin, PublicReader};
use super::doc::{Problem, PROBLEM};
use super::error::ApiError;
use super::extract::{Body, IdempotencyKey};
use super::read_view::{Noted, Wrote};
use super::{db_call, AppState};
use crate::domain::{
    present, present_rfc3339, present_whole, valid_sale_id, Sale, SaleId, SaleInput,
    WaitingRoomInput, MAX_UNITS,
};
use crate::usecases::{adjust, schedule};

/// Schedule a sale (admin).
///
/// The same `id` and body again answer 200 with the same sale; the same
/// `id` with another body is 409 `sale_conflict`. `ends_at` must be after
/// `starts_at` (422 otherwise).
#[utoipa::path(post, path = "/v1/sales", operation_id = "createSale", tag = "sales",
    security(("bearer" = [])),
    request_body = SaleInput,
    responses(
        (status = 201, description = "Scheduled", body = Sale, links(
            ("GetSale" = (operation_id = "getSale", parameters(("sale_id" = "$response.body#/id")))),
            ("Reserve" = (operation_id = "reserve", parameters(("sale_id" = "$response.body#/id")))),
            ("Stream" = (operation_id = "streamSale", parameters(("sale_id" = "$response.body#/id")))),
            ("Adjust" = (operation_id = "adjustSale", parameters(("sale_id" = "$response.body#/id")))),
        )),
        (status = 200, description = "The same sale was already scheduled", body = Sale, links(
            ("GetSale" = (operation_id = "getSale", parameters(("sale_id" = "$response.body#/id")))),
            ("Reserve" = (operation_id = "reserve", parameters(("sale_id" = "$response.body#/id")))),
        )),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`sale_conflict`: this `id` exists with another body", body = Problem, content_type = PROBLEM),
    ))]
/// Postgres first, then Redis. A crash between the two leaves a row without
/// `loaded_at`, which the worker (or this same request, retried) loads: the
/// sale is never half created, and Redis never holds a sale Postgres lacks.
#[tracing::instrument(skip_all, fields(sale_id))]
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Body(input): Body<SaleInput>,
) -> Noted<Result<(StatusCode, Json<Sale>), ApiError>> {
    Noted(
        Wrote::AllSales,
        async move {
            let def = input
                .validate(|| format!("s-{}", uuid::Uuid::new_v4().simple()))
                .map_err(ApiError::InvalidRequest)?;
            tracing::Span::current().record("sale_id", def.id.as_str());
            let outcome =
                db_call(&state, schedule::schedule(&state.engine, &state.db, &def)).await?;
            let status = match outcome {
                schedule::Outcome::Created => {
                    tracing::info!(admin = %admin.subject, stock = def.stock, "sale scheduled");
                    StatusCode::CREATED
                }
                schedule::Outcome::Unchanged => StatusCode::OK,
            };
            Ok((status, Json(state.engine.sale(&def.id).await?)))
        }
        .await,
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SaleList {
    #[schema(value_type = Vec<Sale>)]
    sales: Vec<Shown>,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `?limit=` (default 100, at most 500) and `?cursor=` (a `next_cursor`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Sales per page.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,18}\\.[a-z0-9_-]{1,64}$")]
    cursor: Option<String>,
}

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

/// List sales, a page at a time, by start.
#[utoipa::path(get, path = "/v1/sales", operation_id = "listSales", tag = "sales",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sales", body = SaleList, links(
            ("GetSale" = (operation_id = "getSale", parameters(("sale_id" = "$response.body#/sales/0/id")))),
            ("Reserve" = (operation_id = "reserve", parameters(("sale_id" = "$response.body#/sales/0/id")))),
            ("Stream" = (operation_id = "streamSale", parameters(("sale_id" = "$response.body#/sales/0/id")))),
        )),
        (status = 422, description = "`invalid_request`: a `limit` or `cursor` out of range", body = Problem, content_type = PROBLEM),
    ))]
/// Public, answered from the gateway's shared view (`engine::live`), so a
/// crowd of readers costs Redis one read per sale per 100 ms.
pub async fn list(
    State(state): State<AppState>,
    PublicReader(ip): PublicReader,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SaleList>, ApiError> {
    let query = super::extract::listing(query)?;
    let (limit, after) = super::extract::page(query.limit, query.cursor.as_deref(), parse_cursor)?;
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

/// A sale with its live stock.
#[utoipa::path(get, path = "/v1/sales/{sale_id}", operation_id = "getSale", tag = "sales",
    params(SalePath),
    responses(
        (status = 200, description = "The sale", body = Sale, links(
            ("Reserve" = (operation_id = "reserve", parameters(("sale_id" = "$response.body#/id")))),
            ("Stream" = (operation_id = "streamSale", parameters(("sale_id" = "$response.body#/id")))),
        )),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = PROBLEM),
    ))]
pub async fn get(
    State(state): State<AppState>,
    PublicReader(ip): PublicReader,
    id: SaleId,
) -> Result<Json<Shown>, ApiError> {
    match state.live.sale(&state.engine, &id, Some(ip)).await {
        Err(e) if crate::usecases::archive::not_in_redis(&e) => {
            Ok(Json(Shown(Arc::new(archived(&state, &id, e).await?))))
        }
        found => Ok(Json(Shown(found?))),
    }
}

/// A sale Redis no longer holds: archived, it answers from Postgres.
pub(super) async fn archived(
    state: &AppState,
    id: &SaleId,
    not_found: crate::engine::EngineError,
) -> Result<Sale, ApiError> {
    super::db_call(state, crate::usecases::archive::sale(&state.db, id))
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

/// At least one field. `ends_at` must stay after the sale's `starts_at`,
/// and before the year 3000 (422 otherwise).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct SalePatch {
    /// Units added to (or, negative, taken from) the sale's total; never
    /// below what is held and sold (409 `insufficient_stock`).
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000, nullable = false)]
    stock_delta: Option<i64>,
    /// A new end: sooner ends the sale early, later extends it.
    #[serde(default, deserialize_with = "present_rfc3339")]
    #[schema(nullable = false)]
    ends_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    paused: Option<bool>,
    /// Adds or replaces the sale's waiting room, until the room opens
    /// (`queue.opens_at` reached: 422 after).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    queue: Option<WaitingRoomInput>,
}

/// The sale id of a path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its description is used: `SaleId` extracts it.
pub(super) struct SalePath {
    sale_id: SaleId,
}

/// Adjust a live sale (admin): stock, end, pause.
///
/// With an `Idempotency-Key`, the same key and body again answer the first
/// result and change nothing.
#[utoipa::path(patch, path = "/v1/sales/{sale_id}", operation_id = "adjustSale", tag = "sales",
    security(("bearer" = [])),
    params(SalePath, super::doc::IdempotencyKeyHeader),
    request_body = SalePatch,
    responses(
        (status = 200, description = "The sale after the change", body = Sale),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`insufficient_stock`: the total would fall below held + sold", body = Problem, content_type = PROBLEM),
        (status = 422, description = "`invalid_request`, `idempotency_key_reused`", body = Problem, content_type = PROBLEM),
    ))]
/// Recorded in Postgres as pending, applied once in Redis (by the
/// adjustment's id), then settled with the figures before and after; safe
/// to retry with an `Idempotency-Key` (see `crate::usecases::adjust`).
#[tracing::instrument(skip_all, fields(sale_id))]
pub async fn patch(
    State(state): State<AppState>,
    Admin(admin): Admin,
    sale_id: SaleId,
    IdempotencyKey(key): IdempotencyKey,
    Body(patch): Body<SalePatch>,
) -> Noted<Result<Json<adjust::Answer>, ApiError>> {
    Noted(
        Wrote::AllSales,
        async move {
            tracing::Span::current().record("sale_id", sale_id.as_str());
            let stock_delta = patch.stock_delta.unwrap_or(0);
            if stock_delta.abs() > MAX_UNITS {
                return Err(ApiError::InvalidRequest(format!(
                    "`stock_delta` must be within ±{MAX_UNITS}"
                )));
            }
            if patch.stock_delta.is_none()
                && patch.ends_at.is_none()
                && patch.paused.is_none()
                && patch.queue.is_none()
            {
                return Err(ApiError::InvalidRequest(
                    "give at least one of `stock_delta`, `ends_at`, `paused`, `queue`".into(),
                ));
            }
            let current = state.engine.sale(&sale_id).await?;
            let queue = patch
                .queue
                .map(|q| q.validate(current.starts_at))
                .transpose()
                .map_err(ApiError::InvalidRequest)?;
            if let Some(ends_at) = patch.ends_at {
                if ends_at <= current.starts_at {
                    return Err(ApiError::InvalidRequest(
                        "`ends_at` must be after `starts_at`".into(),
                    ));
                }
                if !crate::domain::in_years(ends_at) {
                    return Err(ApiError::InvalidRequest(crate::domain::YEARS.into()));
                }
            }
            let request = adjust::Request {
                sale_id: &sale_id,
                actor: &admin.subject,
                stock_delta,
                ends_at: patch.ends_at,
                paused: patch.paused,
                queue,
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
        .await,
    )
}
