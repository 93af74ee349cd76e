//! `GET /stats`: what the dashboard's overview shows. Tasks by engine and state (one backend
//! count) and the outcomes of the last hour minute by minute ([`Activity`], filled from the
//! shared event log by the subscriber that also feeds the metrics).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, TimeZone, Utc};
use orch_core::{EngineCounts, EventKind, Orchestrator};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::auth::{AnyRole, Authed};
use crate::error::ApiResult;
use crate::metrics::Metrics;

/// Minutes of outcomes [`Activity`] keeps.
pub const ACTIVITY_MINUTES: usize = 60;

/// One minute's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivityMinute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good (no attempt left, or a fatal error).
    pub failed: u64,
    /// Tasks whose last attempt ran past its timeout.
    pub timed_out: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
}

/// Outcomes per minute over the last [`ACTIVITY_MINUTES`], counted from the shared event log
/// as this process reads it (so every node's tasks, but only since this process started).
#[derive(Debug, Default)]
pub struct Activity {
    minutes: Mutex<VecDeque<ActivityMinute>>,
}

impl Activity {
    /// Counts `kind` (a task's end or retry; other kinds are ignored) in the minute of `at`.
    /// Events of a minute older than the hour kept are dropped.
    pub fn record(&self, kind: &EventKind, at: DateTime<Utc>) {
        let field: fn(&mut ActivityMinute) -> &mut u64 = match kind {
            EventKind::TaskSucceeded => |m| &mut m.succeeded,
            EventKind::TaskFailed => |m| &mut m.failed,
            EventKind::TaskTimedOut => |m| &mut m.timed_out,
            EventKind::TaskCancelled => |m| &mut m.cancelled,
            EventKind::TaskRetrying => |m| &mut m.retried,
            _ => return,
        };
        let minute = minute_of(at);
        let mut minutes = self.minutes.lock();
        let slot = match minutes.back().map(|last| last.minute) {
            Some(last) if last == minute => minutes.back_mut(),
            Some(last) if last > minute => minutes.iter_mut().rev().find(|m| m.minute == minute),
            _ => {
                minutes.push_back(ActivityMinute {
                    minute,
                    ..ActivityMinute::default()
                });
                while minutes.len() > ACTIVITY_MINUTES {
                    minutes.pop_front();
                }
                minutes.back_mut()
            }
        };
        if let Some(slot) = slot {
            *field(slot) += 1;
        }
    }

    /// Every minute of the hour before `now`'s minute, oldest first, `now`'s included, with
    /// zeros for minutes without outcomes.
    pub fn last_hour(&self, now: DateTime<Utc>) -> Vec<ActivityMinute> {
        let current = minute_of(now);
        let minutes = self.minutes.lock();
        (0..ACTIVITY_MINUTES as i64)
            .rev()
            .map(|ago| current - chrono::Duration::minutes(ago))
            .map(|minute| {
                minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(ActivityMinute {
                        minute,
                        ..ActivityMinute::default()
                    })
            })
            .collect()
    }
}

fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let seconds = at.timestamp().div_euclid(60) * 60;
    Utc.timestamp_opt(seconds, 0).single().unwrap_or(at)
}

/// How many tasks of one engine (or of all) are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateCounts {
    /// The engine (`core_id`); absent in the totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_id: Option<String>,
    /// Waiting for the tasks they depend on.
    pub waiting: u64,
    /// Queued and due.
    pub queued: u64,
    /// Queued, not due yet (a delay or a retry's backoff).
    pub delayed: u64,
    /// Running an attempt.
    pub running: u64,
    /// Succeeded (until retention prunes them).
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Timed out.
    pub timed_out: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl StateCounts {
    fn add(&mut self, counts: &EngineCounts) {
        self.waiting += counts.waiting;
        self.queued += counts.queued;
        self.delayed += counts.delayed;
        self.running += counts.running;
        self.succeeded += counts.succeeded;
        self.failed += counts.failed;
        self.timed_out += counts.timed_out;
        self.cancelled += counts.cancelled;
    }
}

/// The overview: counts and the last hour's outcomes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Overview {
    /// Every task by state.
    pub totals: StateCounts,
    /// Tasks by engine and state, by engine name: every engine registered on this node and
    /// every engine the store holds tasks of.
    pub engines: Vec<StateCounts>,
    /// Outcomes per minute over the last hour, oldest first (the current minute last), as
    /// this node has read them from the event log since it started.
    pub activity: Vec<ActivityMinute>,
    /// When this node began counting `activity`.
    pub activity_since: DateTime<Utc>,
}

/// `GET /stats`: tasks by engine and state, and the outcomes of the last hour.
#[utoipa::path(get, path = "/stats", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = Overview), (status = 401, body = crate::error::ErrorBody)))]
pub async fn stats(
    State(orch): State<Orchestrator>,
    State(metrics): State<Arc<Metrics>>,
    _caller: Authed<AnyRole>,
) -> ApiResult<Json<Overview>> {
    let counts = orch.task_counts().await?;
    let mut totals = StateCounts::default();
    let engines = counts
        .iter()
        .map(|counts| {
            totals.add(counts);
            let mut view = StateCounts {
                core_id: Some(counts.engine.clone()),
                ..StateCounts::default()
            };
            view.add(counts);
            view
        })
        .collect();
    Ok(Json(Overview {
        totals,
        engines,
        activity: metrics.activity().last_hour(Utc::now()),
        activity_since: metrics.activity_since(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64, second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + minute * 60 + second, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn outcomes_are_counted_in_their_minute_and_the_hour_is_kept() {
        let activity = Activity::default();
        activity.record(&EventKind::TaskSucceeded, at(0, 1));
        activity.record(&EventKind::TaskSucceeded, at(0, 59));
        activity.record(&EventKind::TaskFailed, at(1, 0));
        activity.record(&EventKind::TaskStarted, at(1, 0));
        // Read a little late: an event of the minute before still lands in it.
        activity.record(&EventKind::TaskTimedOut, at(0, 30));
        let hour = activity.last_hour(at(1, 10));
        assert_eq!(hour.len(), ACTIVITY_MINUTES);
        let last = hour[ACTIVITY_MINUTES - 1];
        let before = hour[ACTIVITY_MINUTES - 2];
        assert_eq!(last.minute, minute_of(at(1, 0)));
        assert_eq!((last.failed, last.succeeded), (1, 0));
        assert_eq!((before.succeeded, before.timed_out), (2, 1));
        assert!(
            hour[..ACTIVITY_MINUTES - 2]
                .iter()
                .all(|m| m.succeeded == 0)
        );

        // An hour and a minute on, both minutes are gone.
        activity.record(&EventKind::TaskCancelled, at(61, 0));
        let hour = activity.last_hour(at(61, 0));
        assert_eq!(hour.iter().map(|m| m.succeeded + m.failed).sum::<u64>(), 0);
        assert_eq!(hour[ACTIVITY_MINUTES - 1].cancelled, 1);
        for minute in 62..62 + ACTIVITY_MINUTES as i64 {
            activity.record(&EventKind::TaskSucceeded, at(minute, 0));
        }
        assert_eq!(activity.minutes.lock().len(), ACTIVITY_MINUTES);
    }
}
