//! The daemon on PostgreSQL: `DATABASE_URL=postgres://...` as the README says, a task
//! dispatched with `"stay": true` through HTTP, a user added from the command line, and the
//! state kept in PostgreSQL across a restart (no SQLite file is made).

use orch_storage::sqlx::{self, Connection as _};
use serde_json::{Value, json};

use crate::daemon::{login, orchd, start_with, stop, workdir};
use crate::postgres_server::fresh_database;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_on_postgres_from_database_url() -> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let dir = workdir();
    let env = [("DATABASE_URL", url.as_str())];
    let daemon = start_with(&dir, &env);
    let password = daemon
        .password
        .clone()
        .expect("a generated admin password is printed");
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, &password).await;
    let task: Value = http
        .post(format!("{}/dispatch", daemon.url))
        .bearer_auth(&token)
        .json(&json!({"coreId": "echo", "stay": true, "payload": {"on": "postgres"}}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"on": "postgres"}));
    let health = http.get(format!("{}/health", daemon.url)).send().await?;
    assert_eq!(health.status(), 200);
    // `orchd user add` writes into the same PostgreSQL; the running daemon logs the user in.
    let added = orchd(&dir)
        .envs(env)
        .args(["user", "add", "--username", "ops", "--role", "operator"])
        .env("ORCH_NEW_PASSWORD", "another long password")
        .output()?;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let reply = http
        .post(format!("{}/auth/login", daemon.url))
        .json(&json!({"username": "ops", "password": "another long password"}))
        .send()
        .await?;
    assert_eq!(reply.status(), 200);
    // Backups of PostgreSQL are the database's own tools.
    let backup = orchd(&dir).envs(env).arg("backup").output()?;
    assert!(!backup.status.success());
    assert!(String::from_utf8_lossy(&backup.stderr).contains("pg_dump"));
    stop(daemon);

    // The task and the users are in PostgreSQL; no SQLite file was made.
    assert!(!dir.join("data/orch.db").exists());
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let (succeeded,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM orch_tasks WHERE status = 'succeeded'")
            .fetch_one(&mut conn)
            .await?;
    assert_eq!(succeeded, 1);
    conn.close().await?;
    let daemon = start_with(&dir, &env);
    assert!(daemon.password.is_none(), "the admin user already exists");
    let token = login(&http, &daemon.url, &password).await;
    let jobs: Value = http
        .get(format!("{}/jobs?core_id=echo", daemon.url))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(jobs["jobs"][0]["result"], json!({"on": "postgres"}));
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
