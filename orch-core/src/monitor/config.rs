//! [`MonitorConfig`]: how often the monitor samples, its alert rules, its anomaly detection
//! and how alerts are delivered.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::readings::Metric;
use crate::error::{Error, Result};

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look soon.
    Warning,
    /// Needs someone now.
    Critical,
}

impl Severity {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which side of the threshold is trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// The condition holds while the value is greater than the threshold.
    Above,
    /// The condition holds while the value is less than the threshold.
    Below,
}

impl Comparison {
    /// Whether `value` is on the trouble side of `threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::Below => value < threshold,
        }
    }
}

/// A fixed alert rule: the condition `metric` above (or below) `threshold`, held for
/// `for_duration`, fires one alert per series (per engine for per-engine metrics); once the
/// condition has stayed clear for `clear_for` the alert resolves, once. A series whose
/// reading is missing counts as clear, unless its source failed in that pass (the database
/// probe, for the database's metrics; a sampler, for the metrics it gave last): then the
/// series keeps its state until the source answers again.
///
/// ```
/// use std::time::Duration;
/// use orch_core::monitor::{AlertRule, Metric, Severity};
///
/// let rule = AlertRule::above("cpu_high", Metric::CpuPercent, 90.0)
///     .for_duration(Duration::from_secs(300))
///     .severity(Severity::Critical);
/// assert!(rule.holds(95.0));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// The rule's name, unique among the rules (`cpu_high`): alerts carry it.
    pub name: String,
    /// What it watches.
    pub metric: Metric,
    /// Which side of the threshold is trouble.
    pub comparison: Comparison,
    /// The threshold, in the metric's unit.
    pub threshold: f64,
    /// How long the condition must hold before the alert fires (zero: at the first reading).
    pub for_duration: Duration,
    /// How long it must stay clear before the alert resolves (keeps a value hovering at the
    /// threshold from firing and resolving over and over). Default 1 minute.
    pub clear_for: Duration,
    /// How bad.
    pub severity: Severity,
    /// Only this engine's series (`None`: every series of the metric).
    pub engine: Option<String>,
}

impl AlertRule {
    fn new(name: &str, metric: Metric, comparison: Comparison, threshold: f64) -> Self {
        AlertRule {
            name: name.to_owned(),
            metric,
            comparison,
            threshold,
            for_duration: Duration::ZERO,
            clear_for: Duration::from_secs(60),
            severity: Severity::Warning,
            engine: None,
        }
    }

    /// A warning that holds while `metric` is above `threshold`.
    pub fn above(name: &str, metric: Metric, threshold: f64) -> Self {
        Self::new(name, metric, Comparison::Above, threshold)
    }

    /// A warning that holds while `metric` is below `threshold`.
    pub fn below(name: &str, metric: Metric, threshold: f64) -> Self {
        Self::new(name, metric, Comparison::Below, threshold)
    }

    /// Sets how long the condition must hold.
    pub fn for_duration(mut self, duration: Duration) -> Self {
        self.for_duration = duration;
        self
    }

    /// Sets how long the condition must stay clear.
    pub fn clear_for(mut self, duration: Duration) -> Self {
        self.clear_for = duration;
        self
    }

    /// Sets the severity.
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Watches only `engine`'s series.
    pub fn engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    /// Whether `value` is on the trouble side of the threshold.
    pub fn holds(&self, value: f64) -> bool {
        self.comparison.holds(value, self.threshold)
    }

    /// ORCH-Next's rules: CPU above 90% for 5 minutes, memory above 95% for 2 minutes, the
    /// database unreachable, more than 20 authentication failures a minute and a lock wait
    /// over 30 s (critical); more than 100 tasks queued for an engine, an engine's error
    /// rate above 5% for 10 minutes, its p95 task duration above 2 s and disk use above 80%
    /// (warnings).
    pub fn defaults() -> Vec<AlertRule> {
        let minutes = |n: u64| Duration::from_secs(60 * n);
        vec![
            Self::above("cpu_high", Metric::CpuPercent, 90.0)
                .for_duration(minutes(5))
                .severity(Severity::Critical),
            Self::above("memory_high", Metric::MemoryPercent, 95.0)
                .for_duration(minutes(2))
                .severity(Severity::Critical),
            Self::below("database_down", Metric::DatabaseUp, 1.0).severity(Severity::Critical),
            Self::above("auth_failures", Metric::AuthFailures, 20.0).severity(Severity::Critical),
            Self::above("lock_wait_long", Metric::LockWaitSeconds, 30.0)
                .severity(Severity::Critical),
            Self::above("queue_deep", Metric::QueueDepth, 100.0),
            Self::above("error_rate_high", Metric::ErrorRate, 0.05).for_duration(minutes(10)),
            Self::above("task_duration_p95_high", Metric::TaskDurationP95, 2.0),
            Self::above("disk_high", Metric::DiskPercent, 80.0),
        ]
    }
}

