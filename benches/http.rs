//! A load client of `orchd`: the figures for BENCHMARKS.md that `wrk` cannot give.
//!
//! - `dispatch-latency`: an open-loop load of `POST /dispatch` at a fixed rate; latency is
//!   measured from each request's scheduled start, so a stall counts against it.
//! - `sse`: holds N concurrent `GET /sse/events` streams open over raw TCP, then reports the
//!   daemon's resident memory (`/proc/<pid>/status`) and checks a dispatched task reaches them.
//! - `webhook-verify`: signature verifications per second in process (one core), the work
//!   `POST /webhook` does before touching the database.
//!
//! Run it through `benches/http.sh`, which starts a release `orchd` and `wrk` too, and runs
//! this client as `cargo bench --bench http -- [--url URL] <mode> [flags]`. Without a mode it
//! prints a note and does nothing (so a plain `cargo bench` passes it by).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Load figures for orchd.
#[derive(Debug, Parser)]
struct Cli {
    /// The daemon.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// An access token (else --username/--password log in).
    #[arg(long, env = "TOKEN")]
    token: Option<String>,
    /// Username.
    #[arg(long, default_value = "admin")]
    username: String,
    /// Password.
    #[arg(long, env = "ORCH_PASSWORD")]
    password: Option<String>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Fixed-rate POST /dispatch; prints p50/p90/p99/max.
    DispatchLatency {
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Core to dispatch to.
        #[arg(long, default_value = "bench-external")]
        core_id: String,
    },
    /// Hold N SSE streams; print the daemon's RSS.
    Sse {
        /// Streams.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// The daemon's pid (for RSS).
        #[arg(long)]
        pid: u32,
    },
    /// In-process webhook signature verifications per second.
    WebhookVerify {
        /// Seconds.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

async fn token(cli: &Cli, http: &reqwest::Client) -> Result<String> {
    if let Some(token) = &cli.token {
        return Ok(token.clone());
    }
    let password = cli.password.clone().context("--password or TOKEN needed")?;
    let reply: Value = http
        .post(format!("{}/auth/login", cli.url))
        .json(&json!({"username": cli.username, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("login failed")
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    support::percentile(sorted, q).unwrap_or_default()
}

async fn dispatch_latency(cli: &Cli, rate: u64, seconds: u64, core_id: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let token = Arc::new(token(cli, &http).await?);
    let total = rate * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let url = Arc::new(format!("{}/dispatch", cli.url));
    let body = Arc::new(json!({"core_id": core_id, "payload": {"n": 1}}));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(scheduled).await;
        let (http, token, url, body, errors) = (
            http.clone(),
            token.clone(),
            url.clone(),
            body.clone(),
            errors.clone(),
        );
        handles.push(tokio::spawn(async move {
            let result = http
                .post(url.as_str())
                .bearer_auth(token.as_str())
                .json(&*body)
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    let _ = response.bytes().await;
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            scheduled.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(handles.len());
    for handle in handles {
        latencies.push(handle.await?);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "dispatch-latency: {total} requests at {rate}/s over {:.1}s, errors {}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        errors.load(Ordering::Relaxed),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.90).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

async fn open_stream(addr: &str, host: &str, token: &str) -> Result<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET /sse/events?kind=task.queued HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).await?;
    let head = String::from_utf8_lossy(&buffer[..n]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("stream refused: {}", head.lines().next().unwrap_or(""));
    }
    Ok(stream)
}

async fn sse(cli: &Cli, clients: usize, pid: u32) -> Result<()> {
    let http = reqwest::Client::new();
    let token = Arc::new(token(cli, &http).await?);
    let host = cli
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut streams = Vec::with_capacity(clients);
    let mut pending = Vec::new();
    for _ in 0..clients {
        let (host, token) = (host.clone(), token.clone());
        pending.push(tokio::spawn(async move {
            open_stream(&host, &host, &token).await
        }));
        if pending.len() == 200 {
            for handle in pending.drain(..) {
                streams.push(handle.await??);
            }
        }
    }
    for handle in pending {
        streams.push(handle.await??);
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss_kib(pid)?;
    // One event must reach the streams.
    http.post(format!("{}/dispatch", cli.url))
        .bearer_auth(token.as_str())
        .json(&json!({"core_id": "bench-sse"}))
        .send()
        .await?;
    let received = Arc::new(AtomicUsize::new(0));
    let deliveries = Instant::now();
    let mut readers = Vec::with_capacity(streams.len());
    for mut stream in streams {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            let deadline = Duration::from_secs(30);
            loop {
                match tokio::time::timeout(deadline, stream.read(&mut buffer)).await {
                    Ok(Ok(n)) if n > 0 => {
                        if String::from_utf8_lossy(&buffer[..n]).contains("event: task.queued") {
                            received.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    _ => break,
                }
            }
            stream
        }));
    }
    let mut streams = Vec::with_capacity(readers.len());
    for reader in readers {
        streams.push(reader.await?);
    }
    let delivered_in = deliveries.elapsed();
    let after = rss_kib(pid)?;
    println!(
        "sse: {clients} streams opened in {:.1}s; orchd RSS {:.1} MiB before, {:.1} MiB holding them, {:.1} MiB after one event; event delivered to {}/{clients} streams in {:.2}s",
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        held as f64 / 1024.0,
        after as f64 / 1024.0,
        received.load(Ordering::Relaxed),
        delivered_in.as_secs_f64(),
    );
    drop(streams);
    Ok(())
}

fn webhook_verify(seconds: u64) {
    let body = serde_json::to_vec(&json!({
        "event": "task.completed", "task_id": "01a20147-076b-70a1-a038-3f381c7edce7",
        "core_id": "WORK_AI_01", "status": "success", "timestamp": 1_700_000_000,
        "data": {"duration": 123.45, "output": "Task completed successfully",
                 "metrics": {"cpu_usage": 45.2, "memory_usage": 67.8}}
    }))
    .unwrap_or_default();
    let secrets = [orch_http::Secret::new("whsec_bench_secret")];
    let header = orch_http::webhook::sign("whsec_bench_secret", 1_700_000_000, &body);
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..1000 {
            let ok = orch_http::webhook::verify(
                Some(&header),
                &body,
                &secrets,
                1_700_000_000,
                Duration::from_secs(300),
            )
            .is_ok();
            count += u64::from(ok);
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "webhook-verify: {rate:.0} verifications/s on one core ({} byte body)",
        body.len()
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let program = "cargo bench --bench http --".to_owned();
    let cli = Cli::parse_from(std::iter::once(program).chain(support::args::bench_args()));
    let Some(mode) = &cli.mode else {
        println!("http: no mode given; orchd's load client runs from benches/http.sh (see --help)");
        return Ok(());
    };
    match mode {
        Mode::DispatchLatency {
            rate,
            seconds,
            core_id,
        } => dispatch_latency(&cli, *rate, *seconds, core_id).await,
        Mode::Sse { clients, pid } => sse(&cli, *clients, *pid).await,
        Mode::WebhookVerify { seconds } => {
            webhook_verify(*seconds);
            Ok(())
        }
    }
}
