//! Detection: the state of every rule's series from pass to pass ([`Detector`]), which turns
//! readings into alerts that fire once and resolve once, and the EWMA baselines of anomaly
//! detection ([`Baseline`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{AlertRule, AnomalyDetection, Comparison, Severity};
use super::readings::{Metric, Reading};

/// Whether an alert is firing or has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition held for the rule's duration.
    Firing,
    /// The condition stayed clear for the rule's `clear_for`.
    Resolved,
}

/// An alert: what [`ALERT_FIRED`](crate::event_kinds::ALERT_FIRED) and
/// [`ALERT_RESOLVED`](crate::event_kinds::ALERT_RESOLVED) events carry and notifiers get.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule's name (`<metric>_anomaly` for anomaly detection).
    pub rule: String,
    /// What the rule watches.
    pub metric: Metric,
    /// The engine of the series, for per-engine metrics. `core_id` on the wire.
    #[serde(
        rename = "core_id",
        alias = "engine",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub engine: Option<String>,
    /// The priority of the series, for per-priority metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// How bad.
    pub severity: Severity,
    /// Firing or resolved.
    pub state: AlertState,
    /// The reading that fired it (firing), or the last reading (resolved; `None` when the
    /// series stopped reporting).
    pub value: Option<f64>,
    /// The threshold crossed (for an anomaly: the edge of the band it left).
    pub threshold: f64,
    /// Which side of the threshold is trouble.
    pub comparison: Comparison,
    /// For an anomaly: the baseline (EWMA mean) it was judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// How long the condition had to hold, in seconds.
    pub for_seconds: u64,
    /// Since when the condition held.
    pub since: DateTime<Utc>,
    /// When the alert fired.
    pub fired_at: DateTime<Utc>,
    /// When it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The node that raised it.
    pub node: String,
    /// One line for people: `cpu_percent above 90 for 300 s (95.5)`.
    pub summary: String,
}

/// Identifies one series of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    rule: String,
    engine: Option<String>,
    priority: Option<i32>,
}

enum Tracked {
    /// The condition holds since then, not long enough yet.
    Pending {
        metric: Metric,
        since: Instant,
        at: DateTime<Utc>,
    },
    /// The alert fired; `clear_since` is when the condition last stopped holding.
    Firing {
        alert: Box<Alert>,
        clear_since: Option<Instant>,
    },
}

/// What one series showed at a pass, for the state machine.
struct Observation<'a> {
    metric: &'a Metric,
    severity: Severity,
    comparison: Comparison,
    threshold: f64,
    baseline: Option<f64>,
    for_duration: Duration,
    clear_for: Duration,
    /// `None`: no reading (counts as clear).
    value: Option<f64>,
    holds: bool,
}

/// The EWMA baseline of one series.
#[derive(Debug, Clone, Default)]
pub(crate) struct Baseline {
    mean: f64,
    variance: f64,
    count: u32,
    away_since: Option<Instant>,
}

/// How a reading compares to its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Judged {
    pub(crate) anomalous: bool,
    pub(crate) mean: f64,
    /// The edge of the band on the side of the reading.
    pub(crate) edge: f64,
    pub(crate) comparison: Comparison,
}

impl Baseline {
    fn update(&mut self, value: f64, alpha: f64) {
        if self.count == 0 {
            self.mean = value;
            self.variance = 0.0;
        } else {
            let delta = value - self.mean;
            self.mean += alpha * delta;
            self.variance = (1.0 - alpha) * (self.variance + alpha * delta * delta);
        }
        self.count = self.count.saturating_add(1);
    }

    /// Judges `value` against the baseline, then moves the baseline (unless the value is
    /// anomalous).
    pub(crate) fn observe(
        &mut self,
        value: f64,
        now: Instant,
        config: &AnomalyDetection,
        floor: f64,
    ) -> Judged {
        let band = (config.deviations * self.variance.sqrt()).max(floor);
        let comparison = if value >= self.mean {
            Comparison::Above
        } else {
            Comparison::Below
        };
        let edge = match comparison {
            Comparison::Above => self.mean + band,
            Comparison::Below => self.mean - band,
        };
        let normal = Judged {
            anomalous: false,
            mean: self.mean,
            edge,
            comparison,
        };
        if self.count < config.warmup {
            self.update(value, config.alpha);
            return normal;
        }
        if (value - self.mean).abs() <= band {
            self.away_since = None;
            self.update(value, config.alpha);
            return normal;
        }
        let away_since = *self.away_since.get_or_insert(now);
        if now.saturating_duration_since(away_since) >= config.adapt_after {
            // Changed for good: learn the new level afresh.
            *self = Baseline::default();
            self.update(value, config.alpha);
            return normal;
        }
        Judged {
            anomalous: true,
            ..normal
        }
    }
}

/// Alert changes of one pass.
pub(crate) type Changes = Vec<Alert>;

