//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the code:
//! each handler's `#[utoipa::path]` says its path, parameters, body,
//! answers and links; the types' `ToSchema` say their fields, patterns and
//! ranges. The router is built from the same annotations
//! (`utoipa_axum::routes!`), so a documented path is a routed one.
//!
//! The answers every operation shares come from the layers in front of the
//! handlers (the bearer extractor, the body and path extractors, the rate
//! limits, the engine's outages), so they are added here, from what each
//! operation declares, instead of being written again on every handler.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Header, OpenApi, RefOr};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::config::Settings;

/// The media type of every error.
pub const PROBLEM: &str = "application/problem+json";

/// An error (RFC 9457). `code` is the contract's stable machine code; the
/// codes each answer can carry are named in its description.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)] // The shape of `error::Problem`, which borrows its strings.
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    code: String,
    /// `already_confirmed` only: the existing order, with its `payment_ref`
    /// and `confirmed_by`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    order: Option<serde_json::Value>,
}

/// The optional `Idempotency-Key` header of a reserve and a PATCH.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its description is used: `IdempotencyKey` extracts it.
pub struct IdempotencyKeyHeader {
    /// 1 to 128 printable ASCII characters. The same key and request again
    /// answer the first result; another request under it is 422
    /// `idempotency_key_reused`.
    #[param(rename = "Idempotency-Key", pattern = "^[!-~]{1,128}$")]
    idempotency_key: Option<String>,
}

/// The `Admission-Token` header of a reserve behind a waiting room.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its description is used.
pub struct AdmissionTokenHeader {
    /// The `admission.token` of `GET /v1/sales/{sale_id}/queue/me` once
    /// admitted: one hold, by its customer, on this sale, before
    /// `admission.expires_at`. Without it a sale behind a live waiting room
    /// answers 409 `admission_required`; a token that is not valid, 409
    /// `admission_invalid`.
    #[param(rename = "Admission-Token")]
    admission_token: Option<String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "Flash-sale reservation gateway: reserve, confirm or release holds on a \
            sale's stock; no oversell. Every error is `application/problem+json` with a stable \
            `code`.",
    ),
    components(schemas(Problem, super::stream::StockEvent)),
    modifiers(&Bearer),
    tags(
        (name = "sales", description = "Sales: scheduled by an admin, read by anyone"),
        (name = "reservations", description = "Holds, confirms and releases of a customer"),
        (name = "queue", description = "A sale's waiting room: its verifiable order, joining, a buyer's place"),
        (name = "webhooks", description = "The store's endpoints for events (admin): secrets, deliveries, replays"),
        (name = "probes", description = "Health, readiness, metrics, this document"),
        (name = "pages", description = "HTML for people, when `http.pages` is on"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT: claims `sub` (the customer), `exp`, optional `role`")
                    .build(),
            ),
        );
    }
}

/// Completes the routed document: the shared answers, and the figures that
/// come from the configuration.
pub fn finish(api: &mut OpenApi, settings: &Settings) {
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    for (path, item) in api.paths.paths.iter_mut() {
        for op in operations(item) {
            shared_answers(path, op);
            object_only(op);
        }
    }
    let quantity = api
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("ReserveBody"));
    if let Some(RefOr::T(utoipa::openapi::Schema::Object(body))) = quantity {
        if let Some(RefOr::T(utoipa::openapi::Schema::Object(q))) =
            body.properties.get_mut("quantity")
        {
            q.maximum = Some(settings.engine.max_quantity.into());
        }
    }
}

/// A body whose fields are all optional may be left out (it reads as `{}`),
/// but when sent it is an object: utoipa writes `Option<Body>` as "the body
/// or null", and a null body is a 422 (the contract's hardening block). The
/// body stays optional; the null goes.
fn object_only(op: &mut Operation) {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    let Some(RefOr::T(body)) = op.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else {
            continue;
        };
        let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
            continue;
        };
        let is_null = |s: &&RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        if one.items.iter().any(|s| is_null(&s)) {
            content.schema = one.items.iter().find(|s| !is_null(s)).cloned();
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.patch.as_mut(),
        item.delete.as_mut(),
        item.put.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn shared_answers(path: &str, op: &mut Operation) {
    let api = path.starts_with("/v1/");
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_input =
        op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let answers = [
        (
            secured,
            "401",
            "`unauthorized`: a missing, malformed, expired or badly signed token",
            false,
        ),
        (
            has_input,
            "422",
            "`invalid_request`: a body, path, query or header out of range",
            false,
        ),
        (
            op.request_body.is_some(),
            "413",
            "`invalid_request`: the body is larger than `http.body_limit_bytes`",
            false,
        ),
        (api, "429", "`rate_limited`: over a rate limit", true),
        (
            api,
            "503",
            "`unavailable`: Redis or Postgres cannot serve for now, or the gateway is at capacity",
            true,
        ),
        (
            api,
            "500",
            "`internal`: a fault of flashsale itself, never caused by input",
            false,
        ),
    ];
    for (applies, status, description, retry_after) in answers {
        if applies && !op.responses.responses.contains_key(status) {
            op.responses.responses.insert(
                status.to_string(),
                RefOr::T(problem(description, retry_after)),
            );
        }
    }
}

fn problem(description: &str, retry_after: bool) -> Response {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM,
        Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            Problem::name(),
        )))),
    );
    if retry_after {
        let mut header = Header::new(u64::schema());
        header.description = Some("Seconds to wait before trying again".into());
        response = response.header("Retry-After", header);
    }
    response.build()
}
