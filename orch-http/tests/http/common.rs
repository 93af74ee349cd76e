//! The harness: a server on 127.0.0.1:0 with users of every role, and a small client.

use std::sync::Arc;
use std::time::Duration;

use orch_core::{MemoryBackend, Orchestrator, SharedBackend, TaskContext, TaskError, processor_fn};
use orch_http::config::{PasswordHashing, RateLimitConfig};
use orch_http::server::{PlainTcp, ServerOptions};
use orch_http::{AppState, Clock, HttpConfig, Role, Secret};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub(crate) const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_test";
pub(crate) const OLD_WEBHOOK_SECRET: &str = "whsec_old_secret";
pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// Where the manual clock starts (the NOTES.md test vector's `t`).
pub(crate) const START_UNIX: u64 = 1_700_000_000;

/// The default test configuration: fast hashing, limits off, two webhook secrets, every
/// refusal recorded as an event of its own.
pub(crate) fn config() -> HttpConfig {
    HttpConfig::new(Secret::new(JWT_SECRET))
        .with_webhook_secret(Secret::new(WEBHOOK_SECRET))
        .with_webhook_secret(Secret::new(OLD_WEBHOOK_SECRET))
        .with_password_hashing(PasswordHashing::insecure_fast_for_tests())
        .with_rate_limit(RateLimitConfig::disabled())
        .with_refusal_event_interval(Duration::ZERO)
}

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) state: AppState,
    pub(crate) orch: Orchestrator,
    pub(crate) clock: Clock,
    pub(crate) http: reqwest::Client,
    /// Stops the server gracefully (no new connections; open ones finish their request).
    pub(crate) stop: CancellationToken,
    pub(crate) server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.begin_shutdown();
        self.server.abort();
    }
}

pub(crate) fn orchestrator_config() -> orch_core::OrchestratorConfig {
    orch_core::OrchestratorConfig::default()
        .with_poll_interval(Duration::from_millis(20))
        .with_lease(Duration::from_secs(30))
}

/// `echo` (the result is the payload) and `sleep` (waits `payload.ms`, stops when the task is
/// cancelled; a payload without a whole `ms` fails the task for good): engines like the ones
/// orchd registers, so the tests have something to run.
pub(crate) async fn orchestrator(
    backend: SharedBackend,
    config: orch_core::OrchestratorConfig,
) -> Orchestrator {
    let echo = processor_fn(|_ctx, input| async move { Ok(input) });
    let sleep = processor_fn(|ctx: TaskContext, input: Value| async move {
        let ms = input["ms"]
            .as_u64()
            .ok_or_else(|| TaskError::fatal("payload.ms must be a whole number"))?;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(serde_json::json!({"slept_ms": ms})),
            () = ctx.cancelled() => Err(TaskError::fatal("sleep interrupted")),
        }
    });
    Orchestrator::builder(backend)
        .config(config)
        .engine("echo", echo)
        .engine("sleep", sleep)
        .build()
        .await
        .expect("orchestrator builds")
}

/// A server with `config` over a memory backend, users `admin`, `operator`, `viewer`, `system`
/// (password [`PASSWORD`]), on a manual clock at [`START_UNIX`].
pub(crate) async fn start_with(config: HttpConfig) -> Server {
    start_on(Arc::new(MemoryBackend::new()), config).await
}

pub(crate) async fn start() -> Server {
    start_with(config()).await
}

pub(crate) async fn start_on(backend: SharedBackend, config: HttpConfig) -> Server {
    start_full(backend, orchestrator_config(), config).await
}

pub(crate) async fn start_full(
    backend: SharedBackend,
    orch_config: orch_core::OrchestratorConfig,
    config: HttpConfig,
) -> Server {
    let server = start_node(backend, orch_config, config, ServerOptions::default()).await;
    for (name, role) in [
        ("admin", Role::Admin),
        ("operator", Role::Operator),
        ("viewer", Role::Viewer),
        ("system", Role::System),
    ] {
        server
            .state
            .users()
            .create(name, PASSWORD, role, START_UNIX)
            .await
            .expect("user created");
    }
    server
}

/// A server with `config` and `options` over `backend`, adding no user: another node on a
/// backend another [`Server`] already uses, or one with server limits of its own.
pub(crate) async fn start_node(
    backend: SharedBackend,
    orch_config: orch_core::OrchestratorConfig,
    config: HttpConfig,
    options: ServerOptions,
) -> Server {
    let orch = orchestrator(backend, orch_config).await;
    let clock = Clock::manual_at_unix(START_UNIX);
    let state = AppState::with_clock(orch.clone(), config, clock.clone()).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = orch_http::router(state.clone());
    // The server orchd runs (HTTP/1.1, `ConnectInfo` on every request); aborted on drop.
    let stop = CancellationToken::new();
    let server = tokio::spawn(orch_http::server::serve_with(
        listener,
        app,
        stop.clone(),
        options,
        PlainTcp,
    ));
    Server {
        base: format!("http://{addr}"),
        state,
        orch,
        clock,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client"),
        stop,
        server,
    }
}

/// A response: status, headers and JSON body (Null when not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Server {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> Reply {
        self.call(
            Method::POST,
            "/auth/login",
            None,
            Some(serde_json::json!({"username": username, "password": password})),
        )
        .await
    }

    pub(crate) async fn token(&self, username: &str) -> String {
        let reply = self.login(username, PASSWORD).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "login {username}: {:?}",
            reply.body
        );
        reply.body["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        reply(request.send().await.expect("request sent")).await
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("an address")
    }

    /// Polls `GET /jobs/{id}` until the task is `status`, for at most 10 s; the task then.
    pub(crate) async fn wait_for_status(&self, token: &str, id: &str, status: &str) -> Value {
        let path = format!("/jobs/{id}");
        for _ in 0..500 {
            let reply = self.call(Method::GET, &path, Some(token), None).await;
            if reply.body["status"] == status {
                return reply.body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {id} never became {status}");
    }

    /// Security or task events of `kind` in the log so far.
    pub(crate) async fn events_of(&self, kind: &str) -> Vec<orch_core::Event> {
        let events = self.orch.events().replay(0, 100_000).await.expect("replay");
        events
            .into_iter()
            .filter(|e| e.kind.as_str() == kind)
            .collect()
    }
}

pub(crate) async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// Asserts a JSON error: the status, and an `error` string.
pub(crate) fn assert_error(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert!(
        reply.body["error"].is_string(),
        "error body must be JSON with \"error\": {}",
        reply.body
    );
}
