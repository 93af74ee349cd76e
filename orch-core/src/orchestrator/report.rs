//! The report stage: attempts' outcomes recorded in batches, one backend call for many.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::error::Error;
use crate::model::{AttemptReport, TaskId, TaskStatus};

/// An attempt's outcome, waiting to be recorded.
pub(super) struct Report {
    /// What the backend records.
    pub(super) attempt: AttemptReport,
    /// The attempt's [`CLAIM_SPAN`](crate::trace::CLAIM_SPAN) (disabled without a trace
    /// propagator): the outcome's span is its child, and it ends once the outcome is recorded.
    pub(super) span: tracing::Span,
}

impl From<AttemptReport> for Report {
    fn from(attempt: AttemptReport) -> Self {
        Report {
            attempt,
            span: tracing::Span::none(),
        }
    }
}

/// Opens the [`OUTCOME_SPAN`](crate::trace::OUTCOME_SPAN) of each traced report in `batch`.
fn outcome_spans(batch: &[Report]) -> Vec<(usize, tracing::Span)> {
    batch
        .iter()
        .enumerate()
        .filter(|(_, report)| !report.span.is_disabled())
        .map(|(index, report)| {
            let span = tracing::info_span!(
                target: "orch::trace",
                parent: &report.span,
                "orch.outcome",
                task_id = %report.attempt.task_id,
                attempt = report.attempt.attempt,
                status = tracing::field::Empty,
            );
            (index, span)
        })
        .collect()
}

/// Most outcomes recorded in one backend call: large enough to share a round trip, small enough
/// that an in-memory backend's lock is never held for long.
const REPORT_BATCH: usize = 128;

/// Outcomes that must be waiting before a batch starts beside one under way.
const REPORT_BESIDE: usize = 32;

/// How long the next batch waits for the outcomes of the tasks the latest outcome batch
/// claimed and handed to this process's engines: a task released by an outcome and run at
/// once reports within a fraction of a millisecond, and its outcome then shares the next batch
/// with its siblings' instead of a batch of its own. The wait ends when all have come; else
/// [`HANDED_QUIET`] after the last one came (at least [`HANDED_FIRST`] after the hand-over, so
/// the first can come), and never later than [`HANDED_MOST`] after the hand-over: outcomes of
/// tasks that take longer cost a short wait once, while a busy machine's stragglers still
/// join their siblings.
const HANDED_FIRST: Duration = Duration::from_millis(1);

/// See [`HANDED_FIRST`].
const HANDED_QUIET: Duration = Duration::from_micros(500);

/// See [`HANDED_FIRST`].
const HANDED_MOST: Duration = Duration::from_millis(5);

/// Most handed tasks whose outcomes are tracked (attempts that never report, their leases
/// lost, must not make the set grow for good).
const HANDED_TRACKED: usize = 100_000;

/// Tasks outcome batches claimed and handed to this process's engines whose outcomes have not
/// come: while outcomes of such tasks wait, batches start beside one under way only when full
/// (the backend records them one statement at a time anyway), and the next batch waits a
/// moment for those of the tasks the latest batch handed, so that siblings share a batch.
#[derive(Default)]
pub(super) struct Awaited {
    /// Every handed task whose outcome has not come.
    ids: std::collections::HashSet<TaskId>,
    /// Those the latest batch handed, which the next batch waits for (see [`HANDED_FIRST`]).
    latest: std::collections::HashSet<TaskId>,
    /// When the latest batch handed them.
    handed_at: Option<tokio::time::Instant>,
    /// When the last of them came.
    last_came: Option<tokio::time::Instant>,
}

impl Awaited {
    /// Expects the outcomes of `ids`, handed just now.
    fn expect(&mut self, ids: &[TaskId]) {
        let now = tokio::time::Instant::now();
        if self.ids.len() + ids.len() > HANDED_TRACKED {
            self.ids.clear();
        }
        if self.hold().is_none() {
            // Those still expected are past their wait.
            self.latest.clear();
        }
        self.ids.extend(ids);
        self.latest.extend(ids);
        self.handed_at = Some(now);
        self.last_came = None;
    }

