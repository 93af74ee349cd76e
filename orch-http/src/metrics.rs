//! [`Metrics`]: ORCH-Next's Prometheus metrics (its names and labels), written in the classic
//! text format (0.0.4) that Prometheus and promtool parse. Task metrics follow the event log
//! (one subscriber); queue depth, active locks and system gauges are read at scrape time.
//!
//! Every label value is from a bounded set, whatever callers send: methods outside the
//! standard ones are `other`, endpoints are route patterns (`unmatched` for the rest), and the
//! caller-chosen values keep at most [`MAX_LABEL_VALUES`] distinct values and count the rest as
//! `other` (`core_id` and a lock's resource type their first ones, queued priorities the
//! highest). A scrape is rendered at
//! most once per [`HttpConfig::metrics_cache`](crate::HttpConfig::metrics_cache), its file
//! system reads run on the blocking pool, and the disk usage walk is bounded and refreshed at
//! most every [`DISK_REFRESH`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use orch_core::{EventKind, Orchestrator};
use parking_lot::Mutex;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const TASK_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Distinct values a caller-chosen label (`core_id`, `resource_type`) takes at most; further
/// values are counted as `other`.
pub const MAX_LABEL_VALUES: usize = 100;

/// How often the disk usage gauge walks its paths at most.
pub const DISK_REFRESH: Duration = Duration::from_secs(30);

/// Entries the disk usage walk looks at, at most, per path.
const DISK_WALK_ENTRIES: usize = 10_000;

/// The `method` label: the standard methods by name, anything else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The first [`MAX_LABEL_VALUES`] distinct values of a label, as they come.
#[derive(Debug, Default)]
struct BoundedLabel {
    seen: Mutex<HashSet<String>>,
}

impl BoundedLabel {
    /// `value` if it is one of the values kept (or there is room for it), else `other`.
    fn get<'a>(&self, value: &'a str) -> &'a str {
        let mut seen = self.seen.lock();
        if seen.contains(value) {
            return value;
        }
        if seen.len() < MAX_LABEL_VALUES {
            seen.insert(value.to_owned());
            return value;
        }
        "other"
    }
}

/// What a scrape reads from the system, refreshed off the async runtime.
#[derive(Debug, Default)]
struct SystemReadings {
    cpu_last: Option<(u64, u64)>,
    /// Disk usage per path and when it was measured.
    disk: Option<(Instant, Vec<(String, u64)>)>,
}

