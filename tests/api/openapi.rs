//! The API document (`GET /openapi.json`) is generated from the router's own
//! handlers: every path the contract names is in it, every documented
//! operation is routed, nothing else is routed on its paths, and its links
//! and references lead somewhere. schemathesis (scripts/schemathesis.sh)
//! then checks the answers against it.

use std::collections::BTreeSet;

use crate::common::{spawn_app, spawn_app_with, TestApp};
use serde_json::Value;

/// The contract's table of paths (CONTRACT.md, "HTTP API").
const CONTRACT_PATHS: [&str; 20] = [
    "/v1/sales",
    "/v1/sales/{sale_id}",
    "/v1/sales/{sale_id}/stream",
    "/v1/sales/{sale_id}/reservations",
    "/v1/reservations/{id}",
    "/v1/reservations/{id}/confirm",
    "/v1/reservations/{id}/extend",
    "/v1/sales/{sale_id}/queue",
    "/v1/sales/{sale_id}/queue/me",
    "/v1/webhooks",
    "/v1/webhooks/{id}",
    "/v1/webhooks/{id}/rotate",
    "/v1/webhooks/{id}/deliveries",
    "/v1/webhooks/{id}/replay",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/sales/{sale_id}",
    "/ops",
];

const METHODS: [&str; 5] = ["get", "post", "patch", "delete", "put"];

async fn document(app: &TestApp) -> Value {
    let a = app.get("/openapi.json", None).await;
    assert_eq!(a.status, 200);
    assert!(a.body["openapi"].as_str().unwrap_or("").starts_with("3.1"));
    a.body
}

/// A concrete path for a documented one: ids that are well formed but
/// unknown, so a routed operation answers a contract error, never the
/// router's own 404 or 405.
fn concrete(path: &str) -> String {
    path.replace("{sale_id}", "no-such-sale")
        .replace("{id}", "no-such-sale.0123456789abcdef0123456789abcdef")
}

async fn call(app: &TestApp, method: &str, path: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let res = app
        .http
        .request(method, app.url(&concrete(path)))
        .bearer_auth(app.admin())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    // The stream never ends: its status and headers are the answer.
    let body = if path.ends_with("/stream") && status == 200 {
        Value::Null
    } else {
        serde_json::from_str(&res.text().await.unwrap_or_default()).unwrap_or(Value::Null)
    };
    (status, body)
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let contract: BTreeSet<&str> = CONTRACT_PATHS.into_iter().collect();
    assert_eq!(
        documented, contract,
        "the document's paths are the contract's"
    );

    for (path, item) in paths {
        for method in METHODS {
            let (status, body) = call(&app, method, path).await;
            if item.get(method).is_some() {
                assert!(
                    status != 405 && body["code"] != "not_found",
                    "{method} {path} is documented but not routed: {status} {body}"
                );
                let op = &item[method];
                let statuses: Vec<&String> = op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .collect();
                assert!(
                    statuses.iter().any(|s| s.as_str() == status.to_string()),
                    "{method} {path} answered {status}, which it does not document ({statuses:?})"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is routed but not documented: {body}"
                );
            }
        }
    }
    // And what is not in the document is not routed.
    for path in ["/v1/orders", "/v1/sales/x/y/z", "/admin"] {
        let (status, body) = call(&app, "get", path).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    }
}

#[tokio::test]
async fn links_and_references_lead_somewhere() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut operation_ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for method in METHODS {
            if let Some(id) = item.get(method).and_then(|op| op["operationId"].as_str()) {
                assert!(operation_ids.insert(id.to_string()), "{id} twice");
            }
        }
    }
    let mut links = 0;
    let mut refs = Vec::new();
    walk(&doc, &mut |key, value| {
        if key == "links" {
            for link in value.as_object().unwrap().values() {
                let target = link["operationId"].as_str().expect("operationId");
                assert!(operation_ids.contains(target), "a link to {target}");
                links += 1;
            }
        }
        if key == "$ref" {
            refs.push(value.as_str().unwrap().to_string());
        }
    });
    // A stateful client walks a sale from its creation to an order.
    assert!(links >= 20, "{links} links");
    for r in refs {
        let pointer = r.strip_prefix('#').expect("a local reference");
        assert!(doc.pointer(pointer).is_some(), "{r} resolves to nothing");
    }
    // Rules the handlers apply are in the document.
    let patch = &doc["components"]["schemas"]["SalePatch"];
    assert_eq!(patch["minProperties"], 1);
    assert_eq!(patch["additionalProperties"], false);
    let quantity = &doc["components"]["schemas"]["ReserveBody"]["properties"]["quantity"];
    assert_eq!(quantity["maximum"], app.settings.engine.max_quantity);
}

fn walk(v: &Value, f: &mut impl FnMut(&str, &Value)) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                f(k, v);
                walk(v, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

#[tokio::test]
async fn pages_off_are_neither_routed_nor_documented() {
    let app = spawn_app_with(|s| s.http.pages = false).await;
    let doc = document(&app).await;
    for path in ["/sales/{sale_id}", "/ops"] {
        assert!(doc["paths"][path].is_null(), "{path} documented");
        let (status, _) = call(&app, "get", path).await;
        assert_eq!(status, 404);
    }
    assert!(doc["paths"]["/v1/sales"].is_object());
}

/// A body is an object (the contract's hardening block): one whose fields
/// are all optional may be left out, but the document never offers `null`.
#[tokio::test]
async fn request_bodies_are_objects_never_null() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut bodies = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(body) = item.get(method).and_then(|op| op.get("requestBody")) else {
                continue;
            };
            let schema = &body["content"]["application/json"]["schema"];
            assert!(schema.get("$ref").is_some(), "{method} {path}: {schema}");
            bodies += 1;
        }
    }
    assert!(bodies >= 5, "{bodies} bodies");
    let confirm = &doc["paths"]["/v1/reservations/{id}/confirm"]["post"]["requestBody"];
    assert_ne!(confirm["required"], true, "an empty confirm reads as {{}}");
}
