//! Dispatch, stay, idempotency, jobs, cancel, events, and external workers.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_takes_the_orch_next_body_and_stay_waits_for_the_result() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let orch_next_body = json!({
        "coreId": "echo", "stay": true, "priority": 2, "timeout": 300,
        "metadata": {"source": "api", "user_id": "user-123", "tags": ["urgent", "production"]},
        "payload": {"text": "hello"}
    });
    let reply = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(orch_next_body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = &reply.body;
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["core_id"], "echo");
    assert_eq!(body["priority"], 2);
    assert_eq!(body["result"], json!({"text": "hello"}));
    assert_eq!(body["metadata"]["tags"][0], "urgent");
    for field in ["task_id", "created_at", "estimated_start"] {
        assert!(body[field].is_string(), "{field} in {body}");
    }
    // Without stay: 201 and queued (or already further along).
    let queued = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "nobody-runs-this"})),
        )
        .await;
    assert_eq!(queued.status, StatusCode::CREATED);
    assert_eq!(queued.body["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_engine_and_stay_with_a_failing_task() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let slept = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "sleep", "stay": true, "payload": {"ms": 20}})),
        )
        .await;
    assert_eq!(slept.body["status"], "succeeded", "{}", slept.body);
    assert_eq!(slept.body["result"], json!({"slept_ms": 20}));
    let invalid = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "sleep", "stay": true, "payload": {"ms": "long"}})),
        )
        .await;
    assert_eq!(invalid.body["status"], "failed", "{}", invalid.body);
    assert!(
        invalid.body["error"]
            .as_str()
            .unwrap()
            .contains("payload.ms")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_header_returns_the_first_task() {
    let server = common::start().await;
    let token = server.token("system").await;
    let send = || async {
        let response = server
            .http
            .post(server.url("/dispatch"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "order-42")
            .json(&json!({"core_id": "external"}))
            .send()
            .await
            .unwrap();
        common::reply(response).await
    };
    let first = send().await;
    let second = send().await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(first.body["task_id"], second.body["task_id"]);
    assert_eq!(second.body["idempotency_key"], "order-42");
    let jobs = server
        .call(Method::GET, "/jobs?core_id=external", Some(&token), None)
        .await;
    assert_eq!(jobs.body["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_list_filters_and_pages() {
    let server = common::start().await;
    let token = server.token("admin").await;
    for i in 0..5 {
        server
            .call(
                Method::POST,
                "/dispatch",
                Some(&token),
                Some(json!({"core_id": "pool-a", "payload": i})),
            )
            .await;
    }
    server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "echo", "stay": true})),
        )
        .await;
    let page1 = server
        .call(
            Method::GET,
            "/jobs?core_id=pool-a&limit=3",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(page1.body["jobs"].as_array().unwrap().len(), 3);
    let after = page1.body["next_after"].as_str().unwrap().to_owned();
    let page2 = server
        .call(
            Method::GET,
            &format!("/jobs?core=pool-a&limit=3&after={after}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(page2.body["jobs"].as_array().unwrap().len(), 2);
    assert!(page2.body["next_after"].is_null());
    let succeeded = server
        .call(Method::GET, "/jobs?status=succeeded", Some(&token), None)
        .await;
    let jobs = succeeded.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["core_id"], "echo");
    for bad in [
        "/jobs?status=done",
        "/jobs?limit=0",
        "/jobs?limit=x",
        "/jobs?after=nope",
        "/jobs?color=red",
    ] {
        let reply = server.call(Method::GET, bad, Some(&token), None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_cancel_and_events_of_a_job() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "sleep", "payload": {"ms": 60000}})),
        )
        .await;
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    // Wait until the sleep engine runs it.
    for _ in 0..200 {
        let job = server
            .call(Method::GET, &format!("/jobs/{id}"), Some(&token), None)
            .await;
        if job.body["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let with_prefix = server
        .call(Method::GET, &format!("/jobs/task-{id}"), Some(&token), None)
        .await;
    assert_eq!(with_prefix.body["task_id"], id.as_str());
    let cancelled = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    let again = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_error(&again, StatusCode::CONFLICT);
    let events = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events"),
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
    assert_eq!(kinds, ["task.queued", "task.started", "task.cancelled"]);
    // The cancel names who asked.
    assert_eq!(
        events.body["events"][2]["data"],
        json!({"from": "running", "actor": "user:operator"})
    );
    let missing = "01a20147-076b-70a1-a038-3f381c7edce7";
    for path in [
        format!("/jobs/{missing}"),
        format!("/jobs/{missing}/events"),
    ] {
        assert_error(
            &server.call(Method::GET, &path, Some(&token), None).await,
            StatusCode::NOT_FOUND,
        );
    }
    let bad = server
        .call(Method::GET, "/jobs/not-a-uuid", Some(&token), None)
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["field"], "task_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_workers_claim_heartbeat_and_report() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let worker = server.token("system").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"coreId": "gpu", "payload": {"n": 1}})),
        )
        .await;
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    let claim = server
        .call(
            Method::POST,
            "/jobs/claim",
            Some(&worker),
            Some(json!({"coreId": "gpu", "limit": 5, "lease": 30})),
        )
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.body);
    let tasks = claim.body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["task"]["status"], "running");
    let lease = tasks[0]["lease_token"].as_str().unwrap().to_owned();
    let beat = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/heartbeat"),
            Some(&worker),
            Some(json!({"lease_token": lease})),
        )
        .await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.body);
    assert!(beat.body["lease_expires_at"].is_string());
    // An illegal target state is a 409, as is a stale lease.
    let illegal = server
        .call(
            Method::PUT,
            &format!("/jobs/{id}/status"),
            Some(&worker),
            Some(json!({"lease_token": lease, "status": "queued"})),
        )
        .await;
    assert_error(&illegal, StatusCode::CONFLICT);
    let stale = server
        .call(Method::PUT, &format!("/jobs/{id}/status"), Some(&worker),
            Some(json!({"lease_token": "00000000-0000-0000-0000-000000000000", "status": "succeeded"})))
        .await;
    assert_error(&stale, StatusCode::CONFLICT);
    assert_eq!(stale.body["field"], "lease_token");
    let done = server
        .call(
            Method::PUT,
            &format!("/jobs/{id}/status"),
            Some(&worker),
            Some(json!({"lease_token": lease, "status": "succeeded", "result": {"answer": 42}})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["status"], "succeeded");
    assert_eq!(done.body["result"]["answer"], 42);
    // Finished: any further report is an illegal transition.
    let after = server
        .call(
            Method::PUT,
            &format!("/jobs/{id}/status"),
            Some(&worker),
            Some(json!({"lease_token": lease, "status": "failed", "error": "late"})),
        )
        .await;
    assert_error(&after, StatusCode::CONFLICT);
    let late_beat = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/heartbeat"),
            Some(&worker),
            Some(json!({"lease_token": lease})),
        )
        .await;
    assert_error(&late_beat, StatusCode::CONFLICT);
    let bad_status = server
        .call(
            Method::PUT,
            &format!("/jobs/{id}/status"),
            Some(&worker),
            Some(json!({"lease_token": lease, "status": "exploded"})),
        )
        .await;
    assert_error(&bad_status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_status.body["field"], "status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_report_on_the_last_attempt_fails_the_task() {
    let server = common::start().await;
    let worker = server.token("system").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&worker),
            Some(json!({"core_id": "ext", "max_attempts": 1})),
        )
        .await;
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    let claim = server
        .call(
            Method::POST,
            "/jobs/claim",
            Some(&worker),
            Some(json!({"core_id": "ext"})),
        )
        .await;
    let lease = claim.body["tasks"][0]["lease_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = server
        .call(
            Method::PUT,
            &format!("/jobs/{id}/status"),
            Some(&worker),
            Some(json!({"lease_token": lease, "status": "failed", "error": "disk full"})),
        )
        .await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.body);
    assert_eq!(failed.body["error"], "disk full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_stores_the_trace_context_of_its_body_or_its_headers() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let header_parent = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-00";
    let send = |body: serde_json::Value, headers: Vec<(&'static str, &'static str)>| {
        let (server, token) = (&server, &token);
        async move {
            let mut request = server
                .http
                .post(server.url("/dispatch"))
                .bearer_auth(token)
                .json(&body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            common::reply(request.send().await.unwrap()).await
        }
    };
    // The body's context, kept as given (this router has no trace propagator) and shown.
    let from_body = send(
        json!({"core_id": "external", "traceparent": parent, "tracestate": "vendor=x"}),
        vec![("traceparent", header_parent)],
    )
    .await;
    assert_eq!(from_body.status, StatusCode::CREATED, "{}", from_body.body);
    assert_eq!(from_body.body["traceparent"], parent);
    assert_eq!(from_body.body["tracestate"], "vendor=x");
    let id = from_body.body["task_id"].as_str().unwrap().to_owned();
    let read = server
        .call(Method::GET, &format!("/jobs/{id}"), Some(&token), None)
        .await;
    assert_eq!(read.body["traceparent"], parent, "{}", read.body);
    // Without one in the body, the headers'; a malformed tracestate header is dropped.
    let from_headers = send(
        json!({"core_id": "external"}),
        vec![("traceparent", header_parent), ("tracestate", "no-equals")],
    )
    .await;
    assert_eq!(from_headers.body["traceparent"], header_parent);
    assert!(
        from_headers.body.get("tracestate").is_none(),
        "{}",
        from_headers.body
    );
    // A malformed header is ignored, as W3C asks; a malformed body field is refused.
    let ignored = send(
        json!({"core_id": "external"}),
        vec![("traceparent", "00-not-a-trace-01")],
    )
    .await;
    assert_eq!(ignored.status, StatusCode::CREATED, "{}", ignored.body);
    assert!(
        ignored.body.get("traceparent").is_none(),
        "{}",
        ignored.body
    );
    for (body, field) in [
        (
            json!({"core_id": "external", "traceparent": "00-nope"}),
            "traceparent",
        ),
        (
            json!({"core_id": "external", "tracestate": "k=v"}),
            "tracestate",
        ),
        (
            json!({"core_id": "external", "traceparent": parent, "tracestate": "k"}),
            "tracestate",
        ),
    ] {
        let refused = send(body.clone(), Vec::new()).await;
        assert_eq!(
            (refused.status, refused.body["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}: {}",
            refused.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_failed_task_is_retried_and_runs_again() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "echo", "delay": 3600, "payload": {"again": true}})),
        )
        .await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    let cancelled = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(cancelled.body["status"], "cancelled", "{}", cancelled.body);

    let retried = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/retry"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["status"], "queued", "{}", retried.body);
    // Runnable at once (no longer an hour away): the echo engine runs it.
    let last = server.wait_for_status(&operator, &id, "succeeded").await;
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["result"], json!({"again": true}));
    let events = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events"),
            Some(&operator),
            None,
        )
        .await;
    let kinds: Vec<&str> = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "task.queued",
            "task.cancelled",
            "task.reopened",
            "task.started",
            "task.succeeded"
        ],
        "{}",
        events.body
    );
    let reopened = &events.body["events"][2]["data"];
    assert_eq!(
        *reopened,
        json!({"from": "cancelled", "actor": "user:operator"})
    );

    // Succeeded: nothing to retry.
    let refused = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/retry"),
            Some(&operator),
            None,
        )
        .await;
    assert_error(&refused, StatusCode::CONFLICT);
    let unknown = server
        .call(
            Method::POST,
            "/jobs/00000000-0000-4000-8000-000000000000/retry",
            Some(&operator),
            None,
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);

    // A failed task of a workflow is left to the workflow's retry.
    let flow = server
        .call(
            Method::POST,
            "/workflows",
            Some(&operator),
            Some(json!({"tasks": [{"core_id": "sleep", "payload": {"ms": "long"}}]})),
        )
        .await;
    assert_eq!(flow.status, StatusCode::CREATED, "{}", flow.body);
    let member = flow.body["tasks"][0]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.wait_for_status(&operator, &member, "failed").await;
    let refused = server
        .call(
            Method::POST,
            &format!("/jobs/{member}/retry"),
            Some(&operator),
            None,
        )
        .await;
    assert_error(&refused, StatusCode::CONFLICT);
    assert_eq!(refused.body["field"], "task_id");
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("retry the workflow"),
        "{}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_count_on_a_dry_run_and_act_by_filter() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    // Five tasks an hour away for a core nobody serves, two for another.
    let mut ids = Vec::new();
    for (core, n) in [("bulk-a", 5), ("bulk-b", 2)] {
        for _ in 0..n {
            let task = server
                .call(
                    Method::POST,
                    "/dispatch",
                    Some(&operator),
                    Some(json!({"core_id": core, "delay": 3600})),
                )
                .await;
            assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
            ids.push(task.body["task_id"].as_str().unwrap().to_owned());
        }
    }
    let bulk = |body: serde_json::Value| {
        let server = &server;
        let operator = &operator;
        async move {
            server
                .call(Method::POST, "/jobs/bulk", Some(operator), Some(body))
                .await
        }
    };
    let dry =
        bulk(json!({"action": "cancel", "status": "queued", "core_id": "bulk-a", "dry_run": true}))
            .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.body["matched"], 5);
    assert_eq!(dry.body["changed"], 0);
    let still = server
        .call(
            Method::GET,
            &format!("/jobs/{}", ids[0]),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(still.body["status"], "queued", "a dry run changed a task");

    let cancelled =
        bulk(json!({"action": "cancel", "status": "queued", "core_id": "bulk-a", "limit": 3}))
            .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(
        (
            cancelled.body["matched"].as_u64(),
            cancelled.body["changed"].as_u64()
        ),
        (Some(3), Some(3))
    );
    // Stopped at its limit: it says where to go on.
    let next = cancelled.body["next_after"].as_str().unwrap().to_owned();
    assert_eq!(next, ids[2]);
    let cancelled =
        bulk(json!({"action": "cancel", "status": "queued", "core_id": "bulk-a", "after": next}))
            .await;
    assert_eq!(cancelled.body["changed"], 2, "{}", cancelled.body);
    assert!(cancelled.body["next_after"].is_null(), "{}", cancelled.body);
    // The other core's tasks are untouched.
    for id in &ids[5..] {
        let task = server
            .call(Method::GET, &format!("/jobs/{id}"), Some(&operator), None)
            .await;
        assert_eq!(task.body["status"], "queued", "{}", task.body);
    }
    let retried =
        bulk(json!({"action": "retry", "status": "cancelled", "core_id": "bulk-a"})).await;
    assert_eq!(retried.body["changed"], 5, "{}", retried.body);
    let events = server.events_of("task.reopened").await;
    assert_eq!(events.len(), 5);
    assert!(
        events
            .iter()
            .all(|event| event.data["actor"] == "user:operator")
    );
    // An action that cannot apply to the state is refused at once.
    for (action, status) in [
        ("retry", "queued"),
        ("cancel", "failed"),
        ("delete", "running"),
    ] {
        let refused = bulk(json!({"action": action, "status": status})).await;
        assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.body["field"], "status", "{}", refused.body);
    }
    // Cancelled, then deleted in bulk.
    let cancelled =
        bulk(json!({"action": "cancel", "status": "queued", "core_id": "bulk-b"})).await;
    assert_eq!(cancelled.body["changed"], 2, "{}", cancelled.body);
    let deleted =
        bulk(json!({"action": "delete", "status": "cancelled", "core_id": "bulk-b"})).await;
    assert_eq!(deleted.body["changed"], 2, "{}", deleted.body);
    for id in &ids[5..] {
        let gone = server
            .call(Method::GET, &format!("/jobs/{id}"), Some(&operator), None)
            .await;
        assert_error(&gone, StatusCode::NOT_FOUND);
    }

    for (body, field) in [
        (json!({"action": "cancel", "status": "sideways"}), "status"),
        (
            json!({"action": "cancel", "status": "queued", "limit": 0}),
            "limit",
        ),
        (
            json!({"action": "cancel", "status": "queued", "limit": 10_001}),
            "limit",
        ),
    ] {
        let reply = bulk(body).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.body["field"], field, "{}", reply.body);
    }
    // A status is required.
    let reply = bulk(json!({"action": "cancel"})).await;
    assert!(reply.status.is_client_error(), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_deleted_and_its_events_stay() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "echo", "delay": 3600})),
        )
        .await;
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    let refused = server
        .call(
            Method::DELETE,
            &format!("/jobs/{id}"),
            Some(&operator),
            None,
        )
        .await;
    assert_error(&refused, StatusCode::CONFLICT);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("cancel it first"),
        "{}",
        refused.body
    );
    server
        .call(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(&operator),
            None,
        )
        .await;
    let deleted = server
        .call(
            Method::DELETE,
            &format!("/jobs/{id}"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(deleted.body["status"], "cancelled");
    let gone = server
        .call(Method::GET, &format!("/jobs/{id}"), Some(&operator), None)
        .await;
    assert_error(&gone, StatusCode::NOT_FOUND);
    // Its events stay in the log.
    let kept: Vec<String> = server
        .orch
        .events()
        .replay(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.task_id.map(|t| t.to_string()) == Some(id.clone()))
        .map(|event| event.kind.as_str().to_owned())
        .collect();
    assert_eq!(kept, ["task.queued", "task.cancelled"]);
    // And are still read through the task's id.
    let history = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let kinds: Vec<&str> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task.queued", "task.cancelled"]);
    let past_the_end = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events?after=999999"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(past_the_end.status, StatusCode::OK);
    assert_eq!(past_the_end.body["events"], json!([]));
    let recorded = server.events_of("task.deleted").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].data["actor"], "user:operator");
    assert_eq!(recorded[0].data["task_id"], id.as_str());
    let again = server
        .call(
            Method::DELETE,
            &format!("/jobs/{id}"),
            Some(&operator),
            None,
        )
        .await;
    assert_error(&again, StatusCode::NOT_FOUND);
    let viewer = server.token("viewer").await;
    let refused = server
        .call(Method::DELETE, &format!("/jobs/{id}"), Some(&viewer), None)
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_is_requeued_to_run_now_and_the_event_names_the_caller() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let later = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "echo", "delay": 3600, "payload": {"n": 1}})),
        )
        .await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.body);
    let id = later.body["task_id"].as_str().unwrap().to_owned();
    let requeued = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/requeue"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(requeued.status, StatusCode::OK, "{}", requeued.body);
    // Due now, it runs: an hour early.
    let done = server.wait_for_status(&operator, &id, "succeeded").await;
    assert_eq!(done["result"], json!({"n": 1}));
    let events = server.events_of("task.requeued").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].data,
        json!({"from": "queued", "actor": "user:operator"})
    );
    // Finished, or already due: 409 saying why.
    let finished = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/requeue"),
            Some(&operator),
            None,
        )
        .await;
    assert_error(&finished, StatusCode::CONFLICT);
    let due = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "nobody-serves-this"})),
        )
        .await;
    let due_id = due.body["task_id"].as_str().unwrap();
    let refused = server
        .call(
            Method::POST,
            &format!("/jobs/{due_id}/requeue"),
            Some(&operator),
            None,
        )
        .await;
    assert_error(&refused, StatusCode::CONFLICT);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("already due"),
        "{}",
        refused.body
    );
    let unknown = server
        .call(
            Method::POST,
            "/jobs/00000000-0000-4000-8000-000000000000/requeue",
            Some(&operator),
            None,
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);
}
