//! Extractors whose rejections are our problem+json errors, not axum's
//! plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::domain::{ReservationId, SaleId};
use crate::engine::Refusal;

/// JSON body, always an object. An empty body reads as `{}`, so endpoints
/// whose fields are all optional accept a bare POST. Any other JSON value
/// (`null`, an array, a number, a string) is a 422 before the handler runs:
/// serde's derived structs would take an array for an object by position
/// (`[2]` as a reserve of 2 units), so nothing is changed and no
/// `Idempotency-Key` recorded for a body that is not the object it must be.
/// An object must parse, with no unknown fields, or it is a 422 naming the
/// problem.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings.http.body_limit_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::InvalidRequest(format!("could not read the body: {rejection}"))
            }
        })?;
        let text: &[u8] = match bytes.trim_ascii().first() {
            None => b"{}",
            Some(b'{') => &bytes,
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "the body must be a JSON object".into(),
                ))
            }
        };
        serde_json::from_slice(text)
            .map(Body)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
    }
}

/// A path segment, as a string; validation is the handler's.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathId(p.0))
            .map_err(|e| ApiError::InvalidRequest(format!("invalid path: {e}")))
    }
}

/// The optional `Idempotency-Key` header: 1 to 128 printable ASCII
/// characters, or a 422.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()))
            .map(|k| IdempotencyKey(Some(k.to_string())))
            .ok_or_else(|| {
                ApiError::InvalidRequest(
                    "Idempotency-Key must be 1 to 128 printable ASCII characters".into(),
                )
            })
    }
}

/// The optional `Admission-Token` header of a reserve. Never refused here:
/// a token that cannot be one (too long, not text) goes on as one that
/// matches nothing, so the reserve script answers `admission_invalid` in
/// its place among the checks (after sold out and not live).
pub struct AdmissionToken(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for AdmissionToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(AdmissionToken(parts.headers.get("admission-token").map(
            |v| {
                v.to_str()
                    .ok()
                    .filter(|t| !t.is_empty() && t.len() <= 128)
                    .unwrap_or("-")
                    .to_string()
            },
        )))
    }
}

/// A sale id in the path: `[a-z0-9_-]{1,64}`, or a 422.
impl<S: Send + Sync> FromRequestParts<S> for SaleId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let PathId(id) = PathId::from_request_parts(parts, state).await?;
        SaleId::parse(id)
            .ok_or_else(|| ApiError::InvalidRequest("sale id must match [a-z0-9_-]{1,64}".into()))
    }
}

/// A reservation id in the path. Ids are opaque: one that does not name a
/// sale is simply not found.
impl<S: Send + Sync> FromRequestParts<S> for ReservationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let PathId(id) = PathId::from_request_parts(parts, state).await?;
        ReservationId::parse(id).ok_or(ApiError::Refused(Refusal::ReservationNotFound))
    }
}

/// Listings are pages of this many entries unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// The most a `limit` may ask.
pub const MAX_PAGE: usize = 500;

/// A listing's query string, or a 422 naming what is wrong with it.
pub(crate) fn listing<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query
        .map(|q| q.0)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {}", e.body_text())))
}

/// A listing's page: its size (`limit`, 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`]
/// when absent) and where it starts (after `cursor`, read by `parse`, which
/// knows only the cursors this listing gives), or a 422 naming which is
/// wrong.
pub(crate) fn page<'q, C>(
    limit: Option<u32>,
    cursor: Option<&'q str>,
    parse: impl Fn(&'q str) -> Option<C>,
) -> Result<(usize, Option<C>), ApiError> {
    let size = match limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&(n as usize)) => n as usize,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "`limit` must be 1 to {MAX_PAGE}"
            )))
        }
    };
    let after = match cursor {
        None => None,
        Some(c) => Some(parse(c).ok_or_else(|| {
            ApiError::InvalidRequest("`cursor` is not a cursor this API gave".into())
        })?),
    };
    Ok((size, after))
}
