//! One monitor pass: the orchestrator's own readings, the samplers', detection, the healing
//! actions that need readings (`heal.rs`), and the alerts told to the event log and the
//! notifiers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::Monitor;
use super::alerts::{Alert, AlertState, Detector, Moment};
use super::config::MonitorConfig;
use super::heal::HealState;
use super::readings::{Metric, Reading, Readings};
use super::stats::StatsSnapshot;
use crate::backend::{LockRequest, LockTurn};
use crate::clock;
use crate::event_kinds;
use crate::model::{EventKind, LockInfo, NewEvent};
use crate::orchestrator::Inner;

/// Where the leader keeps the cluster-wide alerts firing now (JSON), for the next leader.
const CLUSTER_ALERTS_KEY: &str = "orch.monitor.cluster-alerts";

/// The lock whose holder evaluates rules on cluster-wide readings.
const LEADER_LOCK: &str = "orch.monitor.leader";

/// Events that could not be appended yet (the database was unreachable), kept for the next
/// pass, at most this many (the oldest are dropped).
const PENDING_EVENTS: usize = 1000;

/// Values of a counter over a sliding window: one kept per `step`, so a window costs a dozen
/// entries however often passes run.
struct Window<T> {
    step: Duration,
    entries: VecDeque<(Instant, T)>,
}

impl<T: Clone> Window<T> {
    fn new(window: Duration) -> Self {
        Window {
            step: window / 12,
            entries: VecDeque::new(),
        }
    }

    /// Keeps `current` (if a step has passed) and returns the value at the window's start
    /// (the oldest kept while the window is not yet full).
    fn slide(&mut self, now: Instant, window: Duration, current: &T) -> T {
        if self
            .entries
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= self.step)
        {
            self.entries.push_back((now, current.clone()));
        }
        if let Some(start) = now.checked_sub(window) {
            while self.entries.len() >= 2 && self.entries[1].0 <= start {
                self.entries.pop_front();
            }
        }
        self.entries
            .front()
            .map_or_else(|| current.clone(), |(_, value)| value.clone())
    }
}

/// What passes carry from one to the next.
pub(super) struct PassState {
    detector: Detector,
    engines: HashMap<Arc<str>, Window<StatsSnapshot>>,
    lock_timeouts: Window<u64>,
    rescued: BTreeMap<String, u64>,
    leader: Option<LockInfo>,
    pub(super) heal: HealState,
    pending_events: VecDeque<NewEvent>,
    /// The metrics each sampler gave in its last successful pass.
    sampler_metrics: Vec<HashSet<Metric>>,
    /// As the leader: which cluster-wide alerts were last stored for the next leader (each
    /// by rule, series and firing time: a new reading of a firing alert is no change).
    shared_alerts: Option<Vec<AlertIdentity>>,
    /// When the leader grant ends at the latest, by this node's monotonic clock.
    leader_until: Option<Instant>,
}

/// The metrics read from the database: unknown in a pass whose probe failed.
const DATABASE_METRICS: &[Metric] = &[
    Metric::DatabaseLatency,
    Metric::QueueDepth,
    Metric::QueuedByPriority,
    Metric::LockWaiters,
    Metric::LockWaitSeconds,
    Metric::LocksHeld,
];

impl PassState {
    pub(super) fn new(config: &MonitorConfig) -> Self {
        PassState {
            detector: Detector::default(),
            engines: HashMap::new(),
            lock_timeouts: Window::new(config.rate_window),
            rescued: BTreeMap::new(),
            leader: None,
            heal: HealState::default(),
            pending_events: VecDeque::new(),
            sampler_metrics: Vec::new(),
            shared_alerts: None,
            leader_until: None,
        }
    }

    /// Queues an event to append at the end of the pass (and later, while that fails).
    pub(super) fn record(&mut self, event: NewEvent) {
        if self.pending_events.len() == PENDING_EVENTS {
            self.pending_events.pop_front();
        }
        self.pending_events.push_back(event);
    }
}

/// The database probe's outcome.
pub(super) struct Probe {
    /// Why it failed, if it did.
    pub(super) failure: Option<String>,
    /// Queued tasks per engine, when it succeeded.
    pub(super) queued: BTreeMap<String, u64>,
    /// The database's metrics it could not read.
    pub(super) unread: Vec<Metric>,
    /// It failed by getting no answer in time (a slow database, not a refusal).
    pub(super) timed_out: bool,
}

