//! Webhook endpoints (admin): the store's receivers of events, their
//! secrets, their deliveries log and replays.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::bearer::Admin;
use super::doc::{Problem, PROBLEM};
use super::error::ApiError;
use super::extract::{Body, PathId};
use super::{db_call, AppState};
use crate::domain::{present, present_rfc3339, rfc3339_ms};
use crate::store::{Delivery, Endpoint};
use crate::usecases::webhooks::{self, Patch, Replay};

/// An event type (the contract's "Events for the store").
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // Its schema only: bodies carry the types as text.
pub enum EventType {
    #[serde(rename = "reservation.confirmed")]
    ReservationConfirmed,
    #[serde(rename = "reservation.expired")]
    ReservationExpired,
    #[serde(rename = "reservation.released")]
    ReservationReleased,
    #[serde(rename = "sale.sold_out")]
    SaleSoldOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// An endpoint, without its secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Webhook {
    #[schema(format = "uuid")]
    id: String,
    url: String,
    /// The types it receives; null: every type, including types added later.
    #[schema(value_type = Option<Vec<EventType>>)]
    events: Option<Vec<String>>,
    status: WebhookStatus,
    /// Why it is disabled: `gone` (it answered 410), `admin` (a PATCH),
    /// `deleted`; null while enabled.
    disabled_reason: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// Until when the secret before the last rotation signs too; null
    /// before any rotation.
    #[schema(format = DateTime)]
    previous_secret_until: Option<String>,
    deliveries: DeliveryCounts,
}

/// Its deliveries now.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryCounts {
    pending: i64,
    failed: i64,
    /// When the oldest pending delivery was created; null when none is.
    #[schema(format = DateTime)]
    oldest_pending_at: Option<String>,
}

impl From<Endpoint> for Webhook {
    fn from(e: Endpoint) -> Webhook {
        Webhook {
            id: e.id.to_string(),
            url: e.url,
            events: e.events,
            status: if e.enabled {
                WebhookStatus::Enabled
            } else {
                WebhookStatus::Disabled
            },
            disabled_reason: e.disabled_reason,
            created_at: rfc3339_ms(e.created_at),
            previous_secret_until: e.previous_until.map(rfc3339_ms),
            deliveries: DeliveryCounts {
                pending: e.pending,
                failed: e.failed,
                oldest_pending_at: e.oldest_pending_at.map(rfc3339_ms),
            },
        }
    }
}

/// An endpoint with its secret: the only answers that show it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    webhook: Webhook,
    /// `whsec_` + base64 of the key's bytes, as Standard Webhooks libraries
    /// take it. Shown here only: keep it.
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]{32,}={0,2}$")]
    secret: String,
}

fn with_secret(
    (endpoint, secret): (Endpoint, crate::domain::webhook::Secret),
) -> WebhookWithSecret {
    WebhookWithSecret {
        webhook: endpoint.into(),
        secret: secret.reveal(),
    }
}

/// A webhook id in the path. Ids are opaque: one that is not a UUID is
/// simply not found.
pub struct WebhookId(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for WebhookId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let PathId(id) = PathId::from_request_parts(parts, state).await?;
        Uuid::parse_str(&id)
            .map(WebhookId)
            .map_err(|_| ApiError::WebhookNotFound)
    }
}

/// The webhook id of a path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its description is used: `WebhookId` extracts it.
pub(super) struct WebhookPath {
    /// The endpoint's id.
    #[param(format = "uuid")]
    id: String,
}

/// A new endpoint. Its `url` is `https` (unless `webhooks.allow_http`),
/// without user, password or fragment, and its host resolves to public
/// addresses only (unless `webhooks.allow_private_networks`): 422 otherwise.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    #[schema(format = "uri", max_length = 2048)]
    url: String,
    /// The types to receive, at least one; absent or null: every type.
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    events: Option<Vec<String>>,
}

