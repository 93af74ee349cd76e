//! `GET /engines`, `GET /engines/{name}`, `POST /engines/{name}/pause|resume` and
//! `PUT /engines/{name}/concurrency`, over real TCP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_listed_with_their_state() {
    let server = common::start().await;
    let viewer = server.token("viewer").await;
    let list = server
        .call(Method::GET, "/engines", Some(&viewer), None)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let names: Vec<&str> = list.body["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|engine| engine["engine"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "sleep"]);
    let echo = server
        .call(Method::GET, "/engines/echo", Some(&viewer), None)
        .await;
    assert_eq!(echo.status, StatusCode::OK, "{}", echo.body);
    assert_eq!(echo.body["status"], "running");
    assert_eq!(echo.body["in_flight"], 0);
    assert!(echo.body["pause"].is_null());
    let unknown = server
        .call(Method::GET, "/engines/nothing-here", Some(&viewer), None)
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["field"], "engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_engine_leaves_its_new_tasks_waiting_until_resumed() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let paused = server
        .call(
            Method::POST,
            "/engines/echo/pause?reason=deploying%20v2",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    assert_eq!(paused.body["changed"], true);
    assert_eq!(paused.body["engine"]["status"], "paused");
    assert_eq!(paused.body["engine"]["pause"]["actor"], "user:operator");
    assert_eq!(paused.body["engine"]["pause"]["reason"], "deploying v2");
    // Pausing again changes nothing.
    let again = server
        .call(Method::POST, "/engines/echo/pause", Some(&operator), None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["changed"], false);

    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "echo", "payload": {"n": 1}})),
        )
        .await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    // The engine polls every 20 ms: a running engine would have run it many times over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = server
        .call(Method::GET, &format!("/jobs/{id}"), Some(&operator), None)
        .await;
    assert_eq!(waiting.body["status"], "queued", "{}", waiting.body);
    assert!(
        !server
            .events_of("task.started")
            .await
            .iter()
            .any(|event| event.task_id.map(|t| t.to_string()) == Some(id.clone())),
        "a task of the paused engine started"
    );
    let state = server
        .call(Method::GET, "/engines/echo", Some(&operator), None)
        .await;
    assert_eq!(state.body["status"], "paused", "{}", state.body);

    let resumed = server
        .call(
            Method::POST,
            "/engines/echo/resume?reason=done",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    assert_eq!(resumed.body["changed"], true);
    assert_eq!(resumed.body["engine"]["status"], "running");
    let done = server.wait_for_status(&operator, &id, "succeeded").await;
    assert_eq!(done["result"], json!({"n": 1}));

    // Both changes are events naming who made them and why.
    let events = server.events_of("engine.paused").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data["actor"], "user:operator", "{:?}", events[0]);
    assert_eq!(events[0].data["reason"], "deploying v2");
    let events = server.events_of("engine.resumed").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data["actor"], "user:operator");

    // Resuming an engine that is not paused changes nothing; one neither registered here nor
    // paused is unknown.
    let idle = server
        .call(Method::POST, "/engines/echo/resume", Some(&operator), None)
        .await;
    assert_eq!(idle.status, StatusCode::OK);
    assert_eq!(idle.body["changed"], false);
    let unknown = server
        .call(
            Method::POST,
            "/engines/nothing-here/resume",
            Some(&operator),
            None,
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_not_served_here_can_be_paused_for_every_node() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    let paused = server
        .call(Method::POST, "/engines/elsewhere/pause", Some(&admin), None)
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    assert_eq!(paused.body["engine"]["status"], "not_registered");
    assert_eq!(
        paused.body["node"].as_str(),
        Some(server.orch.config().node_id.as_str())
    );
    let list = server
        .call(Method::GET, "/engines", Some(&admin), None)
        .await;
    assert!(
        list.body["engines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|engine| engine["engine"] == "elsewhere"),
        "{}",
        list.body
    );
    // A name no engine may have is refused, naming the field.
    let bad = server
        .call(Method::POST, "/engines/a%01b/pause", Some(&admin), None)
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["field"], "engine");
    let long = format!("/engines/{}/pause", "e".repeat(129));
    let bad = server.call(Method::POST, &long, Some(&admin), None).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY);
    let reason = format!("/engines/echo/pause?reason={}", "é".repeat(257));
    let bad = server.call(Method::POST, &reason, Some(&admin), None).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["field"], "reason");
    // A reason is shown in terminals and logs: no control characters.
    let bad = server
        .call(
            Method::POST,
            "/engines/echo/pause?reason=a%1B%5B2Jb",
            Some(&admin),
            None,
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["field"], "reason");
    let bad = server
        .call(Method::GET, "/engines/a%01b", Some(&admin), None)
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY);

    // Resumed from here, it is shown as what it is here: not registered, no longer paused.
    let resumed = server
        .call(
            Method::POST,
            "/engines/elsewhere/resume",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    assert_eq!(resumed.body["changed"], true);
    assert_eq!(resumed.body["engine"]["status"], "not_registered");
    assert!(resumed.body["engine"]["pause"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_of_engines_served_nowhere_here_are_bounded() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    for i in 0..1_000 {
        server
            .orch
            .pause_engine(&format!("elsewhere-{i}"), "user:admin", "")
            .await
            .unwrap();
    }
    let refused = server
        .call(Method::POST, "/engines/one-more/pause", Some(&admin), None)
        .await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("paused already"),
        "{}",
        refused.body
    );
    // An engine served here can still be paused.
    let echo = server
        .call(Method::POST, "/engines/echo/pause", Some(&admin), None)
        .await;
    assert_eq!(echo.status, StatusCode::OK, "{}", echo.body);
    assert_eq!(echo.body["engine"]["status"], "paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_changes_while_the_engine_runs() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let before = server
        .call(Method::GET, "/engines/sleep", Some(&operator), None)
        .await;
    let registered = before.body["limit"].as_u64().unwrap();
    let changed = server
        .call(
            Method::PUT,
            "/engines/sleep/concurrency",
            Some(&operator),
            Some(json!({"limit": 3, "reason": "the service is slow"})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["previous"], registered);
    assert_eq!(changed.body["engine"]["limit"], 3);
    assert_eq!(changed.body["engine"]["limit_pinned"], true);
    assert_eq!(changed.body["engine"]["registered_limit"], registered);
    let events = server.events_of("engine.concurrency_changed").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data["actor"], "user:operator");

    // With a limit of 3, a fourth sleeping task waits for a slot.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let task = server
            .call(
                Method::POST,
                "/dispatch",
                Some(&operator),
                Some(json!({"core_id": "sleep", "payload": {"ms": 60_000}})),
            )
            .await;
        assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
        ids.push(task.body["task_id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..3] {
        server.wait_for_status(&operator, id, "running").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fourth = server
        .call(
            Method::GET,
            &format!("/jobs/{}", ids[3]),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(fourth.body["status"], "queued", "{}", fourth.body);
    let state = server
        .call(Method::GET, "/engines/sleep", Some(&operator), None)
        .await;
    assert_eq!(state.body["in_flight"], 3, "{}", state.body);
    // Raised, the waiting task starts.
    let raised = server
        .call(
            Method::PUT,
            "/engines/sleep/concurrency",
            Some(&operator),
            Some(json!({"limit": 4.0})),
        )
        .await;
    assert_eq!(raised.status, StatusCode::OK, "{}", raised.body);
    assert_eq!(raised.body["previous"], 3);
    server.wait_for_status(&operator, &ids[3], "running").await;
    for id in &ids {
        let cancel = server
            .call(
                Method::POST,
                &format!("/jobs/{id}/cancel"),
                Some(&operator),
                None,
            )
            .await;
        assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    }

    for (body, field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 100_001}), "limit"),
    ] {
        let refused = server
            .call(
                Method::PUT,
                "/engines/sleep/concurrency",
                Some(&operator),
                Some(body),
            )
            .await;
        assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.body["field"], field);
    }
    let unknown = server
        .call(
            Method::PUT,
            "/engines/nothing-here/concurrency",
            Some(&operator),
            Some(json!({"limit": 2})),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);

    // Handed back to the autoscaler: no longer pinned; once is enough.
    let unpinned = server
        .call(
            Method::DELETE,
            "/engines/sleep/concurrency",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(unpinned.status, StatusCode::OK, "{}", unpinned.body);
    assert_eq!(unpinned.body["changed"], true);
    assert_eq!(unpinned.body["engine"]["limit_pinned"], false);
    let again = server
        .call(
            Method::DELETE,
            "/engines/sleep/concurrency",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(again.body["changed"], false, "{}", again.body);
    // Not quarantined: nothing to release.
    let release = server
        .call(
            Method::POST,
            "/engines/sleep/release",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(release.status, StatusCode::OK, "{}", release.body);
    assert_eq!(release.body["changed"], false);
}
