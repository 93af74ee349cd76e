//! Daemons on one PostgreSQL: a lock extended through one orchd is honoured by the other; a
//! dispatch PostgreSQL cannot store fails only its own caller, however many dispatches share
//! its batch; a node that loses its database leaves rotation while the other works, then
//! rejoins.

use std::time::Duration;

use orch_storage::sqlx::{self, Connection as _};
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

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `url` with its user (and password) replaced by `user_info`.
fn with_user(url: &str, user_info: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{user_info}@{host}")
}

#[test]
fn with_user_replaces_only_the_user() {
    assert_eq!(
        with_user("postgres://orch@127.0.0.1:5432/db?x=1", "b:pw"),
        "postgres://b:pw@127.0.0.1:5432/db?x=1"
    );
    assert_eq!(
        with_user("postgres://127.0.0.1/db", "b:pw"),
        "postgres://b:pw@127.0.0.1/db"
    );
}

/// Polls `url` until `done` holds for its reply (at most `seconds`); the last reply.
async fn wait_for(
    http: &reqwest::Client,
    url: String,
    seconds: u64,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let (status, body) = get(http, url.clone()).await;
        if done(status, &body) || std::time::Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dispatches `n` echo tasks through `node` and waits until each has succeeded.
async fn run_tasks(http: &reqwest::Client, node: &str, token: &str, n: usize) {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, created) = post(
            http,
            format!("{node}/dispatch"),
            token,
            json!({"coreId": "echo", "payload": {"n": i}}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["task_id"].as_str().expect("task_id").to_owned());
    }
    for id in ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut task = Value::Null;
        while task["status"] != "succeeded" && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            task = http
                .get(format!("{node}/jobs/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        }
        assert_eq!(task["status"], "succeeded", "{task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_database_leaves_rotation_while_the_other_works_then_rejoins()
-> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    // The second node connects as a role of its own, so that the database can be taken from
    // it alone: a role that may not log in, its sessions ended.
    let role = format!("node_b_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} SUPERUSER LOGIN PASSWORD 'node-b-password'"
    )))
    .execute(&mut admin)
    .await?;
    let second_url = with_user(&url, &format!("{role}:node-b-password"));
    let (first_dir, second_dir) = (workdir_without_limits(), workdir_without_limits());
    // Health is the database's alone here (a shared test machine's disk may be nearly full);
    // the second node waits at most a second for a connection.
    for (dir, extra) in [(&first_dir, ""), (&second_dir, "database:\n  timeout: 1\n")] {
        let yaml = std::fs::read_to_string(dir.join("orchd.yaml"))?;
        std::fs::write(
            dir.join("orchd.yaml"),
            format!("{yaml}monitoring:\n  self_healing:\n    disk_full_percent: 100\n{extra}"),
        )?;
    }
    let healing = [("ENABLE_SELF_HEALING", "true")];
    let first_env: Vec<(&str, &str)> = env(&url).into_iter().chain(healing).collect();
    let second_env: Vec<(&str, &str)> = env(&second_url).into_iter().chain(healing).collect();
    let first = start_with(&first_dir, &first_env);
    let second = start_with(&second_dir, &second_env);
    let http = reqwest::Client::new();
    let token = login(&http, &first.url, PASSWORD).await;
    let ready = |status: u16, _: &Value| status == 200;
    for node in [&first.url, &second.url] {
        let (status, body) = wait_for(&http, format!("{node}/health/ready"), 20, ready).await;
        assert_eq!(status, 200, "{node}: {body}");
    }

    // The database refuses the second node.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} NOLOGIN")))
        .execute(&mut admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    )))
    .execute(&mut admin)
    .await?;
    let out = |status: u16, body: &Value| {
        status == 503
            && body["checks"]["rotation"]
                .as_str()
                .is_some_and(|r| r.starts_with("out of rotation"))
    };
    let (status, body) = wait_for(&http, format!("{}/health/ready", second.url), 60, out).await;
    assert!(
        out(status, &body),
        "the second node stayed in rotation: {status} {body}"
    );
    assert_ne!(body["checks"]["database"], "ok", "{body}");
    // The first node is unaffected and does the work.
    let (status, body) = get(&http, format!("{}/health/ready", first.url)).await;
    assert_eq!(status, 200, "{body}");
    run_tasks(&http, &first.url, &token, 20).await;
    let (status, body) = get(&http, format!("{}/health/ready", second.url)).await;
    assert_eq!(status, 503, "{body}");

    // The database takes the second node back: it rejoins, and serves and works again.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} LOGIN")))
        .execute(&mut admin)
        .await?;
    let (status, body) = wait_for(&http, format!("{}/health/ready", second.url), 60, ready).await;
    assert_eq!(status, 200, "the second node did not rejoin: {body}");
    run_tasks(&http, &second.url, &token, 20).await;
    stop(first);
    stop(second);
    let _ = std::fs::remove_dir_all(first_dir);
    let _ = std::fs::remove_dir_all(second_dir);
    Ok(())
}
