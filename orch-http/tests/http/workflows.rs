//! Workflows over HTTP: dependencies in `POST /dispatch` and `POST /workflows`, a child that
//! waits then runs, each failure policy, refused graphs with nothing stored, cancel, retry,
//! paging, and the roles.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, Server, assert_error};

/// Polls `GET {path}` until `done` holds for the body (10 s at most).
async fn until(server: &Server, token: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = server.call(Method::GET, path, Some(token), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        if done(&reply.body) {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finished_workflow(server: &Server, token: &str, id: &str) -> Value {
    until(server, token, &format!("/workflows/{id}?limit=1000"), |b| {
        b["workflow"]["status"] != "running"
    })
    .await
}

/// How many tasks the server holds.
async fn task_count(server: &Server, token: &str) -> usize {
    let reply = server
        .call(Method::GET, "/jobs?limit=1000", Some(token), None)
        .await;
    reply.body["jobs"].as_array().expect("jobs").len()
}

fn timestamp(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .expect("a timestamp")
        .parse()
        .expect("RFC 3339")
}

/// An external worker (role `system`) claims the one queued task of `core` and reports it.
async fn run_external(server: &Server, core: &str, report: Value) -> Value {
    let system = server.token("system").await;
    let claimed = server
        .call(
            Method::POST,
            "/jobs/claim",
            Some(&system),
            Some(json!({"core_id": core})),
        )
        .await;
    let claimed = &claimed.body["tasks"][0];
    let id = claimed["task"]["task_id"].as_str().expect("a claimed task");
    let mut report = report;
    report["lease_token"] = claimed["lease_token"].clone();
    let reported = server
        .call(
            Method::PUT,
            &format!("/jobs/{id}/status"),
            Some(&system),
            Some(report),
        )
        .await;
    assert_eq!(reported.status, StatusCode::OK, "{}", reported.body);
    reported.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatched_child_waits_for_its_parent_then_runs() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let parent = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "external", "payload": "from the parent"})),
        )
        .await;
    let parent_id = parent.body["task_id"].as_str().unwrap().to_owned();
    let child = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "echo", "payload": "child",
                        "depends_on": [{"task": format!("task-{parent_id}")}]})),
        )
        .await;
    assert_eq!(child.status, StatusCode::CREATED, "{}", child.body);
    assert_eq!(child.body["status"], "waiting");
    assert_eq!(child.body["waiting_for"], 1);
    let child_id = child.body["task_id"].as_str().unwrap().to_owned();
    // Shown as waiting, and not run while the parent has not finished.
    let waiting = server
        .call(Method::GET, "/jobs?status=waiting", Some(&token), None)
        .await;
    assert_eq!(waiting.body["jobs"][0]["task_id"], child_id.as_str());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let still = server
        .call(
            Method::GET,
            &format!("/jobs/{child_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(still.body["status"], "waiting");
    let parent = run_external(
        &server,
        "external",
        json!({"status": "succeeded", "result": "parent done"}),
    )
    .await;
    let child = until(&server, &token, &format!("/jobs/{child_id}"), |b| {
        b["status"] == "succeeded"
    })
    .await;
    assert_eq!(child["result"], "child");
    assert_eq!(child["waiting_for"], 0);
    assert!(timestamp(&child["started_at"]) >= timestamp(&parent["finished_at"]));
    // The hand-over is in the child's own events.
    let events = server
        .call(
            Method::GET,
            &format!("/jobs/{child_id}/events"),
            Some(&token),
            None,
        )
        .await;
    let kinds: Vec<&str> = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..2], ["task.waiting", "task.released"], "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_runs_in_order_and_reads_as_a_workflow() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let diamond = json!({"tasks": [
        {"core_id": "echo", "payload": "a"},
        {"core_id": "echo", "payload": "b", "depends_on": [{"step": 0}]},
        {"core_id": "echo", "payload": "c", "depends_on": [{"step": 0}]},
        {"core_id": "echo", "payload": "d", "depends_on": [{"step": 1}, {"step": 2}]}
    ]});
    let created = server
        .call(
            Method::POST,
            "/workflows",
            Some(&token),
            Some(diamond.clone()),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["workflow"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(created.body["workflow"]["task_count"], 4);
    let steps = created.body["tasks"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[3]["status"], "waiting");
    let done = finished_workflow(&server, &token, &id).await;
    assert_eq!(done["workflow"]["status"], "succeeded", "{done}");
    assert_eq!(done["workflow"]["succeeded"], 4);
    assert!(done["next_offset"].is_null());
    // Topological order, each task started after its parents finished.
    let tasks = done["tasks"].as_array().unwrap();
    let mut seen: Vec<(&str, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for task in tasks {
        assert_eq!(task["task"]["workflow_id"], id.as_str());
        for parent in task["depends_on"].as_array().unwrap() {
            assert_eq!(parent["on_failure"], "fail");
            let (_, finished) = seen
                .iter()
                .find(|(seen_id, _)| *seen_id == parent["task"])
                .expect("a parent listed before its child");
            assert!(timestamp(&task["task"]["started_at"]) >= *finished);
        }
        seen.push((
            task["task"]["task_id"].as_str().unwrap(),
            timestamp(&task["task"]["finished_at"]),
        ));
    }
    assert_eq!(tasks[3]["step"], 3);
    assert_eq!(tasks[3]["depends_on"].as_array().unwrap().len(), 2);
    // Pages follow the same order.
    let first = server
        .call(
            Method::GET,
            &format!("/workflows/{id}?limit=3"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(first.body["tasks"].as_array().unwrap().len(), 3);
    assert_eq!(first.body["next_offset"], 3);
    let rest = server
        .call(
            Method::GET,
            &format!("/workflows/{id}?offset=3&limit=3"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(rest.body["tasks"][0], tasks[3]);
    assert!(rest.body["next_offset"].is_null());
    // The same idempotency key gives the first workflow back, storing nothing.
    let keyed = |body: Value| {
        let server = &server;
        let token = token.clone();
        async move {
            let response = server
                .http
                .post(server.url("/workflows"))
                .bearer_auth(token)
                .header("Idempotency-Key", "nightly-import")
                .json(&body)
                .send()
                .await
                .unwrap();
            common::reply(response).await
        }
    };
    let first = keyed(diamond.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let before = task_count(&server, &token).await;
    let again = keyed(diamond).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        again.body["workflow"]["workflow_id"],
        first.body["workflow"]["workflow_id"]
    );
    // As documented: the earlier workflow's tasks are read with GET /workflows/{id} (steps of
    // it may have been stood in for by earlier tasks, so a list here could not say which
    // step each task is).
    assert_eq!(again.body["tasks"], json!([]), "{}", again.body);
    assert_eq!(task_count(&server, &token).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_failure_does_what_each_dependency_says() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let created = server
        .call(
            Method::POST,
            "/workflows",
            Some(&token),
            Some(json!({"tasks": [
                {"core_id": "external"},
                {"core_id": "echo", "depends_on": [{"step": 0}]},
                {"core_id": "echo", "depends_on": [{"step": 0, "on_failure": "cancel"}]},
                {"core_id": "echo", "payload": "cleaned",
                 "depends_on": [{"step": 0, "on_failure": "run_anyway"}]}
            ]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["workflow"]["workflow_id"].as_str().unwrap();
    run_external(
        &server,
        "external",
        json!({"status": "failed", "error": "broken", "retryable": false}),
    )
    .await;
    let done = finished_workflow(&server, &token, id).await;
    assert_eq!(done["workflow"]["status"], "partly", "{done}");
    let by_step = |step: u64| {
        done["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["step"] == step)
            .unwrap()["task"]
            .clone()
    };
    assert_eq!(by_step(0)["status"], "failed");
    assert_eq!(by_step(1)["status"], "failed");
    assert_eq!(
        by_step(1)["attempt"],
        0,
        "a failed parent's child never runs"
    );
    assert_eq!(by_step(2)["status"], "cancelled");
    assert_eq!(by_step(3)["status"], "succeeded");
    assert_eq!(by_step(3)["result"], "cleaned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_graphs_are_refused_naming_what_is_wrong_with_nothing_stored() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = [
        (
            "/workflows",
            json!({"tasks": [
                {"core_id": "echo", "depends_on": [{"step": 1}]},
                {"core_id": "echo", "depends_on": [{"step": 0}]}
            ]}),
            "depends_on",
            "cycle",
        ),
        (
            "/workflows",
            json!({"tasks": [{"core_id": "echo"}, {"core_id": "echo", "depends_on": [{"step": 7}]}]}),
            "depends_on",
            "step 7",
        ),
        (
            "/workflows",
            json!({"tasks": [{"core_id": "echo"}, {"core_id": "echo", "depends_on": [{"task": unknown}]}]}),
            "depends_on",
            unknown.as_str(),
        ),
        (
            "/dispatch",
            json!({"core_id": "echo", "depends_on": [{"task": unknown}]}),
            "depends_on",
            unknown.as_str(),
        ),
        (
            "/dispatch",
            json!({"core_id": "echo", "depends_on": [{"step": 0}]}),
            "depends_on[0].step",
            "POST /workflows",
        ),
        (
            "/dispatch",
            json!({"core_id": "echo", "depends_on": [{"task": unknown, "step": 0}]}),
            "depends_on[0]",
            "exactly one",
        ),
        (
            "/dispatch",
            json!({"core_id": "echo", "depends_on": [{"task": "nope"}]}),
            "depends_on[0].task",
            "not a task id",
        ),
        (
            "/workflows",
            json!({"tasks": [{"core_id": "echo"}, {"core_id": "echo", "stay": true}]}),
            "tasks[1].stay",
            "cannot stay",
        ),
        (
            "/workflows",
            json!({"tasks": [{"core_id": "echo"}, {"core_id": "echo", "timeout": -1}]}),
            "tasks[1].timeout",
            "between 0.001 and",
        ),
        ("/workflows", json!({"tasks": []}), "tasks", "1 to 10000"),
    ];
    for (path, body, field, says) in refused {
        let reply = server
            .call(Method::POST, path, Some(&token), Some(body.clone()))
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.body["field"], field, "{path} {body}: {}", reply.body);
        let message = reply.body["error"].as_str().unwrap();
        assert!(message.contains(says), "{path} {body}: {message}");
    }
    assert_eq!(task_count(&server, &token).await, 0, "nothing stored");
    let missing = server
        .call(
            Method::GET,
            &format!("/workflows/{unknown}"),
            Some(&token),
            None,
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["field"], "workflow_id");
    let malformed = server
        .call(Method::POST, "/workflows/nope/retry", Some(&token), None)
        .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.body["field"], "workflow_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_what_has_not_run_and_retry_finishes_the_workflow() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let created = server
        .call(
            Method::POST,
            "/workflows",
            Some(&token),
            Some(json!({"tasks": [
                {"core_id": "external"},
                {"core_id": "echo", "payload": "after", "depends_on": [{"step": 0}]}
            ]})),
        )
        .await;
    let id = created.body["workflow"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancelled = server
        .call(
            Method::POST,
            &format!("/workflows/{id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "failed");
    assert_eq!(cancelled.body["unfinished"], 0);
    let retried = server
        .call(
            Method::POST,
            &format!("/workflows/{id}/retry"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["status"], "running");
    assert_eq!(retried.body["unfinished"], 2);
    let reopened = server
        .call(Method::GET, &format!("/workflows/{id}"), Some(&token), None)
        .await;
    let states: Vec<&str> = reopened.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "waiting"]);
    run_external(
        &server,
        "external",
        json!({"status": "succeeded", "result": 1}),
    )
    .await;
    let done = finished_workflow(&server, &token, &id).await;
    assert_eq!(done["workflow"]["status"], "succeeded", "{done}");
    assert_eq!(done["tasks"][1]["task"]["result"], "after");
    assert_eq!(server.events_of("workflow.succeeded").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_operators_act_and_workers_only_dispatch() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    let created = server
        .call(
            Method::POST,
            "/workflows",
            Some(&admin),
            Some(json!({"tasks": [{"core_id": "external"}]})),
        )
        .await;
    let id = created.body["workflow"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let graph = json!({"tasks": [{"core_id": "external"}]});
    let cases: [(Method, String, Option<Value>, &[&str]); 4] = [
        (
            Method::GET,
            format!("/workflows/{id}"),
            None,
            &["admin", "operator", "viewer", "system"],
        ),
        (
            Method::POST,
            "/workflows".to_owned(),
            Some(graph),
            &["admin", "operator", "system"],
        ),
        (
            Method::POST,
            format!("/workflows/{id}/retry"),
            None,
            &["admin", "operator"],
        ),
        (
            Method::POST,
            format!("/workflows/{id}/cancel"),
            None,
            &["admin", "operator"],
        ),
    ];
    for (method, path, body, allowed) in cases {
        for role in ["viewer", "system", "operator", "admin"] {
            let token = server.token(role).await;
            let reply = server
                .call(method.clone(), &path, Some(&token), body.clone())
                .await;
            if allowed.contains(&role) {
                assert!(
                    reply.status.is_success(),
                    "{role} {method} {path}: {} {}",
                    reply.status,
                    reply.body
                );
            } else {
                assert_error(&reply, StatusCode::FORBIDDEN);
            }
        }
        let anonymous = server.call(method.clone(), &path, None, body).await;
        assert_error(&anonymous, StatusCode::UNAUTHORIZED);
    }
    // The operator's cancel (the last case) ended the queued task.
    let first = server
        .call(Method::GET, &format!("/workflows/{id}"), Some(&admin), None)
        .await;
    assert_eq!(first.body["tasks"][0]["task"]["status"], "cancelled");
}

/// A workflow dispatched with a `traceparent` header: each task without a trace context of its
/// own carries the request's (this router has no trace propagator, so as given), and a task
/// with its own keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_dispatch_passes_the_requests_trace_context_to_its_tasks() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let header = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01";
    let own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = server
        .http
        .post(server.url("/workflows"))
        .bearer_auth(&token)
        .header("traceparent", header)
        .json(&json!({"tasks": [
            {"core_id": "external"},
            {"core_id": "external", "traceparent": own, "depends_on": [{"step": 0}]},
        ]}))
        .send()
        .await
        .unwrap();
    let created = common::reply(response).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mut carried = Vec::new();
    for step in created.body["tasks"].as_array().unwrap() {
        let id = step["task_id"].as_str().unwrap();
        let task = server
            .call(Method::GET, &format!("/jobs/{id}"), Some(&token), None)
            .await;
        carried.push(task.body["traceparent"].clone());
    }
    assert_eq!(carried, [json!(header), json!(own)]);
}