    /// Notes the outcomes that came; whether any was of a handed task.
    fn came(&mut self, reports: &[Report]) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let (mut any, mut latest) = (false, false);
        for report in reports {
            any |= self.ids.remove(&report.attempt.task_id);
            latest |= self.latest.remove(&report.attempt.task_id);
        }
        if latest {
            self.last_came = Some(tokio::time::Instant::now());
        }
        any
    }

    /// Forgets tasks that were handed but could not be taken.
    fn forget(&mut self, ids: impl IntoIterator<Item = TaskId>) {
        for id in ids {
            self.ids.remove(&id);
            self.latest.remove(&id);
        }
    }

    /// Until when the next batch waits, if it does (see [`HANDED_FIRST`]).
    fn hold(&self) -> Option<tokio::time::Instant> {
        let handed_at = self.handed_at.filter(|_| !self.latest.is_empty())?;
        let quiet = self.last_came.map_or(handed_at + HANDED_FIRST, |came| {
            (came + HANDED_QUIET).max(handed_at + HANDED_FIRST)
        });
        let until = quiet.min(handed_at + HANDED_MOST);
        (until > tokio::time::Instant::now()).then_some(until)
    }
}

/// Records outcomes in batches until `stop` fires, then records what is left and ends.
///
/// A batch starts as soon as there is an outcome and no batch is being recorded; while some
/// are, outcomes gather, and another batch starts beside them only once [`REPORT_BESIDE`] are
/// waiting, up to `reports_in_flight` at once. Light load gets prompt single calls; heavy load
/// gets good batches in parallel. Outcomes of tasks the last batches handed to this process's
/// engines change two things (see [`Awaited`]): the first batch waits a moment for
/// those of the latest hand-over (see [`HANDED_FIRST`]), and while such outcomes wait, a batch starts beside another
/// only once it is full ([`REPORT_BATCH`]).
pub(super) async fn reporter(
    inner: std::sync::Arc<Inner>,
    mut reports: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let max_in_flight = inner.config.tuning.reports_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut pending: Vec<Report> = Vec::new();
    let mut open = true;
    // Whether outcomes waiting include one of a handed task (until none waits): then a batch
    // starts beside one under way only when full.
    let mut handed_waiting = false;
    while open || !in_flight.is_empty() || !pending.is_empty() {
        // Outcomes of tasks just handed to this process's engines are on their way: the
        // first batch waits for them a moment (not once stopping).
        let hold = if open {
            inner.handed_outcomes.lock().hold()
        } else {
            None
        };
        // With outcomes of handed tasks waiting, a batch starts beside one under way only when
        // it is full: the backend records those one statement at a time, and smaller batches
        // beside would split siblings' outcomes over several statements.
        let beside = if handed_waiting {
            REPORT_BATCH
        } else {
            REPORT_BESIDE
        };
        while !pending.is_empty()
            && ((in_flight.is_empty() && hold.is_none())
                || (pending.len() >= beside && in_flight.len() < max_in_flight))
        {
            let rest = pending.split_off(pending.len().min(REPORT_BATCH));
            let batch = std::mem::replace(&mut pending, rest);
            in_flight.push(record(&inner, batch));
        }
        if pending.is_empty() {
            handed_waiting = false;
        }
        // Enough gathered to fill every batch that could start: leave the rest in the channel.
        let room = (REPORT_BATCH * max_in_flight).saturating_sub(pending.len());
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            received = reports.recv_many(&mut pending, room), if open && room > 0 => {
                if received == 0 {
                    open = false;
                } else {
                    let start = pending.len() - received;
                    handed_waiting |= inner.handed_outcomes.lock().came(&pending[start..]);
                }
            }
            _ = async { if let Some(until) = hold { tokio::time::sleep_until(until).await } },
                if hold.is_some() && !pending.is_empty() => {}
            _ = stop.cancelled(), if open => {
                // Closed first: a report sent from now on is recorded by its sender.
                reports.close();
                while let Ok(report) = reports.try_recv() {
                    pending.push(report);
                }
                open = false;
            }
        }
    }
}

