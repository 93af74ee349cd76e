//! [`DispatchBatcher`]: concurrent `POST /dispatch` calls share backend transactions.
//!
//! Each request hands its (already validated) spec to a queue. Two workers each take whatever
//! is waiting (up to [`MAX_BATCH`]) and store it with one `dispatch_many` call, so under load a
//! SQLite commit carries many tasks, and an idle server adds no delay (a lone request is a
//! batch of one). Order and idempotency are those of `dispatch_many`.
//!
//! A backend stores a batch whole or not at all (PostgreSQL refuses the whole statement over
//! one row it cannot store). So one caller's task must never fail the others': when a batch of
//! several fails, each task is stored again on its own, and only the callers whose own task
//! fails get the error. (Specs are validated before they are queued, so this is the rare path.)

use std::sync::Arc;

use orch_core::{Created, Orchestrator, TaskSpec};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::ApiError;

/// Most tasks stored in one backend call.
pub(crate) const MAX_BATCH: usize = 256;
const WORKERS: usize = 2;

type Reply = oneshot::Sender<Result<Created, ApiError>>;

/// The dispatch queue of one router.
#[derive(Debug, Clone)]
pub(crate) struct DispatchBatcher {
    queue: mpsc::Sender<(TaskSpec, Reply)>,
}

impl DispatchBatcher {
    /// Starts the workers. They stop when the last batcher handle is dropped.
    pub(crate) fn start(orch: Orchestrator) -> Self {
        let (queue, receiver) = mpsc::channel(MAX_BATCH * 8);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WORKERS {
            tokio::spawn(worker(orch.clone(), receiver.clone()));
        }
        DispatchBatcher { queue }
    }

    /// Stores one task (through a shared batch).
    pub(crate) async fn dispatch(&self, spec: TaskSpec) -> Result<Created, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((spec, reply))
            .await
            .map_err(|_| ApiError::internal("dispatch queue", "closed"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("dispatch queue", "dropped the request"))?
    }
}

async fn worker(orch: Orchestrator, receiver: Arc<Mutex<mpsc::Receiver<(TaskSpec, Reply)>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let (specs, replies): (Vec<TaskSpec>, Vec<Reply>) = batch.drain(..).unzip();
        if let [_] = specs[..] {
            let answer = store(&orch, specs).await.map(|mut one| one.remove(0));
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(answer);
            }
            continue;
        }
        // Kept to store each task alone if the batch fails.
        let kept = specs.clone();
        match store(&orch, specs).await {
            Ok(created) => {
                for (created, reply) in created.into_iter().zip(replies) {
                    let _ = reply.send(Ok(created));
                }
            }
            Err(error) if error.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                // Shutting down: every task would be refused alike.
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                tracing::debug!(%error, tasks = kept.len(), "a dispatch batch failed; storing its tasks one by one");
                for (spec, reply) in kept.into_iter().zip(replies) {
                    let answer = store(&orch, vec![spec]).await.map(|mut one| one.remove(0));
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

/// Stores `specs` in one backend call: one `Created` per spec, in order, or the error.
async fn store(orch: &Orchestrator, specs: Vec<TaskSpec>) -> Result<Vec<Created>, ApiError> {
    let count = specs.len();
    let created = orch.dispatch_many(specs).await?;
    if created.len() != count {
        return Err(ApiError::internal(
            "dispatch_many",
            format!("{} tasks stored for {count} specs", created.len()),
        ));
    }
    Ok(created)
}
