//! Readings: what the monitor measures at each pass ([`Metric`], [`Reading`], [`Readings`]),
//! and the [`Sampler`] trait through which readings orch-core cannot take itself (CPU,
//! memory, disk, network, a connection pool, a front end's authentication failures) come in.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a reading measures. The monitor takes the orchestrator's own readings itself; the
/// machine's and a front end's come from [`Sampler`]s. Each has a wire name
/// ([`Metric::as_str`]), the one rules and events use.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// `cpu_percent`: CPU use of the machine, 0 to 100 (from a sampler).
    CpuPercent,
    /// `memory_percent`: memory use of the machine, 0 to 100 (from a sampler).
    MemoryPercent,
    /// `disk_percent`: use of the disk holding the data, 0 to 100 (from a sampler).
    DiskPercent,
    /// `network_received_bytes_per_second` (from a sampler).
    NetworkReceived,
    /// `network_sent_bytes_per_second` (from a sampler).
    NetworkSent,
    /// `queue_depth`: tasks of an engine queued (due, or waiting for a delay or a retry's
    /// backoff), across every node (per engine): what `orch_task_queue_depth` counts.
    QueueDepth,
    /// `queued_by_priority`: tasks of an engine queued at one priority, across every node
    /// (per engine and priority).
    QueuedByPriority,
    /// `in_flight`: concurrency slots of an engine taken on this node (per engine).
    InFlight,
    /// `concurrency_limit`: an engine's limit on this node (per engine).
    ConcurrencyLimit,
    /// `attempts`: engine calls that ended on this node in the rate window (per engine).
    Attempts,
    /// `error_rate`: failed engine calls per call on this node in the rate window, 0 to 1
    /// (per engine; missing without calls).
    ErrorRate,
    /// `task_duration_p50_seconds`: median engine call duration on this node in the rate
    /// window (per engine).
    TaskDurationP50,
    /// `task_duration_p95_seconds` (per engine).
    TaskDurationP95,
    /// `task_duration_p99_seconds` (per engine).
    TaskDurationP99,
    /// `lock_wait_seconds`: the longest wait of a lock waiter queued now, of any node.
    LockWaitSeconds,
    /// `lock_waiters`: lock waiters queued now, of every node.
    LockWaiters,
    /// `locks_held`: unexpired locks.
    LocksHeld,
    /// `lock_timeouts`: lock waits of this node that hit their deadline in the rate window.
    LockTimeouts,
    /// `database_up`: 1 when this node's probe of the backend succeeded, else 0.
    DatabaseUp,
    /// `database_latency_seconds`: how long the probe took (missing when it failed).
    DatabaseLatency,
    /// `pool_in_use_ratio`: connections in use per connection of the pool (from a sampler).
    PoolInUse,
    /// `auth_failures`: refused logins and tokens in the last minute (from a front end's
    /// sampler).
    AuthFailures,
    /// `rescued_tasks`: tasks whose expired lease this node rescued since the last pass.
    RescuedTasks,
    /// Any other name, from an application's sampler.
    Custom(String),
}

impl Metric {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Metric::CpuPercent => "cpu_percent",
            Metric::MemoryPercent => "memory_percent",
            Metric::DiskPercent => "disk_percent",
            Metric::NetworkReceived => "network_received_bytes_per_second",
            Metric::NetworkSent => "network_sent_bytes_per_second",
            Metric::QueueDepth => "queue_depth",
            Metric::QueuedByPriority => "queued_by_priority",
            Metric::InFlight => "in_flight",
            Metric::ConcurrencyLimit => "concurrency_limit",
            Metric::Attempts => "attempts",
            Metric::ErrorRate => "error_rate",
            Metric::TaskDurationP50 => "task_duration_p50_seconds",
            Metric::TaskDurationP95 => "task_duration_p95_seconds",
            Metric::TaskDurationP99 => "task_duration_p99_seconds",
            Metric::LockWaitSeconds => "lock_wait_seconds",
            Metric::LockWaiters => "lock_waiters",
            Metric::LocksHeld => "locks_held",
            Metric::LockTimeouts => "lock_timeouts",
            Metric::DatabaseUp => "database_up",
            Metric::DatabaseLatency => "database_latency_seconds",
            Metric::PoolInUse => "pool_in_use_ratio",
            Metric::AuthFailures => "auth_failures",
            Metric::RescuedTasks => "rescued_tasks",
            Metric::Custom(name) => name,
        }
    }

    const KNOWN: [Metric; 23] = [
        Metric::CpuPercent,
        Metric::MemoryPercent,
        Metric::DiskPercent,
        Metric::NetworkReceived,
        Metric::NetworkSent,
        Metric::QueueDepth,
        Metric::QueuedByPriority,
        Metric::InFlight,
        Metric::ConcurrencyLimit,
        Metric::Attempts,
        Metric::ErrorRate,
        Metric::TaskDurationP50,
        Metric::TaskDurationP95,
        Metric::TaskDurationP99,
        Metric::LockWaitSeconds,
        Metric::LockWaiters,
        Metric::LocksHeld,
        Metric::LockTimeouts,
        Metric::DatabaseUp,
        Metric::DatabaseLatency,
        Metric::PoolInUse,
        Metric::AuthFailures,
        Metric::RescuedTasks,
    ];

    /// Whether every node reads the same value (it comes from the shared backend). Alerts on
    /// such metrics are raised by one node only, the monitor leader.
    pub fn is_cluster_wide(&self) -> bool {
        matches!(
            self,
            Metric::QueueDepth
                | Metric::QueuedByPriority
                | Metric::LockWaitSeconds
                | Metric::LockWaiters
                | Metric::LocksHeld
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(known) = Self::KNOWN.iter().find(|metric| metric.as_str() == s) {
            return Ok(known.clone());
        }
        crate::model::check_name("metric", s, 128)?;
        Ok(Metric::Custom(s.to_owned()))
    }
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// One measured value.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// What it measures.
    pub metric: Metric,
    /// The engine it concerns, for per-engine metrics. `core_id` on the wire.
    #[serde(
        rename = "core_id",
        alias = "engine",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub engine: Option<String>,
    /// The priority it concerns, for per-priority metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The value, in the metric's unit.
    pub value: f64,
}

