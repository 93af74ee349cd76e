//! Finding 8 (every refused unauthenticated request appended a security event).

use std::sync::Arc;
use std::time::Duration;

use orch_http::webhook::sign;
use reqwest::Method;
use serde_json::json;

use crate::common::{self, START_UNIX};
use crate::instrumented::Instrumented;

/// 300 refused requests (bad tokens, unknown users, bad signatures) within the interval cost
/// one event per kind, written at once, then one summary per kind with the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_08_refused_requests_are_summarised_not_written_each() {
    let backend = Arc::new(Instrumented::default());
    let config = common::config().with_refusal_event_interval(Duration::from_millis(800));
    let server = common::start_on(backend.clone(), config).await;
    // Everything before the flood: users, a known user's failure (it measures the guard).
    server.login("viewer", "not the password").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let appended_before = backend.count("append_event");
    let writes_before = backend.writes();
    for n in 0..100 {
        server
            .call(
                Method::GET,
                "/jobs",
                Some(&format!("forged.token.{n}")),
                None,
            )
            .await;
        server.login(&format!("nobody-{n}"), "a password").await;
        let body = serde_json::to_vec(&json!({"n": n})).unwrap();
        server
            .http
            .post(server.url("/webhook"))
            .header("X-Signature", sign("not-the-secret", START_UNIX, &body))
            .body(body)
            .send()
            .await
            .unwrap();
    }
    let appended = backend.count("append_event") - appended_before;
    assert!(appended <= 3, "{appended} events for 300 refusals");
    assert!(
        backend.writes() - writes_before <= 3,
        "{} writes for 300 refusals: {:?}",
        backend.writes() - writes_before,
        backend.calls()
    );
    // At the end of the interval, one summary per kind.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for kind in [
        "auth.token_refused",
        "auth.login_failed",
        "webhook.signature_refused",
    ] {
        let events = server.events_of(kind).await;
        let summary = events
            .iter()
            .find(|e| e.data["summary"] == true)
            .unwrap_or_else(|| panic!("no summary of {kind}: {events:?}"));
        let single: u64 = events
            .iter()
            .filter(|e| e.data["summary"] != true)
            .map(|e| e.data["count"].as_u64().unwrap())
            .sum();
        let total = summary.data["count"].as_u64().unwrap() + single;
        assert!(total >= 100, "{kind}: {total} of 100+ counted: {events:?}");
        assert!(summary.data["ips"].as_array().unwrap().len() <= 16);
    }
    let logins = server.events_of("auth.login_failed").await;
    assert_eq!(logins.last().unwrap().data["reasons"]["unknown_user"], 99);
}