/// Register an endpoint (admin).
///
/// The answer carries the endpoint's signing secret, shown only here and on
/// rotate.
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "createWebhook", tag = "webhooks",
    security(("bearer" = [])),
    request_body = WebhookInput,
    responses(
        (status = 201, description = "Registered, with its secret", body = WebhookWithSecret, links(
            ("GetWebhook" = (operation_id = "getWebhook", parameters(("id" = "$response.body#/id")))),
            ("PatchWebhook" = (operation_id = "patchWebhook", parameters(("id" = "$response.body#/id")))),
            ("RotateWebhook" = (operation_id = "rotateWebhook", parameters(("id" = "$response.body#/id")))),
            ("WebhookDeliveries" = (operation_id = "webhookDeliveries", parameters(("id" = "$response.body#/id")))),
            ("ReplayWebhook" = (operation_id = "replayWebhook", parameters(("id" = "$response.body#/id")))),
            ("DeleteWebhook" = (operation_id = "deleteWebhook", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(skip_all)]
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Body(input): Body<WebhookInput>,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    // The name resolves outside the database's time bound (it has its own).
    let new = webhooks::check_new(&state.settings, &input.url, input.events).await?;
    let made = db_call(&state, webhooks::create(&state.db, &state.settings, new)).await?;
    tracing::info!(admin = %admin.subject, webhook = %made.0.id, url = %made.0.url, "webhook endpoint registered");
    Ok((StatusCode::CREATED, Json(with_secret(made))))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    webhooks: Vec<Webhook>,
}

/// List the endpoints (admin), oldest first, without secrets.
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every endpoint not deleted", body = WebhookList, links(
            ("GetWebhook" = (operation_id = "getWebhook", parameters(("id" = "$response.body#/webhooks/0/id")))),
        )),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_): Admin,
) -> Result<Json<WebhookList>, ApiError> {
    let all = db_call(&state, crate::store::endpoints(&state.db)).await?;
    Ok(Json(WebhookList {
        webhooks: all.into_iter().map(Webhook::from).collect(),
    }))
}

/// An endpoint (admin), with its state and its deliveries' counts.
#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookPath),
    responses(
        (status = 200, description = "The endpoint", body = Webhook),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`webhook_not_found`: unknown or deleted", body = Problem, content_type = PROBLEM),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_): Admin,
    WebhookId(id): WebhookId,
) -> Result<Json<Webhook>, ApiError> {
    let endpoint = db_call(&state, webhooks::get(&state.db, id)).await?;
    Ok(Json(endpoint.into()))
}

/// At least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct WebhookPatch {
    /// Checked as on registration.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, format = "uri", max_length = 2048)]
    url: Option<String>,
    /// The types to receive, at least one; null: every type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    events: Option<Option<Vec<String>>>,
    /// `false` stops deliveries (`disabled_reason: "admin"`); `true`
    /// resumes them and clears `disabled_reason`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
}

/// Change an endpoint (admin): its URL, its types, enabled or not.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", operation_id = "patchWebhook", tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookPath),
    request_body = WebhookPatch,
    responses(
        (status = 200, description = "The endpoint after the change", body = Webhook),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`webhook_not_found`: unknown or deleted", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(skip_all)]
pub async fn patch(
    State(state): State<AppState>,
    Admin(admin): Admin,
    WebhookId(id): WebhookId,
    Body(patch): Body<WebhookPatch>,
) -> Result<Json<Webhook>, ApiError> {
    let patch = Patch {
        url: patch.url,
        events: patch.events,
        enabled: patch.enabled,
    };
    let patch = webhooks::check_patch(&state.settings, patch).await?;
    let endpoint = db_call(&state, webhooks::update(&state.db, id, &patch)).await?;
    tracing::info!(admin = %admin.subject, webhook = %id, enabled = endpoint.enabled, "webhook endpoint changed");
    Ok(Json(endpoint.into()))
}

/// Delete an endpoint (admin): nothing more is delivered to it; its pending
/// deliveries end as `failed`.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookPath),
    responses(
        (status = 200, description = "Deleted; the endpoint as it was", body = Webhook),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`webhook_not_found`: unknown or deleted already", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(skip_all)]
pub async fn delete(
    State(state): State<AppState>,
    Admin(admin): Admin,
    WebhookId(id): WebhookId,
) -> Result<Json<Webhook>, ApiError> {
    let endpoint = db_call(&state, webhooks::delete(&state.db, id)).await?;
    tracing::info!(admin = %admin.subject, webhook = %id, "webhook endpoint deleted");
    Ok(Json(endpoint.into()))
}

/// A new secret for an endpoint (admin).
///
/// The previous secret signs too (a second signature) for
/// `webhooks.rotation_grace_seconds`, so the receiver can switch over.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", operation_id = "rotateWebhook", tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookPath),
    responses(
        (status = 200, description = "The endpoint with its new secret", body = WebhookWithSecret),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`webhook_not_found`: unknown or deleted", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(skip_all)]
pub async fn rotate(
    State(state): State<AppState>,
    Admin(admin): Admin,
    WebhookId(id): WebhookId,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    let rotated = db_call(&state, webhooks::rotate(&state.db, &state.settings, id)).await?;
    tracing::info!(admin = %admin.subject, webhook = %id, "webhook secret rotated");
    Ok(Json(with_secret(rotated)))
}

/// One delivery of one event to the endpoint.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The event's id: the `webhook-id` of every attempt.
    event_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    kind: String,
    status: DeliveryStatus,
    attempts: i32,
    /// The HTTP status of the last attempt; null if none answered.
    last_status_code: Option<i32>,
    last_error: Option<String>,
    #[schema(format = DateTime)]
    next_attempt_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    deliveries: Vec<DeliveryView>,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `?status=`, `?limit=` (default 100, at most 500) and `?cursor=` (a
/// `next_cursor`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state.
    status: Option<DeliveryStatus>,
    /// Deliveries per page.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,20}\\.[!-~]{1,512}$")]
    cursor: Option<String>,
}

/// A position in the log's order (newest first): the last delivery of the
/// page, `<created_at in µs>.<event id>`. Opaque to clients; every delivery
/// present from the first page to the last is seen once.
fn cursor_of(d: &Delivery) -> String {
    format!(
        "{}.{}",
        d.created_at.unix_timestamp_nanos() / 1000,
        d.event_id
    )
}

fn parse_cursor(text: &str) -> Option<(OffsetDateTime, &str)> {
    let (us, id) = text.split_once('.')?;
    let us: i64 = us.parse().ok()?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()?;
    (!id.is_empty() && id.len() <= 512).then_some((at, id))
}

/// An endpoint's deliveries log (admin), newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "webhookDeliveries", tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookPath, DeliveriesQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryList),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`webhook_not_found`: unknown or deleted", body = Problem, content_type = PROBLEM),
    ))]
