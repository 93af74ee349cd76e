//! The data directory (issue 11, findings 15 and 22): one daemon per directory, taken before
//! anything is read or written there, and the database, its WAL and shared-memory files and
//! the backups private to the daemon's user even when the directory already existed.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::daemon::{login, orchd, start_with, stop, workdir};

const SECRETS: [(&str, &str); 3] = [
    ("JWT_SECRET", "a-jwt-secret-for-the-data-directory-tests"),
    ("WEBHOOK_SECRET", "whsec_data_directory_tests"),
    ("ORCH_ADMIN_PASSWORD", "data directory password"),
];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn serve(dir: &Path) -> Child {
    orchd(dir)
        .envs(SECRETS)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two `orchd serve` started at the same moment on one data directory: exactly one serves, the
/// other stops at once saying which daemon holds the directory.
#[test]
fn two_daemons_started_at_once_on_one_data_directory_do_not_both_run() {
    let dir = workdir();
    // The database and its admin exist already, so that neither start has anything to create.
    let added = orchd(&dir)
        .envs(SECRETS)
        .args(["user", "add", "--username", "admin", "--role", "admin"])
        .env("ORCH_NEW_PASSWORD", "data directory password")
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let mut daemons = [serve(&dir), serve(&dir)];
    let deadline = Instant::now() + Duration::from_secs(30);
    let loser = loop {
        if let Some(i) = (0..2).find(|&i| daemons[i].try_wait().unwrap().is_some()) {
            break i;
        }
        if Instant::now() > deadline {
            for daemon in &mut daemons {
                let _ = daemon.kill();
            }
            panic!("both orchd serve run on one data directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let winner = 1 - loser;
    let output = daemons[loser].wait_with_output_ref();
    assert!(!output.0.success());
    assert!(
        output.1.contains("another orchd") && output.1.contains("runs on"),
        "{}",
        output.1
    );
    // The winner serves.
    let stdout = daemons[winner].stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    assert!(lines.any(|line| line.contains("listening on")));
    // The rest of the banner is read to the end, in the background.
    let drain = std::thread::spawn(move || lines.count());
    let pid = daemons[winner].id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(daemons[winner].wait().unwrap().success());
    let _ = drain.join();
    let _ = std::fs::remove_dir_all(dir);
}

/// A daemon whose standard output is closed before it prints its banner (its reader went
/// away, as with `orchd | head -1` or a supervisor that closed the pipe) serves all the same
/// and stops cleanly: the banner's lines are dropped, not a reason to stop.
#[test]
fn a_daemon_whose_stdout_is_closed_serves_and_stops_cleanly() {
    let dir = workdir();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut daemon = orchd(&dir)
        .envs(SECRETS)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the daemon has written anything: every banner line meets a broken pipe.
    drop(daemon.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("orchd stopped ({status}) with its stdout closed: {stderr}");
        }
        let health = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            use std::io::{Read as _, Write as _};
            stream
                .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        });
        if let Ok(reply) = health
            && reply.starts_with("HTTP/1.1 200")
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = daemon.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = daemon.wait().unwrap();
    assert!(served, "orchd never answered /health/live");
    assert!(status.success(), "orchd stopped with {status}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The loser's exit status and standard error.
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.stderr.take() {
            use std::io::Read;
            pipe.read_to_string(&mut stderr).unwrap();
        }
        (status, stderr)
    }
}

/// A data directory made beforehand with the umask's 0755: the daemon makes it 0700, and the
/// database, its `-wal` and `-shm` files and a backup 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_backups_are_private_even_in_an_existing_directory() {
    let dir = workdir();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = start_with(&dir, &SECRETS);
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, SECRETS[2].1).await;
    let reply = http
        .post(format!("{}/dispatch", daemon.url))
        .bearer_auth(&token)
        .json(&json!({"coreId": "echo", "stay": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(mode(&data), 0o700, "the data directory");
    for file in ["orch.db", "orch.db-wal", "orch.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let backup = orchd(&dir).envs(SECRETS).arg("backup").output().unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let written = String::from_utf8_lossy(&backup.stdout)
        .trim()
        .trim_start_matches("backup written to ")
        .to_owned();
    let written = dir.join(written);
    assert_eq!(mode(&written), 0o600, "{}", written.display());
    assert_eq!(
        mode(written.parent().unwrap()),
        0o700,
        "the backups directory"
    );
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// `orchd migrate` on a SQLite data directory under a running daemon stops at once, naming
/// it, and changes nothing; once the daemon is stopped it migrates.
#[test]
fn migrate_refuses_a_data_directory_a_daemon_runs_on() {
    let dir = workdir();
    let mut daemon = serve(&dir);
    let stdout = daemon.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    assert!(lines.any(|line| line.contains("listening on")));
    let drain = std::thread::spawn(move || lines.count());
    let refused = orchd(&dir).envs(SECRETS).arg("migrate").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "migrate ran under a daemon");
    assert!(
        stderr.contains("orchd is running") && stderr.contains("stop it before migrating"),
        "{stderr}"
    );
    let pid = daemon.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(daemon.wait().unwrap().success());
    let _ = drain.join();
    let migrated = orchd(&dir).envs(SECRETS).arg("migrate").output().unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("schema version"));
    let _ = std::fs::remove_dir_all(dir);
}
