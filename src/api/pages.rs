//! The pages a person looks at, served by the gateway itself: the buyer's
//! landing page of a sale and the on-call page. Plain HTML, CSS and a small
//! script embedded in the binary: no build step, no external resources, so
//! they work offline. They call the same public API as any client.

use axum::http::header;
use axum::response::{Html, IntoResponse};

use super::error::ApiError;
use super::extract::PathId;
use super::sales::sale_id;

const SALE: &str = include_str!("pages/sale.html");
const OPS: &str = include_str!("pages/ops.html");
const OPENAPI: &str = include_str!("openapi.json");

pub async fn sale(id: PathId) -> Result<Html<&'static str>, ApiError> {
    sale_id(id)?;
    Ok(Html(SALE))
}

pub async fn ops() -> Html<&'static str> {
    Html(OPS)
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