/// The metric families of one router.
pub struct Metrics {
    registry: Registry,
    /// `orch_http_requests_total{method,status,endpoint}`.
    pub http_requests: IntCounterVec,
    /// `orch_http_request_duration_seconds{method,endpoint}`.
    pub http_duration: HistogramVec,
    /// `orch_task_duration_seconds{core_id,status}`: cluster-wide, from the shared event log.
    pub task_duration: HistogramVec,
    /// `orch_tasks_total{core_id,status}`: task state changes seen in the shared event log
    /// (cluster-wide: every node on one database counts the same).
    pub tasks_total: IntCounterVec,
    /// `orch_task_queue_depth{core_id,priority}`: cluster-wide.
    pub queue_depth: IntGaugeVec,
    /// `orch_sse_connections_active`.
    pub sse_active: IntGauge,
    /// `orch_sse_messages_sent_total`.
    pub sse_sent: IntCounter,
    /// `orch_webhook_signatures_verified_total{status}`.
    pub webhook_signatures: IntCounterVec,
    /// `orch_webhook_processing_duration_seconds`.
    pub webhook_duration: Histogram,
    /// `orch_locks_active{resource_type}`.
    pub locks_active: IntGaugeVec,
    /// `orch_lock_wait_duration_seconds{resource_type}`.
    pub lock_wait: HistogramVec,
    /// `orch_lock_acquisition_total{resource_type,status}`.
    pub lock_acquisitions: IntCounterVec,
    /// `orch_system_cpu_percent`.
    pub cpu_percent: Gauge,
    /// `orch_system_memory_percent`.
    pub memory_percent: Gauge,
    /// `orch_system_disk_usage_bytes{path}`.
    pub disk_usage: GaugeVec,
    /// Requests served (for `/health`).
    pub total_requests: AtomicU64,
    /// The node's, the monitor's, the alerts' and the notifications' families.
    node: node::NodeMetrics,
    /// Where the router counts refused logins and tokens.
    auth_failures: std::sync::OnceLock<crate::auth::AuthFailures>,
    /// System readings, updated on the blocking pool.
    system: Arc<Mutex<SystemReadings>>,
    /// When each running task started (from `task.started`), for task durations.
    started: Mutex<HashMap<orch_core::TaskId, chrono::DateTime<chrono::Utc>>>,
    /// Outcomes per minute for the dashboard's overview (`GET /stats`).
    activity: crate::routes::overview::Activity,
    activity_since: chrono::DateTime<chrono::Utc>,
    /// Paths whose size `orch_system_disk_usage_bytes{path}` reports.
    disk_paths: Arc<Vec<PathBuf>>,
    /// `core_id` values in use as labels.
    core_labels: BoundedLabel,
    /// `resource_type` values in use as labels.
    resource_labels: BoundedLabel,
    /// The last page rendered and when; reused for `cache_for`.
    page: parking_lot::RwLock<Option<(Instant, Arc<String>)>>,
    /// Held by the one scrape that renders; the others wait and reuse its page.
    rendering: tokio::sync::Mutex<()>,
    /// How long a page is reused.
    cache_for: Duration,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are static and distinct, so registration cannot collide.
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

macro_rules! build {
    ($ctor:expr) => {
        match $ctor {
            Ok(metric) => metric,
            Err(error) => panic!("static metric definition is invalid: {error}"),
        }
    };
}

mod node;

impl Metrics {
    /// Registers every family; no disk usage is reported.
    pub fn new() -> Arc<Self> {
        Self::with_disk_paths(Vec::new())
    }

    /// Registers every family; `orch_system_disk_usage_bytes{path}` reports `disk_paths`.
    pub fn with_disk_paths(disk_paths: Vec<PathBuf>) -> Arc<Self> {
        Self::with_options(disk_paths, Duration::from_secs(1))
    }

