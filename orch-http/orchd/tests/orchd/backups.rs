//! Backups and restore (issue 11, finding 24): the first scheduled backup soon after start and
//! the retention that follows it, a restore that really puts the backup in place, `orchd
//! restore` with `DATABASE_URL=sqlite://...`, and a damaged backup refused before anything is
//! replaced.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orch_core::{TaskFilter, TaskStatus};
use orch_storage::SqliteBackend;
use serde_json::{Value, json};

use crate::daemon::{login, orchd, start_with, stop, workdir};

const SECRETS: [(&str, &str); 3] = [
    ("JWT_SECRET", "a-jwt-secret-for-the-backup-tests-0123"),
    ("WEBHOOK_SECRET", "whsec_backup_tests"),
    ("ORCH_ADMIN_PASSWORD", "backup tests password"),
];

/// A work directory whose daemon has its rate limits off (these tests send bursts).
pub(crate) fn workdir_without_limits() -> PathBuf {
    let dir = workdir();
    std::fs::write(
        dir.join("orchd.yaml"),
        "security:\n  password_hashing:\n    memory_kib: 1024\n    iterations: 1\n  \
         rate_limit:\n    requests_per_minute: 0\n    per_ip:\n      requests_per_minute: 0\n    \
         login_per_ip:\n      requests_per_minute: 0\nlogging:\n  level: warn\n",
    )
    .unwrap();
    dir
}

/// The backups in `dir` (`orch-*.db`), sorted by name (their time).
fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("orch-") && n.ends_with(".db"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

async fn dispatch(http: &reqwest::Client, url: &str, token: &str, payload: Value) -> Value {
    http.post(format!("{url}/dispatch"))
        .bearer_auth(token)
        .json(&json!({"coreId": "echo", "stay": true, "payload": payload}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn payloads(path: &Path) -> Vec<Value> {
    let db = SqliteBackend::open(&path.display().to_string())
        .await
        .unwrap();
    let tasks = orch_core::backend::TaskStore::list_tasks(
        &db,
        TaskFilter {
            status: Some(TaskStatus::Succeeded),
            ..TaskFilter::default()
        },
    )
    .await
    .unwrap();
    db.close().await;
    tasks.into_iter().map(|t| t.payload).collect()
}

/// A daemon whose backups folder holds only old backups writes a new one right after start (not
/// one interval later), and keeps the newest `backup.retention` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scheduled_backup_comes_soon_after_start_and_retention_keeps_the_newest() {
    let dir = workdir();
    let config = std::fs::read_to_string(dir.join("orchd.yaml")).unwrap();
    std::fs::write(
        dir.join("orchd.yaml"),
        format!("{config}backup:\n  interval_hours: 24\n  retention: 3\n"),
    )
    .unwrap();
    let folder = dir.join("data/backups");
    std::fs::create_dir_all(&folder).unwrap();
    for day in 1..=5 {
        std::fs::write(
            folder.join(format!("orch-2020010{day}T000000.000Z.db")),
            b"old",
        )
        .unwrap();
    }
    let daemon = start_with(&dir, &SECRETS);
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, SECRETS[2].1).await;
    // The backup's file appears (empty) before the copy is written into it, and the retention
    // runs once the copy is complete: wait for both.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = backups(&folder);
        let new = found.iter().any(|p| !p.to_string_lossy().contains("2020"));
        if new && found.len() <= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled backup with the retention after it within 30 s of start: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The retention ran after it: the new backup and the two newest old ones.
    let kept = backups(&folder);
    let names: Vec<String> = kept
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "orch-20200104T000000.000Z.db");
    assert_eq!(names[1], "orch-20200105T000000.000Z.db");
    // The new backup is a complete database.
    let task = dispatch(&http, &daemon.url, &token, json!("after the backup")).await;
    assert_eq!(task["status"], "succeeded");
    assert!(payloads(&kept[2]).await.is_empty());
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// What a restore must do: the live database becomes the backup. A task dispatched after the
/// backup is gone once it is restored; the one before it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_puts_the_backup_in_place_of_the_live_database() {
    let dir = workdir();
    let daemon = start_with(&dir, &SECRETS);
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, SECRETS[2].1).await;
    dispatch(&http, &daemon.url, &token, json!("before")).await;
    let backup = dir.join("manual.db");
    let made = orchd(&dir)
        .envs(SECRETS)
        .args(["backup", "--output"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    dispatch(&http, &daemon.url, &token, json!("after")).await;
    stop(daemon);
    let restored = orchd(&dir)
        .envs(SECRETS)
        .arg("restore")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(payloads(&dir.join("data/orch.db")).await, [json!("before")]);
    let daemon = start_with(&dir, &SECRETS);
    let token = login(&http, &daemon.url, SECRETS[2].1).await;
    let jobs: Value = http
        .get(format!("{}/jobs?core_id=echo", daemon.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen: Vec<&Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["payload"])
        .collect();
    assert_eq!(seen, [&json!("before")]);
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// `DATABASE_URL=sqlite://...` names the file `orchd restore` replaces, as it names the one
/// the daemon opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_accepts_a_sqlite_database_url() {
    let dir = workdir();
    let live = dir.join("elsewhere/live.db");
    let url = format!("sqlite://{}", live.display());
    let env = [("DATABASE_URL", url.as_str())];
    let daemon = start_with(&dir, &[SECRETS[0], SECRETS[1], SECRETS[2], env[0]]);
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, SECRETS[2].1).await;
    dispatch(&http, &daemon.url, &token, json!("kept")).await;
    let backup = dir.join("by-url.db");
    let made = orchd(&dir)
        .envs(SECRETS)
        .envs(env)
        .args(["backup", "--output"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    dispatch(&http, &daemon.url, &token, json!("dropped")).await;
    stop(daemon);
    let restored = orchd(&dir)
        .envs(SECRETS)
        .envs(env)
        .arg("restore")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(payloads(&live).await, [json!("kept")]);
    assert!(
        !dir.join("data/orch.db").exists(),
        "the URL's file, not the default"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A backup damaged after it was written (a page overwritten) fails the integrity check, and
/// the live database stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_damaged_backup_and_keeps_the_live_database() {
    let dir = workdir_without_limits();
    let daemon = start_with(&dir, &SECRETS);
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, SECRETS[2].1).await;
    // Enough tasks for the task table to span many pages.
    for i in 0..40 {
        let reply = http
            .post(format!("{}/dispatch", daemon.url))
            .bearer_auth(&token)
            .json(&json!({"coreId": "nobody", "payload": {"i": i, "text": "y".repeat(2000)}}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
    }
    dispatch(&http, &daemon.url, &token, json!("live")).await;
    let backup = dir.join("damaged.db");
    let made = orchd(&dir)
        .envs(SECRETS)
        .args(["backup", "--output"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    stop(daemon);
    // Overwrite the pages in the middle of the file (task rows) with garbage.
    let mut bytes = std::fs::read(&backup).unwrap();
    let page = 4096;
    let pages = bytes.len() / page;
    assert!(pages > 8, "{pages} pages");
    bytes[(pages / 2) * page..(pages / 2 + 2) * page].fill(0xA5);
    std::fs::write(&backup, bytes).unwrap();
    let refused = orchd(&dir)
        .envs(SECRETS)
        .arg("restore")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a damaged backup was restored");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("integrity"), "{stderr}");
    assert!(
        payloads(&dir.join("data/orch.db"))
            .await
            .contains(&json!("live"))
    );
    let _ = std::fs::remove_dir_all(dir);
}
