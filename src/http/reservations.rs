//! Reservations: the hot path. A reserve is one script call, shared with
//! the other reserves of its sale that wait for one (group commit); nothing
//! here touches Postgres.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::bearer::Limited;
use super::doc::{Problem, PROBLEM};
use super::error::ApiError;
use super::extract::{AdmissionToken, Body, IdempotencyKey};
use super::read_view::{Noted, Wrote};
use super::AppState;
use crate::domain::{CustomerId, Order, Reservation, ReservationId, SaleId};
use crate::engine::{ConfirmRequest, Extension, ReserveRequest, ServiceConfirm};

/// An empty body asks for one unit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// At most `engine.max_quantity` (the document says the configured
    /// figure).
    #[serde(default = "one", deserialize_with = "crate::domain::whole")]
    #[schema(minimum = 1, maximum = 100, default = 1)]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// Hold units of a live sale for the caller, until `expires_at`.
///
/// With an `Idempotency-Key`, a retry answers the first hold.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations", operation_id = "reserve",
    tag = "reservations",
    security(("bearer" = [])),
    params(super::sales::SalePath, super::doc::IdempotencyKeyHeader, super::doc::AdmissionTokenHeader),
    request_body = Option<ReserveBody>,
    responses(
        (status = 201, description = "Held", body = Reservation, links(
            ("GetReservation" = (operation_id = "getReservation", parameters(("id" = "$response.body#/id")))),
            ("Confirm" = (operation_id = "confirm", parameters(("id" = "$response.body#/id")))),
            ("Release" = (operation_id = "release", parameters(("id" = "$response.body#/id")))),
            ("GetSale" = (operation_id = "getSale", parameters(("sale_id" = "$response.body#/sale_id")))),
            ("Extend" = (operation_id = "extend", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`sold_out`, `insufficient_stock`, `limit_exceeded`, `sale_not_live`, `admission_required`, `admission_invalid`", body = Problem, content_type = PROBLEM),
        (status = 422, description = "`invalid_request`, `idempotency_key_reused`", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(level = "debug", skip_all, fields(sale_id, customer = %caller.subject))]
pub async fn reserve(
    State(state): State<AppState>,
    Limited(caller): Limited,
    sale_id: SaleId,
    IdempotencyKey(key): IdempotencyKey,
    AdmissionToken(admission): AdmissionToken,
    Body(body): Body<ReserveBody>,
) -> Noted<Result<(StatusCode, Json<Reservation>), ApiError>> {
    Noted(
        Wrote::Sale(sale_id.clone()),
        async move {
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
                    admission: admission.as_deref(),
                })
                .await?;
            Ok((StatusCode::CREATED, Json(reservation)))
        }
        .await,
    )
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

/// A reservation, and its order once confirmed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    #[serde(flatten)]
    reservation: Reservation,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Order>,
}

/// A reservation: the caller's own, or any for an admin.
#[utoipa::path(get, path = "/v1/reservations/{id}", operation_id = "getReservation",
    tag = "reservations",
    security(("bearer" = [])),
    params(ReservationPath),
    responses(
        (status = 200, description = "The reservation", body = ReservationView, links(
            ("Confirm" = (operation_id = "confirm", parameters(("id" = "$response.body#/id")))),
            ("Release" = (operation_id = "release", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 404, description = "`reservation_not_found`: unknown, or another customer's", body = Problem, content_type = PROBLEM),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
) -> Result<Json<ReservationView>, ApiError> {
    let sale = &rid.sale_id();
    let owner = caller.owner_scope();
    let (reservation, order) = match state.engine.reservation(sale, &rid, owner).await {
        Err(e) if crate::usecases::archive::not_in_redis(&e) => {
            let (reservation, order) = archived(&state, sale, &rid, owner, e).await?;
            (reservation, Some(order))
        }
        found => found?,
    };
    Ok(Json(ReservationView { reservation, order }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// The payment's reference, kept with the order.
    #[serde(default)]
    #[schema(
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]*$"
    )]
    payment_ref: String,
}

/// The reservation id of a path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its description is used: `ReservationId` extracts it.
pub(super) struct ReservationPath {
    /// `<sale id>.<32 hex>`; any other text is simply not found.
    id: ReservationId,
}

/// Turn a hold into an order; again: the same order.
///
/// A customer confirms their own hold (unless `auth.customer_confirm` is
/// off: then 403); a service confirms anyone's, and the order records which
/// service (`confirmed_by`).
#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", operation_id = "confirm",
    tag = "reservations",
    security(("bearer" = [])),
    params(ReservationPath),
    request_body = Option<ConfirmBody>,
    responses(
        (status = 200, description = "The order", body = Order, links(
            ("GetReservation" = (operation_id = "getReservation", parameters(("id" = "$response.body#/reservation_id")))),
            ("Release" = (operation_id = "release", parameters(("id" = "$response.body#/reservation_id")))),
        )),
        (status = 403, description = "`forbidden`: a customer's confirm while `auth.customer_confirm` is off, or an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`reservation_not_found`", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`reservation_not_held`: released or expired; `already_confirmed`: confirmed with another `payment_ref` (the body's `order` carries the order, its `payment_ref` and `confirmed_by`)", body = Problem, content_type = PROBLEM),
        (status = 410, description = "`hold_expired`: past `expires_at`", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(level = "debug", skip_all, fields(customer = %caller.subject))]
pub async fn confirm(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
    Body(body): Body<ConfirmBody>,
) -> Noted<Result<Json<Order>, ApiError>> {
    Noted(
        Wrote::Sale(rid.sale_id()),
        async move {
            let sale = &rid.sale_id();
            if body.payment_ref.chars().count() > 128
                || !crate::domain::plain_text(&body.payment_ref)
            {
                return Err(ApiError::InvalidRequest(
                    "`payment_ref` must be at most 128 characters, no control or invisible format characters".into(),
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
                if caller.is_admin() {
                    return Err(ApiError::Forbidden(
                        "admins release holds; only the buyer or the store's backend (a service) confirms",
                    ));
                }
                if !state.settings.auth.customer_confirm() {
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
            let order = match confirmed {
                Ok(c) => c.order,
                // Confirming again after the sale was archived: the same order.
                Err(e) if crate::usecases::archive::not_in_redis(&e) => {
                    archived(&state, sale, &rid, caller.owner_scope(), e)
                        .await?
                        .1
                }
                Err(e) => return Err(e.into()),
            };
            // Compared exactly: a retry of the same payment is the same
            // order, and any other reference (the empty one too) is a second
            // payment the store must hear of.
            if order.payment_ref != body.payment_ref {
                return Err(ApiError::AlreadyConfirmed(Box::new(order)));
            }
            Ok(Json(order))
        }
        .await,
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// How much later the deadline moves. A hold lives at most twice the
    /// sale's `hold_seconds` in all (422 beyond).
    #[serde(deserialize_with = "crate::domain::whole")]
    #[schema(minimum = 1, maximum = 86_400)]
    seconds: u32,
}

/// The longest single extension asked for; the sale's own limit (twice its
/// `hold_seconds` in all) is judged by the script.
const MAX_EXTEND_SECONDS: u32 = 86_400;

/// A service moves a hold's deadline `seconds` later (a payment slower than
/// the hold).
///
/// Judged by the same clock and in the same step as expiry, so a hold still
/// ends confirmed xor expired.
#[utoipa::path(post, path = "/v1/reservations/{id}/extend", operation_id = "extend",
    tag = "reservations",
    security(("bearer" = [])),
    params(ReservationPath),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "The reservation with its new `expires_at`", body = Reservation, links(
            ("Confirm" = (operation_id = "confirm", parameters(("id" = "$response.body#/id")))),
            ("GetReservation" = (operation_id = "getReservation", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 403, description = "`forbidden`: only a service extends holds", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`reservation_not_found`", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`reservation_not_held`: confirmed, released or expired", body = Problem, content_type = PROBLEM),
        (status = 410, description = "`hold_expired`: past its deadline", body = Problem, content_type = PROBLEM),
        (status = 422, description = "`invalid_request`: `seconds` out of range, or past twice the sale's `hold_seconds`", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(level = "debug", skip_all, fields(service = %caller.subject))]
pub async fn extend(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
    Body(body): Body<ExtendBody>,
) -> Noted<Result<Json<Reservation>, ApiError>> {
    Noted(Wrote::Sale(rid.sale_id()), async move {
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
    match state.engine.extend(&rid.sale_id(), &rid, body.seconds).await? {
        Extension::Extended(reservation) => Ok(Json(reservation)),
        Extension::PastLimit { latest } => Err(ApiError::InvalidRequest(format!(
            "a hold lives at most twice the sale's hold_seconds: its deadline can move to {} at the latest",
            crate::domain::rfc3339_ms(latest)
        ))),
    }
    }
    .await)
}

/// A reservation the engine does not know: the confirmed one of an archived
/// sale answers from its order; anything else keeps the engine's refusal.
async fn archived(
    state: &AppState,
    sale: &SaleId,
    rid: &ReservationId,
    owner: Option<&CustomerId>,
    not_found: crate::engine::EngineError,
) -> Result<(Reservation, Order), ApiError> {
    super::db_call(
        state,
        crate::usecases::archive::reservation(&state.db, sale, rid, owner),
    )
    .await?
    .ok_or_else(|| not_found.into())
}

/// Give a hold back; again: 200 the same.
#[utoipa::path(delete, path = "/v1/reservations/{id}", operation_id = "release",
    tag = "reservations",
    security(("bearer" = [])),
    params(ReservationPath),
    responses(
        (status = 200, description = "Released", body = Reservation, links(
            ("GetReservation" = (operation_id = "getReservation", parameters(("id" = "$response.body#/id")))),
            ("Confirm" = (operation_id = "confirm", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 404, description = "`reservation_not_found`", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`reservation_not_held`: already confirmed", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(level = "debug", skip_all, fields(customer = %caller.subject))]
pub async fn release(
    State(state): State<AppState>,
    Limited(caller): Limited,
    rid: ReservationId,
) -> Noted<Result<Json<Reservation>, ApiError>> {
    Noted(
        Wrote::Sale(rid.sale_id()),
        async move {
            let sale = &rid.sale_id();
            Ok(Json(
                state
                    .engine
                    .release(sale, &rid, caller.owner_scope())
                    .await?,
            ))
        }
        .await,
    )
}
