//! The pages a person looks at, served by the gateway itself: the buyer's
//! landing page of a sale and the on-call page. Plain HTML, CSS and a small
//! script embedded in the binary: no build step, no external resources, so
//! they work offline. They call the same public API as any client.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};

use super::AppState;

use super::doc::{Problem, PROBLEM};
use crate::domain::SaleId;

const SALE: &str = include_str!("pages/sale.html");
const OPS: &str = include_str!("pages/ops.html");

/// The landing page of a sale (HTML); a malformed id is refused before any
/// HTML is sent.
#[utoipa::path(get, path = "/sales/{sale_id}", operation_id = "salePage", tag = "pages",
    params(super::sales::SalePath),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 422, description = "`invalid_request`: not a sale id", body = Problem, content_type = PROBLEM),
    ))]
pub async fn sale(_: SaleId) -> Html<&'static str> {
    Html(SALE)
}

/// The on-call page (HTML); its data needs an admin token.
#[utoipa::path(get, path = "/ops", operation_id = "opsPage", tag = "pages",
    responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn ops() -> Html<&'static str> {
    Html(OPS)
}

/// The document itself, made once when the router is built.
#[derive(Clone)]
pub(super) struct Document(pub Arc<str>);

/// This document: OpenAPI 3.1, generated from the handlers and their types.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "probes",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value)))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    let doc = state.document.get().map_or("{}", |d| &d.0);
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
}
