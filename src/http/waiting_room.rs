//! The waiting room of a sale: its public view, joining, and a buyer's
//! place. The rules are `crate::usecases::waiting_room`'s; these are the HTTP faces.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::bearer::{Caller, Limited, PublicReader};
use super::doc::{Problem, PROBLEM};
use super::error::ApiError;
use super::{db_call, AppState};
use crate::domain::SaleId;
use crate::engine::Refusal;
use crate::usecases::waiting_room::{self, MyPlace, PublicWaitingRoom, TicketView};

/// A sale's waiting room in public: its seed's hash from the opening, the
/// seed and member count from the seal, so anyone can recompute every
/// position (`permutation` names the function).
#[utoipa::path(get, path = "/v1/sales/{sale_id}/queue", operation_id = "getQueue", tag = "queue",
    params(super::sales::SalePath),
    responses(
        (status = 200, description = "The waiting room", body = PublicWaitingRoom),
        (status = 404, description = "`sale_not_found`, `queue_not_found`", body = Problem, content_type = PROBLEM),
    ))]
pub async fn public(
    State(state): State<AppState>,
    PublicReader(_): PublicReader,
    sale_id: SaleId,
) -> Result<Json<PublicWaitingRoom>, ApiError> {
    match state.engine.waiting_room(&sale_id, None).await {
        Err(e) if crate::usecases::archive::not_in_redis(&e) => {
            // Archived: the order stays verifiable from what Postgres keeps.
            let sale = super::sales::archived(&state, &sale_id, e).await?;
            let kept = db_call(&state, crate::store::waiting_room(&state.db, &sale_id)).await?;
            let kept = kept.ok_or(ApiError::Refused(Refusal::WaitingRoomNotFound))?;
            Ok(Json(waiting_room::archived(&kept, sale.starts_at)))
        }
        found => Ok(Json(waiting_room::public(&found?))),
    }
}

/// Join a sale's waiting room (a customer).
///
/// 201 a new ticket; 200 the customer's active ticket (waiting, or
/// admitted and not expired). Once its admission is used or expired,
/// joining again gives a new ticket at the back.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/queue", operation_id = "joinQueue", tag = "queue",
    security(("bearer" = [])),
    params(super::sales::SalePath),
    responses(
        (status = 201, description = "A new ticket", body = TicketView, links(
            ("MyPlace" = (operation_id = "myPlace", parameters(("sale_id" = "$request.path.sale_id")))),
        )),
        (status = 200, description = "The customer's active ticket", body = TicketView),
        (status = 404, description = "`sale_not_found`, `queue_not_found`", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`queue_not_open`: before `queue.opens_at` or after the sale", body = Problem, content_type = PROBLEM),
    ))]
pub async fn join(
    State(state): State<AppState>,
    Limited(caller): Limited,
    sale_id: SaleId,
) -> Result<(StatusCode, Json<TicketView>), ApiError> {
    // Postgres is touched only by the join that opens the room.
    let (ticket, new) = db_call(
        &state,
        waiting_room::join(&state.engine, &state.db, &sale_id, &caller.subject),
    )
    .await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ticket)))
}

/// The caller's place in a sale's waiting room, and their admission token
/// once admitted.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/queue/me", operation_id = "myPlace", tag = "queue",
    security(("bearer" = [])),
    params(super::sales::SalePath),
    responses(
        (status = 200, description = "The caller's place", body = MyPlace, links(
            ("Reserve" = (operation_id = "reserve", parameters(("sale_id" = "$request.path.sale_id")))),
        )),
        (status = 404, description = "`sale_not_found`, `queue_not_found`, `not_in_queue`", body = Problem, content_type = PROBLEM),
    ))]
pub async fn me(
    State(state): State<AppState>,
    // A read that waiting buyers repeat: held to the per-address limit of
    // public reads, not to the reserve budget, so buyers behind one NAT
    // polling their places never use up that address's reserves.
    PublicReader(_): PublicReader,
    Caller(caller): Caller,
    sale_id: SaleId,
) -> Result<Json<MyPlace>, ApiError> {
    let room = state
        .engine
        .waiting_room(&sale_id, Some(&caller.subject))
        .await?;
    waiting_room::my_place(&room)
        .map(Json)
        .ok_or(ApiError::Refused(Refusal::NotInWaitingRoom))
}
