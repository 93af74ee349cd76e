//! `GET /stats`: what the dashboard's overview shows. Tasks by engine and state (one backend
//! count) and the outcomes of the last hour minute by minute ([`Activity`], filled from the
//! shared event log by the subscriber that also feeds the metrics).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, TimeZone, Utc};
use orch_core::{EngineCounts, EventKind, Orchestrator};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

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
/// Events arrive in commit order, not in time order: a late event still lands in its own
/// minute, whatever was counted since.
#[derive(Debug, Default)]
pub struct Activity {
    minutes: Mutex<BTreeMap<DateTime<Utc>, ActivityMinute>>,
}

impl Activity {
    /// Counts `kind` (a task's end or retry; other kinds are ignored) in the minute of `at`,
    /// as read at `now`: an event more than an hour older than `now` is not counted, and one
    /// stamped after `now`'s minute (another node's clock ahead of this one) counts in `now`'s.
    /// Minutes older than the hour are forgotten.
    pub fn record(&self, kind: &EventKind, at: DateTime<Utc>, now: DateTime<Utc>) {
        let field: fn(&mut ActivityMinute) -> &mut u64 = match kind {
            EventKind::TaskSucceeded => |m| &mut m.succeeded,
            EventKind::TaskFailed => |m| &mut m.failed,
            EventKind::TaskTimedOut => |m| &mut m.timed_out,
            EventKind::TaskCancelled => |m| &mut m.cancelled,
            EventKind::TaskRetrying => |m| &mut m.retried,
            _ => return,
        };
        let minute = minute_of(at).min(minute_of(now));
        let oldest = oldest_kept(now);
        if minute < oldest {
            return;
        }
        let mut minutes = self.minutes.lock();
        *field(minutes.entry(minute).or_insert(ActivityMinute {
            minute,
            ..ActivityMinute::default()
        })) += 1;
        while minutes
            .first_key_value()
            .is_some_and(|(first, _)| *first < oldest)
        {
            minutes.pop_first();
        }
    }

    /// Every minute of the hour up to `now`'s, oldest first, with zeros for minutes without
    /// outcomes.
    pub fn last_hour(&self, now: DateTime<Utc>) -> Vec<ActivityMinute> {
        let current = minute_of(now);
        let minutes = self.minutes.lock();
        (0..ACTIVITY_MINUTES as i64)
            .rev()
            .map(|ago| current - chrono::Duration::minutes(ago))
            .map(|minute| {
                minutes.get(&minute).copied().unwrap_or(ActivityMinute {
                    minute,
                    ..ActivityMinute::default()
                })
            })
            .collect()
    }
}

/// The first minute [`Activity`] keeps at `now`.
fn oldest_kept(now: DateTime<Utc>) -> DateTime<Utc> {
    minute_of(now) - chrono::Duration::minutes(ACTIVITY_MINUTES as i64 - 1)
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

/// How long `GET /stats` reuses one count of the tasks.
pub const STATS_CACHE: Duration = Duration::from_secs(2);

/// The last count of tasks by engine and state, reused for [`STATS_CACHE`]: however many pages
/// are open, the store counts its tasks at most once per interval, one count at a time.
/// A count that failed is not tried again for the same interval: callers that waited for it
/// get the failure at once instead of each running a count of their own.
#[derive(Debug, Clone, Default)]
pub struct StatsCache {
    last: Arc<tokio::sync::Mutex<Option<Counted>>>,
}

/// A count of tasks (or why it failed), and when it was made.
type Counted = (Instant, Result<Arc<Vec<EngineCounts>>, String>);

impl StatsCache {
    async fn counts(&self, orch: &Orchestrator) -> orch_core::Result<Arc<Vec<EngineCounts>>> {
        let failed = |why: &str| orch_core::Error::backend("count_tasks", why.to_owned());
        // Held across the count: callers meanwhile wait for it and share it.
        let mut last = self.last.lock().await;
        if let Some((at, counted)) = &*last
            && at.elapsed() < STATS_CACHE
        {
            return counted.clone().map_err(|why| failed(&why));
        }
        let counted = orch
            .task_counts()
            .await
            .map(Arc::new)
            .map_err(|error| error.to_string());
        *last = Some((Instant::now(), counted.clone()));
        counted.map_err(|why| failed(&why))
    }
}

/// `GET /stats`: tasks by engine and state (counted at most every [`STATS_CACHE`]), and the
/// outcomes of the last hour.
#[utoipa::path(get, path = "/stats", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = Overview), (status = 401, body = crate::error::ErrorBody)))]
pub async fn stats(
    State(orch): State<Orchestrator>,
    State(metrics): State<Arc<Metrics>>,
    State(cache): State<StatsCache>,
    _caller: Authed<AnyRole>,
) -> ApiResult<Json<Overview>> {
    let counts = cache.counts(&orch).await?;
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
        let now = at(1, 10);
        activity.record(&EventKind::TaskSucceeded, at(0, 1), now);
        activity.record(&EventKind::TaskSucceeded, at(0, 59), now);
        activity.record(&EventKind::TaskFailed, at(1, 0), now);
        activity.record(&EventKind::TaskStarted, at(1, 0), now);
        // Committed late: an event of the minute before still lands in it.
        activity.record(&EventKind::TaskTimedOut, at(0, 30), now);
        // Late for a minute that had nothing yet.
        activity.record(&EventKind::TaskCancelled, at(-5, 0), now);
        let hour = activity.last_hour(now);
        assert_eq!(hour.len(), ACTIVITY_MINUTES);
        let last = hour[ACTIVITY_MINUTES - 1];
        let before = hour[ACTIVITY_MINUTES - 2];
        assert_eq!(last.minute, minute_of(at(1, 0)));
        assert_eq!((last.failed, last.succeeded), (1, 0));
        assert_eq!((before.succeeded, before.timed_out), (2, 1));
        assert_eq!(hour[ACTIVITY_MINUTES - 7].cancelled, 1);
        assert_eq!(hour[ACTIVITY_MINUTES - 7].minute, minute_of(at(-5, 0)));

        // An event an hour old is not counted; one from a clock ahead counts now.
        activity.record(&EventKind::TaskSucceeded, at(-60, 0), now);
        assert_eq!(activity.last_hour(now), hour);
        activity.record(&EventKind::TaskSucceeded, at(30, 0), now);
        assert_eq!(activity.last_hour(now)[ACTIVITY_MINUTES - 1].succeeded, 1);

        // An hour and a minute on, those minutes are gone.
        let later = at(61, 0);
        activity.record(&EventKind::TaskCancelled, later, later);
        let hour = activity.last_hour(later);
        assert_eq!(hour.iter().map(|m| m.succeeded + m.failed).sum::<u64>(), 0);
        assert_eq!(hour[ACTIVITY_MINUTES - 1].cancelled, 1);
        for minute in 62..62 + 2 * ACTIVITY_MINUTES as i64 {
            activity.record(&EventKind::TaskSucceeded, at(minute, 0), at(minute, 0));
        }
        assert_eq!(activity.minutes.lock().len(), ACTIVITY_MINUTES);
    }
}
