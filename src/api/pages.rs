//! The pages a person looks at, served by the gateway itself: the buyer's
//! landing page of a sale and the on-call page. Plain HTML, CSS and a small
//! script embedded in the binary: no build step, no external resources, so
//! they work offline. They call the same public API as any client.

use axum::http::header;
use axum::response::{Html, IntoResponse};

use crate::domain::SaleId;

const SALE: &str = include_str!("pages/sale.html");
const OPS: &str = include_str!("pages/ops.html");
const OPENAPI: &str = include_str!("openapi.json");

/// The page of a sale; a malformed id is refused before any HTML is sent.
pub async fn sale(_: SaleId) -> Html<&'static str> {
    Html(SALE)
}

pub async fn ops() -> Html<&'static str> {
    Html(OPS)
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
