//! [`OrchestratorConfig`]: limits, leases and intervals, validated once at build time, with
//! the pipeline's [`Tuning`] knobs kept apart.

use std::time::Duration;

use super::healing::Healing;
use crate::error::{Error, Result};
use crate::locks::LockConfig;
use crate::model::RetryPolicy;
use crate::monitor::MonitorConfig;

/// How long finished tasks and events are kept before the pruner deletes them: at most
/// [`Retention::MAX_KEEP`] (validated with the [`OrchestratorConfig`]).
///
/// ```
/// use std::time::Duration;
/// use orch_core::Retention;
///
/// let retention = Retention::default().with_finished_tasks(Duration::from_secs(24 * 3600));
/// assert_eq!(retention.events, Duration::from_secs(7 * 24 * 3600));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished tasks older than this (by finish time) are deleted. Default 7 days.
    pub finished_tasks: Duration,
    /// Events older than this are deleted. Default 7 days.
    pub events: Duration,
    /// How often the pruner runs. Default 5 minutes.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            finished_tasks: Duration::from_secs(7 * 24 * 3600),
            events: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(300),
        }
    }
}

impl Retention {
    /// The longest a retention may keep anything: 100 years. The cutoff (now minus the
    /// retention) must be a time every backend can store and compare.
    pub const MAX_KEEP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// Sets how long finished tasks are kept.
    pub fn with_finished_tasks(mut self, keep: Duration) -> Self {
        self.finished_tasks = keep;
        self
    }

    /// Sets how long events are kept.
    pub fn with_events(mut self, keep: Duration) -> Self {
        self.events = keep;
        self
    }

    /// Sets how often the pruner runs.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// How the dispatcher's pipeline moves tasks between the backend and the engines. The
/// defaults suit most uses; these knobs trade database load for throughput.
///
/// ```
/// use orch_core::{OrchestratorConfig, Tuning};
///
/// let config = OrchestratorConfig::default()
///     .with_tuning(Tuning::default().with_claims_in_flight(3).with_reports_in_flight(6));
/// assert!(config.validate().is_ok());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Longest an idle claim loop or the event tail sleeps without a wake-up hint (the floor
    /// for work created by other processes when the backend sends no hint). Default 1 s.
    pub poll_interval: Duration,
    /// Most tasks claimed in one backend call. Default 64.
    pub claim_batch: usize,
    /// Most claim calls of one engine under way at once. While one call waits for its commit,
    /// another can claim for the slots freed meanwhile: with a backend whose commits take a
    /// millisecond or more (PostgreSQL), this keeps the engines fed. Default 2.
    pub claims_in_flight: usize,
    /// Most outcome batches being recorded at once (each one backend call of up to 128
    /// outcomes). Default 4. On a backend that claims the tasks outcomes release
    /// ([`claims_released_tasks`](crate::backend::TaskStore::claims_released_tasks):
    /// PostgreSQL), outcomes of tasks handed over that way are recorded one batch at a time
    /// unless a full batch waits, and the first batch after a hand-over waits for the
    /// outcomes of the tasks handed while they keep coming (1 ms for the first, 0.5 ms after
    /// each, 5 ms at most), so that siblings share a batch.
    pub reports_in_flight: usize,
    /// Most claimed tasks an engine keeps waiting for a free slot (its local queue), on top
    /// of its running attempts. Claims then run ahead of the engines: with 10 slots a claim
    /// can bring dozens of tasks and the next one travels while they run, so short tasks are
    /// not held up by the database's round trips. The whole queue is used while the engine's
    /// attempts take under 10 ms on average; for slower ones (and before the first attempt
    /// ends) claims fill it only up to as many tasks as the engine has slots. What already
    /// waits stays when that bound shrinks. Waiting tasks keep their leases renewed, start
    /// best first (priority, then due time, then id, as claims order them), and are given
    /// back unrun (their attempt not counted) on shutdown, pause, quarantine or when the node
    /// is taken out of rotation. While the queue is full, a task of higher priority than the
    /// lowest waiting one is claimed within about 20 ms of the backend signalling new work
    /// (or within `poll_interval`), and the lowest waiting tasks given back to keep the bound (on
    /// backends that implement
    /// [`claim_tasks_above`](crate::backend::TaskStore::claim_tasks_above): the three of this
    /// workspace do). A process that dies with tasks waiting leaves them leased: they are
    /// rescued when their leases expire, and as for a running task the claim counted as an
    /// attempt, so a task on its last attempt (every task with `max_attempts` 1) then fails
    /// without having run. Where that matters more than throughput, `Some(0)` turns the local
    /// queue off (claims ask only for free slots). `None` (the default): 64 where a claim
    /// costs the backend a round trip (SQLite, PostgreSQL), 0 in memory
    /// ([`claims_take_a_round_trip`](crate::backend::TaskStore::claims_take_a_round_trip)).
    /// Tasks an outcome releases and the backend claims for this process at once
    /// ([`finish_attempts_and_claim`](crate::backend::TaskStore::finish_attempts_and_claim))
    /// come within the room the free slots and this queue have; one racing a claim may leave
    /// the queue over its bound by what it brought until the queue drains.
    pub local_queue: Option<usize>,
    /// Events buffered per live subscriber before it lags (and catches up from the log).
    /// Default 4096.
    pub event_buffer: usize,
    /// Most claimed tasks waiting for their locks at once. Default 1024.
    pub max_lock_waiters: usize,
    /// How often the engine pauses shared through the backend are read: a pause made on
    /// another node takes effect here within this time. One key-value `list` call each.
    /// Default 1 s.
    pub control_refresh: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            poll_interval: Duration::from_secs(1),
            claim_batch: 64,
            claims_in_flight: 2,
            reports_in_flight: 4,
            local_queue: None,
            event_buffer: 4096,
            max_lock_waiters: 1024,
            control_refresh: Duration::from_secs(1),
        }
    }
}

