//! Bearer-token extractors: `Caller` for any signed-in caller, `Admin` for
//! the admin role, `Limited` for a caller of the reservation endpoints, held
//! to the per-customer and per-address rate limits (a service is not: it
//! acts for every buyer); `PublicReader` for the
//! anonymous reads, held to the per-address limit of public reads.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::auth::Identity;

/// Any caller with a valid token.
pub struct Caller(pub Identity);

/// A caller with `role = "admin"`.
pub struct Admin(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization must be `Bearer <token>`".into())
            })?;
        state
            .auth
            .verify(token)
            .await
            .map(Caller)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(id) = Caller::from_request_parts(parts, state).await?;
        if id.is_admin() {
            Ok(Admin(id))
        } else {
            Err(ApiError::Forbidden("this endpoint needs the admin role"))
        }
    }
}

/// A caller of the reservation endpoints, within its rate limits.
pub struct Limited(pub Identity);

impl FromRequestParts<AppState> for Limited {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(id) = Caller::from_request_parts(parts, state).await?;
        // The store's backend confirms for every buyer of a sale, from a
        // few addresses: the limits meant for one buyer (or one NAT of
        // buyers) would throttle the payments of all of them.
        if id.is_service() {
            return Ok(Limited(id));
        }
        let ip = super::client_ip(state, parts);
        if let Err(shed) = state.limits.check(&id.subject, ip) {
            return Err(shed.into());
        }
        Ok(Limited(id))
    }
}

/// A reader of the public endpoints (sales, a sale, the stream), within the
/// per-address limit of public reads; carries the client address, so the
/// shared view can show a writer its own writes.
pub struct PublicReader(pub std::net::IpAddr);

impl FromRequestParts<AppState> for PublicReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = super::client_ip(state, parts);
        state.limits.check_public(ip).map_err(|shed| {
            crate::metrics::public_read_limited();
            ApiError::from(shed)
        })?;
        Ok(PublicReader(ip))
    }
}
