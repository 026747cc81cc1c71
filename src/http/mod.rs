//! The HTTP API of the contract: routing, shared state, middleware.
//!
//! A request flows: body limit and request id (middleware) -> extractors
//! (bearer token, ids, JSON body; their rejections are already
//! problem+json) -> handler (one file per resource) -> one engine call
//! (Redis) or, for admin writes, a use case over the store (Postgres) and
//! the engine -> `ApiError` maps any failure to HTTP (`error.rs`, the only
//! place that knows a status code) -> `read_view` notes what a write
//! touched, so the writer reads it back.

mod assets;
mod bearer;
mod doc;
mod error;
mod extract;
mod headers;
mod health;
pub(crate) mod limits;
mod pages;
mod read_view;
mod reservations;
mod sales;
pub(crate) mod server;
mod stream;
mod waiting_room;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::Router;
use sqlx::PgPool;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
use crate::config::Settings;
use crate::engine::Engine;
use crate::http::limits::Limits;
pub use error::ApiError;
pub use health::watch_services;

/// What every request shares, behind one `Arc`: axum clones the state into
/// each route and middleware per request, and one reference count is all
/// that clone should cost (the handles inside have counts of their own,
/// which a per-request clone of each would touch one by one).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub engine: Engine,
    pub db: PgPool,
    pub auth: Arc<Auth>,
    pub limits: Arc<Limits>,
    pub live: crate::engine::live::Live,
    pub settings: Arc<Settings>,
    /// Places for open event streams (`http.max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled at shutdown: open streams end, so the drain can finish.
    pub stop: tokio_util::sync::CancellationToken,
    /// `/readyz`'s last probe.
    ready: Arc<health::ReadyCache>,
    /// `/openapi.json`, made once when the router is built.
    document: std::sync::OnceLock<pages::Document>,
}

impl AppState {
    pub fn new(
        settings: Arc<Settings>,
        auth: Arc<Auth>,
        engine: Engine,
        db: PgPool,
        limits: Arc<Limits>,
        stop: tokio_util::sync::CancellationToken,
    ) -> AppState {
        AppState(Arc::new(Shared {
            auth,
            engine,
            db,
            limits,
            live: Default::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(settings.http.max_streams)),
            stop,
            settings,
            ready: Default::default(),
            document: Default::default(),
        }))
    }
}

/// Bounds a Postgres call by `database.timeout_ms`, so a stalled database is
/// a prompt 503 and never a hung request.
pub(crate) async fn db_call<T, E: Into<ApiError>>(
    state: &AppState,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(state.settings.database_timeout(), fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ApiError::Unavailable("postgres: timed out".into())),
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.settings.http.body_limit_bytes;
    let cors = cors(&state.settings.http.cors_allowed_origins);
    let (api, probes, document) = routes(&state.settings);
    // Made with the routes, after the state: set once here.
    let _ = state.document.set(document);
    // The API's routes get the whole stack: read-your-writes, latency by
    // route, the body limit and a span per request. The probes need none of
    // it, and a load balancer's or Prometheus's poll should cost what axum
    // costs: they join after those layers, beside the fallbacks, and share
    // only what every answer carries (the request id, `nosniff`).
    api.route_layer(middleware::from_fn_with_state(state.clone(), read_view::note_writes))
        .route_layer(middleware::from_fn(time_request))
        .layer(DefaultBodyLimit::max(limit))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .merge(probes)
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(tower::util::option_layer(cors))
        .layer(headers::answers())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds))
        .layer(tower::util::MapRequestLayer::new(drop_foreign_request_id))
        .with_state(state)
}

/// Every route, each from its handler's `#[utoipa::path]`: the API's, the
/// probes' (`/healthz`, `/readyz`, `/metrics`), and the document they make.
fn routes(settings: &Settings) -> (Router<AppState>, Router<AppState>, pages::Document) {
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    let (schemas, paths, reserve) = routes!(reservations::reserve);
    let reserve = reserve.route_layer(middleware::from_fn(reservations::count_outcome));
    let mut router = OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(sales::create, sales::list))
        .routes(routes!(sales::get, sales::patch))
        .routes(routes!(stream::stream))
        .routes(routes!(waiting_room::public, waiting_room::join))
        .routes(routes!(waiting_room::me))
        .routes((schemas, paths, reserve))
        .routes(routes!(reservations::get, reservations::release))
        .routes(routes!(reservations::confirm))
        .routes(routes!(reservations::extend))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::patch, webhooks::delete))
        .routes(routes!(webhooks::rotate))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::replay))
        .routes(routes!(pages::openapi));
    if settings.http.pages {
        let (schemas, paths, sale) = routes!(pages::sale);
        let sale = sale.route_layer(headers::landing_page(&settings.http.frame_ancestors));
        let (ops_schemas, ops_paths, ops) = routes!(pages::ops);
        let ops = ops.route_layer(headers::ops_page());
        router = router
            .routes((schemas, paths, sale))
            .routes((ops_schemas, ops_paths, ops));
    }
    let (mut router, mut api) = router.split_for_parts();
    if settings.http.pages {
        router = router.merge(assets::routes());
    }
    let (probes, probe_paths) = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .split_for_parts();
    api.merge(probe_paths);
    doc::finish(&mut api, settings);
    let json = api
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"the document did not serialize: {e}\"}}"));
    (router, probes, pages::Document(json.into()))
}

/// Browsers on the configured origins may call every path with the headers
/// the API uses, and read `Retry-After`. No origins: no CORS layer at all.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("admission-token"),
            ])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Request latency by route (the matched pattern, not the raw path, so the
/// label set stays small) and status.
async fn time_request(req: Request, next: Next) -> axum::response::Response {
    use crate::metrics::label;
    use axum::http::Method;
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |p| label(p.as_str()));
    // Any method string can reach a matched path; only the ones we route
    // become labels.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let res = next.run(req).await;
    let status = label(res.status().as_str());
    crate::metrics::request(route, method, status, started.elapsed());
    res
}

/// The client address of a request: the peer, or what a trusted proxy says.
pub(crate) fn client_ip(state: &AppState, parts: &axum::http::request::Parts) -> std::net::IpAddr {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    state.limits.client_ip(peer, &parts.headers)
}

/// Request ids made here: random (a UUID's 122 bits), so an id says
/// nothing of how many requests came before it, as a counter would.
#[derive(Clone, Copy)]
struct RequestIds;

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
        axum::http::HeaderValue::from_str(id)
            .ok()
            .map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only when it is 1 to 64 of
/// `[A-Za-z0-9._:-]`: it is echoed, logged and searched for, and must not
/// carry anything a log reader or a terminal would interpret. Otherwise it
/// is dropped here and replaced by one of ours.
fn drop_foreign_request_id(mut req: Request) -> Request {
    let keep = req.headers().get_all(REQUEST_ID).iter().count() == 1
        && req.headers().get(REQUEST_ID).is_some_and(|v| {
            let b = v.as_bytes();
            (1..=64).contains(&b.len())
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        });
    if !keep {
        req.headers_mut().remove(REQUEST_ID);
    }
    req
}

const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// Serves until `state.stop` is cancelled, then drains in-flight requests
/// (`crate::http::server`: header timeout, connection caps).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    edge: crate::http::server::Edge,
) -> std::io::Result<()> {
    let stop = state.stop.clone();
    crate::http::server::run(listener, router(state), edge, stop).await
}