/// Anomaly detection: per series of each watched metric, an exponentially weighted moving
/// average (EWMA) of its value and of its variance is the baseline. A reading further from
/// the mean than `deviations` standard deviations (and than the metric's floor, so a flat
/// baseline does not flag every small change) is anomalous and does not move the baseline; an
/// anomaly that lasts `hold` fires an alert named `<metric>_anomaly`, which resolves once
/// readings stay within the band for `clear_for`. A series that stays away for `adapt_after`
/// has changed for good: its new level becomes the baseline (and the alert resolves).
/// Nothing is flagged during a series' first `warmup` readings.
///
/// ```
/// use orch_core::monitor::{AnomalyDetection, Metric};
///
/// let detection = AnomalyDetection::default().with_metric(Metric::DatabaseLatency, 0.2);
/// assert_eq!(detection.metrics[&Metric::DatabaseLatency], 0.2);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyDetection {
    /// Weight of each new reading in the averages (0 to 1). Default 0.1.
    pub alpha: f64,
    /// Standard deviations from the mean that count as anomalous. Default 3.
    pub deviations: f64,
    /// Readings per series before anything is flagged. Default 30.
    pub warmup: u32,
    /// How long an anomaly must last to fire. Default 3 s.
    pub hold: Duration,
    /// How long readings must stay in the band for the alert to resolve. Default 30 s.
    pub clear_for: Duration,
    /// After this long away, the new level becomes the baseline. Default 10 minutes.
    pub adapt_after: Duration,
    /// The watched metrics, each with its floor: the smallest distance from the mean that
    /// counts, in the metric's unit. Default: queue depth (10 tasks), error rate (0.02), p95
    /// task duration (0.1 s) and database latency (0.05 s).
    pub metrics: BTreeMap<Metric, f64>,
    /// The alerts' severity. Default warning.
    pub severity: Severity,
}

impl Default for AnomalyDetection {
    fn default() -> Self {
        AnomalyDetection {
            alpha: 0.1,
            deviations: 3.0,
            warmup: 30,
            hold: Duration::from_secs(3),
            clear_for: Duration::from_secs(30),
            adapt_after: Duration::from_secs(600),
            metrics: BTreeMap::from([
                (Metric::QueueDepth, 10.0),
                (Metric::ErrorRate, 0.02),
                (Metric::TaskDurationP95, 0.1),
                (Metric::DatabaseLatency, 0.05),
            ]),
            severity: Severity::Warning,
        }
    }
}

impl AnomalyDetection {
    /// Watches `metric` too (or changes its floor).
    pub fn with_metric(mut self, metric: Metric, floor: f64) -> Self {
        self.metrics.insert(metric, floor);
        self
    }

    /// Watches exactly these metrics with their floors.
    pub fn with_metrics(mut self, metrics: impl IntoIterator<Item = (Metric, f64)>) -> Self {
        self.metrics = metrics.into_iter().collect();
        self
    }

    /// Sets the weight of new readings.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets the standard deviations that count as anomalous.
    pub fn with_deviations(mut self, deviations: f64) -> Self {
        self.deviations = deviations;
        self
    }

    /// Sets the readings before anything is flagged.
    pub fn with_warmup(mut self, warmup: u32) -> Self {
        self.warmup = warmup;
        self
    }

    /// Sets how long an anomaly must last to fire.
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Sets how long readings must stay in the band to resolve.
    pub fn with_clear_for(mut self, clear_for: Duration) -> Self {
        self.clear_for = clear_for;
        self
    }

    /// Sets after how long a new level becomes the baseline.
    pub fn with_adapt_after(mut self, adapt_after: Duration) -> Self {
        self.adapt_after = adapt_after;
        self
    }
}

