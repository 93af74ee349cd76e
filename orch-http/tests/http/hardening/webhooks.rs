//! Finding 5 (webhook replays across nodes, restarts and rotation).

use std::sync::Arc;

use orch_core::{MemoryBackend, SharedBackend};
use orch_http::server::ServerOptions;
use orch_http::webhook::sign;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, OLD_WEBHOOK_SECRET, START_UNIX, Server, WEBHOOK_SECRET};

async fn post(server: &Server, header: &str, body: &[u8]) -> StatusCode {
    server
        .http
        .post(server.url("/webhook"))
        .header("Content-Type", "application/json")
        .header("X-Signature", header)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

/// A progress report (recorded as an event each time it is accepted, so a replay that got
/// through would be seen).
async fn progress(server: &Server) -> Vec<u8> {
    let token = server.token("operator").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "WORK_AI_01"})),
        )
        .await;
    serde_json::to_vec(&json!({
        "event": "task.progress",
        "task_id": task.body["task_id"],
        "data": {"percent": 50},
    }))
    .unwrap()
}

async fn node(backend: SharedBackend) -> Server {
    common::start_node(
        backend,
        common::orchestrator_config(),
        common::config(),
        ServerOptions::default(),
    )
    .await
}

/// A delivery accepted by one node is refused by another on the same database, and by a node
/// started after the first one stopped (within the tolerance window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_05_a_replay_is_refused_by_another_node_and_after_a_restart() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let a = common::start_on(backend.clone(), common::config()).await;
    let b = node(backend.clone()).await;
    let body = progress(&a).await;
    let header = sign(WEBHOOK_SECRET, START_UNIX, &body);
    assert_eq!(post(&a, &header, &body).await, StatusCode::ACCEPTED);
    assert_eq!(post(&b, &header, &body).await, StatusCode::CONFLICT);
    drop(a);
    drop(b);
    let restarted = node(backend).await;
    assert_eq!(post(&restarted, &header, &body).await, StatusCode::CONFLICT);
    assert_eq!(restarted.events_of("webhook.task.progress").await.len(), 1);
}

/// During a rotation a sender signs with both secrets; a replay that carries only one of the
/// two signatures (either) is the same delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_05_a_replay_carrying_only_the_other_signature_is_refused() {
    let server = common::start().await;
    let body = progress(&server).await;
    let new = sign(WEBHOOK_SECRET, START_UNIX, &body);
    let old = sign(OLD_WEBHOOK_SECRET, START_UNIX, &body);
    let new_v1 = new.split_once(",v1=").unwrap().1;
    let old_v1 = old.split_once(",v1=").unwrap().1;
    let both = format!("t={START_UNIX},v1={new_v1},v1={old_v1}");
    assert_eq!(post(&server, &both, &body).await, StatusCode::ACCEPTED);
    assert_eq!(post(&server, &new, &body).await, StatusCode::CONFLICT);
    assert_eq!(post(&server, &old, &body).await, StatusCode::CONFLICT);
    assert_eq!(server.events_of("webhook.task.progress").await.len(), 1);
    // The keys are the orchestrator's: the lock API refuses to take them.
    let admin = server.token("operator").await;
    let reply = server
        .call(
            Method::POST,
            "/locks/orch-http%2Fwebhook%2Fabc/acquire",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
}

/// Delivery keys are never released, only expire: the guard deletes the expired ones now and
/// then, so the lock table does not keep a row per delivery forever.
#[tokio::test(start_paused = true)]
async fn finding_05_expired_delivery_keys_are_deleted() {
    use orch_core::backend::LockStore;
    use orch_http::webhook::{RECLAIM_EVERY, ReplayGuard};
    use std::time::Duration;

    let backend = Arc::new(MemoryBackend::new());
    let guard = ReplayGuard::new(backend.clone());
    let tolerance = Duration::from_secs(300);
    let t = START_UNIX;
    guard
        .accept(t, b"first", t, tolerance)
        .await
        .unwrap()
        .unwrap()
        .keep();
    assert_eq!(backend.list_locks().await.unwrap().len(), 1);
    // Past the key's lifetime (the tolerance and a minute for clocks that disagree) and the
    // reclaim interval: the next delivery deletes it.
    let wait = (tolerance + Duration::from_secs(61)).max(RECLAIM_EVERY + Duration::from_secs(1));
    tokio::time::advance(wait).await;
    let later = t + wait.as_secs();
    guard
        .accept(later, b"second", later, tolerance)
        .await
        .unwrap()
        .unwrap()
        .keep();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        backend.reclaim_expired_locks().await.unwrap().is_empty(),
        "the expired key was left behind"
    );
    // The first delivery is stale by now anyway; the second is still refused.
    assert!(
        guard
            .accept(later, b"second", later, tolerance)
            .await
            .unwrap()
            .is_err()
    );
}
