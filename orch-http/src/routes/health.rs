//! `GET /health` in the seed's shape, cached for `health_cache` so probes and load balancers
//! cost one backend round trip per second at most.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::state::AppState;

/// The seed's health body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    /// `healthy`, `unhealthy` or `shutting_down`.
    pub status: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Server version.
    pub version: String,
    /// `database`, `lock_manager`, `monitor`, `security`: `healthy` or `unhealthy`.
    pub components: BTreeMap<String, String>,
    /// Counters.
    pub metrics: HealthMetrics,
}

/// The `metrics` part of [`HealthReport`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthMetrics {
    /// Seconds since the router started.
    pub uptime_seconds: u64,
    /// Requests served.
    pub total_requests: u64,
    /// Tasks running (at most 1000 counted).
    pub active_tasks: u64,
    /// Locks held.
    pub active_locks: u64,
}

fn verdict(ok: bool) -> String {
    if ok { "healthy" } else { "unhealthy" }.to_owned()
}

async fn compute(state: &AppState) -> HealthReport {
    const PROBE: Duration = Duration::from_secs(2);
    let orch = state.orch();
    let database = tokio::time::timeout(PROBE, orch.backend().last_event_seq()).await;
    let database_ok = matches!(database, Ok(Ok(_)));
    let running = tokio::time::timeout(
        PROBE,
        orch.list(orch_core::TaskFilter {
            status: Some(orch_core::TaskStatus::Running),
            limit: 1000,
            ..Default::default()
        }),
    )
    .await;
    let locks = tokio::time::timeout(PROBE, orch.locks().list()).await;
    let (locks_ok, active_locks) = match &locks {
        Ok(Ok(list)) => (true, list.len() as u64),
        _ => (false, 0),
    };
    let active_tasks = match &running {
        Ok(Ok(list)) => list.len() as u64,
        _ => 0,
    };
    let mut components = BTreeMap::new();
    components.insert("database".to_owned(), verdict(database_ok));
    components.insert("lock_manager".to_owned(), verdict(locks_ok));
    components.insert("monitor".to_owned(), verdict(true));
    components.insert("security".to_owned(), verdict(true));
    let all_ok = components.values().all(|v| v == "healthy");
    HealthReport {
        status: verdict(all_ok),
        timestamp: state
            .clock()
            .now_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: state.config().version.clone(),
        components,
        metrics: HealthMetrics {
            uptime_seconds: state.inner.started.elapsed().as_secs(),
            total_requests: state.metrics().total_requests.load(Ordering::Relaxed),
            active_tasks,
            active_locks,
        },
    }
}

/// `GET /health`: 200 when every component is healthy, 503 otherwise or while shutting down.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let fresh = |cached: &Option<(Instant, HealthReport)>| match cached {
        Some((at, report)) if at.elapsed() < state.config().health_cache => Some(report.clone()),
        _ => None,
    };
    let cached = fresh(&state.inner.health.read());
    let report = match cached {
        Some(report) => report,
        None => {
            // One refresh at a time; the others wait and reuse it.
            let _refresh = state.inner.health_refresh.lock().await;
            let cached = fresh(&state.inner.health.read());
            match cached {
                Some(report) => report,
                None => {
                    let report = compute(&state).await;
                    *state.inner.health.write() = Some((Instant::now(), report.clone()));
                    report
                }
            }
        }
    };
    let mut report = report;
    report.metrics.total_requests = state.metrics().total_requests.load(Ordering::Relaxed);
    if state.shutdown_token().is_cancelled() {
        report.status = "shutting_down".to_owned();
    }
    let status = if report.status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
