//! The pages' scripts and styles, served as files from the binary: the
//! pages' Content-Security-Policy (`default-src 'self'`) refuses inline
//! `<script>`, `<style>` and `style=`, so nothing of them is inline.
//!
//! They are not in the OpenAPI document: they are parts of the pages, not
//! API, and the document's paths are the contract's table (tests/api/openapi.rs).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const SALE_JS: &str = include_str!("pages/sale.js");
const SALE_CSS: &str = include_str!("pages/sale.css");
const OPS_JS: &str = include_str!("pages/ops.js");
const OPS_CSS: &str = include_str!("pages/ops.css");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The files under stable paths, routed only when `http.pages` is on.
pub(super) fn routes() -> Router<AppState> {
    let file = |content_type: &'static str, body: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, content_type)], body).into_response() })
    };
    Router::new()
        .route("/assets/sale.js", file(JS, SALE_JS))
        .route("/assets/sale.css", file(CSS, SALE_CSS))
        .route("/assets/ops.js", file(JS, OPS_JS))
        .route("/assets/ops.css", file(CSS, OPS_CSS))
}
