//! Many generated bad inputs through the router over TCP: every answer is a 4xx with a JSON
//! `error`, never a 5xx, and the server stays up.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("core_id".to_owned()),
                    Just("coreId".to_owned()),
                    Just("priority".to_owned()),
                    Just("timeout".to_owned()),
                    Just("stay".to_owned()),
                    Just("lease_token".to_owned()),
                    Just("status".to_owned()),
                    Just("username".to_owned()),
                    Just("password".to_owned()),
                    Just("fencing_token".to_owned()),
                    Just("ttl".to_owned()),
                    Just("limit".to_owned()),
                    Just("max_attempts".to_owned()),
                    Just("delay".to_owned()),
                    Just("run_at".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        json_value().prop_map(Body::Json),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Raw),
        "[{}\\[\\]\",:a-z0-9 ]{0,40}".prop_map(|s| Body::Raw(s.into_bytes())),
    ]
}

fn target() -> impl Strategy<Value = (Method, String)> {
    let id = prop_oneof![
        Just("01a20147-076b-70a1-a038-3f381c7edce7".to_owned()),
        "[a-zA-Z0-9%._-]{1,40}",
        Just("task-".to_owned()),
        Just("%00".to_owned()),
    ];
    (0usize..13, id).prop_map(|(n, id)| match n {
        0 => (Method::POST, "/dispatch".to_owned()),
        1 => (Method::POST, "/jobs/claim".to_owned()),
        2 => (Method::PUT, format!("/jobs/{id}/status")),
        3 => (Method::POST, format!("/jobs/{id}/heartbeat")),
        4 => (Method::POST, format!("/jobs/{id}/cancel")),
        5 => (Method::GET, format!("/jobs/{id}")),
        6 => (Method::POST, "/auth/login".to_owned()),
        7 => (Method::POST, "/users".to_owned()),
        8 => (Method::POST, format!("/locks/{id}/acquire")),
        9 => (Method::POST, format!("/locks/{id}/release")),
        10 => (Method::GET, format!("/jobs?status={id}&limit={id}")),
        11 => (Method::GET, format!("/sse/events?last_event_id={id}")),
        _ => (Method::POST, "/webhook".to_owned()),
    })
}

fn auth() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("VALID".to_owned())),
        "[ -~]{0,60}".prop_map(Some),
        Just(Some("Bearer eyJhbGciOiJub25lIn0.e30.".to_owned())),
    ]
}

fn signature() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[ -~]{0,80}".prop_map(Some),
        (any::<u64>(), "[0-9a-f]{0,70}").prop_map(|(t, h)| Some(format!("t={t},v1={h}"))),
        Just(Some(
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
                .to_owned()
        )),
    ]
}

#[test]
fn generated_bad_inputs_get_json_4xx_and_never_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(common::start());
    let token = runtime.block_on(server.token("admin"));
    let cases = std::env::var("ORCH_HTTP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (target(), body(), auth(), signature(), any::<bool>());
    let result = runner.run(
        &strategy,
        |((method, path), body, auth, signature, json_type)| {
            let reply = runtime.block_on(async {
                let mut request = server.http.request(method.clone(), server.url(&path));
                match &auth {
                    Some(value) if value == "VALID" => request = request.bearer_auth(&token),
                    Some(value) => {
                        if let Ok(header) = reqwest::header::HeaderValue::from_str(value) {
                            request = request.header("Authorization", header);
                        }
                    }
                    None => {}
                }
                if let Some(signature) = &signature
                    && let Ok(header) = reqwest::header::HeaderValue::from_str(signature)
                {
                    request = request.header("X-Signature", header);
                }
                request = match &body {
                    Body::Json(value) => request.json(value),
                    Body::Raw(bytes) => request.body(bytes.clone()),
                };
                if json_type {
                    request = request.header("Content-Type", "application/json");
                }
                let response = request.send().await.expect("server answers");
                if response.status().is_success()
                    && response
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
                {
                    // A valid `/sse/events?last_event_id=<digits>`: the stream never ends, so
                    // reading its body would only time out (and proptest would shrink for hours).
                    return common::Reply {
                        status: response.status(),
                        headers: response.headers().clone(),
                        body: Value::Null,
                    };
                }
                common::reply(response).await
            });
            let status = reply.status.as_u16();
            prop_assert!(
                status < 500,
                "{method} {path} {body:?} -> {status} {}",
                reply.body
            );
            if status >= 400 {
                prop_assert!(
                    reply.body["error"].is_string(),
                    "{method} {path} -> {status} non-JSON error"
                );
            }
            Ok(())
        },
    );
    if let Err(error) = result {
        panic!("{error}");
    }
    // Still serving.
    let health = runtime.block_on(server.call(Method::GET, "/health", None, None));
    assert_eq!(health.status.as_u16(), 200);
    let _ = json!(null);
    drop(server);
}
