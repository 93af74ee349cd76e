//! Issue 11 ("Hardening: orchd safe to put on a network") at the daemon: HTTPS with `curl
//! --cacert` and a plain-HTTP client on the HTTPS port, `orchd user ...` (finding 13), and two
//! daemons on one PostgreSQL (findings 2, 5 and 21).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{Daemon, banner, orchd, spawn, start_with, stop, workdir};
use crate::postgres_server::fresh_database;

/// A CA, and a certificate it signs for `localhost` and `127.0.0.1`, written as PEM files in
/// `dir`: `ca.pem`, `cert.pem`, `key.pem`.
fn certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "orchd test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs")
}

/// `curl --cacert` reaches orchd over HTTPS, and so does `orchd dispatch --url https://...
/// --cacert`; a client that does not trust the CA is refused; a plain-HTTP client on the
/// HTTPS port gets a clear 400 at once, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_curl_with_the_ca_reaches_orchd_and_plain_http_gets_a_clear_error() {
    let dir = workdir();
    certificates(&dir);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let ca = dir.join("ca.pem").display().to_string();
    let env = [
        ("ORCH_TLS_CERT", cert.as_str()),
        ("ORCH_TLS_KEY", key.as_str()),
        ("ORCH_ADMIN_PASSWORD", "a long admin password"),
    ];
    let daemon = start_with(&dir, &env);
    assert!(daemon.url.starts_with("https://"), "{}", daemon.url);
    let health = format!("{}/health", daemon.url);
    let reached = curl(&["--cacert", &ca, &health]);
    assert!(
        reached.status.success(),
        "{}",
        String::from_utf8_lossy(&reached.stderr)
    );
    let body: Value = serde_json::from_slice(&reached.stdout).unwrap();
    // Degraded when this machine's disk is over 80% full (an alert, not a failed check).
    assert!(
        matches!(body["status"].as_str(), Some("healthy" | "degraded")),
        "{body}"
    );
    // Without the CA: refused by curl (exit 60: the peer's certificate is not trusted).
    let untrusted = curl(&[&health]);
    assert_eq!(untrusted.status.code(), Some(60));
    // Plain HTTP to the HTTPS port: a clear answer, quickly.
    let plain_url = health.replace("https://", "http://");
    let started = Instant::now();
    let plain = curl(&["-i", &plain_url]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("use https://"), "{text}");
    // The same with a raw socket: the answer, then the connection closes.
    let addr = daemon.url.trim_start_matches("https://").to_owned();
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("400 Bad Request"), "{answer}");
    // `orchd dispatch` over HTTPS, trusting the CA.
    let output = orchd(&dir)
        .args([
            "dispatch",
            "--core-id",
            "echo",
            "--stay",
            "--payload",
            "{\"over\": \"tls\"}",
            "--url",
            &daemon.url,
            "--cacert",
            &ca,
        ])
        .env("ORCH_PASSWORD", "a long admin password")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["result"], json!({"over": "tls"}));
    // Without --cacert the system's roots do not know our CA.
    let refused = orchd(&dir)
        .args(["dispatch", "--core-id", "echo", "--url", &daemon.url])
        .env("ORCH_PASSWORD", "a long admin password")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    stop(daemon);
    // A certificate without its key stops start-up, naming the key.
    let output = orchd(&dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ORCH_TLS_CERT", &cert)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.tls.key_file"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

async fn login_status(http: &reqwest::Client, url: &str, user: &str, password: &str) -> u16 {
    http.post(format!("{url}/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn user_command(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = orchd(dir)
        .envs(env.iter().copied())
        .arg("user")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "orchd user {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Five wrong logins lock `admin`; `orchd user unlock admin` on the host lets it back in
/// without an admin token. The other `orchd user` commands act on the running daemon too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_13_orchd_user_unlock_lets_a_locked_out_admin_back_in() {
    let dir = workdir();
    // More logins than the per-address login limit allows.
    let config = std::fs::read_to_string(dir.join("orchd.yaml"))
        .unwrap()
        .replace(
            "security:\n",
            "security:\n  rate_limit:\n    login_per_ip: {requests_per_minute: 0}\n",
        );
    std::fs::write(dir.join("orchd.yaml"), config).unwrap();
    let env = [("ORCH_ADMIN_PASSWORD", "a long admin password")];
    let daemon = start_with(&dir, &env);
    let http = reqwest::Client::new();
    let url = &daemon.url;
    for _ in 0..5 {
        login_status(&http, url, "admin", "not the password").await;
    }
    assert_eq!(
        login_status(&http, url, "admin", "a long admin password").await,
        401
    );
    assert!(user_command(&dir, &[], &["list"]).contains("locked for"));
    user_command(&dir, &[], &["unlock", "admin"]);
    assert_eq!(
        login_status(&http, url, "admin", "a long admin password").await,
        200
    );
    // passwd, role, disable, enable, delete: each takes effect on the running daemon.
    let new_password = [("ORCH_NEW_PASSWORD", "the ops password")];
    user_command(&dir, &new_password, &["add", "--username", "ops"]);
    assert_eq!(
        login_status(&http, url, "ops", "the ops password").await,
        200
    );
    user_command(
        &dir,
        &[("ORCH_NEW_PASSWORD", "another ops password")],
        &["passwd", "ops"],
    );
    assert_eq!(
        login_status(&http, url, "ops", "the ops password").await,
        401
    );
    assert_eq!(
        login_status(&http, url, "ops", "another ops password").await,
        200
    );
    user_command(&dir, &[], &["disable", "ops"]);
    assert_eq!(
        login_status(&http, url, "ops", "another ops password").await,
        401
    );
    assert!(user_command(&dir, &[], &["list"]).contains("disabled"));
    user_command(&dir, &[], &["enable", "ops"]);
    user_command(&dir, &[], &["role", "ops", "viewer"]);
    let reply: Value = http
        .post(format!("{url}/auth/login"))
        .json(&json!({"username": "ops", "password": "another ops password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["role"], "viewer");
    user_command(&dir, &[], &["delete", "ops"]);
    assert_eq!(
        login_status(&http, url, "ops", "another ops password").await,
        401
    );
    let missing = orchd(&dir)
        .args(["user", "unlock", "ghost"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user \"ghost\""));
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// Environment shared by daemons of one deployment on `url`.
fn cluster_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", url.to_owned()),
        (
            "JWT_SECRET",
            "a-shared-jwt-secret-0123456789abcdef0123".to_owned(),
        ),
        ("WEBHOOK_SECRET", "whsec_shared_secret".to_owned()),
    ]
}

fn as_pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Two daemons started at the same moment on one empty PostgreSQL: exactly one creates `admin`
/// and prints its password, which works on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_21_two_daemons_starting_on_one_postgres_create_admin_once() -> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let env = cluster_env(&url);
    let env = as_pairs(&env);
    let (dir_a, dir_b) = (workdir(), workdir());
    let (a, b) = (spawn(&dir_a, &env), spawn(&dir_b, &env));
    let (a, b): (Daemon, Daemon) = (banner(a), banner(b));
    let passwords: Vec<&String> = [&a.password, &b.password].into_iter().flatten().collect();
    assert_eq!(passwords.len(), 1, "each daemon printed a password");
    let http = reqwest::Client::new();
    for daemon in [&a, &b] {
        assert_eq!(
            login_status(&http, &daemon.url, "admin", passwords[0]).await,
            200
        );
    }
    stop(a);
    stop(b);
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
    Ok(())
}

/// Two daemons on one PostgreSQL: a lockout set through one holds on the other (failures
/// sent to both at once all count), and a webhook delivery accepted by one is refused by the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgres_share_lockouts_and_refuse_replayed_webhooks()
-> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let mut env = cluster_env(&url);
    env.push(("ORCH_ADMIN_PASSWORD", "a long admin password".to_owned()));
    let env = as_pairs(&env);
    let (dir_a, dir_b) = (workdir(), workdir());
    let a = start_with(&dir_a, &env);
    let b = start_with(&dir_b, &env);
    let http = reqwest::Client::new();
    user_command(
        &dir_a,
        &[env.as_slice(), &[("ORCH_NEW_PASSWORD", "the ops password")]].concat(),
        &["add", "--username", "ops"],
    );
    // Finding 2: exactly `max_failures` (5) wrong guesses, to both nodes at once: the account
    // is locked only if none of them was lost.
    let guesses = (0..5).map(|n| {
        let node = if n % 2 == 0 { &a.url } else { &b.url };
        let http = &http;
        async move { login_status(http, node, "ops", &format!("wrong guess {n}")).await }
    });
    futures_util::future::join_all(guesses).await;
    for node in [&a.url, &b.url] {
        assert_eq!(
            login_status(&http, node, "ops", "the ops password").await,
            401
        );
    }
    user_command(&dir_b, &env, &["unlock", "ops"]);
    assert_eq!(
        login_status(&http, &a.url, "ops", "the ops password").await,
        200
    );

    // Finding 5: a delivery replayed to the other node.
    let token: Value = http
        .post(format!("{}/auth/login", a.url))
        .json(&json!({"username": "admin", "password": "a long admin password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"].as_str().unwrap();
    let task: Value = http
        .post(format!("{}/dispatch", a.url))
        .bearer_auth(token)
        .json(&json!({"core_id": "external-worker"}))
        .send()
        .await?
        .json()
        .await?;
    let body = serde_json::to_vec(
        &json!({"event": "task.completed", "task_id": task["task_id"],
        "status": "success", "data": {"done": true}}),
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let header = orch_http::webhook::sign("whsec_shared_secret", now, &body);
    let deliver = |node: &str| {
        http.post(format!("{node}/webhook"))
            .header("Content-Type", "application/json")
            .header("X-Signature", &header)
            .body(body.clone())
            .send()
    };
    assert_eq!(deliver(&a.url).await?.status().as_u16(), 200);
    let replayed = deliver(&b.url).await?;
    assert_eq!(replayed.status().as_u16(), 409);
    let reply: Value = replayed.json().await?;
    assert!(
        reply["error"].as_str().unwrap().contains("replay"),
        "{reply}"
    );
    stop(a);
    // After a restart, still refused.
    let a = start_with(&dir_a, &env);
    assert_eq!(deliver(&a.url).await?.status().as_u16(), 409);
    stop(a);
    stop(b);
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
    Ok(())
}

/// JWT keys rotate through the secret file: a new first line signs, the old key on the second
/// line still verifies the tokens it signed; dropping it refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_rotate_through_the_secret_file() {
    let dir = workdir();
    let env = [("ORCH_ADMIN_PASSWORD", "a long admin password")];
    let http = reqwest::Client::new();
    let token_of = async |url: &str| -> String {
        let reply: Value = http
            .post(format!("{url}/auth/login"))
            .json(&json!({"username": "admin", "password": "a long admin password"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["access_token"].as_str().unwrap().to_owned()
    };
    let jobs = async |url: &str, token: &str| -> u16 {
        http.get(format!("{url}/jobs"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let daemon = start_with(&dir, &env);
    let old_token = token_of(&daemon.url).await;
    stop(daemon);
    let file = dir.join("data/jwt_secret");
    let old_key = std::fs::read_to_string(&file).unwrap();
    let new_key = "a-new-jwt-key-written-by-the-operator-0123456789";
    std::fs::write(&file, format!("{new_key}\n{old_key}")).unwrap();
    let daemon = start_with(&dir, &env);
    assert_eq!(jobs(&daemon.url, &old_token).await, 200);
    let new_token = token_of(&daemon.url).await;
    assert_eq!(jobs(&daemon.url, &new_token).await, 200);
    stop(daemon);
    std::fs::write(&file, format!("{new_key}\n")).unwrap();
    let daemon = start_with(&dir, &env);
    assert_eq!(jobs(&daemon.url, &old_token).await, 401);
    assert_eq!(jobs(&daemon.url, &new_token).await, 200);
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// The `webhook_secret` file rotates like `jwt_secret`: one secret a line, every one
/// accepted, so a sender still signing with the old secret is not refused while it moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_rotate_through_the_secret_file() {
    let dir = workdir();
    let env = [("ORCH_ADMIN_PASSWORD", "a long admin password")];
    let http = reqwest::Client::new();
    // A delivery for a task nobody has: 404 once the signature is accepted, 401 if not.
    // Each delivery is another (so that none is taken for a replay of another).
    let deliver = async |url: &str, secret: &str, n: u8| -> u16 {
        let body = serde_json::to_vec(&json!({
            "event": "task.completed",
            "task_id": format!("01a22cd5-727a-705c-b7af-5a42f09731{n:02}"),
            "status": "completed",
        }))
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        http.post(format!("{url}/webhook"))
            .header("content-type", "application/json")
            .header("x-signature", orch_http::webhook::sign(secret, now, &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let daemon = start_with(&dir, &env);
    stop(daemon);
    let file = dir.join("data/webhook_secret");
    let old_secret = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let new_secret = "whsec_a_new_secret_written_by_the_operator";
    std::fs::write(&file, format!("{new_secret}\n{old_secret}\n")).unwrap();
    let daemon = start_with(&dir, &env);
    assert_eq!(deliver(&daemon.url, new_secret, 1).await, 404);
    assert_eq!(deliver(&daemon.url, &old_secret, 2).await, 404);
    assert_eq!(deliver(&daemon.url, "whsec_never_configured", 3).await, 401);
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}
