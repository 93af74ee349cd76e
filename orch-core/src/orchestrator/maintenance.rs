//! The maintenance stage: the lease keeper (renews the leases of this process's attempts),
//! the rescuer (takes back tasks whose holder died) and the pruner (retention).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Inner, Retention};
use crate::clock;
use crate::error::Result;
use crate::model::Task;

/// What one pruning pass deleted.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished tasks deleted.
    pub tasks: u64,
    /// Events deleted.
    pub events: u64,
}

/// Renews the leases of every registered attempt in one backend call per interval; stops
/// attempts whose lease was lost.
pub(super) async fn lease_keeper(inner: Arc<Inner>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(inner.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        let leases = inner.attempts.leases();
        if leases.is_empty() {
            continue;
        }
        match inner
            .backend
            .renew_leases(leases.clone(), inner.config.lease)
            .await
        {
            Ok(renewed) => {
                for (held, expires) in leases.into_iter().zip(renewed) {
                    if expires.is_none() && inner.attempts.lease_lost(held) {
                        tracing::warn!(task_id = %held.task_id, "lease lost; the attempt was stopped");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "renewing leases failed; retrying next tick"),
        }
    }
}

/// One rescue pass: expired leases, then waiting tasks left marked to end by a failed parent
/// (a process that died between the steps of a cascade).
pub(super) async fn rescue_once(inner: &Inner) -> Result<Vec<Task>> {
    let rescued = inner.backend.rescue_expired(1000).await?;
    if !rescued.is_empty() {
        inner.controls.rescued(&rescued);
        tracing::info!(count = rescued.len(), "rescued tasks whose lease expired");
        inner.wakeups.tasks_changed();
    }
    let settled = inner.backend.settle_dependents(1000).await?;
    if settled > 0 {
        tracing::info!(
            count = settled,
            "ended waiting tasks whose parent's failure ends them"
        );
        inner.wakeups.tasks_changed();
    }
    Ok(rescued)
}

/// Rescues expired leases every `rescue_interval`.
pub(super) async fn rescuer(inner: Arc<Inner>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(inner.config.rescue_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(error) = rescue_once(&inner).await {
            tracing::warn!(%error, "rescue pass failed; retrying next tick");
        }
    }
}

/// Deletes finished tasks and events older than the retention, in bounded batches.
pub(super) async fn prune_once(inner: &Inner, retention: Retention) -> Result<Pruned> {
    const BATCH: usize = 10_000;
    let now = clock::now();
    // Capped as the config's validation caps it, for a retention handed to `prune` directly:
    // the cutoff stays a time every backend stores.
    let cutoff = |keep: std::time::Duration| {
        chrono::TimeDelta::from_std(keep.min(Retention::MAX_KEEP))
            .ok()
            .and_then(|keep| now.checked_sub_signed(keep))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    };
    let mut pruned = Pruned::default();
    loop {
        let tasks = inner
            .backend
            .prune_tasks(cutoff(retention.finished_tasks), BATCH)
            .await?;
        pruned.tasks += tasks;
        if tasks < BATCH as u64 {
            break;
        }
    }
    pruned.events = inner.backend.prune_events(cutoff(retention.events)).await?;
    if pruned.tasks > 0 || pruned.events > 0 {
        tracing::info!(
            tasks = pruned.tasks,
            events = pruned.events,
            "pruned finished tasks and old events"
        );
    }
    Ok(pruned)
}

/// Prunes every `retention.interval`.
pub(super) async fn pruner(inner: Arc<Inner>, retention: Retention, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(retention.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(error) = prune_once(&inner, retention).await {
            tracing::warn!(%error, "pruning failed; retrying next interval");
        }
    }
}