/// When a pass runs, by tokio's clock and the wall clock, and on which node.
#[derive(Clone, Copy)]
pub(crate) struct Moment<'a> {
    pub(crate) now: Instant,
    pub(crate) at: DateTime<Utc>,
    pub(crate) node: &'a str,
}

/// The rules' and baselines' state from pass to pass.
#[derive(Default)]
pub(crate) struct Detector {
    tracked: HashMap<SeriesKey, Tracked>,
    baselines: HashMap<(Metric, Option<String>, Option<i32>), Baseline>,
}

fn summary(alert: &Alert) -> String {
    let side = match alert.comparison {
        Comparison::Above => "above",
        Comparison::Below => "below",
    };
    let series = match (&alert.engine, alert.priority) {
        (Some(engine), Some(priority)) => format!(" of {engine} at priority {priority}"),
        (Some(engine), None) => format!(" of {engine}"),
        _ => String::new(),
    };
    let value = alert
        .value
        .map_or_else(|| "no reading".to_owned(), |v| format!("{v}"));
    match alert.state {
        AlertState::Firing => format!(
            "{}{series} {side} {} for {} s ({value})",
            alert.metric, alert.threshold, alert.for_seconds
        ),
        AlertState::Resolved => format!(
            "{}{series} back within {} ({value})",
            alert.metric, alert.threshold
        ),
    }
}

