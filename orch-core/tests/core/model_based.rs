//! Model-based tests: random operation sequences run against the real implementation and a
//! small reference model, which must agree at every step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use orch_core::{
    AttemptOutcome, Claimed, Error, LockManager, MemoryBackend, TaskId, TaskSpec, TaskStore,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
enum QueueOp {
    Create { core: u8, priority: i32 },
    Claim { core: u8, limit: usize },
    Succeed { pick: usize },
    RetryNow { pick: usize },
    Abandon { pick: usize },
    Cancel { pick: usize },
}

fn queue_op() -> impl Strategy<Value = QueueOp> {
    prop_oneof![
        3 => (0u8..2, 0i32..4).prop_map(|(core, priority)| QueueOp::Create { core, priority }),
        3 => (0u8..2, 1usize..4).prop_map(|(core, limit)| QueueOp::Claim { core, limit }),
        1 => any::<usize>().prop_map(|pick| QueueOp::Succeed { pick }),
        1 => any::<usize>().prop_map(|pick| QueueOp::RetryNow { pick }),
        1 => any::<usize>().prop_map(|pick| QueueOp::Abandon { pick }),
        1 => any::<usize>().prop_map(|pick| QueueOp::Cancel { pick }),
    ]
}

/// The reference model of the queue: a list of queued tasks, claimed in
/// (priority desc, run_at asc, creation asc) order.
#[derive(Default)]
struct QueueModel {
    /// (core, priority, run_at tick, creation order, id)
    queued: Vec<(u8, i32, u64, u64, TaskId)>,
    running: Vec<(u8, i32, u64, Claimed)>,
}