impl Tuning {
    /// Sets the poll floor.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the claim batch size.
    pub fn with_claim_batch(mut self, batch: usize) -> Self {
        self.claim_batch = batch;
        self
    }

    /// Sets how many claim calls of one engine may be under way at once.
    pub fn with_claims_in_flight(mut self, calls: usize) -> Self {
        self.claims_in_flight = calls;
        self
    }

    /// Sets how many outcome batches may be recorded at once.
    pub fn with_reports_in_flight(mut self, batches: usize) -> Self {
        self.reports_in_flight = batches;
        self
    }

    /// Sets how many claimed tasks an engine may keep waiting for a slot (0: none).
    pub fn with_local_queue(mut self, tasks: usize) -> Self {
        self.local_queue = Some(tasks);
        self
    }

    /// Sets the live event buffer per subscriber.
    pub fn with_event_buffer(mut self, buffer: usize) -> Self {
        self.event_buffer = buffer;
        self
    }

    /// Sets how many claimed tasks may wait for their locks at once.
    pub fn with_max_lock_waiters(mut self, waiters: usize) -> Self {
        self.max_lock_waiters = waiters;
        self
    }

    /// Sets how often shared engine pauses are read.
    pub fn with_control_refresh(mut self, refresh: Duration) -> Self {
        self.control_refresh = refresh;
        self
    }
}

/// How an orchestrator runs. `Default` suits most uses; `with_*` methods change one setting,
/// and [`OrchestratorConfig::validate`] (called by the builder) names the first bad one.
///
/// ```
/// use std::time::Duration;
/// use orch_core::OrchestratorConfig;
///
/// let config = OrchestratorConfig::default()
///     .with_global_concurrency(128)
///     .with_lease(Duration::from_secs(60));
/// assert!(config.validate().is_ok());
/// assert!(config.with_global_concurrency(0).validate().is_err());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestratorConfig {
    /// Most attempts running at once across all engines. Default 64.
    pub global_concurrency: usize,
    /// Most attempts running at once per engine unless set when it is registered. Default 64.
    pub default_engine_concurrency: usize,
    /// Lease given to each attempt; renewed while it runs. Default 30 s.
    pub lease: Duration,
    /// How often running leases are renewed. Default a third of the lease.
    pub heartbeat_interval: Duration,
    /// How often expired leases are looked for and rescued. Default 5 s.
    pub rescue_interval: Duration,
    /// Delays between attempts.
    pub retry: RetryPolicy,
    /// Name of this orchestrator (lock owner prefix, logs). Default `orch-<uuid>`.
    pub node_id: String,
    /// Lock manager settings.
    pub locks: LockConfig,
    /// Pruning of finished tasks and old events; `None` keeps everything. Default: on, with
    /// [`Retention::default`].
    pub retention: Option<Retention>,
    /// How long a timed-out or cancelled engine may take to return after its cancellation
    /// token fires before its future is dropped. Default 5 s.
    pub cancel_grace: Duration,
    /// The pipeline's knobs.
    pub tuning: Tuning,
    /// The repairs the orchestrator makes by itself. Default: off.
    pub healing: Healing,
    /// The monitor: readings, alert rules, notifications, and the healing actions that need
    /// readings. `None` (the default) runs none.
    pub monitor: Option<MonitorConfig>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            global_concurrency: 64,
            default_engine_concurrency: 64,
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            rescue_interval: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            node_id: format!("orch-{}", uuid::Uuid::new_v4()),
            locks: LockConfig::default(),
            retention: Some(Retention::default()),
            cancel_grace: Duration::from_secs(5),
            tuning: Tuning::default(),
            healing: Healing::default(),
            monitor: None,
        }
    }
}

impl OrchestratorConfig {
    /// Sets the global concurrency limit.
    pub fn with_global_concurrency(mut self, limit: usize) -> Self {
        self.global_concurrency = limit;
        self
    }

    /// Sets the default per-engine limit.
    pub fn with_default_engine_concurrency(mut self, limit: usize) -> Self {
        self.default_engine_concurrency = limit;
        self
    }