/// Ends the attempts of `batch` with one backend call; where the backend can, the same call
/// claims tasks those ends release, for the engines served here with room for them, and
/// hands them to their claim loops.
async fn finish(
    inner: &Inner,
    batch: Vec<AttemptReport>,
) -> crate::Result<Vec<crate::Result<TaskStatus>>> {
    if !inner.claims_released {
        return inner.backend.finish_attempts(batch).await;
    }
    // A shutdown that begins meanwhile waits until the tasks claimed are handed over or given
    // back.
    let _tracked = inner.attempts.tracker.token();
    let (room, granted) = super::claim::room_for_handed(inner);
    if room.is_empty() {
        return inner.backend.finish_attempts(batch).await;
    }
    let (statuses, claimed) = inner
        .backend
        .finish_attempts_and_claim(batch, room, inner.config.lease)
        .await?;
    // Handed over below: counted in the engines' inboxes from there.
    drop(granted);
    if !claimed.is_empty() {
        let ids: Vec<TaskId> = claimed.iter().map(|task| task.task.id).collect();
        inner.handed_outcomes.lock().expect(&ids);
        let unwanted = super::claim::hand_over(inner, claimed);
        if !unwanted.is_empty() {
            inner
                .handed_outcomes
                .lock()
                .forget(unwanted.iter().map(|task| task.task.id));
            let reports: Vec<AttemptReport> = unwanted
                .iter()
                .map(|task| super::claim::abandoned(task).attempt)
                .collect();
            // Straight to the backend: the reporter may be closing. Should this fail, the
            // leases expire and the tasks are rescued.
            if let Err(error) = inner.backend.finish_attempts(reports).await {
                tracing::warn!(%error, count = unwanted.len(), "giving back tasks claimed for an engine that stopped claiming failed; their leases will expire");
            }
        }
    }
    Ok(statuses)
}

/// Records a batch of outcomes with one backend call, and forgets their attempts.
pub(super) async fn record(inner: &Inner, batch: Vec<Report>) {
    if batch.is_empty() {
        return;
    }
    let ids: Vec<_> = batch.iter().map(|report| report.attempt.task_id).collect();
    let attempts: Vec<_> = batch
        .iter()
        .map(|report| (report.attempt.task_id, report.attempt.lease_token))
        .collect();
    let spans = outcome_spans(&batch);
    let batch: Vec<AttemptReport> = batch.into_iter().map(|report| report.attempt).collect();
    // A failed call (a dropped connection, a deadlock victim) is retried a few times: the
    // attempts stay registered meanwhile, so their leases keep being renewed.
    let mut result = finish(inner, batch.clone()).await;
    let mut delay = Duration::from_millis(50);
    for _ in 0..6 {
        let Err(error) = &result else { break };
        tracing::warn!(%error, count = batch.len(), "recording attempt outcomes failed; retrying");
        tokio::time::sleep(delay).await;
        delay *= 2;
        result = finish(inner, batch.clone()).await;
    }
    match result {
        Ok(statuses) => {
            for (index, span) in &spans {
                if let Some(Ok(status)) = statuses.get(*index) {
                    span.record("status", status.as_str());
                }
            }
            let mut requeued = false;
            for (id, status) in ids.iter().zip(statuses) {
                match status {
                    Ok(status) => requeued |= status == TaskStatus::Queued,
                    Err(Error::LeaseLost(_)) => {
                        tracing::warn!(task_id = %id, "attempt finished after its lease was lost; outcome discarded");
                    }
                    Err(error) => {
                        tracing::error!(task_id = %id, %error, "could not record the attempt's outcome; the lease will expire and the task will be rescued");
                    }
                }
            }
            if requeued {
                inner.wakeups.tasks_changed();
            } else {
                inner.wakeups.events_appended();
            }
        }
        Err(error) => {
            tracing::error!(%error, count = ids.len(), "could not record attempt outcomes; their leases will expire and the tasks will be rescued");
        }
    }
    drop(spans);
    inner.attempts.finished_all(attempts);
}
