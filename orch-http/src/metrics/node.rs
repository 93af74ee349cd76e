//! The families that follow this node and its monitor, refreshed at scrape time: engines'
//! slots and states, the monitor's readings (error ratio, p95, database probe, disk), lock
//! statistics of every lock this process took (not only HTTP's), alerts firing,
//! notification deliveries and authentication failures. Counters copied from orch-core's
//! running totals advance by the difference since the last scrape.

use std::collections::HashMap;

use orch_core::monitor::{Metric, Readings};
use orch_core::{EngineStatus, Orchestrator};
use parking_lot::Mutex;
use prometheus::{
    Counter, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::{BoundedLabel, register};
use crate::auth::AuthFailures;

macro_rules! family {
    ($registry:expr, $kind:ident, $name:expr, $help:expr) => {
        register($registry, build!($kind::new($name, $help)))
    };
    ($registry:expr, $kind:ident, $name:expr, $help:expr, $labels:expr) => {
        register(
            $registry,
            build!($kind::new(Opts::new($name, $help), $labels)),
        )
    };
}

/// The node's and the monitor's families.
pub(super) struct NodeMetrics {
    ready: IntGauge,
    in_flight: IntGaugeVec,
    limit: IntGaugeVec,
    quarantined: IntGaugeVec,
    claim_restarts: IntCounterVec,
    error_ratio: GaugeVec,
    duration_p95: GaugeVec,
    database_up: IntGauge,
    database_probe: Gauge,
    disk_percent: Gauge,
    lock_grants: IntCounter,
    lock_timeouts: IntCounter,
    lock_contended: IntCounter,
    lock_waited: IntCounter,
    lock_wait_seconds: Counter,
    lock_waiters: IntGauge,
    lock_wait_longest: Gauge,
    alerts_firing: IntGaugeVec,
    notifications: IntCounterVec,
    auth_failures: IntCounter,
    /// The running totals copied at the last scrape, by series.
    last: Mutex<HashMap<String, f64>>,
}

impl NodeMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        NodeMetrics {
            ready: family!(
                r,
                IntGauge,
                "orch_node_ready",
                "This node: 1 while it takes work (ready), 0 while out of rotation or shutting down"
            ),
            in_flight: family!(
                r,
                IntGaugeVec,
                "orch_node_engine_in_flight",
                "This node: attempts running per core",
                &["core_id"]
            ),
            limit: family!(
                r,
                IntGaugeVec,
                "orch_node_engine_concurrency_limit",
                "This node: concurrency limit per core",
                &["core_id"]
            ),
            quarantined: family!(
                r,
                IntGaugeVec,
                "orch_node_engine_quarantined",
                "This node: 1 while its circuit breaker holds the core (quarantined or probing)",
                &["core_id"]
            ),
            claim_restarts: family!(
                r,
                IntCounterVec,
                "orch_node_claim_loop_restarts_total",
                "This node: claim loops restarted after a panic, per core",
                &["core_id"]
            ),
            error_ratio: family!(
                r,
                GaugeVec,
                "orch_node_task_error_ratio",
                "This node: failed engine calls per call over the monitor's rate window, per core",
                &["core_id"]
            ),
            duration_p95: family!(
                r,
                GaugeVec,
                "orch_node_task_duration_p95_seconds",
                "This node: 95th percentile of engine call duration over the monitor's rate window, per core",
                &["core_id"]
            ),
            database_up: family!(
                r,
                IntGauge,
                "orch_node_database_up",
                "This node: 1 when its last database probe succeeded"
            ),
            database_probe: family!(
                r,
                Gauge,
                "orch_node_database_probe_seconds",
                "This node: duration of its last successful database probe"
            ),
            disk_percent: family!(
                r,
                Gauge,
                "orch_system_disk_percent",
                "This node's machine: use of the disk holding the data directory, percent (0 until the monitor samples it)"
            ),
            lock_grants: family!(
                r,
                IntCounter,
                "orch_node_lock_grants_total",
                "This node: locks granted to its callers (HTTP, engines, the API)"
            ),
            lock_timeouts: family!(
                r,
                IntCounter,
                "orch_node_lock_timeouts_total",
                "This node: lock waits that hit their deadline"
            ),
            lock_contended: family!(
                r,
                IntCounter,
                "orch_node_lock_contended_total",
                "This node: lock attempts refused because the lock was held"
            ),
            lock_waited: family!(
                r,
                IntCounter,
                "orch_node_lock_waits_total",
                "This node: grants that had to wait"
            ),
            lock_wait_seconds: family!(
                r,
                Counter,
                "orch_node_lock_wait_seconds_total",
                "This node: time its callers spent waiting for locks"
            ),
            lock_waiters: family!(
                r,
                IntGauge,
                "orch_lock_waiters",
                "Cluster-wide: lock waiters queued now, of every node on the database"
            ),
            lock_wait_longest: family!(
                r,
                Gauge,
                "orch_lock_wait_longest_seconds",
                "Cluster-wide: the longest wait of a lock waiter queued now (from the monitor)"
            ),
            alerts_firing: family!(
                r,
                IntGaugeVec,
                "orch_alerts_firing",
                "This node's monitor: 1 while the rule's alert fires (cluster-wide rules on the leader only)",
                &["rule", "severity"]
            ),
            notifications: family!(
                r,
                IntCounterVec,
                "orch_notifications_total",
                "This node: alert deliveries per notifier by outcome (delivered, failed_attempt, given_up, dropped)",
                &["notifier", "outcome"]
            ),
            auth_failures: family!(
                r,
                IntCounter,
                "orch_auth_failures_total",
                "This node: refused logins and tokens"
            ),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Sets `orch_node_database_up` (when no monitor probes the database).
    pub(super) fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// Advances `counter` to `total` (a running total kept elsewhere).
    fn follow(&self, key: String, total: f64, advance: impl FnOnce(f64)) {
        let mut last = self.last.lock();
        let seen = last.entry(key).or_insert(0.0);
        if total > *seen {
            advance(total - *seen);
            *seen = total;
        }
    }

    pub(super) async fn refresh(
        &self,
        orch: &Orchestrator,
        core_labels: &BoundedLabel,
        auth_failures: Option<&AuthFailures>,
    ) {
        self.ready.set(i64::from(orch.readiness().ready));
        let mut served = Vec::new();
        for state in orch.engine_states() {
            let core = core_labels.get(&state.engine);
            self.in_flight
                .with_label_values(&[core])
                .set(i64::try_from(state.in_flight).unwrap_or(i64::MAX));
            self.limit
                .with_label_values(&[core])
                .set(i64::try_from(state.limit).unwrap_or(i64::MAX));
            let held = matches!(
                state.status,
                EngineStatus::Quarantined | EngineStatus::Probing
            );
            self.quarantined
                .with_label_values(&[core])
                .set(i64::from(held));
            let restarts = self.claim_restarts.with_label_values(&[core]);
            self.follow(
                format!("restarts/{core}"),
                state.claim_loop_restarts as f64,
                |d| restarts.inc_by(d as u64),
            );
            // Zero until the monitor has a figure (or the engine has calls).
            self.error_ratio.with_label_values(&[core]);
            self.duration_p95.with_label_values(&[core]);
            served.push(core.to_owned());
        }
        if let Ok(stats) = orch.locks().stats().await {
            self.follow("lock/grants".into(), stats.acquired as f64, |d| {
                self.lock_grants.inc_by(d as u64)
            });
            self.follow("lock/timeouts".into(), stats.timed_out as f64, |d| {
                self.lock_timeouts.inc_by(d as u64)
            });
            self.follow("lock/contended".into(), stats.contended as f64, |d| {
                self.lock_contended.inc_by(d as u64)
            });
            self.follow("lock/waited".into(), stats.waited as f64, |d| {
                self.lock_waited.inc_by(d as u64)
            });
            self.follow("lock/seconds".into(), stats.total_wait_seconds, |d| {
                self.lock_wait_seconds.inc_by(d)
            });
            self.lock_waiters
                .set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
        }
        if let Some(failures) = auth_failures {
            self.follow("auth".into(), failures.total() as f64, |d| {
                self.auth_failures.inc_by(d as u64)
            });
        }
        let Some(monitor) = orch.monitor() else {
            return;
        };
        let served: Vec<&str> = served.iter().map(String::as_str).collect();
        self.monitor_readings(&monitor.readings(), core_labels, &served);
        self.alerts_firing.reset();
        for rule in &monitor.config().rules {
            self.alerts_firing
                .with_label_values(&[&rule.name, rule.severity.as_str()])
                .set(0);
        }
        for alert in monitor.alerts() {
            self.alerts_firing
                .with_label_values(&[&alert.rule, alert.severity.as_str()])
                .set(1);
        }
        for stats in monitor.notifier_stats() {
            for (outcome, total) in [
                ("delivered", stats.delivered),
                ("failed_attempt", stats.failed_attempts),
                ("given_up", stats.given_up),
                ("dropped", stats.dropped),
            ] {
                let counter = self
                    .notifications
                    .with_label_values(&[&stats.name, outcome]);
                self.follow(
                    format!("notify/{}/{outcome}", stats.name),
                    total as f64,
                    |d| counter.inc_by(d as u64),
                );
            }
        }
    }

    /// The monitor's last pass as gauges. An engine of `served` the pass has no figure for (no
    /// task of it ended in the window) reads zero again, not its last figure.
    fn monitor_readings(&self, readings: &Readings, core_labels: &BoundedLabel, served: &[&str]) {
        if readings.at.is_none() {
            return;
        }
        self.database_up.set(0);
        let mut error_ratio: HashMap<&str, f64> = served.iter().map(|core| (*core, 0.0)).collect();
        let mut duration_p95 = error_ratio.clone();
        for reading in &readings.values {
            if reading.priority.is_some() {
                continue;
            }
            match (&reading.metric, reading.engine.as_deref()) {
                (Metric::ErrorRate, Some(engine)) => {
                    error_ratio.insert(core_labels.get(engine), reading.value);
                }
                (Metric::TaskDurationP95, Some(engine)) => {
                    duration_p95.insert(core_labels.get(engine), reading.value);
                }
                (Metric::DatabaseUp, None) => self.database_up.set(reading.value as i64),
                (Metric::DatabaseLatency, None) => self.database_probe.set(reading.value),
                (Metric::DiskPercent, None) => self.disk_percent.set(reading.value),
                (Metric::LockWaitSeconds, None) => self.lock_wait_longest.set(reading.value),
                _ => {}
            }
        }
        for (core, value) in error_ratio {
            self.error_ratio.with_label_values(&[core]).set(value);
        }
        for (core, value) in duration_p95 {
            self.duration_p95.with_label_values(&[core]).set(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(values: Vec<orch_core::monitor::Reading>) -> Readings {
        let mut readings = Readings::default();
        readings.at = Some(chrono::Utc::now());
        readings.values = values;
        readings
    }

    /// A pass without a figure for an engine (none of its tasks ended in the window) reads
    /// zero, not the figure of the pass before.
    #[test]
    fn an_engine_without_a_figure_in_the_last_pass_reads_zero_again() {
        use orch_core::monitor::Reading;
        let node = NodeMetrics::new(&prometheus::Registry::new());
        let labels = BoundedLabel::default();
        node.monitor_readings(
            &pass(vec![
                Reading::of_engine(Metric::ErrorRate, "echo", 0.75),
                Reading::of_engine(Metric::TaskDurationP95, "echo", 2.5),
            ]),
            &labels,
            &["echo"],
        );
        assert_eq!(node.error_ratio.with_label_values(&["echo"]).get(), 0.75);
        assert_eq!(node.duration_p95.with_label_values(&["echo"]).get(), 2.5);
        node.monitor_readings(&pass(Vec::new()), &labels, &["echo"]);
        assert_eq!(node.error_ratio.with_label_values(&["echo"]).get(), 0.0);
        assert_eq!(node.duration_p95.with_label_values(&["echo"]).get(), 0.0);
    }
}