/// How alerts reach the notifiers: each notifier has a queue of its own, delivered in order
/// by a task of its own, so a slow or unreachable receiver delays nobody else, never the
/// monitor and never dispatch. A full queue drops the new alert (counted); a failed delivery
/// is retried with a doubling delay (counted), up to `attempts`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Alerts waiting per notifier. Default 256.
    pub queue: usize,
    /// Attempts per alert, the first included. Default 5.
    pub attempts: u32,
    /// Delay before the first retry. Default 1 s.
    pub backoff: Duration,
    /// Longest delay between retries. Default 60 s.
    pub max_backoff: Duration,
    /// Longest one delivery may take before it counts as failed. Default 10 s.
    pub timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            queue: 256,
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Delivery {
    /// Sets the queue per notifier.
    pub fn with_queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Sets the attempts per alert.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets the first retry delay and the longest one.
    pub fn with_backoff(mut self, backoff: Duration, max_backoff: Duration) -> Self {
        self.backoff = backoff;
        self.max_backoff = max_backoff;
        self
    }

    /// Sets the longest one delivery may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The monitor's settings. `Default` samples every second with ORCH-Next's rules
/// ([`AlertRule::defaults`]) and anomaly detection on.
///
/// ```
/// use std::time::Duration;
/// use orch_core::OrchestratorConfig;
/// use orch_core::monitor::{AlertRule, Metric, MonitorConfig};
///
/// let monitor = MonitorConfig::default()
///     .with_interval(Duration::from_secs(5))
///     .with_rule(AlertRule::above("backlog", Metric::QueueDepth, 1000.0).engine("mail"));
/// let config = OrchestratorConfig::default().with_monitor(Some(monitor));
/// assert!(config.validate().is_ok());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// Time between two passes (sample, evaluate, act). Default 1 s.
    pub interval: Duration,
    /// The fixed rules. Default [`AlertRule::defaults`].
    pub rules: Vec<AlertRule>,
    /// Anomaly detection; `None` for none. Default on.
    pub anomaly: Option<AnomalyDetection>,
    /// The window error rates and task duration percentiles are computed over. Default 60 s.
    pub rate_window: Duration,
    /// Longest the database probe may take before it counts as failed. Default 5 s.
    pub probe_timeout: Duration,
    /// Longest one sampler may take before its readings are skipped for the pass. Default 5 s.
    pub sampler_timeout: Duration,
    /// Delivery of alerts to notifiers.
    pub delivery: Delivery,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_secs(1),
            rules: AlertRule::defaults(),
            anomaly: Some(AnomalyDetection::default()),
            rate_window: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(5),
            sampler_timeout: Duration::from_secs(5),
            delivery: Delivery::default(),
        }
    }
}

impl MonitorConfig {
    /// Sets the time between passes.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Replaces the rules.
    pub fn with_rules(mut self, rules: Vec<AlertRule>) -> Self {
        self.rules = rules;
        self
    }

    /// Adds a rule, replacing one of the same name.
    pub fn with_rule(mut self, rule: AlertRule) -> Self {
        self.rules.retain(|existing| existing.name != rule.name);
        self.rules.push(rule);
        self
    }

    /// Removes the rule named `name`.
    pub fn without_rule(mut self, name: &str) -> Self {
        self.rules.retain(|rule| rule.name != name);
        self
    }

    /// Sets anomaly detection (`None`: off).
    pub fn with_anomaly(mut self, anomaly: Option<AnomalyDetection>) -> Self {
        self.anomaly = anomaly;
        self
    }

    /// Sets the window of error rates and percentiles.
    pub fn with_rate_window(mut self, window: Duration) -> Self {
        self.rate_window = window;
        self
    }

    /// Sets the database probe's timeout.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Sets each sampler's timeout.
    pub fn with_sampler_timeout(mut self, timeout: Duration) -> Self {
        self.sampler_timeout = timeout;
        self
    }

    /// Sets the delivery of alerts.
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let nonzero = |field, value: Duration| {
            if value.is_zero() {
                return Err(Error::invalid(field, "must be greater than zero"));
            }
            Ok(())
        };
        nonzero("monitor.interval", self.interval)?;
        nonzero("monitor.rate_window", self.rate_window)?;
        nonzero("monitor.probe_timeout", self.probe_timeout)?;
        nonzero("monitor.sampler_timeout", self.sampler_timeout)?;
        let mut names = HashSet::new();
        for rule in &self.rules {
            crate::model::check_name("monitor.rules.name", &rule.name, 128)?;
            if !names.insert(rule.name.as_str()) {
                return Err(Error::invalid(
                    "monitor.rules.name",
                    format!("{:?} is used by two rules", rule.name),
                ));
            }
            if !rule.threshold.is_finite() {
                return Err(Error::invalid(
                    "monitor.rules.threshold",
                    format!("rule {:?}: must be a finite number", rule.name),
                ));
            }
        }
        if let Some(anomaly) = &self.anomaly {
            if !(anomaly.alpha > 0.0 && anomaly.alpha <= 1.0) {
                return Err(Error::invalid("monitor.anomaly.alpha", "must be in (0, 1]"));
            }
            if !(anomaly.deviations.is_finite() && anomaly.deviations > 0.0) {
                return Err(Error::invalid(
                    "monitor.anomaly.deviations",
                    "must be a positive number",
                ));
            }
            if anomaly
                .metrics
                .values()
                .any(|floor| !floor.is_finite() || *floor < 0.0)
            {
                return Err(Error::invalid(
                    "monitor.anomaly.metrics",
                    "floors must be finite and not negative",
                ));
            }
        }
        let delivery = &self.delivery;
        if delivery.queue == 0 || delivery.attempts == 0 {
            return Err(Error::invalid(
                "monitor.delivery",
                "queue and attempts must be at least 1",
            ));
        }
        nonzero("monitor.delivery.timeout", delivery.timeout)?;
        Ok(())
    }
}
