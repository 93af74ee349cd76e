use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use orch_core::{Orchestrator, TaskSpec, TaskStatus, processor_fn};

use crate::{backend, config};

#[tokio::test(start_paused = true)]
async fn tasks_naming_one_resource_never_overlap_and_different_ones_run_in_parallel() {
    let in_flight_per_key = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let max_per_key = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let in_flight_total = Arc::new(AtomicUsize::new(0));
    let max_total = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let engine = {
        let (ik, mk, it, mt, lt) = (
            in_flight_per_key.clone(),
            max_per_key.clone(),
            in_flight_total.clone(),
            max_total.clone(),
            last_token.clone(),
        );
        processor_fn(move |ctx, input: Value| {
            let (ik, mk, it, mt, lt) = (ik.clone(), mk.clone(), it.clone(), mt.clone(), lt.clone());
            async move {
                let key = input.as_u64().unwrap() as usize;
                let resource = format!("account-{key}");
                let token = ctx
                    .fencing_token(&resource)
                    .expect("fencing token in context")
                    .0;
                let previous = lt[key].swap(token, Ordering::SeqCst);
                assert!(token > previous, "stale fencing token handed to the engine");
                let now = ik[key].fetch_add(1, Ordering::SeqCst) + 1;
                mk[key].fetch_max(now, Ordering::SeqCst);
                let total = it.fetch_add(1, Ordering::SeqCst) + 1;
                mt.fetch_max(total, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                ik[key].fetch_sub(1, Ordering::SeqCst);
                it.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
    };
    let orch = Orchestrator::builder(backend())
        .config(config().with_global_concurrency(8))
        .engine("keyed", engine)
        .build()
        .await
        .unwrap();
    let specs = (0..20)
        .map(|i| {
            let key = i % 2;
            TaskSpec::new("keyed")
                .payload(Value::from(key))
                .lock(format!("account-{key}"))
        })
        .collect();
    let created = orch.dispatch_many(specs).await.unwrap();
    for c in created {
        let task = orch
            .wait_for(c.task.id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    assert_eq!(
        max_per_key[0].load(Ordering::SeqCst),
        1,
        "two tasks held account-0 at once"
    );
    assert_eq!(
        max_per_key[1].load(Ordering::SeqCst),
        1,
        "two tasks held account-1 at once"
    );
    assert_eq!(
        max_total.load(Ordering::SeqCst),
        2,
        "different resources should run in parallel"
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_task_waiting_for_its_lock_does_not_hold_a_concurrency_slot() {
    let orch = Orchestrator::builder(backend())
        .config(config().with_global_concurrency(1))
        .engine(
            "work",
            processor_fn(|_ctx, _input| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(Value::Null)
            }),
        )
        .build()
        .await
        .unwrap();
    // Someone outside the dispatcher holds the resource for a minute.
    let held = orch
        .locks()
        .try_acquire("busy", "outsider", Duration::from_secs(60))
        .await
        .unwrap();
    let blocked = orch
        .dispatch(TaskSpec::new("work").lock("busy").priority(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // With the only slot free, unrelated work still runs.
    let free = orch.dispatch_and_wait(TaskSpec::new("work")).await.unwrap();
    assert_eq!(free.status, TaskStatus::Succeeded);
    assert_eq!(
        orch.get(blocked.id).await.unwrap().status,
        TaskStatus::Running
    );
    held.release().await.unwrap();
    let done = orch
        .wait_for(blocked.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert!(
        orch.locks().info("busy").await.unwrap().is_none(),
        "task lock not released"
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

/// An external worker's lease longer than the task's timeout: the task's locks are held at
/// least as long as the lease, so no other task naming the resource runs while the worker
/// still holds the task without having sent a heartbeat.
#[tokio::test(start_paused = true)]
async fn an_external_claim_holds_task_locks_for_its_whole_lease() {
    let orch = Orchestrator::builder(backend())
        .config(config())
        .build()
        .await
        .unwrap();
    orch.dispatch(
        TaskSpec::new("outside")
            .timeout(Duration::from_secs(10))
            .lock("printer"),
    )
    .await
    .unwrap();
    let lease = Duration::from_secs(3600);
    let claimed = orch.claim("outside", 1, Some(lease)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let held = orch
        .locks()
        .info("printer")
        .await
        .unwrap()
        .expect("lock held");
    let lease_ends = claimed[0].task.lease_expires_at.expect("leased");
    assert!(
        held.expires_at >= lease_ends,
        "the lock expires at {} before the lease ends at {lease_ends}",
        held.expires_at
    );
    // Past the task's timeout and the orchestrator's lease, the lock is still held.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(orch.locks().info("printer").await.unwrap().is_some());
    orch.shutdown(Duration::from_secs(1)).await;
}