impl Detector {
    /// Runs one pass over `readings`: the fixed `rules`, then (if on) anomaly detection.
    /// `evaluates` says which metrics this node raises alerts on (cluster-wide ones only on
    /// the leader); `unread` which metrics' sources failed this pass (the database, a
    /// sampler): a series of such a metric without a reading keeps its state, where any other
    /// series without a reading counts as clear. Returns the alerts that fired or resolved.
    pub(crate) fn pass(
        &mut self,
        rules: &[AlertRule],
        anomaly: Option<&AnomalyDetection>,
        readings: &[Reading],
        evaluates: impl Fn(&Metric) -> bool,
        unread: impl Fn(&Metric) -> bool,
        moment: Moment<'_>,
    ) -> Changes {
        let now = moment.now;
        // Series this node does not judge (cluster-wide ones while another node leads) are
        // the leader's: forget them rather than show them frozen.
        self.tracked.retain(|_, tracked| {
            let metric = match tracked {
                Tracked::Pending { metric, .. } => metric,
                Tracked::Firing { alert, .. } => &alert.metric,
            };
            evaluates(metric)
        });
        let mut changes = Vec::new();
        let mut seen: HashSet<SeriesKey> = HashSet::new();
        for rule in rules.iter().filter(|rule| evaluates(&rule.metric)) {
            for reading in readings.iter().filter(|r| {
                r.metric == rule.metric
                    && rule
                        .engine
                        .as_ref()
                        .is_none_or(|engine| r.engine.as_ref() == Some(engine))
            }) {
                let key = SeriesKey {
                    rule: rule.name.clone(),
                    engine: reading.engine.clone(),
                    priority: reading.priority,
                };
                let observation = Observation {
                    metric: &rule.metric,
                    severity: rule.severity,
                    comparison: rule.comparison,
                    threshold: rule.threshold,
                    baseline: None,
                    for_duration: rule.for_duration,
                    clear_for: rule.clear_for,
                    value: Some(reading.value),
                    holds: rule.holds(reading.value),
                };
                self.step(&key, observation, moment, &mut changes);
                seen.insert(key);
            }
        }
        if let Some(config) = anomaly {
            for reading in readings {
                let Some(&floor) = config.metrics.get(&reading.metric) else {
                    continue;
                };
                if !reading.value.is_finite() {
                    continue;
                }
                let series = (
                    reading.metric.clone(),
                    reading.engine.clone(),
                    reading.priority,
                );
                let judged = self.baselines.entry(series).or_default().observe(
                    reading.value,
                    now,
                    config,
                    floor,
                );
                if !evaluates(&reading.metric) {
                    continue;
                }
                let key = SeriesKey {
                    rule: format!("{}_anomaly", reading.metric),
                    engine: reading.engine.clone(),
                    priority: reading.priority,
                };
                let observation = Observation {
                    metric: &reading.metric,
                    severity: config.severity,
                    comparison: judged.comparison,
                    threshold: judged.edge,
                    baseline: Some(judged.mean),
                    for_duration: config.hold,
                    clear_for: config.clear_for,
                    value: Some(reading.value),
                    holds: judged.anomalous,
                };
                self.step(&key, observation, moment, &mut changes);
                seen.insert(key);
            }
        }
        // Series without a reading this pass count as clear, unless their source failed:
        // then nothing is known, and they keep their state.
        let missing: Vec<SeriesKey> = self
            .tracked
            .iter()
            .filter(|(key, tracked)| {
                let metric = match tracked {
                    Tracked::Pending { metric, .. } => metric,
                    Tracked::Firing { alert, .. } => &alert.metric,
                };
                !seen.contains(*key) && !unread(metric)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in missing {
            let Some(Tracked::Firing { alert, .. }) = self.tracked.get(&key) else {
                self.tracked.remove(&key);
                continue;
            };
            let (metric, rule) = (alert.metric.clone(), key.rule.clone());
            let clear_for = rules
                .iter()
                .find(|r| r.name == rule)
                .map(|r| r.clear_for)
                .or_else(|| anomaly.map(|a| a.clear_for))
                .unwrap_or_default();
            let observation = Observation {
                metric: &metric,
                severity: alert.severity,
                comparison: alert.comparison,
                threshold: alert.threshold,
                baseline: alert.baseline,
                for_duration: Duration::from_secs(alert.for_seconds),
                clear_for,
                value: None,
                holds: false,
            };
            self.step(&key, observation, moment, &mut changes);
        }
        changes
    }

    /// Moves one series' state machine.
    fn step(
        &mut self,
        key: &SeriesKey,
        observation: Observation<'_>,
        moment: Moment<'_>,
        changes: &mut Changes,
    ) {
        let Moment { now, at, .. } = moment;
        match self.tracked.get_mut(key) {
            None if observation.holds => {
                let pending = Tracked::Pending {
                    metric: observation.metric.clone(),
                    since: now,
                    at,
                };
                self.tracked.insert(key.clone(), pending);
                // A zero duration fires at once.
                self.step_pending(key, &observation, moment, changes);
            }
            None => {}
            Some(Tracked::Pending { .. }) if observation.holds => {
                self.step_pending(key, &observation, moment, changes);
            }
            Some(Tracked::Pending { .. }) => {
                self.tracked.remove(key);
            }
            Some(Tracked::Firing { alert, clear_since }) => {
                if observation.value.is_some() {
                    alert.value = observation.value;
                }
                if observation.holds {
                    *clear_since = None;
                    return;
                }
                let clear_since = *clear_since.get_or_insert(now);
                if now.saturating_duration_since(clear_since) >= observation.clear_for {
                    let Some(Tracked::Firing { alert, .. }) = self.tracked.remove(key) else {
                        return;
                    };
                    let mut alert = *alert;
                    alert.state = AlertState::Resolved;
                    alert.value = observation.value;
                    alert.resolved_at = Some(at);
                    alert.summary = summary(&alert);
                    changes.push(alert);
                }
            }
        }
    }

    fn step_pending(
        &mut self,
        key: &SeriesKey,
        observation: &Observation<'_>,
        moment: Moment<'_>,
        changes: &mut Changes,
    ) {
        let Moment { now, at, node } = moment;
        let Some(Tracked::Pending {
            since,
            at: since_at,
            ..
        }) = self.tracked.get(key)
        else {
            return;
        };
        if now.saturating_duration_since(*since) < observation.for_duration {
            return;
        }
        let mut alert = Alert {
            rule: key.rule.clone(),
            metric: observation.metric.clone(),
            engine: key.engine.clone(),
            priority: key.priority,
            severity: observation.severity,
            state: AlertState::Firing,
            value: observation.value,
            threshold: observation.threshold,
            comparison: observation.comparison,
            baseline: observation.baseline,
            for_seconds: observation.for_duration.as_secs(),
            since: *since_at,
            fired_at: at,
            resolved_at: None,
            node: node.to_owned(),
            summary: String::new(),
        };
        alert.summary = summary(&alert);
        changes.push(alert.clone());
        self.tracked.insert(
            key.clone(),
            Tracked::Firing {
                alert: Box::new(alert),
                clear_since: None,
            },
        );
    }

    /// Takes over `alerts`, firing on another node (the leader before this one), as firing
    /// here: they resolve once their condition has stayed clear, and do not fire again. A
    /// series tracked here already keeps its state.
    pub(crate) fn adopt(&mut self, alerts: Vec<Alert>) {
        for alert in alerts {
            if alert.state != AlertState::Firing {
                continue;
            }
            let key = SeriesKey {
                rule: alert.rule.clone(),
                engine: alert.engine.clone(),
                priority: alert.priority,
            };
            self.tracked.entry(key).or_insert_with(|| Tracked::Firing {
                alert: Box::new(alert),
                clear_since: None,
            });
        }
    }

    /// The alerts firing now.
    pub(crate) fn firing(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .tracked
            .values()
            .filter_map(|tracked| match tracked {
                Tracked::Firing { alert, .. } => Some((**alert).clone()),
                Tracked::Pending { .. } => None,
            })
            .collect();
        alerts.sort_by(|a, b| {
            (&a.rule, &a.engine, a.priority).cmp(&(&b.rule, &b.engine, b.priority))
        });
        alerts
    }
}