impl Reading {
    /// A reading of the node (or of the whole cluster).
    pub fn new(metric: Metric, value: f64) -> Self {
        Reading {
            metric,
            engine: None,
            priority: None,
            value,
        }
    }

    /// A reading of one engine.
    pub fn of_engine(metric: Metric, engine: impl Into<String>, value: f64) -> Self {
        Reading {
            metric,
            engine: Some(engine.into()),
            priority: None,
            value,
        }
    }

    /// Sets the priority it concerns.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// The readings of one monitor pass.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// When the pass began (`None` before the first one).
    pub at: Option<DateTime<Utc>>,
    /// Every reading of the pass, the orchestrator's own first, then each sampler's.
    pub values: Vec<Reading>,
}

impl Readings {
    /// The value of `metric` for `engine` (`None`: the node's or cluster's own reading),
    /// without a priority.
    pub fn get(&self, metric: &Metric, engine: Option<&str>) -> Option<f64> {
        self.values
            .iter()
            .find(|r| &r.metric == metric && r.engine.as_deref() == engine && r.priority.is_none())
            .map(|r| r.value)
    }
}

/// A source of readings the orchestrator cannot take itself: the machine's CPU, memory, disk
/// and network, a connection pool's use, a front end's authentication failures, or anything
/// an application wants rules on ([`Metric::Custom`]).
///
/// Contract: `sample` is called once per monitor pass, never concurrently with itself; it
/// should return quickly (a pass waits at most
/// [`MonitorConfig::sampler_timeout`](super::MonitorConfig::sampler_timeout) for it, then goes
/// on without its readings) and must not block the async runtime: run blocking system calls
/// on `spawn_blocking`. An error is logged and the pass goes on without its readings: alerts
/// on the metrics it gave last keep their state until it answers again.
///
/// A closure is a sampler through [`sampler_fn`].
#[async_trait]
pub trait Sampler: Send + Sync {
    /// Takes this sampler's readings now.
    async fn sample(&self) -> Result<Vec<Reading>>;
}

#[async_trait]
impl<S: Sampler + ?Sized> Sampler for Arc<S> {
    async fn sample(&self) -> Result<Vec<Reading>> {
        (**self).sample().await
    }
}

#[async_trait]
impl<S: Sampler + ?Sized> Sampler for Box<S> {
    async fn sample(&self) -> Result<Vec<Reading>> {
        (**self).sample().await
    }
}

/// A [`Sampler`] made from a closure; see [`sampler_fn`].
pub struct SamplerFn<F> {
    f: F,
}

/// Makes a sampler from an async closure.
///
/// ```
/// use orch_core::monitor::{Metric, Reading, sampler_fn};
///
/// let sampler = sampler_fn(|| async { Ok(vec![Reading::new(Metric::CpuPercent, 12.5)]) });
/// # let _ = sampler;
/// ```
pub fn sampler_fn<F, Fut>(f: F) -> SamplerFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Reading>>> + Send + 'static,
{
    SamplerFn { f }
}

#[async_trait]
impl<F, Fut> Sampler for SamplerFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Reading>>> + Send + 'static,
{
    async fn sample(&self) -> Result<Vec<Reading>> {
        (self.f)().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip() {
        for metric in Metric::KNOWN {
            assert_eq!(metric.as_str().parse::<Metric>().unwrap(), metric);
        }
        assert_eq!(
            "orders_waiting".parse::<Metric>().unwrap(),
            Metric::Custom("orders_waiting".into())
        );
    }
}
