//! [`AppState`]: what every handler shares. Cheap to clone (one `Arc`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use chrono::{DateTime, Utc};
use orch_core::{EventKind, LockGuard, NewEvent, Orchestrator};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenKeys;
use crate::auth::users::UserStore;
use crate::clock::Clock;
use crate::config::{ConfigError, HttpConfig};
use crate::metrics::Metrics;
use crate::ratelimit::Limits;
use crate::webhook::ReplayCache;

/// Locks granted over HTTP. Their guards are kept here (a dropped guard releases its lock) until
/// released, or until they have expired.
#[derive(Default)]
pub(crate) struct HeldLocks {
    pub(crate) guards: Mutex<HashMap<HeldKey, (LockGuard, DateTime<Utc>)>>,
}

/// A lock granted over HTTP: resource and fencing token.
pub(crate) type HeldKey = (String, u64);

impl HeldLocks {
    /// Drops guards whose lock has expired (their release is a harmless no-op).
    pub(crate) fn sweep(&self, now: DateTime<Utc>) {
        self.guards.lock().retain(|_, (_, expires)| *expires > now);
    }
}

pub(crate) struct Inner {
    pub(crate) orch: Orchestrator,
    pub(crate) config: HttpConfig,
    pub(crate) clock: Clock,
    pub(crate) tokens: TokenKeys,
    pub(crate) users: UserStore,
    pub(crate) limits: Arc<Limits>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) replays: ReplayCache,
    pub(crate) dispatcher: crate::batch::DispatchBatcher,
    pub(crate) sse_open: AtomicUsize,
    pub(crate) held_locks: HeldLocks,
    /// Cancelled when the server begins to shut down: SSE streams end so the graceful drain
    /// does not wait on them forever.
    pub(crate) shutdown: CancellationToken,
    pub(crate) started: Instant,
    pub(crate) health: parking_lot::RwLock<Option<(Instant, crate::routes::health::HealthReport)>>,
    pub(crate) health_refresh: tokio::sync::Mutex<()>,
}

/// The shared state of the router: the orchestrator, the validated config, the clock, the
/// user store, limiters and metrics.
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
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("orch", &self.inner.orch)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Validates `config` and builds the state on the system clock. Call inside a tokio
    /// runtime: it starts a task that follows the event log into the metrics.
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
            .map_err(|e| ConfigError::new("security.password_hashing", e.message))?;
        let metrics = Metrics::new();
        tokio::spawn(crate::metrics::follow_events(
            orch.events().clone(),
            metrics.clone(),
        ));
        Ok(AppState {
            inner: Arc::new(Inner {
                tokens: TokenKeys::new(&config.jwt),
                limits: Limits::new(&config.rate_limit, clock.clone()),
                users,
                metrics,
                replays: ReplayCache::new(),
                dispatcher: crate::batch::DispatchBatcher::start(orch.clone()),
                sse_open: AtomicUsize::new(0),
                held_locks: HeldLocks::default(),
                shutdown: CancellationToken::new(),
                started: Instant::now(),
                health: parking_lot::RwLock::new(None),
                health_refresh: tokio::sync::Mutex::new(()),
                orch,
                config,
                clock,
            }),
        })
    }

    /// The orchestrator.
    pub fn orch(&self) -> &Orchestrator {
        &self.inner.orch
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Token issuing and checking.
    pub fn tokens(&self) -> &TokenKeys {
        &self.inner.tokens
    }

    /// The users.
    pub fn users(&self) -> &UserStore {
        &self.inner.users
    }

    /// The rate limiters.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Fired by [`AppState::begin_shutdown`].
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Starts shutting down: `/health` says so, new SSE streams are refused and open ones end.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Appends a security event (`auth.login_failed`, ...) to the event log; a failure is
    /// logged, never returned.
    pub async fn security_event(&self, kind: &str, data: serde_json::Value) {
        tracing::warn!(kind, %data, "security event");
        let event = NewEvent::new(EventKind::Custom(kind.to_owned())).with_data(data);
        if let Err(error) = self.inner.orch.backend().append_event(event).await {
            tracing::error!(%error, kind, "could not record a security event");
        }
    }
}
