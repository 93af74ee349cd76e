//! [`Healing`]: which repairs the orchestrator makes by itself, each with its settings.
//!
//! The master switch [`Healing::enabled`] is off by default (an embedding application opts
//! in); with it on, each action runs when its setting is `Some` (or `true`). Every action is
//! recorded in the event log with its reason, and every one can be undone by an operator:
//! [`Orchestrator::release_engine`](crate::Orchestrator::release_engine) ends a quarantine,
//! [`Orchestrator::rollback_engine`](crate::Orchestrator::rollback_engine) swaps versions back,
//! [`Orchestrator::set_engine_concurrency`](crate::Orchestrator::set_engine_concurrency) sets
//! a limit the scaler then leaves alone, [`Orchestrator::mark_ready`](crate::Orchestrator::mark_ready)
//! puts a node back in rotation, and every action can be switched off here.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};

/// Restarting an engine's claim loop that panicked, with a delay that doubles from
/// `initial` up to `max` while it keeps panicking.
///
/// ```
/// use std::time::Duration;
/// use orch_core::RestartBackoff;
///
/// let restart = RestartBackoff::default().with_initial(Duration::from_millis(100));
/// assert_eq!(restart.max, Duration::from_secs(60));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    /// Delay before the first restart. Default 1 s.
    pub initial: Duration,
    /// Longest delay. Default 60 s.
    pub max: Duration,
    /// A loop that ran this long before panicking is restarted after `initial` again.
    /// Default 5 minutes.
    pub reset_after: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(300),
        }
    }
}

impl RestartBackoff {
    /// Sets the first delay.
    pub fn with_initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets the longest delay.
    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets how long a loop must run for its delay to start over.
    pub fn with_reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }
}

/// The circuit breaker that quarantines an engine failing call after call in this process.
///
/// After `failures` consecutive failed engine calls (a retryable error, a panic or a timeout;
/// a fatal error or refused input is the task's fault, not the engine's) the engine claims
/// nothing for `cool_down`: its queued tasks wait, none is failed. Then one attempt runs as a
/// probe; its success lets the engine back, its failure quarantines it again for twice as
/// long, up to `max_cool_down`. Attempts already running when the breaker opens finish as
/// usual, and the probe is an ordinary attempt of its task.
///
/// ```
/// use std::time::Duration;
/// use orch_core::CircuitBreaker;
///
/// let breaker = CircuitBreaker::default().with_failures(3).with_cool_down(Duration::from_secs(10));
/// assert_eq!(breaker.max_cool_down, Duration::from_secs(600));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker. Default 5.
    pub failures: u32,
    /// Quarantine before the first probe. Default 30 s.
    pub cool_down: Duration,
    /// Longest quarantine between probes. Default 10 minutes.
    pub max_cool_down: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failures: 5,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(600),
        }
    }
}

impl CircuitBreaker {
    /// Sets how many consecutive failures open the breaker.
    pub fn with_failures(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// Sets the first cool-down.
    pub fn with_cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// Sets the longest cool-down.
    pub fn with_max_cool_down(mut self, max_cool_down: Duration) -> Self {
        self.max_cool_down = max_cool_down;
        self
    }
}

/// Scaling an engine's concurrency in this process to its queue, within bounds. Needs the
/// monitor (it decides at each monitor pass).
///
/// The scaler judges each engine once per `hold`, by what the monitor's passes saw since the
/// last time. Up: the engine's queue grew (it holds more than at the last judgement), every
/// slot was taken at some pass, its error rate over the monitor's rate window stays under
/// `max_error_rate` and it is neither paused nor quarantined: the limit rises by a quarter
/// (at least 1) up to the engine's `max`. Down: nothing is queued and no pass saw every slot
/// taken, or its error rate reached `max_error_rate`: it falls by a quarter (at least 1) down
/// to `min`. So at most one change per engine per `hold`. An engine whose limit an operator
/// set is left alone.
///
/// ```
/// use orch_core::Autoscale;
///
/// let scale = Autoscale::new(2, 32).with_engine("thumbnails", 1, 8);
/// assert_eq!(scale.bounds("thumbnails"), (1, 8));
/// assert_eq!(scale.bounds("mail"), (2, 32));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    /// Lowest limit for engines without bounds of their own.
    pub min: usize,
    /// Highest limit for engines without bounds of their own.
    pub max: usize,
    /// Bounds of named engines, `(min, max)`.
    pub engines: BTreeMap<String, (usize, usize)>,
    /// Error rate at or above which an engine does not scale up (and scales down). Default
    /// 0.05.
    pub max_error_rate: f64,
    /// Shortest time between two changes of one engine. Default 30 s.
    pub hold: Duration,
}

