//! Reservations: the hot path. A reserve is one EVALSHA; nothing here touches
//! Postgres.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Limited;
use super::error::ApiError;
use super::extract::{Body, IdempotencyKey};
use super::AppState;
use crate::domain::{Order, Reservation, ReservationId, SaleId};
use crate::engine::{ConfirmRequest, Extension, ReserveRequest, ServiceConfirm};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

#[tracing::instrument(level = "debug", skip_all, fields(sale_id, customer = %caller.subject))]
pub async fn reserve(
    State(state): State<AppState>,
    Limited(caller): Limited,
    sale_id: SaleId,
    IdempotencyKey(key): IdempotencyKey,
    Body(body): Body<ReserveBody>,
) -> Result<(StatusCode, Json<Reservation>), ApiError> {
    tracing::Span::current().record("sale_id", sale_id.as_str());
    let max = state.settings.engine.max_quantity;
    if body.quantity == 0 || body.quantity > max {
        return Err(ApiError::InvalidRequest(format!(
            "`quantity` must be 1 to {max}"
        )));
    }
    // The request is the path's sale and the body's quantity; the key is
    // already scoped to this customer and sale.
    let idempotency = key.as_deref().map(|k| (k, body.quantity.to_string()));
    let _permit = state.limits.enter_reserve()?;
    let reservation = state
        .engine
        .reserve(&ReserveRequest {
            sale_id: &sale_id,
            customer: &caller.subject,
            quantity: body.quantity,
            idempotency,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(reservation)))
}

/// Counts every reserve's outcome, once, whatever answered it (a limit in
/// an extractor, the in-flight bound, the engine): `held`, or the problem's
/// code, which `ApiError` leaves in the response's extensions.
pub(super) async fn count_outcome(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let res = next.run(req).await;
    let outcome = match res.extensions().get::<super::error::ProblemCode>() {
        Some(code) => code.0,
        None if res.status().is_success() => "held",
        None => "other",
    };
    crate::metrics::reserved(outcome);
    res
}

#[derive(Serialize)]
pub struct ReservationView {
    #[serde(flatten)]
    reservation: Reservation,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Order>,
}

pub async fn get(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
) -> Result<Json<ReservationView>, ApiError> {
    let sale = rid.sale();
    let owner = caller.owner_scope();
    let (reservation, order) = match state.engine.reservation(sale, &rid, owner).await {
        Err(e) if crate::archive::not_in_redis(&e) => {
            let (reservation, order) = archived(&state, sale, &rid, owner, e).await?;
            (reservation, Some(order))
        }
        found => found?,
    };
    Ok(Json(ReservationView { reservation, order }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    #[serde(default)]
    payment_ref: String,
}

/// A customer confirms their own hold (unless `auth.customer_confirm` is
/// off); a service confirms anyone's, and the order records which service.
#[tracing::instrument(level = "debug", skip_all, fields(customer = %caller.subject))]
pub async fn confirm(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
    Body(body): Body<ConfirmBody>,
) -> Result<Json<Order>, ApiError> {
    let sale = rid.sale();
    if body.payment_ref.len() > 128 {
        return Err(ApiError::InvalidRequest(
            "`payment_ref` must be at most 128 bytes".into(),
        ));
    }
    let confirmed = if caller.is_service() {
        state
            .engine
            .confirm_as_service(&ServiceConfirm {
                sale_id: sale,
                reservation_id: &rid,
                service: &caller.subject,
                payment_ref: &body.payment_ref,
            })
            .await
    } else {
        if !state.settings.auth.customer_confirm {
            return Err(ApiError::Forbidden(
                "only the store's backend (a service) confirms holds here",
            ));
        }
        state
            .engine
            .confirm(&ConfirmRequest {
                sale_id: sale,
                reservation_id: &rid,
                customer: &caller.subject,
                payment_ref: &body.payment_ref,
            })
            .await
    };
    match confirmed {
        Ok(c) => Ok(Json(c.order)),
        // Confirming again after the sale was archived: the same order.
        Err(e) if crate::archive::not_in_redis(&e) => {
            let (_, order) = archived(&state, sale, &rid, caller.owner_scope(), e).await?;
            Ok(Json(order))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    seconds: u32,
}

/// The longest single extension asked for; the sale's own limit (twice its
/// `hold_seconds` in all) is judged by the script.
const MAX_EXTEND_SECONDS: u32 = 86_400;

/// A service moves a hold's deadline `seconds` later.
#[tracing::instrument(level = "debug", skip_all, fields(service = %caller.subject))]
pub async fn extend(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
    Body(body): Body<ExtendBody>,
) -> Result<Json<Reservation>, ApiError> {
    if !caller.is_service() {
        return Err(ApiError::Forbidden(
            "only the store's backend (a service) extends holds",
        ));
    }
    if body.seconds == 0 || body.seconds > MAX_EXTEND_SECONDS {
        return Err(ApiError::InvalidRequest(format!(
            "`seconds` must be 1 to {MAX_EXTEND_SECONDS}"
        )));
    }
    match state.engine.extend(rid.sale(), &rid, body.seconds).await? {
        Extension::Extended(reservation) => Ok(Json(reservation)),
        Extension::PastLimit { latest } => Err(ApiError::InvalidRequest(format!(
            "a hold lives at most twice the sale's hold_seconds: its deadline can move to {} at the latest",
            crate::domain::rfc3339_ms(latest)
        ))),
    }
}

/// A reservation the engine does not know: the confirmed one of an archived
/// sale answers from its order; anything else keeps the engine's refusal.
async fn archived(
    state: &AppState,
    sale: &str,
    rid: &str,
    owner: Option<&str>,
    not_found: crate::engine::EngineError,
) -> Result<(Reservation, Order), ApiError> {
    super::db_call(
        state,
        crate::archive::reservation(&state.db, sale, rid, owner),
    )
    .await?
    .ok_or_else(|| not_found.into())
}

#[tracing::instrument(level = "debug", skip_all, fields(customer = %caller.subject))]
pub async fn release(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
) -> Result<Json<Reservation>, ApiError> {
    let sale = rid.sale();
    Ok(Json(
        state
            .engine
            .release(sale, &rid, caller.owner_scope())
            .await?,
    ))
}
