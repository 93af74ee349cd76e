//! External workers: processes that claim tasks over an API (`orchd`'s `POST /jobs/claim`),
//! renew their lease with heartbeats and report the outcome with their lease token. The same
//! rules as for the orchestrator's own attempts: a stale token is refused, and a task's locks
//! are held for the worker while it runs, so tasks naming one resource never overlap.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use super::Orchestrator;
use super::attempt::{lock_options, lock_owner};
use crate::backend::rules;
use crate::error::{Error, Result, TaskError};
use crate::model::{
    AttemptOutcome, AttemptReport, HeldLease, LeaseToken, Task, TaskId, TaskLock, check_name,
    limits,
};

/// A task leased to an external worker by [`Orchestrator::claim`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedTask {
    /// The task, now `running`.
    pub task: Task,
    /// The token to present with every heartbeat and the report.
    pub lease_token: LeaseToken,
    /// The task's locks, held for the worker until it reports (or its lease is lost and the
    /// locks expire). Empty when the task names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<TaskLock>,
}

/// An external worker's report of an attempt (see [`Orchestrator::report`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerReport {
    /// Finished with this result.
    Succeeded(Value),
    /// Failed; retried if `retryable` and attempts are left.
    Failed(TaskError),
    /// Ran past its timeout; retried if attempts are left.
    TimedOut,
}

impl Orchestrator {
    /// For external workers: leases up to `limit` (1 to 1000) due tasks of `engine` for
    /// `lease` (default: the configured lease). The worker must heartbeat before the lease
    /// runs out and report with the token.
    ///
    /// A task that names locks is handed out only with all of them held for the worker (their
    /// fencing tokens are in [`ClaimedTask::locks`]); when one is taken, the task goes back to
    /// the queue at once, its attempt not counted, and is offered again by a later claim.
    pub async fn claim(
        &self,
        engine: &str,
        limit: usize,
        lease: Option<Duration>,
    ) -> Result<Vec<ClaimedTask>> {
        check_name("engine", engine, limits::MAX_ENGINE_LEN)?;
        let inner = &self.inner;
        if inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let lease = lease.unwrap_or(inner.config.lease);
        if lease.is_zero() {
            return Err(Error::invalid("lease", "must be greater than zero"));
        }
        // A paused engine hands out nothing, nor does a node out of rotation.
        if inner.controls.is_paused(engine) || !inner.controls.is_ready() {
            return Ok(Vec::new());
        }
        let limit = limit.clamp(1, 1000);
        let span = tracing::debug_span!("claim", engine, limit, external = true);
        let claimed = inner
            .backend
            .claim_tasks(engine, limit, lease)
            .instrument(span)
            .await?;
        inner.wakeups.events_appended();
        let mut handed = Vec::with_capacity(claimed.len());
        let mut given_back = Vec::new();
        for claimed in claimed {
            let mut locks = Vec::with_capacity(claimed.task.locks.len());
            let mut refused = false;
            for resource in &claimed.task.locks {
                let owner = lock_owner(&claimed.task);
                // As long as the lease at least: the worker holds the task that long without
                // a heartbeat, and its locks must not be granted to another task meanwhile.
                let ttl = lock_options(inner, &claimed.task).ttl.max(lease);
                match inner.locks.try_acquire(resource, &owner, ttl).await {
                    Ok(guard) => locks.push(guard),
                    Err(Error::LockHeld { .. }) => {
                        refused = true;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(task_id = %claimed.task.id, resource, %error, "taking a task lock for an external worker failed");
                        refused = true;
                        break;
                    }
                }
            }
            if refused {
                for guard in locks {
                    if let Err(error) = guard.release().await {
                        tracing::debug!(%error, "releasing a task lock after a refused claim");
                    }
                }
                given_back.push(AttemptReport {
                    task_id: claimed.task.id,
                    lease_token: claimed.lease_token,
                    attempt: claimed.task.attempt,
                    outcome: AttemptOutcome::Abandoned,
                });
                continue;
            }
            handed.push(ClaimedTask {
                lease_token: claimed.lease_token,
                locks: locks
                    .into_iter()
                    .map(|guard| {
                        let info = guard.keep();
                        TaskLock {
                            resource: info.resource,
                            fencing_token: info.fencing_token,
                        }
                    })
                    .collect(),
                task: claimed.task,
            });
        }
        if !given_back.is_empty() {
            for status in inner.backend.finish_attempts(given_back).await? {
                if let Err(error) = status {
                    tracing::warn!(%error, "giving back a task whose locks are taken failed; its lease will expire");
                }
            }
            inner.wakeups.tasks_changed();
        }
        Ok(handed)
    }

