//! Daemons on one PostgreSQL (issue 11): a lock extended through one orchd is honoured by the
//! other (finding 3), and a dispatch PostgreSQL cannot store fails only its own caller, however
//! many dispatches share its batch (finding 4).

use std::time::Duration;

use serde_json::{Value, json};

use crate::backups::workdir_without_limits;
use crate::daemon::{login, start_with, stop, workdir};
use crate::postgres_server::fresh_database;

const PASSWORD: &str = "two nodes password";

fn env(url: &str) -> [(&str, &str); 4] {
    [
        ("DATABASE_URL", url),
        ("JWT_SECRET", "a-jwt-secret-shared-by-both-nodes-0123"),
        ("WEBHOOK_SECRET", "whsec_shared_by_both_nodes"),
        ("ORCH_ADMIN_PASSWORD", PASSWORD),
    ]
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_extended_on_one_orchd_is_honoured_on_the_other() -> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let (first_dir, second_dir) = (workdir(), workdir());
    let first = start_with(&first_dir, &env(&url));
    let second = start_with(&second_dir, &env(&url));
    let http = reqwest::Client::new();
    let token = login(&http, &first.url, PASSWORD).await;
    let (status, granted) = post(
        &http,
        format!("{}/locks/ledger:7/acquire", first.url),
        &token,
        json!({"ttl": 1, "owner": "admin/job-1"}),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    let fencing_token = granted["fencing_token"].as_u64().unwrap();
    let (status, extended) = post(
        &http,
        format!("{}/locks/ledger:7/extend", second.url),
        &token,
        json!({"fencing_token": fencing_token, "ttl": 60, "owner": "admin/job-1"}),
    )
    .await;
    assert_eq!(status, 200, "{extended}");
    // Past the first TTL the first node grants another lock (and looks at what it keeps).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, _) = post(
        &http,
        format!("{}/locks/ledger:8/acquire", first.url),
        &token,
        json!({"ttl": 60}),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info: Value = http
        .get(format!("{}/locks/ledger:7", second.url))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(info["fencing_token"], fencing_token, "{info}");
    assert_eq!(info["owner"], "admin/job-1");
    let (status, taken) = post(
        &http,
        format!("{}/locks/ledger:7/acquire", first.url),
        &token,
        json!({"owner": "admin/job-2"}),
    )
    .await;
    assert_eq!(status, 409, "the extended lock was granted again: {taken}");
    stop(first);
    stop(second);
    let _ = std::fs::remove_dir_all(first_dir);
    let _ = std::fs::remove_dir_all(second_dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dispatches_beside_poisoned_ones_all_succeed_on_postgres() -> anyhow::Result<()>
{
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let dir = workdir_without_limits();
    let daemon = start_with(&dir, &env(&url));
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, PASSWORD).await;
    let mut calls = Vec::new();
    for i in 0..120 {
        let body = match i {
            40 => json!({"coreId": "nobody", "payload": {"text": "nul \u{0} inside"}}),
            80 => json!({"coreId": "nobody", "metadata": {"k\u{0}": 1}}),
            100 => json!({"coreId": "nobody", "runAt": "-5000-01-01T00:00:00Z"}),
            _ => json!({"coreId": "nobody", "payload": i}),
        };
        let (http, url, token) = (
            http.clone(),
            format!("{}/dispatch", daemon.url),
            token.clone(),
        );
        calls.push(tokio::spawn(async move {
            (i, post(&http, url, &token, body).await)
        }));
    }
    let mut created = 0;
    for call in calls {
        let (i, (status, body)) = call.await?;
        match i {
            40 => assert_eq!(
                (status, body["field"].as_str()),
                (422, Some("payload")),
                "{body}"
            ),
            80 => assert_eq!(
                (status, body["field"].as_str()),
                (422, Some("metadata")),
                "{body}"
            ),
            100 => assert_eq!(
                (status, body["field"].as_str()),
                (422, Some("run_at")),
                "{body}"
            ),
            _ => {
                assert_eq!(status, 201, "dispatch {i}: {body}");
                created += 1;
            }
        }
    }
    assert_eq!(created, 117);
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
