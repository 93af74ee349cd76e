//! The local queue of claimed tasks: tasks claimed ahead of an engine's free slots start in
//! priority order with the tasks still stored, keep their leases while they wait, and go back
//! to the queue unrun when the orchestrator shuts down. (The in-memory backend has no local
//! queue by default; these tests ask for one.)

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use orch_core::{
    Orchestrator, OrchestratorConfig, SharedBackend, TaskId, TaskSpec, TaskStatus, Tuning,
    processor_fn,
};

use crate::{backend, config, orch};

/// An engine that records the names it starts; a task with `"hold": true` then waits for a
/// permit of `gate` (or for `"sleep_s"` seconds).
fn engine(order: Arc<Mutex<Vec<String>>>, gate: Arc<Semaphore>) -> impl orch_core::Processor {
    processor_fn(move |_ctx, input: Value| {
        let order = order.clone();
        let gate = gate.clone();
        async move {
            order
                .lock()
                .push(input["name"].as_str().unwrap_or("?").to_owned());
            if input["hold"] == json!(true) {
                gate.acquire().await.expect("gate open").forget();
            }
            if let Some(seconds) = input["sleep_s"].as_u64() {
                tokio::time::sleep(Duration::from_secs(seconds)).await;
            }
            Ok(Value::Null)
        }
    })
}

/// The test config with a local queue of 64 (in memory the default is none: claims there
/// cost less than the queue).
fn queued() -> OrchestratorConfig {
    config().with_tuning(Tuning::default().with_local_queue(64))
}

fn task(name: &str, priority: i32) -> TaskSpec {
    TaskSpec::new("work")
        .priority(priority)
        .payload(json!({ "name": name }))
}