    /// For external workers: extends a lease (and the task's locks); [`Error::LeaseLost`] if
    /// it is no longer held.
    pub async fn heartbeat(
        &self,
        id: TaskId,
        token: LeaseToken,
        lease: Option<Duration>,
    ) -> Result<DateTime<Utc>> {
        let inner = &self.inner;
        let lease = lease.unwrap_or(inner.config.lease);
        if lease.is_zero() {
            return Err(Error::invalid("lease", "must be greater than zero"));
        }
        let renewed = inner
            .backend
            .renew_leases(
                vec![HeldLease {
                    task_id: id,
                    lease_token: token,
                }],
                lease,
            )
            .await?;
        let Some(Some(expires)) = renewed.first().copied() else {
            return Err(self.lease_error(id).await);
        };
        let task = self.get(id).await?;
        if !task.locks.is_empty() {
            let ttl = lock_options(inner, &task).ttl.max(lease);
            for held in self.held_locks(&task).await? {
                if let Err(error) = inner
                    .locks
                    .extend(&held.resource, &held.owner, held.fencing_token, ttl)
                    .await
                {
                    tracing::warn!(task_id = %id, resource = held.resource, %error, "extending an external worker's task lock failed");
                }
            }
        }
        Ok(expires)
    }

    /// For external workers: reports the outcome of an attempt with its lease token and
    /// releases the task's locks. A stale token is refused with [`Error::LeaseLost`].
    pub async fn report(
        &self,
        id: TaskId,
        token: LeaseToken,
        report: WorkerReport,
    ) -> Result<Task> {
        let inner = &self.inner;
        let task = self.get(id).await?;
        let retry = &inner.config.retry;
        let outcome = match report {
            WorkerReport::Succeeded(result) => AttemptOutcome::Succeeded { result },
            WorkerReport::Failed(error) => {
                rules::engine_outcome(Err(error), task.attempt, task.max_attempts, retry)
            }
            WorkerReport::TimedOut => {
                rules::timed_out_outcome(task.attempt, task.max_attempts, retry)
            }
        };
        let report = AttemptReport {
            task_id: id,
            lease_token: token,
            attempt: task.attempt,
            outcome,
        };
        let status = inner
            .backend
            .finish_attempts(vec![report])
            .await?
            .pop()
            .ok_or_else(|| Error::backend("finish_attempts", "returned no answer"))??;
        if status == crate::model::TaskStatus::Queued {
            inner.wakeups.tasks_changed();
        } else {
            inner.wakeups.events_appended();
        }
        for held in self.held_locks(&task).await? {
            if let Err(error) = inner
                .locks
                .release(&held.resource, &held.owner, held.fencing_token)
                .await
            {
                tracing::debug!(task_id = %id, resource = held.resource, %error, "releasing an external worker's task lock");
            }
        }
        self.get(id).await
    }

    /// The locks `task`'s current attempt holds.
    async fn held_locks(&self, task: &Task) -> Result<Vec<crate::model::LockInfo>> {
        let owner = lock_owner(task);
        let mut held = Vec::with_capacity(task.locks.len());
        for resource in &task.locks {
            if let Some(info) = self.inner.locks.info(resource).await?
                && info.owner == owner
            {
                held.push(info);
            }
        }
        Ok(held)
    }

    async fn lease_error(&self, id: TaskId) -> Error {
        match self.inner.backend.get_task(id).await {
            Ok(None) => Error::TaskNotFound(id),
            _ => Error::LeaseLost(id),
        }
    }
}
