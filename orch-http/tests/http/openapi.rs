//! `/openapi.json` against the router that serves it (issue 11, finding 23): every documented
//! operation is routed and nothing else is; fields that take any JSON say so; the constraints
//! the handlers enforce (UUID ids, name lengths and patterns, enums, ranges) are stated.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// A request path for a documented one: each `{param}` filled with a sample value.
fn sample_path(template: &str) -> String {
    template
        .replace("{id}", "018f4a3c-0000-7000-8000-000000000000")
        .replace("{resource}", "sample:resource")
        .replace("{username}", "sample-user")
}

/// The router's JSON fallbacks: `no route for ...` (404) and `... is not allowed on ...`
/// (405).
fn is_fallback(status: StatusCode, body: &Value) -> bool {
    let error = body["error"].as_str().unwrap_or_default();
    (status == StatusCode::NOT_FOUND && error.starts_with("no route for"))
        || (status == StatusCode::METHOD_NOT_ALLOWED && error.contains("is not allowed on"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let server = common::start().await;
    let doc = server.call(Method::GET, "/openapi.json", None, None).await;
    let paths = doc.body["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{} paths", paths.len());
    for (template, item) in paths {
        let path = sample_path(template);
        for method in METHODS {
            let documented = item.get(method).is_some();
            let reply = server
                .call(method.to_uppercase().parse().unwrap(), &path, None, None)
                .await;
            let routed = !is_fallback(reply.status, &reply.body);
            assert_eq!(
                documented,
                routed,
                "{} {template}: documented {documented}, routed {routed} ({} {})",
                method.to_uppercase(),
                reply.status,
                reply.body
            );
        }
    }
    // The document's own route is documented too.
    assert!(paths.contains_key("/openapi.json"));
}

/// The schema of a named component, or of an inline property chain.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

/// Whether a property's schema admits any JSON value: no `type`, no `$ref`, no `enum`.
fn is_any_json(property: &Value) -> bool {
    property.is_object()
        && property.get("type").is_none()
        && property.get("$ref").is_none()
        && property.get("enum").is_none()
        && property.get("oneOf").is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_metadata_result_and_webhook_data_are_any_json() {
    let server = common::start().await;
    let doc = server
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    for (component, property) in [
        ("TaskView", "payload"),
        ("TaskView", "metadata"),
        ("TaskView", "result"),
        ("StatusUpdate", "result"),
        ("WebhookPayload", "data"),
    ] {
        let schema = &schema(&doc, component)["properties"][property];
        assert!(
            is_any_json(schema),
            "{component}.{property} must admit any JSON value, is {schema}"
        );
    }
    // A dispatch's payload and metadata: any JSON type, strings and keys without U+0000.
    for property in ["payload", "metadata"] {
        let schema = &schema(&doc, "DispatchRequest")["properties"][property];
        assert_eq!(
            schema["$ref"], "#/components/schemas/StorableJson",
            "DispatchRequest.{property}: {schema}"
        );
    }
    let storable = schema(&doc, "StorableJson")["anyOf"].to_string();
    for kind in ["null", "boolean", "number", "string", "array", "object"] {
        assert!(
            storable.contains(&format!("\"{kind}\"")),
            "{kind}: {storable}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_constraints_the_handlers_enforce() {
    let server = common::start().await;
    let doc = server
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    // Task ids in paths: UUIDs (with ORCH-Next's optional `task-` prefix).
    for path in [
        "/jobs/{id}",
        "/jobs/{id}/events",
        "/jobs/{id}/cancel",
        "/jobs/{id}/heartbeat",
        "/jobs/{id}/status",
    ] {
        let item = &doc["paths"][path];
        let operation = METHODS
            .iter()
            .find_map(|m| item.get(*m))
            .unwrap_or_else(|| panic!("{path} is documented"));
        let id = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "id")
            .unwrap_or_else(|| panic!("{path} documents its id"));
        let pattern = id["schema"]["pattern"].as_str().unwrap_or_default();
        assert!(
            pattern.contains("[0-9a-fA-F]{8}"),
            "{path}: the id's pattern is {:?}",
            id["schema"]
        );
    }
    let dispatch = schema(&doc, "DispatchRequest");
    let core_id = &dispatch["properties"]["core_id"];
    assert_eq!(core_id["minLength"], 1, "{core_id}");
    assert_eq!(core_id["maxLength"], 128, "{core_id}");
    assert!(core_id["pattern"].is_string(), "{core_id}");
    assert_eq!(dispatch["properties"]["max_attempts"]["maximum"], 1000.0);
    assert_eq!(dispatch["properties"]["timeout"]["minimum"], 0.001);
    let mut status = &schema(&doc, "StatusUpdate")["properties"]["status"];
    if let Some(name) = status["$ref"].as_str() {
        status = schema(&doc, name.trim_start_matches("#/components/schemas/"));
    }
    let allowed: Vec<&str> = status["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("StatusUpdate.status is an enum: {status}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(allowed, ["succeeded", "failed", "timed_out"]);
    let lease_token = &schema(&doc, "StatusUpdate")["properties"]["lease_token"];
    assert_eq!(lease_token["format"], "uuid", "{lease_token}");
    let view_status = &schema(&doc, "TaskView")["properties"]["status"];
    assert!(view_status["enum"].is_array() || view_status["$ref"].is_string());
    // Query parameters are in the query, and optional.
    for parameter in doc["paths"]["/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
    {
        assert_eq!(parameter["in"], "query", "{parameter}");
        assert_eq!(parameter["required"], false, "{parameter}");
    }
}