    /// Registers every family; `orch_system_disk_usage_bytes{path}` reports `disk_paths`, and
    /// a rendered page is reused for `cache_for`.
    pub fn with_options(disk_paths: Vec<PathBuf>, cache_for: Duration) -> Arc<Self> {
        let r = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).buckets(buckets.to_vec())
        };
        Arc::new(Metrics {
            http_requests: register(
                &r,
                build!(IntCounterVec::new(
                    Opts::new("orch_http_requests_total", "Total HTTP requests"),
                    &["method", "status", "endpoint"]
                )),
            ),
            http_duration: register(
                &r,
                build!(HistogramVec::new(
                    hist(
                        "orch_http_request_duration_seconds",
                        "HTTP request duration",
                        DURATION_BUCKETS
                    ),
                    &["method", "endpoint"]
                )),
            ),
            task_duration: register(
                &r,
                build!(HistogramVec::new(
                    hist(
                        "orch_task_duration_seconds",
                        "Cluster-wide: task run time by core and outcome, from the shared event log",
                        TASK_BUCKETS
                    ),
                    &["core_id", "status"]
                )),
            ),
            tasks_total: register(
                &r,
                build!(IntCounterVec::new(
                    Opts::new(
                        "orch_tasks_total",
                        "Cluster-wide: task state changes in the shared event log by core and status \
                         (every node on one database reports the same)"
                    ),
                    &["core_id", "status"]
                )),
            ),
            queue_depth: register(
                &r,
                build!(IntGaugeVec::new(
                    Opts::new(
                        "orch_task_queue_depth",
                        "Cluster-wide: tasks queued (due or waiting to run) by core and priority"
                    ),
                    &["core_id", "priority"]
                )),
            ),
            sse_active: register(
                &r,
                build!(IntGauge::new(
                    "orch_sse_connections_active",
                    "Open server-sent event streams"
                )),
            ),
            sse_sent: register(
                &r,
                build!(IntCounter::new(
                    "orch_sse_messages_sent_total",
                    "Server-sent events delivered"
                )),
            ),
            webhook_signatures: register(
                &r,
                build!(IntCounterVec::new(
                    Opts::new(
                        "orch_webhook_signatures_verified_total",
                        "Webhook signature checks by outcome"
                    ),
                    &["status"]
                )),
            ),
            webhook_duration: register(
                &r,
                build!(Histogram::with_opts(hist(
                    "orch_webhook_processing_duration_seconds",
                    "Webhook processing duration",
                    DURATION_BUCKETS
                ))),
            ),
            locks_active: register(
                &r,
                build!(IntGaugeVec::new(
                    Opts::new("orch_locks_active", "Held locks by resource type"),
                    &["resource_type"]
                )),
            ),
            lock_wait: register(
                &r,
                build!(HistogramVec::new(
                    hist(
                        "orch_lock_wait_duration_seconds",
                        "Time spent waiting for a lock",
                        DURATION_BUCKETS
                    ),
                    &["resource_type"]
                )),
            ),
            lock_acquisitions: register(
                &r,
                build!(IntCounterVec::new(
                    Opts::new(
                        "orch_lock_acquisition_total",
                        "Lock acquisitions by outcome"
                    ),
                    &["resource_type", "status"]
                )),
            ),
            cpu_percent: register(
                &r,
                build!(Gauge::new(
                    "orch_system_cpu_percent",
                    "System CPU use in percent since the previous scrape"
                )),
            ),
            memory_percent: register(
                &r,
                build!(Gauge::new(
                    "orch_system_memory_percent",
                    "System memory in use, percent"
                )),
            ),
            disk_usage: register(
                &r,
                build!(GaugeVec::new(
                    Opts::new(
                        "orch_system_disk_usage_bytes",
                        "Bytes used under a data path"
                    ),
                    &["path"]
                )),
            ),
            node: node::NodeMetrics::new(&r),
            auth_failures: std::sync::OnceLock::new(),
            registry: r,
            total_requests: AtomicU64::new(0),
            system: Arc::default(),
            started: Mutex::new(HashMap::new()),
            activity: Default::default(),
            activity_since: chrono::Utc::now(),
            disk_paths: Arc::new(disk_paths),
            core_labels: BoundedLabel::default(),
            resource_labels: BoundedLabel::default(),
            page: parking_lot::RwLock::new(None),
            rendering: tokio::sync::Mutex::new(()),
            cache_for,
        })
    }

    /// The `resource_type` label of a lock resource: [`resource_type`], bounded to
    /// [`MAX_LABEL_VALUES`] distinct values.
    pub fn resource_label<'a>(&self, resource: &'a str) -> &'a str {
        self.resource_labels.get(resource_type(resource))
    }

    /// Reports `failures` as `orch_auth_failures_total` (a second call is ignored).
    pub fn set_auth_failures(&self, failures: crate::auth::AuthFailures) {
        let _ = self.auth_failures.set(failures);
    }

    /// The `core_id` label: the core, bounded to [`MAX_LABEL_VALUES`] distinct values.
    pub fn core_label<'a>(&self, core_id: &'a str) -> &'a str {
        self.core_labels.get(core_id)
    }

    /// Outcomes per minute over the last hour, from the events observed.
    pub fn activity(&self) -> &crate::routes::overview::Activity {
        &self.activity
    }

    /// When this began observing events.
    pub fn activity_since(&self) -> chrono::DateTime<chrono::Utc> {
        self.activity_since
    }

    /// Counts one event from the log.
    pub fn observe_event(&self, event: &orch_core::Event) {
        let status = match &event.kind {
            EventKind::TaskQueued => "queued",
            EventKind::TaskStarted => "running",
            EventKind::TaskSucceeded => "succeeded",
            EventKind::TaskFailed => "failed",
            EventKind::TaskRetrying => "retrying",
            EventKind::TaskTimedOut => "timed_out",
            EventKind::TaskCancelled => "cancelled",
            EventKind::TaskRescued => "rescued",
            EventKind::TaskRequeued => "requeued",
            _ => return,
        };
        let core = self.core_label(event.engine.as_deref().unwrap_or(""));
        self.tasks_total.with_label_values(&[core, status]).inc();
        self.activity
            .record(&event.kind, event.at, chrono::Utc::now());
        let Some(task_id) = event.task_id else {
            return;
        };
        if event.kind == EventKind::TaskStarted {
            let mut started = self.started.lock();
            if started.len() < 100_000 {
                started.insert(task_id, event.at);
            }
        } else if matches!(
            event.kind,
            EventKind::TaskSucceeded
                | EventKind::TaskFailed
                | EventKind::TaskTimedOut
                | EventKind::TaskCancelled
                | EventKind::TaskRetrying
                | EventKind::TaskRescued
                | EventKind::TaskRequeued
        ) && let Some(at) = self.started.lock().remove(&task_id)
        {
            let seconds = (event.at - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            self.task_duration
                .with_label_values(&[core, status])
                .observe(seconds);
        }
    }

    /// The page a scrape answers: every family in the classic text format, with the gauges
    /// read at scrape time refreshed. Rendered at most once per `cache_for`; concurrent
    /// scrapes share one rendering.
    pub async fn render(&self, orch: &Orchestrator) -> Arc<String> {
        let fresh = |page: &Option<(Instant, Arc<String>)>| match page {
            Some((at, page)) if at.elapsed() < self.cache_for => Some(page.clone()),
            _ => None,
        };
        if let Some(page) = fresh(&self.page.read()) {
            return page;
        }
        let _rendering = self.rendering.lock().await;
        if let Some(page) = fresh(&self.page.read()) {
            return page;
        }
        let page = Arc::new(self.render_now(orch).await);
        *self.page.write() = Some((Instant::now(), page.clone()));
        page
    }

    async fn render_now(&self, orch: &Orchestrator) -> String {
        // Every family from the first scrape: zero series for the engines this node serves.
        for engine in orch.engines() {
            let core = self.core_label(&engine);
            for status in [
                "queued",
                "running",
                "succeeded",
                "failed",
                "retrying",
                "timed_out",
                "cancelled",
            ] {
                self.tasks_total.with_label_values(&[core, status]);
            }
            for status in ["succeeded", "failed", "timed_out", "cancelled"] {
                self.task_duration.with_label_values(&[core, status]);
            }
        }
        // The scrape itself is the first request every node serves.
        self.http_requests
            .with_label_values(&["GET", "200", "/metrics"]);
        self.http_duration.with_label_values(&["GET", "/metrics"]);
        for status in [
            "valid",
            "missing",
            "malformed",
            "invalid",
            "stale",
            "future",
            "replayed",
        ] {
            self.webhook_signatures.with_label_values(&[status]);
        }
        match orch.backend().queue_depth().await {
            Ok(depths) => {
                // Cores and priorities are the callers' choice: the first cores and the
                // highest priorities by name, the rest as `other`.
                let mut by_series: std::collections::BTreeMap<(String, i32), u64> =
                    Default::default();
                let mut priorities: std::collections::BTreeSet<i32> = Default::default();
                for depth in &depths {
                    priorities.insert(depth.priority);
                }
                let kept: HashSet<i32> = priorities
                    .into_iter()
                    .rev()
                    // Room for `other` and the engines' zero series at the default priority.
                    .take(MAX_LABEL_VALUES - 2)
                    .collect();
                let mut other: std::collections::BTreeMap<String, u64> = Default::default();
                for depth in depths {
                    let core = self.core_label(&depth.engine).to_owned();
                    if kept.contains(&depth.priority) {
                        *by_series.entry((core, depth.priority)).or_default() += depth.queued;
                    } else {
                        *other.entry(core).or_default() += depth.queued;
                    }
                }
                self.queue_depth.reset();
                for engine in orch.engines() {
                    self.queue_depth
                        .with_label_values(&[self.core_label(&engine), "1"])
                        .set(0);
                }
                for ((core, priority), count) in by_series {
                    self.queue_depth
                        .with_label_values(&[&core, &priority.to_string()])
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                for (core, count) in other {
                    self.queue_depth
                        .with_label_values(&[&core, "other"])
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                if orch.monitor().is_none() {
                    self.node.set_database_up(true);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: queue depth unavailable");
                if orch.monitor().is_none() {
                    self.node.set_database_up(false);
                }
            }
        }
        match orch.locks().list().await {
            Ok(locks) => {
                self.locks_active.reset();
                for lock in locks {
                    self.locks_active
                        .with_label_values(&[self.resource_label(&lock.resource)])
                        .inc();
                }
            }
            Err(error) => tracing::warn!(%error, "metrics: locks unavailable"),
        }
        self.refresh_system().await;
        self.node
            .refresh(orch, &self.core_labels, self.auth_failures.get())
            .await;
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "metrics: encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Reads `/proc` and walks the disk paths on the blocking pool, then sets the gauges.
    async fn refresh_system(&self) {
        let system = self.system.clone();
        let paths = self.disk_paths.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut system = system.lock();
            let mut cpu = None;
            if let Some((total, idle)) = read_cpu_totals() {
                if let Some((last_total, last_idle)) = system.cpu_last
                    && total > last_total
                {
                    let busy = (total - last_total).saturating_sub(idle.saturating_sub(last_idle));
                    cpu = Some(100.0 * busy as f64 / (total - last_total) as f64);
                }
                system.cpu_last = Some((total, idle));
            }
            let stale = system
                .disk
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= DISK_REFRESH);
            if stale && !paths.is_empty() {
                let usage = paths
                    .iter()
                    .map(|path| {
                        let mut budget = DISK_WALK_ENTRIES;
                        (path.display().to_string(), disk_usage(path, 3, &mut budget))
                    })
                    .collect();
                system.disk = Some((Instant::now(), usage));
            }
            let disk = system
                .disk
                .as_ref()
                .map(|(_, usage)| usage.clone())
                .unwrap_or_default();
            (cpu, read_memory_percent(), disk)
        })
        .await;
        let Ok((cpu, memory, disk)) = read else {
            tracing::warn!("metrics: reading system gauges failed");
            return;
        };
        if let Some(cpu) = cpu {
            self.cpu_percent.set(cpu);
        }
        if let Some(percent) = memory {
            self.memory_percent.set(percent);
        }
        for (path, bytes) in disk {
            self.disk_usage
                .with_label_values(&[&path])
                .set(bytes as f64);
        }
    }
}

/// The part of a lock resource before the first `:` or `/` (`invoices:42` -> `invoices`),
/// bounded so label values stay few.
pub fn resource_type(resource: &str) -> &str {
    let end = resource.find([':', '/']).unwrap_or(resource.len()).min(32);
    resource.get(..end).unwrap_or("other")
}

fn read_cpu_totals() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((values.iter().sum(), idle))
}