    /// Sets the lease and a heartbeat of a third of it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat_interval = lease / 3;
        self
    }

    /// Sets how often leases are renewed (shorter than the lease).
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets how often expired leases are rescued.
    pub fn with_rescue_interval(mut self, interval: Duration) -> Self {
        self.rescue_interval = interval;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the node id.
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = node_id.into();
        self
    }

    /// Sets the lock manager settings.
    pub fn with_locks(mut self, locks: LockConfig) -> Self {
        self.locks = locks;
        self
    }

    /// Sets the cancellation grace period.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Sets the retention (`None` keeps everything).
    pub fn with_retention(mut self, retention: Option<Retention>) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the pipeline's knobs.
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Sets the self-healing actions.
    pub fn with_healing(mut self, healing: Healing) -> Self {
        self.healing = healing;
        self
    }

    /// Turns the self-healing master switch on or off, keeping each action's settings.
    pub fn with_self_healing(mut self, enabled: bool) -> Self {
        self.healing.enabled = enabled;
        self
    }

    /// Sets the monitor (`None`: none).
    pub fn with_monitor(mut self, monitor: Option<MonitorConfig>) -> Self {
        self.monitor = monitor;
        self
    }

    /// Sets the poll floor (see [`Tuning::poll_interval`]).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.tuning.poll_interval = interval;
        self
    }

    /// The longest interval of a background loop (heartbeat, rescue, pruning, polling): a year.
    /// A timer further out than the clock can count would panic the loop.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        fn positive(field: &'static str, value: usize) -> Result<()> {
            if value == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
            Ok(())
        }
        fn nonzero(field: &'static str, value: Duration) -> Result<()> {
            if value.is_zero() {
                return Err(Error::invalid(field, "must be greater than zero"));
            }
            Ok(())
        }
        fn at_most(field: &'static str, value: Duration, max: Duration) -> Result<()> {
            if value > max {
                return Err(Error::invalid(
                    field,
                    format!("must be at most {} days", max.as_secs() / 86_400),
                ));
            }
            Ok(())
        }
        fn interval(field: &'static str, value: Duration) -> Result<()> {
            nonzero(field, value)?;
            at_most(field, value, OrchestratorConfig::MAX_INTERVAL)
        }
        positive("global_concurrency", self.global_concurrency)?;
        positive(
            "default_engine_concurrency",
            self.default_engine_concurrency,
        )?;
        nonzero("lease", self.lease)?;
        interval("heartbeat_interval", self.heartbeat_interval)?;
        interval("rescue_interval", self.rescue_interval)?;
        interval("locks.poll_interval", self.locks.poll_interval)?;
        if self.heartbeat_interval >= self.lease {
            return Err(Error::invalid(
                "heartbeat_interval",
                "must be shorter than the lease, or leases expire between heartbeats",
            ));
        }
        if let Some(retention) = &self.retention {
            interval("retention.interval", retention.interval)?;
            at_most(
                "retention.finished_tasks",
                retention.finished_tasks,
                Retention::MAX_KEEP,
            )?;
            at_most("retention.events", retention.events, Retention::MAX_KEEP)?;
        }
        crate::model::check_name("node_id", &self.node_id, 128)?;
        let tuning = &self.tuning;
        interval("tuning.poll_interval", tuning.poll_interval)?;
        positive("tuning.claim_batch", tuning.claim_batch)?;
        positive("tuning.claims_in_flight", tuning.claims_in_flight)?;
        positive("tuning.reports_in_flight", tuning.reports_in_flight)?;
        positive("tuning.event_buffer", tuning.event_buffer)?;
        positive("tuning.max_lock_waiters", tuning.max_lock_waiters)?;
        nonzero("tuning.control_refresh", tuning.control_refresh)?;
        self.healing.validate()?;
        if let Some(monitor) = &self.monitor {
            monitor.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations past what a calendar (chrono) or a timer (tokio) can hold are refused when
    /// the config is validated, naming the setting, instead of panicking the pruner later.
    #[test]
    fn retention_beyond_the_calendar_is_refused_naming_the_setting() {
        let huge = Duration::from_secs(u64::MAX);
        for (retention, field) in [
            (Retention::default().with_events(huge), "retention.events"),
            (
                Retention::default().with_finished_tasks(huge),
                "retention.finished_tasks",
            ),
            (
                Retention::default().with_interval(huge),
                "retention.interval",
            ),
        ] {
            let error = OrchestratorConfig::default()
                .with_retention(Some(retention))
                .validate()
                .expect_err(field);
            assert!(error.to_string().contains(field), "{error}");
        }
        let error = OrchestratorConfig::default()
            .with_rescue_interval(huge)
            .validate()
            .expect_err("rescue_interval");
        assert!(error.to_string().contains("rescue_interval"), "{error}");
        // A long but sane retention is fine.
        let decade = Duration::from_secs(10 * 365 * 24 * 3600);
        assert!(
            OrchestratorConfig::default()
                .with_retention(Some(Retention::default().with_events(decade)))
                .validate()
                .is_ok()
        );
    }
}
