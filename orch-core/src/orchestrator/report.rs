//! The report stage: attempts' outcomes recorded in batches, one backend call for many.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::error::Error;
use crate::model::{AttemptReport, TaskStatus};

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

/// Records outcomes in batches until `stop` fires, then records what is left and ends.
///
/// A batch starts as soon as there is an outcome and no batch is being recorded; while some
/// are, outcomes gather, and another batch starts beside them only once [`REPORT_BESIDE`] are
/// waiting, up to `reports_in_flight` at once. Light load gets prompt single calls; heavy load
/// gets good batches in parallel.
pub(super) async fn reporter(
    inner: std::sync::Arc<Inner>,
    mut reports: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let max_in_flight = inner.config.tuning.reports_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut pending: Vec<Report> = Vec::new();
    let mut open = true;
    while open || !in_flight.is_empty() || !pending.is_empty() {
        while !pending.is_empty()
            && (in_flight.is_empty()
                || (pending.len() >= REPORT_BESIDE && in_flight.len() < max_in_flight))
        {
            let rest = pending.split_off(pending.len().min(REPORT_BATCH));
            let batch = std::mem::replace(&mut pending, rest);
            in_flight.push(record(&inner, batch));
        }
        // Enough gathered to fill every batch that could start: leave the rest in the channel.
        let room = (REPORT_BATCH * max_in_flight).saturating_sub(pending.len());
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            received = reports.recv_many(&mut pending, room), if open && room > 0 => {
                if received == 0 {
                    open = false;
                }
            }
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
    let mut result = inner.backend.finish_attempts(batch.clone()).await;
    let mut delay = Duration::from_millis(50);
    for _ in 0..6 {
        let Err(error) = &result else { break };
        tracing::warn!(%error, count = batch.len(), "recording attempt outcomes failed; retrying");
        tokio::time::sleep(delay).await;
        delay *= 2;
        result = inner.backend.finish_attempts(batch.clone()).await;
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
