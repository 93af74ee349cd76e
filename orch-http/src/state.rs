//! [`AppState`]: the router's state, made of parts. Each handler takes only the parts it needs
//! through axum's [`FromRef`] (`State<Orchestrator>`, `State<AuthState>`, ...); the parts live
//! in the modules that use them, and this module only puts them together, so it imports no
//! handler module and no handler module imports it.

use std::sync::Arc;

use axum::extract::FromRef;
use orch_core::Orchestrator;
use tokio_util::sync::CancellationToken;

use crate::auth::users::UserStore;
use crate::auth::{AuthState, SecurityLog, TokenKeys};
use crate::batch::DispatchBatcher;
use crate::client_ip::ClientIpSource;
use crate::clock::Clock;
use crate::config::{ConfigError, HttpConfig};
use crate::metrics::Metrics;
use crate::ratelimit::Limits;
use crate::routes::health::HealthCheck;
use crate::routes::jobs::Dispatching;
use crate::routes::misc::MetricsAccess;
use crate::routes::overview::StatsCache;
use crate::routes::sse::SseStreams;
use crate::routes::webhook::WebhookState;
use crate::webhook::ReplayGuard;

/// The shared state of the router: the orchestrator, the validated config and the parts built
/// from them. Cheap to clone (one `Arc`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use orch_core::{MemoryBackend, Orchestrator};
/// use orch_http::{AppState, HttpConfig, Secret};
///
/// let orch = Orchestrator::builder(Arc::new(MemoryBackend::new())).build().await.unwrap();
/// let config = HttpConfig::new(Secret::new("0123456789abcdef0123456789abcdef"));
/// let state = AppState::new(orch, config).unwrap();
/// let app: axum::Router = orch_http::router(state);
/// # let _ = app;
/// # }
/// ```
#[derive(Clone)]
pub struct AppState {
    parts: Arc<Parts>,
}

/// What [`AppState`] holds. Each part is cheap to clone (an `Arc` or a few words).
struct Parts {
    orch: Orchestrator,
    config: HttpConfig,
    auth: AuthState,
    client_ip: ClientIpSource,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    metrics_access: MetricsAccess,
    dispatching: Dispatching,
    sse: SseStreams,
    health: HealthCheck,
    webhook: WebhookState,
    stats: StatsCache,
    /// Cancelled when the server begins to shut down: SSE streams end so the graceful drain
    /// does not wait on them forever, and `/health` says so. The SSE and health parts hold
    /// clones.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("orch", &self.parts.orch)
            .finish_non_exhaustive()
    }
}

/// `impl FromRef<AppState> for Part`: a handler's `State<Part>` clones the part out.
macro_rules! parts {
    ($($part:ty => $field:ident),* $(,)?) => {
        $(
            impl FromRef<AppState> for $part {
                fn from_ref(state: &AppState) -> Self {
                    state.parts.$field.clone()
                }
            }
        )*
    };
}

parts! {
    Orchestrator => orch,
    AuthState => auth,
    ClientIpSource => client_ip,
    Arc<Limits> => limits,
    Arc<Metrics> => metrics,
    MetricsAccess => metrics_access,
    Dispatching => dispatching,
    SseStreams => sse,
    HealthCheck => health,
    WebhookState => webhook,
    StatsCache => stats,
}

impl AppState {
    /// Validates `config` and builds the state on the system clock. Call inside a tokio
    /// runtime: it starts a task that follows the event log into the metrics, and one that
    /// prunes the rate limiters.
    pub fn new(orch: Orchestrator, config: HttpConfig) -> Result<Self, ConfigError> {
        Self::with_clock(orch, config, Clock::system())
    }

    /// Like [`AppState::new`] with an injected clock (tests move it forward).
    pub fn with_clock(
        orch: Orchestrator,
        config: HttpConfig,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let users = UserStore::new(orch.backend().clone(), config.password_hashing)
            .map_err(|e| ConfigError::new("security.password_hashing", e.to_string()))?;
        let metrics = Metrics::with_options(config.disk_paths.clone(), config.metrics_cache);
        metrics.set_auth_failures(config.auth_failures.clone());
        tokio::spawn(crate::metrics::follow_events(
            orch.events().clone(),
            metrics.clone(),
        ));
        let limits = Limits::new(&config.rate_limit, clock.clone());
        tokio::spawn(crate::ratelimit::prune_periodically(
            Arc::downgrade(&limits),
            std::time::Duration::from_secs(60),
        ));
        let security = SecurityLog::with_refusal_interval(
            orch.backend().clone(),
            config.refusal_event_interval,
        );
        security.count_auth_failures_in(config.auth_failures.clone());
        let replays = ReplayGuard::new(orch.backend().clone());
        let shutdown = CancellationToken::new();
        Ok(AppState {
            parts: Arc::new(Parts {
                auth: AuthState::new(
                    TokenKeys::new(&config.jwt),
                    users,
                    limits.clone(),
                    clock.clone(),
                    config.lockout,
                    security.clone(),
                    config.user_recheck,
                )
                .with_secure_cookies(config.secure_cookies),
                client_ip: ClientIpSource::new(&config.trusted_proxies),
                limits,
                metrics,
                metrics_access: MetricsAccess::new(config.metrics_token.clone()),
                dispatching: Dispatching::new(
                    DispatchBatcher::start(orch.clone()),
                    config.stay_max_wait,
                ),
                sse: SseStreams::new(&config.sse, shutdown.clone()),
                health: HealthCheck::new(
                    config.version.clone(),
                    config.health_cache,
                    clock.clone(),
                    shutdown.clone(),
                ),
                webhook: WebhookState::new(
                    config.webhook_secrets.clone(),
                    config.webhook_tolerance,
                    replays,
                    clock,
                    security,
                ),
                stats: StatsCache::default(),
                shutdown,
                orch,
                config,
            }),
        })
    }

    /// The orchestrator.
    pub fn orch(&self) -> &Orchestrator {
        &self.parts.orch
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.parts.config
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        self.parts.auth.clock()
    }

    /// Token issuing and checking.
    pub fn tokens(&self) -> &TokenKeys {
        self.parts.auth.tokens()
    }

    /// The users.
    pub fn users(&self) -> &UserStore {
        self.parts.auth.users()
    }

    /// The rate limiters.
    pub fn limits(&self) -> &Limits {
        &self.parts.limits
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// Fired by [`AppState::begin_shutdown`].
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.parts.shutdown
    }

    /// Starts shutting down: `/health` says so, new SSE streams are refused and open ones end.
    pub fn begin_shutdown(&self) {
        self.parts.shutdown.cancel();
    }

    /// Adds a check of the embedder's own to `GET /health/ready` (reported as `schema`: the
    /// daemon checks the database schema is the one it runs); `Err(reason)` makes the node
    /// not ready. A second call is ignored.
    pub fn set_ready_check<F, Fut>(&self, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.parts
            .health
            .set_ready_check(Arc::new(move || Box::pin(check())));
    }

    /// Appends a security event (`auth.login_failed`, ...) to the event log; a failure is
    /// logged, never returned.
    pub async fn security_event(&self, kind: &str, data: serde_json::Value) {
        self.parts.auth.security().record(kind, data).await;
    }
}