impl Monitor {
    /// One pass: sample, detect, repair, tell. Returns the readings.
    pub(super) async fn pass(&self, inner: &Arc<Inner>) -> Readings {
        let shared = &self.shared;
        let config = &shared.config;
        let mut state = shared.state.lock().await;
        let now = Instant::now();
        let at = clock::now();
        let mut values = Vec::new();
        let probe = backend_readings(inner, config, &mut values).await;
        self.engine_readings(inner, &mut state, now, &mut values);
        let rescued = inner.rescued_so_far();
        let mut rescued_now = BTreeMap::new();
        for (engine, count) in &rescued {
            let new = count - state.rescued.get(engine).copied().unwrap_or(0);
            if new > 0 {
                rescued_now.insert(engine.clone(), new);
            }
        }
        state.rescued = rescued;
        values.push(Reading::new(
            Metric::RescuedTasks,
            rescued_now.values().sum::<u64>() as f64,
        ));
        // The metrics whose source failed this pass.
        let mut unread: HashSet<Metric> = probe.unread.iter().cloned().collect();
        state
            .sampler_metrics
            .resize_with(shared.samplers.len(), HashSet::new);
        for (index, sampler) in shared.samplers.iter().enumerate() {
            let sampled = tokio::time::timeout(
                config.sampler_timeout,
                AssertUnwindSafe(sampler.sample()).catch_unwind(),
            )
            .await;
            if !matches!(sampled, Ok(Ok(Ok(_)))) {
                // What it gave last time is unknown this time.
                unread.extend(state.sampler_metrics[index].iter().cloned());
            }
            match sampled {
                Ok(Ok(Ok(readings))) => {
                    state.sampler_metrics[index] =
                        readings.iter().map(|r| r.metric.clone()).collect();
                    values.extend(readings)
                }
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%error, "a sampler failed; its readings are missing from this pass")
                }
                Ok(Err(_)) => {
                    tracing::error!("a sampler panicked; its readings are missing from this pass")
                }
                Err(_) => {
                    tracing::warn!(timeout = ?config.sampler_timeout, "a sampler took too long; its readings are missing from this pass")
                }
            }
        }

        let leader = lead(inner, config, &mut state).await;
        shared.leader.store(leader, Ordering::Release);
        let changes = state.detector.pass(
            &config.rules,
            config.anomaly.as_ref(),
            &values,
            |metric| leader || !metric.is_cluster_wide(),
            |metric| unread.contains(metric),
            Moment {
                now,
                at,
                node: inner.node_id(),
            },
        );
        if leader {
            share_cluster_alerts(inner, &mut state).await;
        }
        for alert in &changes {
            match alert.state {
                AlertState::Firing => {
                    tracing::warn!(rule = %alert.rule, summary = %alert.summary, "alert fired")
                }
                AlertState::Resolved => {
                    tracing::info!(rule = %alert.rule, summary = %alert.summary, "alert resolved")
                }
            }
            let kind = match alert.state {
                AlertState::Firing => event_kinds::ALERT_FIRED,
                AlertState::Resolved => event_kinds::ALERT_RESOLVED,
            };
            state.record(NewEvent {
                kind: EventKind::Custom(kind.to_owned()),
                task_id: None,
                engine: alert.engine.clone(),
                attempt: None,
                data: serde_json::to_value(alert).unwrap_or_default(),
            });
            let alert = Arc::new(alert.clone());
            for outbox in &shared.outboxes {
                outbox.offer(alert.clone());
            }
        }

        let readings = Readings {
            at: Some(at),
            values,
        };
        self.heal(inner, &mut state, &readings, &probe, rescued_now, now)
            .await;
        flush_events(inner, &mut state).await;
        *shared.firing.lock() = state.detector.firing();
        *shared.latest.lock() = readings.clone();
        readings
    }

    /// Readings of this node's engines: limits, slots in use, and the rate window's calls,
    /// error rate and duration percentiles.
    fn engine_readings(
        &self,
        inner: &Inner,
        state: &mut PassState,
        now: Instant,
        values: &mut Vec<Reading>,
    ) {
        let window = self.shared.config.rate_window;
        let views = inner.engine_views();
        state
            .engines
            .retain(|name, _| views.iter().any(|view| &view.name == name));
        for view in views {
            let engine = view.name.to_string();
            values.push(Reading::of_engine(
                Metric::ConcurrencyLimit,
                &*engine,
                view.limit as f64,
            ));
            values.push(Reading::of_engine(
                Metric::InFlight,
                &*engine,
                view.in_use as f64,
            ));
            let start = state
                .engines
                .entry(view.name.clone())
                .or_insert_with(|| Window::new(window))
                .slide(now, window, &view.stats);
            let recent = view.stats.since(&start);
            values.push(Reading::of_engine(
                Metric::Attempts,
                &*engine,
                recent.finished as f64,
            ));
            if let Some(rate) = recent.error_rate() {
                values.push(Reading::of_engine(Metric::ErrorRate, &*engine, rate));
            }
            for (metric, q) in [
                (Metric::TaskDurationP50, 0.5),
                (Metric::TaskDurationP95, 0.95),
                (Metric::TaskDurationP99, 0.99),
            ] {
                if let Some(seconds) = recent.percentile(q) {
                    values.push(Reading::of_engine(metric, &*engine, seconds));
                }
            }
        }
        let timeouts = inner.lock_timeouts_so_far();
        let start = state.lock_timeouts.slide(now, window, &timeouts);
        values.push(Reading::new(
            Metric::LockTimeouts,
            timeouts.saturating_sub(start) as f64,
        ));
    }
}

