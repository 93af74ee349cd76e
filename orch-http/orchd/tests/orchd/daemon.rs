//! The `orchd` binary itself: first start on a fresh data directory, the printed password,
//! secrets kept with mode 0600, the subcommands, SIGTERM, and a bad config naming its key.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_orchd");

const CONFIG: &str = "security:\n  password_hashing:\n    memory_kib: 1024\n    iterations: 1\nlogging:\n  level: warn\n";

pub(crate) struct Daemon {
    child: Child,
    pub(crate) url: String,
    pub(crate) password: Option<String>,
}

/// A daemon a failing test did not stop is killed, not left running after the test binary.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orchd-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("orchd.yaml"), CONFIG).unwrap();
    dir
}

pub(crate) fn orchd(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .env_remove("ORCH_ADMIN_PASSWORD")
        .env_remove("JWT_SECRET")
        .env_remove("WEBHOOK_SECRET")
        .env_remove("DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env("ORCH_CONFIG", dir.join("orchd.yaml"));
    command
}

pub(crate) fn start(dir: &Path) -> Daemon {
    start_with(dir, &[])
}

/// Starts `orchd serve` in `dir` with the environment variables `env` set.
pub(crate) fn start_with(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    banner(spawn(dir, env))
}

/// Spawns `orchd serve` in `dir` with `env`, without waiting for it to listen ([`banner`]).
pub(crate) fn spawn(dir: &Path, env: &[(&str, &str)]) -> Child {
    orchd(dir)
        .envs(env.iter().copied())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads a spawned daemon's start-up lines: where it listens, the admin password it printed.
pub(crate) fn banner(mut child: Child) -> Daemon {
    let stdout = child.stdout.take().unwrap();
    let mut url = None;
    let mut password = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            url = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.split("admin password (shown once, keep it): ").nth(1) {
            password = Some(rest.trim().to_owned());
        }
        if line.starts_with("then send Authorization") {
            break;
        }
    }
    Daemon {
        child,
        url: url.expect("orchd prints where it listens"),
        password,
    }
}

pub(crate) fn stop(mut daemon: Daemon) {
    let status = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            assert!(status.success(), "orchd exits cleanly on SIGTERM: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = daemon.child.kill();
    panic!("orchd did not stop within 10 s of SIGTERM");
}

pub(crate) async fn login(http: &reqwest::Client, url: &str, password: &str) -> String {
    let reply: Value = http
        .post(format!("{url}/auth/login"))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_start_serves_and_the_subcommands_work() {
    let dir = workdir();
    let daemon = start(&dir);
    let data = dir.join("data");
    for secret in ["jwt_secret", "webhook_secret"] {
        let mode = std::fs::metadata(data.join(secret))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    assert!(data.join("orch.db").exists());
    let password = daemon
        .password
        .clone()
        .expect("a generated admin password is printed");
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, &password).await;
    let task: Value = http
        .post(format!("{}/dispatch", daemon.url))
        .bearer_auth(&token)
        .json(&json!({"coreId": "echo", "stay": true, "payload": {"hi": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["result"], json!({"hi": 1}));
    // `orchd dispatch --core-id sleep --stay` against the running daemon.
    let output = orchd(&dir)
        .args([
            "dispatch",
            "--core-id",
            "sleep",
            "--stay",
            "--payload",
            "{\"ms\": 300}",
            "--url",
            &daemon.url,
        ])
        .env("ORCH_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["result"], json!({"slept_ms": 300}));
    assert!(String::from_utf8_lossy(&output.stderr).contains("succeeded"));
    // A user added from the command line can log in at once.
    let added = orchd(&dir)
        .args(["user", "add", "--username", "ops", "--role", "operator"])
        .env("ORCH_NEW_PASSWORD", "another long password")
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let reply = http
        .post(format!("{}/auth/login", daemon.url))
        .json(&json!({"username": "ops", "password": "another long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let again = orchd(&dir)
        .args(["user", "add", "--username", "ops"])
        .env("ORCH_NEW_PASSWORD", "another long password")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("user \"ops\" already exists"));
    // Restore refuses while the daemon runs.
    let backup = orchd(&dir).args(["backup"]).output().unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let backup_path = String::from_utf8_lossy(&backup.stdout)
        .trim()
        .trim_start_matches("backup written to ")
        .to_owned();
    assert!(Path::new(&dir.join(&backup_path)).exists() || Path::new(&backup_path).exists());
    let refused = orchd(&dir)
        .args(["restore", &backup_path])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("running"));
    stop(daemon);
    assert!(!data.join("orchd.pid").exists());

    // Second start: same secrets, no new password; the restored backup has the first task.
    let migrate = orchd(&dir).args(["migrate"]).output().unwrap();
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("schema version"));
    let restored = orchd(&dir)
        .args(["restore", &backup_path])
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let daemon = start(&dir);
    assert!(daemon.password.is_none(), "the password is printed once");
    let token = login(&http, &daemon.url, &password).await;
    let jobs: Value = http
        .get(format!("{}/jobs?core_id=echo", daemon.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"][0]["result"], json!({"hi": 1}));
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `orchd engines <args>` against `daemon` as `username`; its stdout, or the failure's
/// stderr as `Err`.
fn engines(
    dir: &Path,
    daemon: &Daemon,
    username: &str,
    password: &str,
    args: &[&str],
) -> Result<String, String> {
    let output = orchd(dir)
        .arg("engines")
        .args(args)
        .args(["--url", &daemon.url, "--username", username])
        .env("ORCH_PASSWORD", password)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_subcommands_pause_resume_list_and_set_concurrency() {
    let dir = workdir();
    let daemon = start(&dir);
    let password = daemon.password.clone().expect("a generated admin password");
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, &password).await;

    let paused = engines(
        &dir,
        &daemon,
        "admin",
        &password,
        &["pause", "echo", "--reason", "maintenance"],
    );
    assert_eq!(paused.as_deref(), Ok("paused echo on every node\n"));
    let list = engines(&dir, &daemon, "admin", &password, &["list"]).unwrap();
    let echo = list
        .lines()
        .find(|line| line.starts_with("echo "))
        .expect(&list);
    assert!(echo.contains("paused"), "{list}");
    assert!(echo.contains("user:admin (maintenance)"), "{list}");

    // Its new task waits while it is paused, and runs once it is resumed.
    let task: Value = http
        .post(format!("{}/dispatch", daemon.url))
        .bearer_auth(&token)
        .json(&json!({"coreId": "echo", "payload": {"n": 7}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["task_id"].as_str().expect("task id").to_owned();
    let status = |http: reqwest::Client| {
        let url = format!("{}/jobs/{id}", daemon.url);
        let token = token.clone();
        async move {
            let task: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            task["status"].as_str().unwrap_or("?").to_owned()
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(http.clone()).await, "queued");
    let resumed = engines(&dir, &daemon, "admin", &password, &["resume", "echo"]);
    assert_eq!(resumed.as_deref(), Ok("resumed echo on every node\n"));
    let mut last = String::new();
    for _ in 0..100 {
        last = status(http.clone()).await;
        if last == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "succeeded");

    let set = engines(
        &dir,
        &daemon,
        "admin",
        &password,
        &["concurrency", "sleep", "2"],
    )
    .unwrap();
    assert!(set.starts_with("sleep: concurrency 2 (was "), "{set}");
    assert!(set.contains(" on node "), "{set}");
    let dots = engines(&dir, &daemon, "admin", &password, &["pause", ".."]);
    assert!(
        dots.as_ref()
            .unwrap_err()
            .contains("cannot be named in a URL"),
        "{dots:?}"
    );
    let unknown = engines(
        &dir,
        &daemon,
        "admin",
        &password,
        &["concurrency", "nothing-here", "2"],
    );
    assert!(unknown.as_ref().unwrap_err().contains("404"), "{unknown:?}");

    // A viewer sees the engines and may change none.
    let added = orchd(&dir)
        .args(["user", "add", "--username", "watcher", "--role", "viewer"])
        .env("ORCH_NEW_PASSWORD", "a viewer's long password")
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let viewer = "a viewer's long password";
    assert!(engines(&dir, &daemon, "watcher", viewer, &["list"]).is_ok());
    let refused = engines(&dir, &daemon, "watcher", viewer, &["pause", "echo"]);
    assert!(refused.as_ref().unwrap_err().contains("403"), "{refused:?}");
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_subcommands_list_show_cancel_and_retry() {
    let dir = workdir();
    let daemon = start(&dir);
    let password = daemon.password.clone().expect("a generated admin password");
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, &password).await;
    let jobs = |args: &[&str]| {
        let output = orchd(&dir)
            .arg("jobs")
            .args(args)
            .args(["--url", &daemon.url])
            .env("ORCH_PASSWORD", &password)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "orchd jobs {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // An hour away: cancelled before it runs.
    let task: Value = http
        .post(format!("{}/dispatch", daemon.url))
        .bearer_auth(&token)
        .json(&json!({"coreId": "echo", "delay": 3600, "payload": {"n": 3}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["task_id"].as_str().expect("task id").to_owned();
    assert_eq!(jobs(&["cancel", &id]), format!("task {id} is cancelled\n"));
    assert_eq!(
        jobs(&["retry", &id]),
        format!("task {id} is queued again\n")
    );
    let mut listed = String::new();
    for _ in 0..100 {
        listed = jobs(&["list", "--status", "succeeded"]);
        if listed.contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed.contains(&id), "{listed}");
    let shown = jobs(&["show", &id]);
    assert!(shown.contains("\"status\": \"succeeded\""), "{shown}");
    let reopened = shown
        .lines()
        .find(|line| line.contains("task.reopened"))
        .expect(&shown);
    assert!(reopened.contains("user:admin"), "{shown}");
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_invalid_config_stops_start_up_naming_the_key() {
    let dir = workdir();
    std::fs::write(
        dir.join("orchd.yaml"),
        "security:\n  jwt_expiry: tomorrow\n",
    )
    .unwrap();
    let output = orchd(&dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("security.jwt_expiry"), "{stderr}");
    let output = orchd(&dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ORCH_CONFIG", "/nonexistent/orchd.yaml")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let _ = std::fs::remove_dir_all(dir);
}