impl Autoscale {
    /// Scaling between `min` and `max` for every engine.
    pub fn new(min: usize, max: usize) -> Self {
        Autoscale {
            min,
            max,
            engines: BTreeMap::new(),
            max_error_rate: 0.05,
            hold: Duration::from_secs(30),
        }
    }

    /// Sets bounds of one engine.
    pub fn with_engine(mut self, engine: impl Into<String>, min: usize, max: usize) -> Self {
        self.engines.insert(engine.into(), (min, max));
        self
    }

    /// Sets the error rate that stops scaling up.
    pub fn with_max_error_rate(mut self, rate: f64) -> Self {
        self.max_error_rate = rate;
        self
    }

    /// Sets the shortest time between two changes of one engine.
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// The bounds `(min, max)` of `engine`.
    pub fn bounds(&self, engine: &str) -> (usize, usize) {
        self.engines
            .get(engine)
            .copied()
            .unwrap_or((self.min, self.max))
    }

    fn validate(&self) -> Result<()> {
        let check = |(min, max): (usize, usize)| {
            if min == 0 || max < min {
                return Err(Error::invalid(
                    "healing.scale",
                    format!("bounds {min}..={max}: need 1 <= min <= max"),
                ));
            }
            Ok(())
        };
        check((self.min, self.max))?;
        for bounds in self.engines.values() {
            check(*bounds)?;
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(Error::invalid(
                "healing.scale.max_error_rate",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// Taking this node out of rotation while its own health fails. Needs the monitor (its
/// database probe and, for the disk, a machine sampler).
///
/// After `failures` consecutive database probes refused with an error, or a disk reading at or
/// above `disk_full_percent`, the node reports not ready and claims nothing (running attempts
/// finish); after `recoveries` consecutive good passes it is ready and claims again. Other
/// nodes sharing the database carry on meanwhile. A probe that got no answer in time does not
/// count: a slow database is slow for every node on it, and taking them all out of rotation
/// would stop the work rather than move it (the monitor's latency alert still fires).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeHealthCheck {
    /// Consecutive failed probes that make the node not ready. Default 3.
    pub failures: u32,
    /// Consecutive good passes that make it ready again. Default 2.
    pub recoveries: u32,
    /// Disk use (percent) that makes the node not ready; `None` ignores the disk. Default 98.
    pub disk_full_percent: Option<f64>,
}

impl Default for NodeHealthCheck {
    fn default() -> Self {
        NodeHealthCheck {
            failures: 3,
            recoveries: 2,
            disk_full_percent: Some(98.0),
        }
    }
}

impl NodeHealthCheck {
    /// Sets how many failed probes make the node not ready.
    pub fn with_failures(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// Sets how many good passes make it ready again.
    pub fn with_recoveries(mut self, recoveries: u32) -> Self {
        self.recoveries = recoveries;
        self
    }

    /// Sets the disk use that makes the node not ready (`None` ignores the disk).
    pub fn with_disk_full_percent(mut self, percent: Option<f64>) -> Self {
        self.disk_full_percent = percent;
        self
    }
}

/// Which repairs the orchestrator makes by itself. Off unless [`Healing::enabled`]; with it
/// on, the defaults restart claim loops, quarantine failing engines (or roll a failing
/// upgrade back), watch the node's health and report rescues; scaling needs bounds
/// ([`Healing::with_scale`]).
///
/// ```
/// use orch_core::{Autoscale, Healing, OrchestratorConfig};
///
/// let config = OrchestratorConfig::default()
///     .with_healing(Healing::default().with_enabled(true).with_scale(Some(Autoscale::new(1, 16))));
/// assert!(config.healing.breaker().is_some());
/// assert!(config.validate().is_ok());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Healing {
    /// The master switch. Default off.
    pub enabled: bool,
    /// Restart a claim loop that panicked. Default on.
    pub restart: Option<RestartBackoff>,
    /// Quarantine an engine that keeps failing. Default on.
    pub isolate: Option<CircuitBreaker>,
    /// Scale engines' concurrency to their queues. Default off (it needs bounds).
    pub scale: Option<Autoscale>,
    /// Take the node out of rotation while its health fails. Default on.
    pub node_health: Option<NodeHealthCheck>,
    /// Record a summary event of the expired leases this node rescued. Default on.
    pub report_rescues: bool,
    /// Roll an upgraded engine back to its previous version when the new one keeps failing
    /// (its circuit breaker opens: needs `isolate`). Default on.
    pub rollback: bool,
}

impl Default for Healing {
    fn default() -> Self {
        Healing {
            enabled: false,
            restart: Some(RestartBackoff::default()),
            isolate: Some(CircuitBreaker::default()),
            scale: None,
            node_health: Some(NodeHealthCheck::default()),
            report_rescues: true,
            rollback: true,
        }
    }
}

impl Healing {
    /// Sets the master switch.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets the restart of claim loops (`None`: off).
    pub fn with_restart(mut self, restart: Option<RestartBackoff>) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the circuit breaker (`None`: off).
    pub fn with_isolate(mut self, isolate: Option<CircuitBreaker>) -> Self {
        self.isolate = isolate;
        self
    }

    /// Sets scaling (`None`: off).
    pub fn with_scale(mut self, scale: Option<Autoscale>) -> Self {
        self.scale = scale;
        self
    }

    /// Sets the node health check (`None`: off).
    pub fn with_node_health(mut self, check: Option<NodeHealthCheck>) -> Self {
        self.node_health = check;
        self
    }

    /// Sets whether rescues are reported.
    pub fn with_report_rescues(mut self, report: bool) -> Self {
        self.report_rescues = report;
        self
    }

    /// The restart policy in force (`None` when off or the master switch is off).
    pub fn restart(&self) -> Option<&RestartBackoff> {
        self.restart.as_ref().filter(|_| self.enabled)
    }

    /// The circuit breaker in force.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.isolate.as_ref().filter(|_| self.enabled)
    }

    /// The scaling in force.
    pub fn scale(&self) -> Option<&Autoscale> {
        self.scale.as_ref().filter(|_| self.enabled)
    }

    /// The node health check in force.
    pub fn node_health(&self) -> Option<&NodeHealthCheck> {
        self.node_health.as_ref().filter(|_| self.enabled)
    }

    /// Whether rescues are reported.
    pub fn reports_rescues(&self) -> bool {
        self.enabled && self.report_rescues
    }

    /// Sets whether a failing upgrade is rolled back.
    pub fn with_rollback(mut self, rollback: bool) -> Self {
        self.rollback = rollback;
        self
    }

    /// Whether a failing upgrade is rolled back.
    pub fn rolls_back(&self) -> bool {
        self.enabled && self.rollback && self.isolate.is_some()
    }

    pub(super) fn validate(&self) -> Result<()> {
        if let Some(restart) = &self.restart
            && (restart.initial.is_zero() || restart.max < restart.initial)
        {
            return Err(Error::invalid(
                "healing.restart",
                "needs 0 < initial <= max",
            ));
        }
        if let Some(breaker) = &self.isolate {
            if breaker.failures == 0 {
                return Err(Error::invalid(
                    "healing.isolate.failures",
                    "must be at least 1",
                ));
            }
            if breaker.cool_down.is_zero() {
                return Err(Error::invalid(
                    "healing.isolate.cool_down",
                    "must be greater than zero",
                ));
            }
        }
        if let Some(scale) = &self.scale {
            scale.validate()?;
        }
        if let Some(check) = &self.node_health
            && (check.failures == 0 || check.recoveries == 0)
        {
            return Err(Error::invalid(
                "healing.node_health",
                "failures and recoveries must be at least 1",
            ));
        }
        Ok(())
    }
}