/// The backend's readings: the probe (queue depth per engine and priority, timed: one
/// statement over the queued tasks' index), then lock waits and held locks.
async fn backend_readings(
    inner: &Inner,
    config: &MonitorConfig,
    values: &mut Vec<Reading>,
) -> Probe {
    let backend = inner.backend();
    let started = Instant::now();
    let depths = tokio::time::timeout(config.probe_timeout, backend.queue_depth()).await;
    let took = started.elapsed();
    let depths = match depths {
        Ok(Ok(depths)) => depths,
        Ok(Err(error)) => {
            values.push(Reading::new(Metric::DatabaseUp, 0.0));
            return Probe {
                failure: Some(format!("the database probe failed: {error}")),
                queued: BTreeMap::new(),
                unread: DATABASE_METRICS.to_vec(),
                timed_out: false,
            };
        }
        Err(_) => {
            values.push(Reading::new(Metric::DatabaseUp, 0.0));
            return Probe {
                failure: Some(format!(
                    "the database probe got no answer within {:?}",
                    config.probe_timeout
                )),
                queued: BTreeMap::new(),
                unread: DATABASE_METRICS.to_vec(),
                timed_out: true,
            };
        }
    };
    values.push(Reading::new(Metric::DatabaseUp, 1.0));
    values.push(Reading::new(Metric::DatabaseLatency, took.as_secs_f64()));
    let mut queued: BTreeMap<String, u64> = inner
        .engine_views()
        .into_iter()
        .map(|view| (view.name.to_string(), 0))
        .collect();
    for depth in depths {
        *queued.entry(depth.engine.clone()).or_default() += depth.queued;
        values.push(
            Reading::of_engine(Metric::QueuedByPriority, depth.engine, depth.queued as f64)
                .with_priority(depth.priority),
        );
    }
    for (engine, count) in &queued {
        values.push(Reading::of_engine(
            Metric::QueueDepth,
            engine,
            *count as f64,
        ));
    }
    // The rest is best effort: the probe already says whether the database answers.
    let mut unread = Vec::new();
    if let Ok(Ok(waiters)) =
        tokio::time::timeout(config.probe_timeout, backend.list_lock_waiters()).await
    {
        let now = clock::now();
        let longest = waiters
            .iter()
            .map(|waiter| (now - waiter.enqueued_at).to_std().unwrap_or_default())
            .max()
            .unwrap_or_default();
        values.push(Reading::new(Metric::LockWaiters, waiters.len() as f64));
        values.push(Reading::new(Metric::LockWaitSeconds, longest.as_secs_f64()));
    } else {
        unread.extend([Metric::LockWaiters, Metric::LockWaitSeconds]);
    }
    if let Ok(Ok(locks)) = tokio::time::timeout(config.probe_timeout, backend.list_locks()).await {
        values.push(Reading::new(Metric::LocksHeld, locks.len() as f64));
    } else {
        unread.push(Metric::LocksHeld);
    }
    Probe {
        failure: None,
        queued,
        unread,
        timed_out: false,
    }
}