fn read_memory_percent() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| 100.0 * (total - available) / total)
}

/// Bytes of the files under `path`, `depth` levels down, looking at `budget` entries at most.
fn disk_usage(path: &Path, depth: u32, budget: &mut usize) -> u64 {
    if *budget == 0 {
        return 0;
    }
    *budget -= 1;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() || depth == 0 {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        if *budget == 0 {
            break;
        }
        total += disk_usage(&entry.path(), depth - 1, budget);
    }
    total
}

/// Middleware: counts and times every request by method, status and matched route.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics.total_requests.fetch_add(1, Ordering::Relaxed);
    metrics
        .http_requests
        .with_label_values(&[method, response.status().as_str(), &endpoint])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[method, &endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Follows the event log into the task metrics until the log closes.
///
/// It holds the event log, not the orchestrator, so it never keeps a dropped orchestrator
/// alive.
pub(crate) async fn follow_events(events: orch_core::EventLog, metrics: Arc<Metrics>) {
    let mut subscription = loop {
        match events.subscribe().await {
            Ok(subscription) => break subscription,
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot subscribe to the event log; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(event) = subscription.next().await {
        match event {
            Ok(event) => metrics.observe_event(&event),
            Err(error) => {
                tracing::warn!(%error, "metrics: reading the event log failed");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}
