//! The healing actions that need readings, run at the end of each pass when
//! [`Healing`](crate::Healing) allows them: the node's readiness, engines' limits scaled to
//! their queues, and the report of rescued tasks; and the record of plugin processes
//! restarted (by orch-plugins' supervisor). Claim loop restarts, the circuit breaker and
//! rollbacks act on the dispatcher's own path, without waiting for a pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;
use tokio::time::Instant;

use super::Monitor;
use super::pass::{PassState, Probe};
use super::readings::{Metric, Readings};
use crate::event_kinds;
use crate::orchestrator::{Inner, MONITOR, control_event};

/// What the healing actions carry from pass to pass.
#[derive(Default)]
pub(super) struct HealState {
    /// Consecutive passes with the node's health failing, and passing.
    failing: u32,
    passing: u32,
    /// Per engine: what the scaler saw since it last judged it.
    scaling: HashMap<Arc<str>, ScaleWatch>,
    /// Per plugin: the restarts of its process already recorded.
    plugin_restarts: HashMap<String, u64>,
}

/// What the scaler saw of one engine since it last judged it (once per
/// [`Autoscale::hold`](crate::Autoscale::hold)).
struct ScaleWatch {
    since: Instant,
    /// The most slots in use at any pass (a pass that falls between one attempt's end and
    /// the next one's start sees a slot free).
    busiest: usize,
    /// The queue when it was last judged.
    queued_then: u64,
}

impl Monitor {
    pub(super) async fn heal(
        &self,
        inner: &Arc<Inner>,
        state: &mut PassState,
        readings: &Readings,
        probe: &Probe,
        rescued: BTreeMap<String, u64>,
        now: Instant,
    ) {
        let healing = inner.healing();
        if let Some(check) = healing.node_health() {
            let disk = readings.get(&Metric::DiskPercent, None);
            // A probe that got no answer in time says the database is slow, which every node
            // on it sees alike: leaving rotation would stop the whole cluster's work, not move
            // it. Such a pass says nothing either way (neither a failure nor a recovery); the
            // alert on the database still fires, and readiness checks the database itself.
            let failure = probe.failure.as_ref().filter(|_| !probe.timed_out);
            let unknown = failure.is_none() && probe.timed_out;
            let problem = match (failure, check.disk_full_percent) {
                (Some(failure), _) => Some(failure.clone()),
                (None, Some(full)) if disk.is_some_and(|disk| disk >= full) => Some(format!(
                    "the disk is {:.1}% full (at most {full}% allowed)",
                    disk.unwrap_or_default()
                )),
                _ => None,
            };
            let heal = &mut state.heal;
            match problem {
                None if unknown => {}
                Some(reason) => {
                    heal.failing = heal.failing.saturating_add(1);
                    heal.passing = 0;
                    if heal.failing >= check.failures && inner.set_not_ready(&reason) {
                        let event = control_event(
                            event_kinds::NODE_NOT_READY,
                            None,
                            MONITOR,
                            &reason,
                            inner.node_id(),
                            json!({"since": crate::clock::now(), "failures": heal.failing})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        );
                        state.record(event);
                    }
                }
                None => {
                    heal.passing = heal.passing.saturating_add(1);
                    heal.failing = 0;
                    if !inner.is_ready() && heal.passing >= check.recoveries && inner.set_ready() {
                        let event = control_event(
                            event_kinds::NODE_READY,
                            None,
                            MONITOR,
                            "the node's health checks pass again",
                            inner.node_id(),
                            serde_json::Map::new(),
                        );
                        state.record(event);
                    }
                }
            }
        }

        if let Some(scale) = healing.scale()
            && probe.failure.is_none()
        {
            for view in inner.engine_views() {
                if view.pinned || !view.claims {
                    state.heal.scaling.remove(&view.name);
                    continue;
                }
                let engine = &*view.name;
                let watch = state
                    .heal
                    .scaling
                    .entry(view.name.clone())
                    .or_insert(ScaleWatch {
                        since: now,
                        busiest: 0,
                        queued_then: 0,
                    });
                watch.busiest = watch.busiest.max(view.in_use);
                if now.saturating_duration_since(watch.since) < scale.hold {
                    continue;
                }
                let (busiest, queued_then) = (watch.busiest, watch.queued_then);
                let queued = probe.queued.get(engine).copied().unwrap_or(0);
                *watch = ScaleWatch {
                    since: now,
                    busiest: 0,
                    queued_then: queued,
                };
                let (min, max) = scale.bounds(engine);
                let error_rate = readings
                    .get(&Metric::ErrorRate, Some(engine))
                    .unwrap_or(0.0);
                let limit = view.limit;
                let step = (limit / 4).max(1);
                let change = if queued > queued_then
                    && busiest >= limit
                    && error_rate < scale.max_error_rate
                    && limit < max
                {
                    Some((
                        (limit + step).min(max),
                        format!(
                            "{queued} tasks queued (up from {queued_then}) with all {limit} slots busy and an error rate of {:.1}%",
                            error_rate * 100.0
                        ),
                    ))
                } else if limit > min && error_rate >= scale.max_error_rate {
                    Some((
                        limit.saturating_sub(step).max(min),
                        format!(
                            "an error rate of {:.1}% (at most {:.1}% to scale)",
                            error_rate * 100.0,
                            scale.max_error_rate * 100.0
                        ),
                    ))
                } else if limit > min && queued == 0 && busiest < limit {
                    Some((
                        limit.saturating_sub(step).max(min),
                        format!(
                            "nothing queued and at most {busiest} of {limit} slots busy for {:?}",
                            scale.hold
                        ),
                    ))
                } else {
                    None
                };
                if let Some((to, reason)) = change
                    && let Err(error) = inner.scale_engine(engine, to, &reason).await
                {
                    tracing::warn!(engine, %error, "recording a scaling step failed");
                }
            }
        }

        for (plugin, version, restarts) in inner.plugin_restarts() {
            let seen = state.heal.plugin_restarts.insert(plugin.clone(), restarts);
            if restarts > seen.unwrap_or(0) {
                let event = control_event(
                    event_kinds::PLUGIN_RESTARTED,
                    None,
                    MONITOR,
                    "its process died and was restarted",
                    inner.node_id(),
                    json!({"plugin": plugin, "version": version, "restarts": restarts})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                );
                state.record(event);
            }
        }

        let count: u64 = rescued.values().sum();
        if count > 0 && healing.reports_rescues() {
            let event = control_event(
                event_kinds::RESCUE_REPORTED,
                None,
                MONITOR,
                &format!("{count} tasks whose lease had expired were taken back from their holder"),
                inner.node_id(),
                json!({"count": count, "engines": rescued})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
            state.record(event);
        }
    }
}