/// Waits (on the paused clock) until the stored task is in `status`.
async fn until_status(b: &SharedBackend, id: TaskId, status: TaskStatus) {
    for _ in 0..2_000 {
        if b.get_task(id).await.unwrap().map(|t| t.status) == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let task = b.get_task(id).await.unwrap();
    panic!("task {id} never became {status}: {task:?}");
}

/// An orchestrator whose engine `work` has one slot and has run one quick task (so its
/// attempts count as short and its whole local queue is in use), and a task holding that
/// slot until `gate` gets a permit.
struct Setup {
    backend: SharedBackend,
    orch: Orchestrator,
    order: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
}

async fn setup(config: OrchestratorConfig) -> Setup {
    let backend = backend();
    let orch = orch(backend.clone(), config.with_default_engine_concurrency(1)).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    orch.register_engine("work", engine(order.clone(), gate.clone()))
        .unwrap();
    let warm = orch.dispatch(task("warm", 0)).await.unwrap();
    orch.wait_for(warm.id, Duration::from_secs(10))
        .await
        .unwrap();
    let block = orch
        .dispatch(task("block", 0).payload(json!({"name": "block", "hold": true})))
        .await
        .unwrap();
    until_status(&backend, block.id, TaskStatus::Running).await;
    while !order.lock().contains(&"block".to_owned()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Setup {
        backend,
        orch,
        order,
        gate,
    }
}

/// Waits (on the paused clock) until every task is `running`: claimed, here waiting in the
/// local queue.
async fn until_running(b: &SharedBackend, ids: impl IntoIterator<Item = TaskId>) {
    for id in ids {
        until_status(b, id, TaskStatus::Running).await;
    }
}

/// Waits for each task to end, and checks it succeeded at its first attempt (ran once).
async fn succeeded_once(orch: &Orchestrator, ids: impl IntoIterator<Item = TaskId>) {
    for id in ids {
        let done = orch.wait_for(id, Duration::from_secs(120)).await.unwrap();
        assert_eq!(
            (done.status, done.attempt),
            (TaskStatus::Succeeded, 1),
            "{} did not succeed at its one attempt",
            done.id
        );
    }
}

async fn dispatch(orch: &Orchestrator, name: &str, priority: i32) -> TaskId {
    orch.dispatch(task(name, priority)).await.unwrap().id
}

#[tokio::test(start_paused = true)]
async fn a_more_urgent_stored_task_starts_before_the_waiting_ones() {
    let Setup {
        backend,
        orch,
        order,
        gate,
    } = setup(queued()).await;
    let mut lows = Vec::new();
    for name in ["low1", "low2", "low3"] {
        lows.push(dispatch(&orch, name, 0).await);
    }
    // Claimed ahead of the busy slot: they wait in the local queue.
    until_running(&backend, lows.clone()).await;
    let high = dispatch(&orch, "high", 10).await;
    until_status(&backend, high, TaskStatus::Running).await;
    gate.add_permits(1);
    succeeded_once(&orch, lows.into_iter().chain([high])).await;
    assert_eq!(
        *order.lock(),
        ["warm", "block", "high", "low1", "low2", "low3"]
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_local_queue_gives_its_lowest_task_back_for_a_more_urgent_one() {
    let Setup {
        backend,
        orch,
        order,
        gate,
    } = setup(config().with_tuning(Tuning::default().with_local_queue(2))).await;
    let low1 = dispatch(&orch, "low1", 0).await;
    let low2 = dispatch(&orch, "low2", 0).await;
    let low3 = dispatch(&orch, "low3", 0).await;
    until_status(&backend, low1, TaskStatus::Running).await;
    until_status(&backend, low2, TaskStatus::Running).await;
    // The queue is full: the third stays stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = backend.get_task(low3).await.unwrap().unwrap();
    assert_eq!(third.status, TaskStatus::Queued, "{third:?}");

    let high = dispatch(&orch, "high", 10).await;
    until_status(&backend, high, TaskStatus::Running).await;
    // The lowest waiting task went back, its attempt not counted.
    until_status(&backend, low2, TaskStatus::Queued).await;
    assert_eq!(backend.get_task(low2).await.unwrap().unwrap().attempt, 0);

    gate.add_permits(1);
    succeeded_once(&orch, [low1, low2, low3, high]).await;
    let order = order.lock().clone();
    assert_eq!(order[..4], ["warm", "block", "high", "low1"], "{order:?}");
    assert_eq!(order.len(), 6, "{order:?}");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn tasks_of_the_same_priority_are_not_given_back_while_the_queue_is_full() {
    let Setup {
        backend,
        orch,
        order,
        gate,
    } = setup(config().with_tuning(Tuning::default().with_local_queue(1))).await;
    let first = dispatch(&orch, "first", 0).await;
    until_status(&backend, first, TaskStatus::Running).await;
    let second = dispatch(&orch, "second", 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        backend.get_task(first).await.unwrap().unwrap().status,
        TaskStatus::Running
    );
    assert_eq!(
        backend.get_task(second).await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
    gate.add_permits(1);
    succeeded_once(&orch, [first, second]).await;
    assert_eq!(*order.lock(), ["warm", "block", "first", "second"]);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn waiting_tasks_keep_their_leases() {
    // Leases of 2 s, the rescuer looking every 200 ms, and tasks waiting 30 s for the slot.
    let config = queued()
        .with_lease(Duration::from_secs(2))
        .with_rescue_interval(Duration::from_millis(200));
    let backend = backend();
    let orch = orch(backend.clone(), config.with_default_engine_concurrency(1)).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("work", engine(order.clone(), Arc::new(Semaphore::new(0))))
        .unwrap();
    let warm = dispatch(&orch, "warm", 0).await;
    orch.wait_for(warm, Duration::from_secs(10)).await.unwrap();
    let slow = orch
        .dispatch(TaskSpec::new("work").payload(json!({"name": "slow", "sleep_s": 30})))
        .await
        .unwrap()
        .id;
    let waiting = [dispatch(&orch, "a", 0).await, dispatch(&orch, "b", 0).await];
    until_running(&backend, waiting).await;
    let claimed: Vec<_> = {
        let mut tasks = Vec::new();
        for id in waiting {
            tasks.push(backend.get_task(id).await.unwrap().unwrap());
        }
        tasks
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    for before in &claimed {
        let now = backend.get_task(before.id).await.unwrap().unwrap();
        assert_eq!(now.status, TaskStatus::Running, "{now:?}");
        assert_eq!(now.attempt, 1, "{now:?}");
        assert!(
            now.lease_expires_at > before.lease_expires_at,
            "the lease of a waiting task was not renewed: {now:?}"
        );
    }
    // A rescued task would have run again, at attempt 2.
    succeeded_once(&orch, [slow].into_iter().chain(waiting)).await;
    assert_eq!(*order.lock(), ["warm", "slow", "a", "b"]);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_waiting_tasks_back_and_another_orchestrator_runs_them() {
    let Setup {
        backend,
        orch,
        order,
        gate: _gate,
    } = setup(queued()).await;
    let mut waiting = Vec::new();
    for name in ["a", "b", "c"] {
        waiting.push(dispatch(&orch, name, 0).await);
    }
    until_running(&backend, waiting.clone()).await;
    let report = orch.shutdown(Duration::from_millis(100)).await;
    // The held task was abandoned at the deadline; the waiting ones went back unrun.
    assert_eq!(report.abandoned, 1);
    for id in &waiting {
        let task = backend.get_task(*id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Queued, "{task:?}");
        assert_eq!(task.attempt, 0, "{task:?}");
    }
    assert_eq!(*order.lock(), ["warm", "block"]);

    let other = orch_with_engine(backend.clone(), order.clone()).await;
    succeeded_once(&other, waiting).await;
    other.shutdown(Duration::from_secs(1)).await;
}

async fn orch_with_engine(backend: SharedBackend, order: Arc<Mutex<Vec<String>>>) -> Orchestrator {
    let orch = orch(backend, config()).await;
    orch.register_engine("work", engine(order, Arc::new(Semaphore::new(1_000))))
        .unwrap();
    orch
}

#[tokio::test(start_paused = true)]
async fn a_pause_gives_waiting_tasks_back_at_once() {
    let Setup {
        backend,
        orch,
        order,
        gate,
    } = setup(queued()).await;
    let mut waiting = Vec::new();
    for name in ["a", "b"] {
        waiting.push(dispatch(&orch, name, 0).await);
    }
    until_running(&backend, waiting.clone()).await;
    assert!(
        orch.pause_engine("work", "test", "maintenance")
            .await
            .unwrap()
    );
    // Back in the queue while the held attempt still runs, not when it ends.
    for id in &waiting {
        until_status(&backend, *id, TaskStatus::Queued).await;
        assert_eq!(backend.get_task(*id).await.unwrap().unwrap().attempt, 0);
    }
    assert_eq!(orch.running_count(), 1);
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        *order.lock(),
        ["warm", "block"],
        "a paused engine started a task"
    );
    assert!(orch.resume_engine("work", "test", "done").await.unwrap());
    succeeded_once(&orch, waiting).await;
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiting_task_cancelled_never_runs() {
    let Setup {
        backend,
        orch,
        order,
        gate,
    } = setup(queued()).await;
    let a = dispatch(&orch, "a", 0).await;
    let b = dispatch(&orch, "b", 0).await;
    until_running(&backend, [a, b]).await;
    let cancelled = orch.cancel(a).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    // Its place is free: the process holds the held attempt and b.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(orch.running_count(), 2);
    gate.add_permits(1);
    let done = orch.wait_for(b, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(*order.lock(), ["warm", "block", "b"]);
    assert_eq!(
        backend.get_task(a).await.unwrap().unwrap().status,
        TaskStatus::Cancelled
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_with_no_time_left_still_gives_waiting_tasks_back() {
    let Setup {
        backend,
        orch,
        order: _,
        gate: _gate,
    } = setup(queued()).await;
    let waiting = [dispatch(&orch, "a", 0).await, dispatch(&orch, "b", 0).await];
    until_running(&backend, waiting).await;
    // The deadline passes before the claim loop runs again: the waiting tasks are stopped
    // as abandoned with the held attempt, and still go back unrun.
    let report = orch.shutdown(Duration::ZERO).await;
    assert_eq!(report.abandoned, 3, "{report:?}");
    for id in waiting {
        let task = backend.get_task(id).await.unwrap().unwrap();
        assert_eq!(
            (task.status, task.attempt),
            (TaskStatus::Queued, 0),
            "{task:?}"
        );
    }
}
