//! The one place where failures become HTTP: every error is
//! `application/problem+json` (RFC 9457) with a stable `code` from the
//! contract. Infrastructure failures are logged here, once, and reach the
//! client only as an opaque 503.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::{EngineError, Refusal};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    /// Signed in, but not allowed this call; says what it needs.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A refusal of the contract: its code and words come from the one
    /// table in `engine::Refusal`, its status from [`refusal_status`].
    #[error("{}", .0.message())]
    Refused(Refusal),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("a backing service is unavailable")]
    Unavailable(String),
    #[error("the gateway is at capacity; retry shortly")]
    Overloaded,
    #[error("internal error")]
    Internal(String),
    #[error("no such webhook endpoint")]
    WebhookNotFound,
    #[error("the endpoint is disabled: enable it (PATCH {{\"enabled\": true}}) to replay")]
    WebhookDisabled,
    /// A confirm with another payment reference than the order's: the
    /// store took a second payment for an order that already exists.
    #[error("the reservation is already confirmed, with another payment_ref")]
    AlreadyConfirmed(Box<crate::domain::Order>),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Refused(r) => r.into(),
            EngineError::Unavailable(why) => ApiError::Unavailable(format!("redis: {why}")),
            e @ EngineError::Fault { .. } => ApiError::Internal(e.to_string()),
            EngineError::Corrupt(why) => ApiError::Internal(format!("redis reply: {why}")),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::Refused(r)
    }
}

impl From<crate::http::limits::Shed> for ApiError {
    fn from(s: crate::http::limits::Shed) -> Self {
        match s {
            crate::http::limits::Shed::RateLimited(wait) => ApiError::RateLimited {
                // Whole seconds, rounded up: never invite a retry too early.
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            },
            crate::http::limits::Shed::Overloaded => ApiError::Overloaded,
        }
    }
}

impl From<crate::usecases::waiting_room::WaitingRoomError> for ApiError {
    fn from(e: crate::usecases::waiting_room::WaitingRoomError) -> Self {
        match e {
            crate::usecases::waiting_room::WaitingRoomError::Engine(e) => e.into(),
            crate::usecases::waiting_room::WaitingRoomError::Store(e) => e.into(),
        }
    }
}

impl From<crate::usecases::schedule::ScheduleError> for ApiError {
    fn from(e: crate::usecases::schedule::ScheduleError) -> Self {
        match e {
            crate::usecases::schedule::ScheduleError::Conflict => Refusal::SaleConflict.into(),
            crate::usecases::schedule::ScheduleError::Store(e) => e.into(),
            crate::usecases::schedule::ScheduleError::Engine(e) => e.into(),
        }
    }
}

impl From<crate::usecases::adjust::AdjustError> for ApiError {
    fn from(e: crate::usecases::adjust::AdjustError) -> Self {
        use crate::usecases::adjust::AdjustError as A;
        match e {
            A::Refused(r) => r.into(),
            A::Engine(e) => e.into(),
            A::Store(e) => e.into(),
            e @ (A::StoreTimedOut(_) | A::KeptVoided(_)) => ApiError::Unavailable(e.to_string()),
            e @ A::BadOutcome(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::usecases::webhooks::WebhookError> for ApiError {
    fn from(e: crate::usecases::webhooks::WebhookError) -> Self {
        use crate::usecases::webhooks::WebhookError as W;
        match e {
            W::NotFound => ApiError::WebhookNotFound,
            W::Disabled => ApiError::WebhookDisabled,
            W::Invalid(why) => ApiError::InvalidRequest(why),
            W::Store(e) => e.into(),
            W::Config(why) => ApiError::Internal(why),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A Postgres that refused the data itself will refuse it again.
            StoreError::Postgres(ref db) if crate::store::is_permanent(db) => {
                ApiError::Internal(e.to_string())
            }
            StoreError::Postgres(_) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The status the contract answers each refusal with: the engine says why
/// it refused, the API what that means in HTTP.
pub fn refusal_status(r: Refusal) -> StatusCode {
    use Refusal::*;
    match r {
        SaleNotFound | ReservationNotFound | WaitingRoomNotFound | NotInWaitingRoom => {
            StatusCode::NOT_FOUND
        }
        SaleNotLive | LimitExceeded | SoldOut | InsufficientStock | ReservationNotHeld
        | SaleConflict | AdmissionRequired | AdmissionInvalid | WaitingRoomNotOpen => {
            StatusCode::CONFLICT
        }
        IdempotencyKeyReused | WaitingRoomOpened => StatusCode::UNPROCESSABLE_ENTITY,
        HoldExpired => StatusCode::GONE,
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            Refused(r) => refusal_status(*r),
            AlreadyConfirmed(_) => StatusCode::CONFLICT,
            RouteNotFound | WebhookNotFound => StatusCode::NOT_FOUND,
            WebhookDisabled => StatusCode::CONFLICT,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            InvalidRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Unavailable(_) | Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's machine code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized(_) => "unauthorized",
            Forbidden(_) => "forbidden",
            Refused(r) => r.code(),
            AlreadyConfirmed(_) => "already_confirmed",
            RouteNotFound => "not_found",
            WebhookNotFound => "webhook_not_found",
            WebhookDisabled => "webhook_disabled",
            MethodNotAllowed => "method_not_allowed",
            // An oversized body is an out-of-range body: the contract's code,
            // with the status HTTP clients expect.
            InvalidRequest(_) | PayloadTooLarge(_) => "invalid_request",
            RateLimited { .. } => "rate_limited",
            Unavailable(_) | Overloaded => "unavailable",
            Internal(_) => "internal",
        }
    }
}

/// The contract code of an error response, for middleware that counts
/// outcomes without parsing bodies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProblemCode(pub &'static str);

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    /// `already_confirmed`: the order as it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<ExistingOrder<'a>>,
}

/// An order with the payment it carries, for the one answer that shows it.
#[derive(Serialize)]
struct ExistingOrder<'a> {
    #[serde(flatten)]
    order: &'a crate::domain::Order,
    payment_ref: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Unavailable(why) => {
                tracing::warn!(error = %why, "backing service unavailable");
                "a backing service is unavailable; retry shortly".to_string()
            }
            ApiError::Internal(why) => {
                tracing::error!(error = %why, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let code = self.code();
        let body = Problem {
            kind: format!("https://flashsale.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            code,
            order: match &self {
                ApiError::AlreadyConfirmed(order) => Some(ExistingOrder {
                    order,
                    payment_ref: &order.payment_ref,
                }),
                _ => None,
            },
        };
        let mut res = (status, axum::Json(body)).into_response();
        res.extensions_mut().insert(ProblemCode(code));
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match self {
            ApiError::RateLimited { retry_after_secs } => Some(retry_after_secs.max(1)),
            ApiError::Unavailable(_) | ApiError::Overloaded => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
