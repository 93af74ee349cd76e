//! Run-time engine controls: pause and resume (held by every orchestrator sharing the
//! backend), concurrency changed while attempts run, engine states, and the events that name
//! who made each change and why.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use orch_core::{
    EngineStatus, Error, MemoryBackend, Orchestrator, SharedBackend, TaskSpec, TaskStatus,
    event_kinds, processor_fn,
};

use crate::watch::{events_of, sleep_secs};
use crate::{config, orch};

/// An engine whose calls wait for a permit of `gate`, counting how many run at once.
fn gated(
    gate: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
) -> impl orch_core::Processor {
    processor_fn(move |_ctx, _input| {
        let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let permit = gate.acquire().await.expect("gate open");
            permit.forget();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    })
}

async fn statuses(orch: &Orchestrator, ids: &[orch_core::TaskId]) -> Vec<TaskStatus> {
    let mut out = Vec::new();
    for id in ids {
        out.push(orch.get(*id).await.unwrap().status);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_paused_engine_claims_nothing_lets_running_attempts_finish_and_resumes() {
    let gate = Arc::new(Semaphore::new(0));
    let (running, most) = (Arc::default(), Arc::default());
    let orch = Orchestrator::builder(crate::backend())
        .config(config())
        .engine_with_concurrency("work", gated(gate.clone(), running, most), 1)
        .build()
        .await
        .unwrap();
    let first = orch.dispatch(TaskSpec::new("work")).await.unwrap();
    sleep_secs(1.0).await;
    assert_eq!(
        orch.get(first.id).await.unwrap().status,
        TaskStatus::Running
    );

    assert!(
        orch.pause_engine("work", "user:alice", "deploying the new model")
            .await
            .unwrap()
    );
    assert!(
        !orch
            .pause_engine("work", "user:bob", "again")
            .await
            .unwrap(),
        "pausing a paused engine changes nothing"
    );
    let queued: Vec<_> = orch
        .dispatch_many((0..3).map(|_| TaskSpec::new("work")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    // The running attempt finishes; nothing else starts, however long we wait.
    gate.add_permits(10);
    let done = orch
        .wait_for(first.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    sleep_secs(120.0).await;
    assert_eq!(statuses(&orch, &queued).await, [TaskStatus::Queued; 3]);
    let state = orch.engine_state("work").unwrap();
    assert_eq!(state.status, EngineStatus::Paused);
    let pause = state.pause.expect("pause shown");
    assert_eq!(
        (pause.actor.as_str(), pause.reason.as_str()),
        ("user:alice", "deploying the new model")
    );
    // External workers get nothing either.
    assert!(orch.claim("work", 10, None).await.unwrap().is_empty());

    assert!(
        orch.resume_engine("work", "user:alice", "deployed")
            .await
            .unwrap()
    );
    for id in &queued {
        let task = orch.wait_for(*id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
    }
    assert_eq!(
        orch.engine_state("work").unwrap().status,
        EngineStatus::Running
    );

    let paused = events_of(&orch, event_kinds::ENGINE_PAUSED).await;
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].engine.as_deref(), Some("work"));
    assert_eq!(paused[0].data["actor"], "user:alice");
    assert_eq!(paused[0].data["reason"], "deploying the new model");
    let resumed = events_of(&orch, event_kinds::ENGINE_RESUMED).await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].data["reason"], "deployed");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_made_by_one_orchestrator_holds_for_another_on_the_same_backend() {
    let shared: SharedBackend = Arc::new(MemoryBackend::new());
    let ran = Arc::new(AtomicUsize::new(0));
    let engine = |ran: Arc<AtomicUsize>| {
        processor_fn(move |_ctx, _input| {
            let ran = ran.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
    };
    let first = orch(shared.clone(), config().with_node_id("first")).await;
    first
        .pause_engine("work", "user:alice", "maintenance")
        .await
        .unwrap();
    // Started after the pause: it holds from the first claim.
    let second = Orchestrator::builder(shared.clone())
        .config(config().with_node_id("second"))
        .engine("work", engine(ran.clone()))
        .build()
        .await
        .unwrap();
    let task = second.dispatch(TaskSpec::new("work")).await.unwrap();
    sleep_secs(30.0).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(
        second.get(task.id).await.unwrap().status,
        TaskStatus::Queued
    );
    let state = second.engine_state("work").unwrap();
    assert_eq!(state.status, EngineStatus::Paused);
    assert_eq!(state.pause.unwrap().node, "first");

    // Resumed on the first, which does not even serve the engine: the second claims again.
    first
        .resume_engine("work", "user:alice", "done")
        .await
        .unwrap();
    let done = second
        .wait_for(task.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);

    // And a pause made while the second runs reaches it within the refresh.
    second
        .pause_engine("other", "user:bob", "not used")
        .await
        .unwrap();
    first
        .pause_engine("work", "user:alice", "again")
        .await
        .unwrap();
    sleep_secs(2.0).await;
    let late = second.dispatch(TaskSpec::new("work")).await.unwrap();
    sleep_secs(30.0).await;
    assert_eq!(
        second.get(late.id).await.unwrap().status,
        TaskStatus::Queued
    );
    // The first lists the pause of an engine it does not register.
    let states = first.engine_states();
    let names: Vec<_> = states.iter().map(|s| s.engine.as_str()).collect();
    assert_eq!(names, ["other", "work"]);
    assert!(
        states
            .iter()
            .all(|s| s.status == EngineStatus::NotRegistered)
    );
    first.shutdown(Duration::from_secs(1)).await;
    second.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_changes_while_running_and_lowering_stops_no_attempt() {
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let orch = Orchestrator::builder(crate::backend())
        .config(config())
        .engine_with_concurrency(
            "work",
            gated(gate.clone(), running.clone(), most.clone()),
            2,
        )
        .build()
        .await
        .unwrap();
    let ids: Vec<_> = orch
        .dispatch_many((0..12).map(|_| TaskSpec::new("work")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    sleep_secs(1.0).await;
    assert_eq!(running.load(Ordering::SeqCst), 2);

    // Raised: two more start at once, without a restart.
    let before = orch
        .set_engine_concurrency("work", 4, "user:alice", "backlog")
        .await
        .unwrap();
    assert_eq!(before, 2);
    sleep_secs(1.0).await;
    assert_eq!(running.load(Ordering::SeqCst), 4);
    let state = orch.engine_state("work").unwrap();
    assert_eq!(
        (state.limit, state.registered_limit, state.in_flight),
        (4, 2, 4)
    );
    assert!(state.limit_pinned);

    // Lowered to 1 with four running: none is stopped; they finish, then one at a time.
    orch.set_engine_concurrency("work", 1, "user:alice", "quota")
        .await
        .unwrap();
    most.store(0, Ordering::SeqCst);
    gate.add_permits(4);
    sleep_secs(1.0).await;
    // The four finished; exactly one new attempt runs.
    assert_eq!(running.load(Ordering::SeqCst), 1);
    gate.add_permits(100);
    for id in &ids {
        let task = orch.wait_for(*id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded, "no attempt was killed");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "after lowering, never more than one at a time"
    );
    let changes = events_of(&orch, event_kinds::ENGINE_CONCURRENCY_CHANGED).await;
    let steps: Vec<_> = changes
        .iter()
        .map(|e| {
            (
                e.data["from"].clone(),
                e.data["to"].clone(),
                e.data["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (2.into(), 4.into(), "backlog".into()),
            (4.into(), 1.into(), "quota".into())
        ]
    );
    assert!(changes.iter().all(|e| e.data["actor"] == "user:alice"));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn controls_refuse_unknown_engines_and_bad_arguments() {
    let orch = orch(crate::backend(), config()).await;
    assert!(matches!(
        orch.set_engine_concurrency("nope", 2, "user:alice", "").await,
        Err(Error::EngineNotFound(name)) if name == "nope"
    ));
    assert!(matches!(
        orch.engine_state("nope"),
        Err(Error::EngineNotFound(_))
    ));
    assert!(matches!(
        orch.release_engine("nope", "user:alice", "").await,
        Err(Error::EngineNotFound(_))
    ));
    orch.register_engine("work", processor_fn(|_ctx, input| async move { Ok(input) }))
        .unwrap();
    assert!(matches!(
        orch.set_engine_concurrency("work", 0, "user:alice", "")
            .await,
        Err(Error::Invalid {
            field: "concurrency",
            ..
        })
    ));
    assert!(matches!(
        orch.pause_engine("work", "", "no actor").await,
        Err(Error::Invalid { field: "actor", .. })
    ));
    assert!(!orch.resume_engine("work", "user:alice", "").await.unwrap());
    assert!(!orch.release_engine("work", "user:alice", "").await.unwrap());
    assert!(orch.readiness().ready);
    assert!(!orch.mark_ready("user:alice", "").await.unwrap());
    orch.shutdown(Duration::from_secs(1)).await;
    let readiness = orch.readiness();
    assert!(!readiness.ready);
    assert_eq!(readiness.reason.as_deref(), Some("shutting down"));
}
