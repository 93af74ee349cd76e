//! `orchd dispatch`: ORCH-Next's `Task-Dispatcher.ps1 -Action Dispatch -CoreId X [-Stay]` over
//! the HTTP API of a running daemon, with a live progress line while it waits.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

/// Arguments of `orchd dispatch`.
#[derive(Debug, Args)]
pub(crate) struct DispatchArgs {
    /// The core (engine or worker pool) to run the task.
    #[arg(long = "core-id")]
    core_id: String,
    /// Wait for the task to finish, showing its progress.
    #[arg(long)]
    stay: bool,
    /// Engine input, as JSON.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Higher runs first.
    #[arg(long)]
    priority: Option<i32>,
    /// Per-attempt timeout in seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Idempotency key.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// How to reach and log in to a running daemon.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// The daemon (`http://` or `https://`).
    #[arg(
        long,
        global = true,
        env = "ORCH_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    url: String,
    /// For `https://`: trust only the CA certificates in this PEM file (as `curl --cacert`)
    /// instead of the system's.
    #[arg(long, global = true, env = "ORCH_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// An access token (else log in with --username/--password).
    #[arg(long, global = true, env = "ORCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Username to log in with.
    #[arg(long, global = true, env = "ORCH_USERNAME", default_value = "admin")]
    username: String,
    /// Password to log in with.
    #[arg(long, global = true, env = "ORCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// A client logged in to a running daemon.
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    /// The daemon's base URL, without a trailing `/`.
    pub(crate) base: String,
    /// The access token.
    pub(crate) token: String,
}

impl Client {
    /// The daemon's URL of `segments`, each percent-encoded as one path segment. A segment no
    /// URL can carry as given (empty, `.`, `..`, or with control characters, which URL parsers
    /// drop or resolve) is refused naming it.
    pub(crate) fn url(&self, segments: &[&str]) -> Result<reqwest::Url> {
        if let Some(bad) = segments.iter().find(|segment| {
            segment.is_empty()
                || **segment == "."
                || **segment == ".."
                || segment.chars().any(char::is_control)
        }) {
            bail!("{bad:?} cannot be named in a URL");
        }
        let mut url = reqwest::Url::parse(&self.base)
            .with_context(|| format!("--url {} is not a URL", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--url {} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

impl Connection {
    /// The HTTP client (trusting `--cacert` alone when given), logged in with `--token` or
    /// `--username`/`--password`.
    pub(crate) async fn connect(self) -> Result<Client> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &self.cacert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --cacert {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--cacert {} is not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("--cacert {} holds no certificate", path.display());
            }
            http = http.tls_certs_only(certs);
        }
        let http = http.build().context("cannot set up the HTTP client")?;
        let base = self.url.trim_end_matches('/').to_owned();
        let token = match self.token {
            Some(token) => token,
            None => {
                let password = self
                    .password
                    .context("give --token, or --password (ORCH_PASSWORD) for --username")?;
                let body = check(
                    http.post(format!("{base}/auth/login"))
                        .json(&json!({"username": self.username, "password": password}))
                        .send()
                        .await
                        .with_context(|| format!("cannot reach {base}"))?,
                    "login",
                )
                .await?;
                body.get("access_token")
                    .and_then(Value::as_str)
                    .context("login answered no token")?
                    .to_owned()
            }
        };
        Ok(Client { http, base, token })
    }
}

/// The JSON body of a successful answer, or an error naming `what` with the status and the
/// daemon's message.
pub(crate) async fn check(response: reqwest::Response, what: &str) -> Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no details");
        bail!("{what} failed: {status}: {message}");
    }
    Ok(body)
}

/// `orchd dispatch`.
pub(crate) async fn dispatch(args: DispatchArgs) -> Result<ExitCode> {
    let payload: Value = serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let Client { http, base, token } = args.connection.connect().await?;
    let mut request = json!({"core_id": args.core_id, "payload": payload});
    if let Some(priority) = args.priority {
        request["priority"] = json!(priority);
    }
    if let Some(timeout) = args.timeout {
        request["timeout"] = json!(timeout);
    }
    let mut call = http.post(format!("{base}/dispatch")).bearer_auth(&token);
    if let Some(key) = &args.idempotency_key {
        call = call.header("Idempotency-Key", key);
    }
    let task = check(call.json(&request).send().await?, "dispatch").await?;
    let task_id = task
        .get("task_id")
        .and_then(Value::as_str)
        .context("dispatch answered no task_id")?
        .to_owned();
    if !args.stay {
        println!("{}", serde_json::to_string_pretty(&task)?);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("dispatched task {task_id} to {}", args.core_id);
    let started = Instant::now();
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0usize;
    let final_task = loop {
        let task = check(
            http.get(format!("{base}/jobs/{task_id}"))
                .bearer_auth(&token)
                .send()
                .await?,
            "status",
        )
        .await?;
        let status = task.get("status").and_then(Value::as_str).unwrap_or("?");
        let attempt = task.get("attempt").and_then(Value::as_u64).unwrap_or(0);
        eprint!(
            "\r{} {status:<10} attempt {attempt}  {:>6.1}s ",
            spinner[tick % spinner.len()],
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        tick += 1;
        if !matches!(status, "queued" | "running") {
            eprintln!();
            break task;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("{}", serde_json::to_string_pretty(&final_task)?);
    let succeeded = final_task.get("status").and_then(Value::as_str) == Some("succeeded");
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
