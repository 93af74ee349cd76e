//! `POST /dispatch` under concurrency: one bad dispatch fails only its own caller (issue 11,
//! finding 4), and a `stay` that times out leaves the other waiters of the task alone
//! (finding 14).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, assert_error};
use crate::wrapped::Wrapped;

/// While the database cannot be reached, dispatches sharing a batch are all answered 503 with
/// `Retry-After` after the batch's one attempt: not stored one by one, each after its own
/// wait for a connection (which made the last caller of a batch of 256 wait 256 timeouts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_unreachable_a_batch_fails_at_once_for_every_caller() {
    let backend = Wrapped::new(None);
    let server = common::start_on(backend.clone(), common::config()).await;
    let token = server.token("operator").await;
    let dispatch = || {
        let http = server.http.clone();
        let url = server.url("/dispatch");
        let token = token.clone();
        tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"coreId": "nobody"}))
                .send()
                .await
                .unwrap();
            common::reply(response).await
        })
    };
    backend
        .unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    backend.hold(true);
    // One at a time, so that each worker takes one (two at once may be taken as one batch,
    // and then only one call would ever wait at the gate).
    let mut calls = Vec::new();
    for waiting in [1, 2] {
        calls.push(dispatch());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while backend.at_gate.load(std::sync::atomic::Ordering::SeqCst) < waiting {
            assert!(
                std::time::Instant::now() < deadline,
                "a dispatch never reached the store"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    calls.extend((2..40).map(|_| dispatch()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = backend.creates.load(std::sync::atomic::Ordering::SeqCst);
    backend.hold(false);
    for call in calls {
        let reply = call.await.unwrap();
        assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers.get("retry-after").unwrap(), "5");
    }
    let attempts = backend.creates.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(
        attempts <= 4,
        "{attempts} attempts to store 38 queued dispatches while the database was unreachable"
    );
}

/// A batch that the backend refuses as a whole (as PostgreSQL refuses a statement over one
/// row it cannot store) fails only the caller whose task caused it: the dispatcher stores the
/// others alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dispatches_beside_a_poisoned_one_all_succeed() {
    let backend = Wrapped::new(Some(json!("poison")));
    let server = common::start_on(backend.clone(), common::config()).await;
    let token = server.token("operator").await;
    let dispatch = |i: usize| {
        let payload = if i == 30 { json!("poison") } else { json!(i) };
        let http = server.http.clone();
        let url = server.url("/dispatch");
        let token = token.clone();
        tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"coreId": "nobody", "payload": payload}))
                .send()
                .await
                .unwrap();
            (i, common::reply(response).await)
        })
    };
    // The store is held while the dispatcher's workers are busy with the first two tasks, so
    // that the other 58 queue up and are stored in batches, the poisoned task among them.
    backend.hold(true);
    // One at a time, so that each worker takes one (two at once may be taken as one batch,
    // and then only one call would ever wait at the gate).
    let mut calls = Vec::new();
    for (i, waiting) in [(0, 1), (1, 2)] {
        calls.push(dispatch(i));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while backend.at_gate.load(std::sync::atomic::Ordering::SeqCst) < waiting {
            assert!(
                std::time::Instant::now() < deadline,
                "dispatch {i} never reached the store"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    calls.extend((2..60).map(dispatch));
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.hold(false);
    let mut created = 0;
    for call in calls {
        let (i, reply) = call.await.unwrap();
        if i == 30 {
            assert_eq!(
                reply.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{}",
                reply.body
            );
        } else {
            assert_eq!(
                reply.status,
                StatusCode::CREATED,
                "dispatch {i}: {}",
                reply.body
            );
            assert_eq!(reply.body["payload"], json!(i));
            created += 1;
        }
    }
    assert_eq!(created, 59);
    // The poisoned task did share a batch with others (else this test proves nothing).
    let shared = backend
        .largest_poisoned_batch
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(shared >= 2, "the poisoned batch held {shared} tasks");
}

/// What PostgreSQL cannot store is refused for the caller alone, naming the field, on every
/// backend: a NUL character in the payload or the metadata (also as an object key), and a
/// `run_at` outside the years 0000 to 9999.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_postgres_cannot_store_is_refused_naming_the_field() {
    let server = common::start().await;
    let token = server.token("operator").await;
    for (body, field) in [
        (json!({"coreId": "echo", "payload": "a\u{0}b"}), "payload"),
        (
            json!({"coreId": "echo", "payload": {"list": [1, {"k\u{0}": 2}]}}),
            "payload",
        ),
        (
            json!({"coreId": "echo", "metadata": {"source": "\u{0}"}}),
            "metadata",
        ),
        (
            json!({"coreId": "echo", "runAt": "-5000-01-01T00:00:00Z"}),
            "run_at",
        ),
        (
            json!({"coreId": "echo", "runAt": "+20000-01-01T00:00:00Z"}),
            "run_at",
        ),
    ] {
        let reply = server
            .call(Method::POST, "/dispatch", Some(&token), Some(body.clone()))
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.body["field"], field, "{body}: {}", reply.body);
    }
    // A NUL escaped as text is just text.
    let fine = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"coreId": "echo", "stay": true, "payload": "\\u0000"})),
        )
        .await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.body);
    assert_eq!(fine.body["result"], json!("\\u0000"));
}

/// Two `stay: true` dispatches with one idempotency key wait for the same task; the first one
/// to reach the wait limit answers 202, and the other keeps waiting until its own limit
/// instead of answering 200 with a task that has not finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_stay_leaves_the_other_waiters_of_the_task_waiting() {
    let mut config = common::config();
    config.stay_max_wait = Duration::from_secs(1);
    let server = common::start_with(config).await;
    let token = server.token("operator").await;
    let stay = |delay: Duration| {
        let http = server.http.clone();
        let url = server.url("/dispatch");
        let token = token.clone();
        async move {
            tokio::time::sleep(delay).await;
            let started = std::time::Instant::now();
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "one-task-two-waiters")
                .json(&json!({"coreId": "nobody", "stay": true}))
                .send()
                .await
                .unwrap();
            (common::reply(response).await, started.elapsed())
        }
    };
    let (first, second) = tokio::join!(stay(Duration::ZERO), stay(Duration::from_millis(500)));
    let (first, _) = first;
    let (second, waited) = second;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(
        second.status,
        StatusCode::ACCEPTED,
        "an unfinished task is not an answer to stay: {}",
        second.body
    );
    assert_eq!(second.body["status"], "queued");
    assert!(
        waited >= Duration::from_millis(900),
        "the second waiter waited its own limit, not the first one's ({waited:?})"
    );
    let task_id = second.body["task_id"].as_str().unwrap();
    let task: Value = server
        .call(Method::GET, &format!("/jobs/{task_id}"), Some(&token), None)
        .await
        .body;
    assert_eq!(task["status"], "queued");
}