impl QueueModel {
    fn claim(&mut self, core: u8, limit: usize) -> Vec<TaskId> {
        let mut candidates: Vec<_> = self
            .queued
            .iter()
            .filter(|t| t.0 == core)
            .cloned()
            .collect();
        candidates.sort_by_key(|t| (std::cmp::Reverse(t.1), t.2, t.3));
        candidates.truncate(limit);
        self.queued
            .retain(|t| !candidates.iter().any(|c| c.4 == t.4));
        candidates.iter().map(|t| t.4).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn dispatcher_claim_order_matches_the_model(ops in proptest::collection::vec(queue_op(), 1..60)) {
        let rt = runtime();
        rt.block_on(async move {
            let backend = MemoryBackend::new();
            let mut model = QueueModel::default();
            let mut created_order = 0u64;
            for (tick, op) in ops.into_iter().enumerate() {
                let tick = tick as u64;
                tokio::time::advance(Duration::from_millis(1)).await;
                match op {
                    QueueOp::Create { core, priority } => {
                        let spec = TaskSpec::new(format!("core-{core}")).priority(priority).max_attempts(100);
                        let task = backend.create_tasks(vec![spec.into_new_task().unwrap()]).await.unwrap().remove(0).task;
                        created_order += 1;
                        model.queued.push((core, priority, tick, created_order, task.id));
                    }
                    QueueOp::Claim { core, limit } => {
                        let expected = model.claim(core, limit);
                        let claimed = backend.claim_tasks(&format!("core-{core}"), limit, Duration::from_secs(60)).await.unwrap();
                        let got: Vec<TaskId> = claimed.iter().map(|c| c.task.id).collect();
                        prop_assert_eq!(&got, &expected);
                        for c in claimed {
                            model.running.push((core, c.task.priority, tick, c));
                        }
                    }
                    QueueOp::Succeed { pick } | QueueOp::RetryNow { pick } | QueueOp::Abandon { pick } | QueueOp::Cancel { pick }
                        if model.running.is_empty() => { let _ = pick; }
                    QueueOp::Succeed { pick } => {
                        let (_, _, _, c) = model.running.remove(pick % model.running.len());
                        let t = backend.finish_attempt(c.task.id, c.lease_token, AttemptOutcome::Succeeded { result: json!(1) }).await.unwrap();
                        prop_assert_eq!(t.status, orch_core::TaskStatus::Succeeded);
                    }
                    QueueOp::RetryNow { pick } | QueueOp::Abandon { pick } => {
                        let abandon = matches!(op, QueueOp::Abandon { .. });
                        let (core, priority, _, c) = model.running.remove(pick % model.running.len());
                        let outcome = if abandon {
                            AttemptOutcome::Abandoned
                        } else {
                            AttemptOutcome::Failed { error: "e".into(), retry_in: Some(Duration::ZERO) }
                        };
                        backend.finish_attempt(c.task.id, c.lease_token, outcome).await.unwrap();
                        // Requeued with run_at = now (every op has its own instant, so run_at
                        // alone orders it against tasks of the same priority).
                        model.queued.push((core, priority, tick, 0, c.task.id));
                    }
                    QueueOp::Cancel { pick } => {
                        let (_, _, _, c) = model.running.remove(pick % model.running.len());
                        backend.cancel_task(c.task.id).await.unwrap();
                        let late = backend.finish_attempt(c.task.id, c.lease_token, AttemptOutcome::Succeeded { result: json!(1) }).await;
                        prop_assert!(matches!(late, Err(Error::LeaseLost(_))));
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[derive(Debug, Clone)]
enum LockOp {
    TryAcquire { resource: u8, owner: u8 },
    Release { resource: u8, owner: u8 },
    Advance { millis: u64 },
}

fn lock_op() -> impl Strategy<Value = LockOp> {
    prop_oneof![
        3 => (0u8..2, 0u8..3).prop_map(|(resource, owner)| LockOp::TryAcquire { resource, owner }),
        2 => (0u8..2, 0u8..3).prop_map(|(resource, owner)| LockOp::Release { resource, owner }),
        1 => (1u64..150).prop_map(|millis| LockOp::Advance { millis }),
    ]
}

const TTL: Duration = Duration::from_millis(100);

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lock_manager_grants_match_the_model(ops in proptest::collection::vec(lock_op(), 1..80)) {
        let rt = runtime();
        rt.block_on(async move {
            let locks = LockManager::new(Arc::new(MemoryBackend::new()));
            // Model: resource -> (owner, expires at ms, token)
            let mut model: HashMap<u8, (u8, u64, u64)> = HashMap::new();
            let mut guards: HashMap<(u8, u8), orch_core::LockGuard> = HashMap::new();
            let mut now_ms = 0u64;
            let mut last_token: HashMap<u8, u64> = HashMap::new();
            for op in ops {
                match op {
                    LockOp::Advance { millis } => {
                        tokio::time::advance(Duration::from_millis(millis)).await;
                        now_ms += millis;
                    }
                    LockOp::TryAcquire { resource, owner } => {
                        let free = model.get(&resource).is_none_or(|&(_, expires, _)| expires <= now_ms);
                        let got = locks.try_acquire(&format!("r{resource}"), &format!("o{owner}"), TTL).await;
                        prop_assert_eq!(got.is_ok(), free, "grant disagrees with the model");
                        if let Ok(guard) = got {
                            let token = guard.fencing_token().0;
                            let last = last_token.insert(resource, token).unwrap_or(0);
                            prop_assert!(token > last, "fencing token did not increase");
                            model.insert(resource, (owner, now_ms + TTL.as_millis() as u64, token));
                            if let Some(old) = guards.insert((resource, owner), guard) {
                                std::mem::forget(old);
                            }
                        }
                    }
                    LockOp::Release { resource, owner } => {
                        let Some(guard) = guards.remove(&(resource, owner)) else { continue };
                        let token = guard.fencing_token().0;
                        let holds = model.get(&resource).is_some_and(|&(o, _, t)| o == owner && t == token);
                        let released = guard.release().await;
                        prop_assert_eq!(released.is_ok(), holds, "release disagrees with the model");
                        if holds {
                            model.remove(&resource);
                        }
                    }
                }
            }
            for (_, guard) in guards {
                std::mem::forget(guard);
            }
            Ok(())
        })?;
    }
}