/// Takes or keeps the monitor leadership; returns whether this node holds it.
async fn lead(inner: &Inner, config: &MonitorConfig, state: &mut PassState) -> bool {
    let backend = inner.backend();
    let ttl = (config.interval * 3).max(Duration::from_secs(5));
    // The grant lasts `ttl` from a moment after the request left: measured on this node's
    // monotonic clock from the request, less a margin, it ends here before it does there.
    let until = Instant::now() + ttl.mul_f64(0.8);
    if let Some(held) = &state.leader {
        match backend
            .extend_lock(LEADER_LOCK, &held.owner, held.fencing_token.0, ttl)
            .await
        {
            Ok(Some(info)) => {
                state.leader = Some(info);
                state.leader_until = Some(until);
                return true;
            }
            Ok(None) => state.leader = None,
            // Unreachable: the grant holds until it expires (no other node can take the
            // lock before then); try again next pass.
            Err(_) => return state.leader_until.is_some_and(|end| Instant::now() < end),
        }
    }
    let request = LockRequest {
        resource: LEADER_LOCK.to_owned(),
        owner: inner.node_id().to_owned(),
        ttl,
        rank: i64::MAX,
        waiter: None,
    };
    match backend.acquire_lock_in_turn(&request).await {
        Ok(LockTurn::Acquired(info)) => {
            tracing::info!("this node now evaluates the cluster-wide alert rules");
            state.leader = Some(info);
            state.leader_until = Some(until);
            // The alerts the leader before left firing go on from here: resolved once when
            // their condition clears, not fired a second time.
            match backend.retrieve(CLUSTER_ALERTS_KEY).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<Vec<Alert>>(&bytes) {
                    Ok(alerts) => state.detector.adopt(alerts),
                    Err(error) => {
                        tracing::warn!(%error, "the cluster-wide alerts the leader before left are unreadable; ignored")
                    }
                },
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading the cluster-wide alerts the leader before left failed")
                }
            }
            state.shared_alerts = None;
            true
        }
        _ => false,
    }
}

/// Which alert a firing alert is: its rule, series and when it fired.
#[derive(Debug, Clone, PartialEq)]
struct AlertIdentity {
    rule: String,
    engine: Option<String>,
    priority: Option<i32>,
    fired_at: chrono::DateTime<chrono::Utc>,
}

impl AlertIdentity {
    fn of(alert: &Alert) -> Self {
        AlertIdentity {
            rule: alert.rule.clone(),
            engine: alert.engine.clone(),
            priority: alert.priority,
            fired_at: alert.fired_at,
        }
    }
}

/// As the leader: stores the cluster-wide alerts firing now where the next leader finds them,
/// when they changed since it last did.
async fn share_cluster_alerts(inner: &Inner, state: &mut PassState) {
    let firing: Vec<Alert> = state
        .detector
        .firing()
        .into_iter()
        .filter(|alert| alert.metric.is_cluster_wide())
        .collect();
    let identities: Vec<AlertIdentity> = firing.iter().map(AlertIdentity::of).collect();
    if state.shared_alerts.as_ref() == Some(&identities) {
        return;
    }
    let bytes = match serde_json::to_vec(&firing) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(%error, "the cluster-wide alerts could not be encoded");
            return;
        }
    };
    match inner.backend().store(CLUSTER_ALERTS_KEY, bytes).await {
        Ok(()) => state.shared_alerts = Some(identities),
        Err(error) => {
            tracing::debug!(%error, "storing the cluster-wide alerts failed; retrying next pass")
        }
    }
}

/// Appends the events of the pass (and those an earlier pass could not).
async fn flush_events(inner: &Inner, state: &mut PassState) {
    while let Some(event) = state.pending_events.front() {
        match inner.event_log().append(event.clone()).await {
            Ok(_) => {
                state.pending_events.pop_front();
            }
            Err(error) => {
                tracing::debug!(%error, pending = state.pending_events.len(), "appending the monitor's events failed; retrying next pass");
                break;
            }
        }
    }
}
