//! A load client of `orchd`: the figures for BENCHMARKS.md that `wrk` cannot give.
//!
//! - `dispatch-latency`: an open-loop load of `POST /dispatch` at a fixed rate; latency is
//!   measured from each request's scheduled start, so a stall counts against it.
//! - `sse`: holds N concurrent `GET /sse/events` streams open over raw TCP, then reports the
//!   daemon's resident memory (`/proc/<pid>/status`) and checks a dispatched task reaches them.
//! - `webhook-verify`: signature verifications per second in process (one core), the work
//!   `POST /webhook` does before touching the database.
//! - `slowloris`: N connections that trickle header bytes and never finish a request; while
//!   they are open, `GET /health` from fresh clients is timed; then when the daemon closed
//!   each trickling connection (its header-read timeout).
//! - `forged-ips`: requests from N distinct client addresses (forged `X-Forwarded-For` through
//!   a trusted proxy: the daemon must list 127.0.0.1 in `server.trusted_proxies`), half of
//!   them logins; the daemon's resident memory as it goes.
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
    /// Hold N connections trickling headers; time `GET /health` meanwhile; report when the
    /// daemon closed them.
    Slowloris {
        /// Trickling connections.
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        /// Milliseconds between two header bytes on one connection.
        #[arg(long, default_value_t = 1_000)]
        trickle_ms: u64,
        /// Longest wait for the daemon to close them, in seconds.
        #[arg(long, default_value_t = 40)]
        wait_seconds: u64,
        /// The daemon's pid (for RSS).
        #[arg(long)]
        pid: u32,
    },
    /// Requests from N distinct forged client addresses; print the daemon's RSS as it goes.
    ForgedIps {
        /// Distinct addresses (one request each).
        #[arg(long, default_value_t = 1_000_000)]
        addresses: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// The daemon's pid (for RSS).
        #[arg(long)]
        pid: u32,
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

/// One trickling connection: the start of a request, then a header byte every `trickle`, until
/// the daemon closes it. How long after connecting it was closed (`None`: not within `wait`).
async fn trickle(addr: String, trickle: Duration, wait: Duration) -> Result<Option<Duration>> {
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    let opened = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Trickle: ")
        .await?;
    let closed = async {
        let mut buffer = [0u8; 256];
        while reader.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
    };
    let trickling = async {
        loop {
            tokio::time::sleep(trickle).await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let outcome = tokio::time::timeout(wait, async {
        tokio::select! {
            () = closed => {},
            () = trickling => {},
        }
    })
    .await;
    Ok(outcome.ok().map(|()| opened.elapsed()))
}

/// One `GET /health` on a fresh connection: how long from connecting to the whole answer.
async fn fresh_health(addr: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "health answered {}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        );
    }
    Ok(started.elapsed())
}

async fn slowloris(
    cli: &Cli,
    connections: usize,
    trickle_ms: u64,
    wait_seconds: u64,
    pid: u32,
) -> Result<()> {
    let addr = cli
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for n in 0..connections {
        tasks.push(tokio::spawn(trickle(
            addr.clone(),
            Duration::from_millis(trickle_ms),
            Duration::from_secs(wait_seconds),
        )));
        if n % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let opened = started.elapsed();
    // Let every connection start trickling, then time fresh clients.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kib(pid)?;
    let mut health = Vec::with_capacity(20);
    let mut failures = 0;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), fresh_health(&addr)).await {
            Ok(Ok(took)) => health.push(took),
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health.sort();
    let mut closed = Vec::with_capacity(connections);
    let mut open = 0;
    for task in tasks {
        match task.await? {
            Ok(Some(after)) => closed.push(after),
            Ok(None) => open += 1,
            Err(_) => failures += 1,
        }
    }
    closed.sort();
    let after = rss_kib(pid)?;
    println!(
        "slowloris: {connections} trickling connections opened in {:.1}s; fresh GET /health while \
         they were open: p50 {:.1} ms, max {:.1} ms, {failures} failed; closed by the daemon: \
         {} (first after {:.1}s, median {:.1}s, last {:.1}s), still open after {wait_seconds}s: {open}; \
         orchd RSS {:.1} MiB before, {:.1} MiB holding them, {:.1} MiB after",
        opened.as_secs_f64(),
        percentile(&health, 0.5).as_secs_f64() * 1e3,
        health.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        closed.len(),
        closed.first().copied().unwrap_or_default().as_secs_f64(),
        percentile(&closed, 0.5).as_secs_f64(),
        closed.last().copied().unwrap_or_default().as_secs_f64(),
        before as f64 / 1024.0,
        held as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    Ok(())
}

/// The `n`th forged address: IPv4 for even `n`, a distinct IPv6 /64 for odd `n`.
fn forged_address(n: u64) -> String {
    if n.is_multiple_of(2) {
        std::net::Ipv4Addr::from(0x0a00_0000u32.wrapping_add((n / 2) as u32)).to_string()
    } else {
        let network = u128::from(n / 2) << 64;
        std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | network | 1).to_string()
    }
}

async fn forged_ips(cli: &Cli, addresses: u64, concurrency: u64, pid: u32) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .build()?;
    let login = Arc::new(serde_json::to_vec(
        &json!({"username": "x".repeat(300), "password": "not a password"}),
    )?);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u64>::new(),
    ));
    let before = rss_kib(pid)?;
    let started = Instant::now();
    println!(
        "forged-ips: orchd RSS {:.1} MiB before",
        before as f64 / 1024.0
    );
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, login, next, statuses, url) = (
            http.clone(),
            login.clone(),
            next.clone(),
            statuses.clone(),
            cli.url.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= addresses {
                    return;
                }
                let forged = forged_address(n);
                // Logins (each address a key of the login limiter) and refused tokens.
                let request = if n % 4 < 2 {
                    http.post(format!("{url}/auth/login"))
                        .header("Content-Type", "application/json")
                        .body((*login).clone())
                } else {
                    http.get(format!("{url}/jobs"))
                        .bearer_auth("forged.token.value")
                };
                let status = match request.header("X-Forwarded-For", forged).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                *statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
        }));
    }
    let mut reported = 0;
    let step = (addresses / 10).max(1);
    let mut peak = before;
    while workers.iter().any(|w| !w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = next.load(Ordering::Relaxed).min(addresses);
        let rss = rss_kib(pid)?;
        peak = peak.max(rss);
        if done >= reported + step || done == addresses && reported < addresses {
            reported = done;
            println!(
                "forged-ips: {done:>8} addresses, {:>6.0} req/s, orchd RSS {:.1} MiB",
                done as f64 / started.elapsed().as_secs_f64(),
                rss as f64 / 1024.0
            );
        }
    }
    for worker in workers {
        worker.await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let health = http
        .get(format!("{}/health", cli.url))
        .send()
        .await?
        .status();
    println!(
        "forged-ips: {addresses} distinct addresses in {:.1}s; answers {:?}; orchd RSS {:.1} MiB \
         before, peak {:.1} MiB, {:.1} MiB after; /health {health}",
        started.elapsed().as_secs_f64(),
        statuses.lock().unwrap_or_else(|e| e.into_inner()),
        before as f64 / 1024.0,
        peak.max(after) as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    Ok(())
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
        Mode::Slowloris {
            connections,
            trickle_ms,
            wait_seconds,
            pid,
        } => slowloris(&cli, *connections, *trickle_ms, *wait_seconds, *pid).await,
        Mode::ForgedIps {
            addresses,
            concurrency,
            pid,
        } => forged_ips(&cli, *addresses, *concurrency, *pid).await,
    }
}