pub async fn deliveries(
    State(state): State<AppState>,
    Admin(_): Admin,
    WebhookId(id): WebhookId,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let query = super::extract::listing(query)?;
    let (limit, after) = super::extract::page(query.limit, query.cursor.as_deref(), parse_cursor)?;
    db_call(&state, webhooks::get(&state.db, id)).await?;
    // One more than the page: whether a next page exists.
    let mut rows = db_call(
        &state,
        crate::store::deliveries(
            &state.db,
            id,
            query.status.map(DeliveryStatus::as_str),
            after,
            limit as i64 + 1,
        ),
    )
    .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = more.then(|| rows.last().map(cursor_of)).flatten();
    let deliveries = rows
        .into_iter()
        .map(|d| DeliveryView {
            status: match d.status.as_str() {
                "delivered" => DeliveryStatus::Delivered,
                "failed" => DeliveryStatus::Failed,
                _ => DeliveryStatus::Pending,
            },
            event_id: d.event_id,
            kind: d.event_type,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            next_attempt_at: rfc3339_ms(d.next_attempt_at),
        })
        .collect();
    Ok(Json(DeliveryList {
        deliveries,
        next_cursor,
    }))
}

/// The events to deliver again.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// From this time (and never before the endpoint was registered).
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    /// Up to this time, inclusive; absent: until now.
    #[serde(default, deserialize_with = "present_rfc3339")]
    #[schema(nullable = false)]
    until: Option<OffsetDateTime>,
    /// Only the events whose delivery is in this state; absent: every event
    /// of the window, those not delivered yet included.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    status: Option<DeliveryStatus>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// The deliveries set pending again (or created).
    queued: u64,
}

/// Deliver again (admin) the retained events of the endpoint's current
/// types in a window, with their original `webhook-id`.
///
/// Earlier attempts stay in the log.
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", operation_id = "replayWebhook", tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookPath),
    request_body = ReplayBody,
    responses(
        (status = 202, description = "Queued", body = Queued),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = PROBLEM),
        (status = 404, description = "`webhook_not_found`: unknown or deleted", body = Problem, content_type = PROBLEM),
        (status = 409, description = "`webhook_disabled`: enable the endpoint first", body = Problem, content_type = PROBLEM),
    ))]
#[tracing::instrument(skip_all)]
pub async fn replay(
    State(state): State<AppState>,
    Admin(admin): Admin,
    WebhookId(id): WebhookId,
    Body(body): Body<ReplayBody>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let replay = Replay {
        since: body.since,
        until: body.until,
        status: body.status.map(|s| s.as_str().to_string()),
    };
    let queued = db_call(&state, webhooks::replay(&state.db, id, &replay)).await?;
    tracing::info!(admin = %admin.subject, webhook = %id, queued, "webhook replay");
    Ok((StatusCode::ACCEPTED, Json(Queued { queued })))
}
