//! Self-healing: the circuit breaker quarantines an engine that keeps failing without failing
//! its queued tasks; a claim loop that panics is restarted; concurrency follows the queue
//! within bounds; a node whose backend probe fails leaves rotation while another carries on;
//! rescues are reported. Each action is an event naming its reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use orch_core::monitor::MonitorConfig;
use orch_core::{
    Autoscale, CircuitBreaker, EngineStatus, Healing, MemoryBackend, NodeHealthCheck, Orchestrator,
    OrchestratorConfig, RestartBackoff, SharedBackend, TaskError, TaskFilter, TaskSpec, TaskStatus,
    event_kinds, processor_fn,
};

use crate::config;
use crate::watch::{Faulty, events_of, sleep_secs};

fn healing() -> Healing {
    Healing::default().with_enabled(true)
}

/// A monitor without alert rules (these tests are about the repairs).
fn quiet_monitor() -> MonitorConfig {
    MonitorConfig::default()
        .with_rules(Vec::new())
        .with_anomaly(None)
}

#[tokio::test(start_paused = true)]
async fn a_failing_engine_is_quarantined_its_tasks_wait_and_complete_after_it_recovers() {
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let engine = {
        let (healthy, calls) = (healthy.clone(), calls.clone());
        processor_fn(move |_ctx, _input| {
            let (healthy, calls) = (healthy.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                if healthy.load(Ordering::SeqCst) {
                    Ok(Value::Null)
                } else {
                    Err(TaskError::retryable("the model server refuses connections"))
                }
            }
        })
    };
    let breaker = CircuitBreaker::default()
        .with_failures(3)
        .with_cool_down(Duration::from_secs(10));
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_healing(healing().with_isolate(Some(breaker))))
        .engine_with_concurrency("model", engine, 1)
        .build()
        .await
        .unwrap();
    let ids: Vec<_> = orch
        .dispatch_many(
            (0..10)
                .map(|_| TaskSpec::new("model").max_attempts(3))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    sleep_secs(5.0).await;
    // Three failures opened the breaker; nothing more ran.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let quarantined = events_of(&orch, event_kinds::ENGINE_QUARANTINED).await;
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].engine.as_deref(), Some("model"));
    assert_eq!(quarantined[0].data["actor"], "monitor");
    assert_eq!(quarantined[0].data["failures"], 3);
    assert_eq!(
        quarantined[0].data["last_error"],
        "the model server refuses connections"
    );
    let state = orch.engine_state("model").unwrap();
    assert_eq!(state.status, EngineStatus::Quarantined);
    assert!(state.quarantine.is_some());

    // After the cool-down one probe runs; it fails: quarantined twice as long.
    sleep_secs(10.0).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        events_of(&orch, event_kinds::ENGINE_PROBE_FAILED)
            .await
            .len(),
        1
    );
    sleep_secs(15.0).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the second cool-down is 20 s"
    );

    // No task failed meanwhile: they all wait.
    let tasks = orch.list(TaskFilter::default()).await.unwrap();
    assert!(
        tasks.iter().all(|t| t.status == TaskStatus::Queued),
        "{tasks:?}"
    );

    // The engine recovers: the next probe succeeds and every task completes.
    healthy.store(true, Ordering::SeqCst);
    for id in &ids {
        let task = orch.wait_for(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
    }
    let released = events_of(&orch, event_kinds::ENGINE_RELEASED).await;
    assert_eq!(released.len(), 1);
    assert!(
        released[0].data["reason"]
            .as_str()
            .unwrap()
            .contains("succeeded")
    );
    assert_eq!(
        orch.engine_state("model").unwrap().status,
        EngineStatus::Running
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_operator_ends_a_quarantine_and_without_healing_nothing_is_quarantined() {
    let failing =
        processor_fn(|_ctx, _input| async move { Err::<Value, _>(TaskError::retryable("down")) });
    let breaker = CircuitBreaker::default()
        .with_failures(2)
        .with_cool_down(Duration::from_secs(600));
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_healing(healing().with_isolate(Some(breaker))))
        .engine_with_concurrency("flaky", failing, 1)
        .build()
        .await
        .unwrap();
    orch.dispatch_many(
        (0..4)
            .map(|_| TaskSpec::new("flaky").max_attempts(5))
            .collect(),
    )
    .await
    .unwrap();
    sleep_secs(5.0).await;
    assert_eq!(
        orch.engine_state("flaky").unwrap().status,
        EngineStatus::Quarantined
    );
    assert!(
        orch.release_engine("flaky", "user:alice", "the server is back")
            .await
            .unwrap()
    );
    assert_eq!(
        orch.engine_state("flaky").unwrap().status,
        EngineStatus::Running
    );
    let released = events_of(&orch, event_kinds::ENGINE_RELEASED).await;
    assert_eq!(released[0].data["actor"], "user:alice");
    orch.shutdown(Duration::from_secs(1)).await;

    // The same engine with the master switch off is never quarantined.
    let failing =
        processor_fn(|_ctx, _input| async move { Err::<Value, _>(TaskError::retryable("down")) });
    let orch = Orchestrator::builder(crate::backend())
        .config(config())
        .engine_with_concurrency("flaky", failing, 1)
        .build()
        .await
        .unwrap();
    let task = orch
        .dispatch_and_wait(TaskSpec::new("flaky").max_attempts(4))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(
        events_of(&orch, event_kinds::ENGINE_QUARANTINED)
            .await
            .is_empty()
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_claim_loop_that_panics_is_restarted_with_backoff() {
    let backend = Faulty::over(Arc::new(MemoryBackend::new()));
    backend.claim_panics.store(2, Ordering::SeqCst);
    let restart = RestartBackoff::default().with_initial(Duration::from_secs(1));
    let orch = Orchestrator::builder(backend.clone() as SharedBackend)
        .config(config().with_healing(healing().with_restart(Some(restart))))
        .engine("work", processor_fn(|_ctx, input| async move { Ok(input) }))
        .build()
        .await
        .unwrap();
    let task = orch.dispatch(TaskSpec::new("work")).await.unwrap();
    let done = orch
        .wait_for(task.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    let restarts = events_of(&orch, event_kinds::ENGINE_CLAIM_LOOP_RESTARTED).await;
    assert_eq!(restarts.len(), 2);
    assert_eq!(restarts[0].data["error"], "claim_tasks made to panic");
    // The delay doubles while it keeps panicking.
    assert_eq!(restarts[0].data["delay_ms"], 1000);
    assert_eq!(restarts[1].data["delay_ms"], 2000);
    assert_eq!(orch.engine_state("work").unwrap().claim_loop_restarts, 2);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn with_restarts_off_a_panicked_claim_loop_is_reported_stopped() {
    let backend = Faulty::over(Arc::new(MemoryBackend::new()));
    backend.claim_panics.store(1, Ordering::SeqCst);
    let orch = Orchestrator::builder(backend.clone() as SharedBackend)
        .config(config().with_healing(healing().with_restart(None)))
        .engine("work", processor_fn(|_ctx, input| async move { Ok(input) }))
        .build()
        .await
        .unwrap();
    let task = orch.dispatch(TaskSpec::new("work")).await.unwrap();
    sleep_secs(30.0).await;
    assert_eq!(orch.get(task.id).await.unwrap().status, TaskStatus::Queued);
    assert_eq!(
        orch.engine_state("work").unwrap().status,
        EngineStatus::Stopped
    );
    let stopped = events_of(&orch, event_kinds::ENGINE_CLAIM_LOOP_STOPPED).await;
    assert_eq!(stopped.len(), 1);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_rises_with_a_growing_queue_and_falls_again_within_bounds() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let engine = {
        let (running, most) = (running.clone(), most.clone());
        processor_fn(move |_ctx, _input| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Not whole seconds: on the paused clock, attempts of whole seconds would all
                // end exactly at a monitor pass, which would then never see every slot taken.
                tokio::time::sleep(Duration::from_millis(2300)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
    };
    let scale = Autoscale::new(2, 8).with_hold(Duration::from_secs(5));
    let orch = Orchestrator::builder(crate::backend())
        .config(
            config()
                .with_healing(healing().with_scale(Some(scale)))
                .with_monitor(Some(quiet_monitor())),
        )
        .engine_with_concurrency("work", engine, 2)
        .build()
        .await
        .unwrap();
    // Ten tasks a second for a minute: far more than even eight slots finish.
    let mut limits = Vec::new();
    for _ in 0..60 {
        orch.dispatch_many((0..10).map(|_| TaskSpec::new("work")).collect())
            .await
            .unwrap();
        sleep_secs(1.0).await;
        limits.push(orch.engine_state("work").unwrap().limit);
    }
    assert_eq!(limits.iter().max(), Some(&8), "{limits:?}");
    assert!(
        limits.windows(2).all(|w| w[0] <= w[1]),
        "only up while it grows: {limits:?}"
    );
    // The queue drains, and the limit falls back to its floor, never below.
    loop {
        sleep_secs(5.0).await;
        let counts = orch.task_counts().await.unwrap();
        if counts[0].queued == 0 && counts[0].running == 0 {
            break;
        }
    }
    sleep_secs(60.0).await;
    assert_eq!(orch.engine_state("work").unwrap().limit, 2);
    assert!(most.load(Ordering::SeqCst) <= 8);
    let steps = events_of(&orch, event_kinds::ENGINE_CONCURRENCY_CHANGED).await;
    let tos: Vec<u64> = steps
        .iter()
        .map(|e| e.data["to"].as_u64().unwrap())
        .collect();
    assert!(tos.iter().all(|to| (2..=8).contains(to)), "{tos:?}");
    assert!(steps.iter().all(|e| e.data["actor"] == "monitor"));
    assert!(tos.contains(&8) && tos.last() == Some(&2), "{tos:?}");
    // An operator's limit is left alone.
    orch.set_engine_concurrency("work", 5, "user:alice", "pinned")
        .await
        .unwrap();
    sleep_secs(60.0).await;
    assert_eq!(orch.engine_state("work").unwrap().limit, 5);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_backend_fails_leaves_rotation_while_another_finishes_the_work() {
    let shared = Arc::new(MemoryBackend::new());
    let sick = Faulty::over(shared.clone());
    let ran_on = Arc::new(parking_lot::Mutex::new(Vec::<&'static str>::new()));
    let engine = |node: &'static str| {
        let ran_on = ran_on.clone();
        processor_fn(move |_ctx, _input| {
            let ran_on = ran_on.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ran_on.lock().push(node);
                Ok(Value::Null)
            }
        })
    };
    let check = NodeHealthCheck::default()
        .with_failures(3)
        .with_recoveries(2);
    let node_config = |node: &str| -> OrchestratorConfig {
        config()
            .with_node_id(node)
            .with_healing(healing().with_node_health(Some(check)))
            .with_monitor(Some(quiet_monitor()))
    };
    let a = Orchestrator::builder(sick.clone() as SharedBackend)
        .config(node_config("a"))
        .engine_with_concurrency("work", engine("a"), 2)
        .build()
        .await
        .unwrap();
    sick.down.store(true, Ordering::SeqCst);
    sleep_secs(3.5).await;
    let readiness = a.readiness();
    assert!(!readiness.ready);
    assert!(
        readiness
            .reason
            .unwrap()
            .contains("database is unreachable")
    );
    assert_eq!(
        a.engine_state("work").unwrap().status,
        EngineStatus::NodeNotReady
    );
    // Its claims would still succeed: only its health check keeps it from claiming.
    let b = Orchestrator::builder(shared.clone() as SharedBackend)
        .config(node_config("b"))
        .engine_with_concurrency("work", engine("b"), 2)
        .build()
        .await
        .unwrap();
    let ids: Vec<_> = b
        .dispatch_many((0..20).map(|_| TaskSpec::new("work")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    for id in &ids {
        let task = b.wait_for(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
    }
    assert!(
        ran_on.lock().iter().all(|node| *node == "b"),
        "a took work while out"
    );
    assert!(b.readiness().ready);

    // Healthy again: a rejoins after two good probes and takes work.
    sick.down.store(false, Ordering::SeqCst);
    sleep_secs(2.5).await;
    assert!(a.readiness().ready);
    b.shutdown(Duration::from_secs(1)).await;
    let more: Vec<_> = a
        .dispatch_many((0..4).map(|_| TaskSpec::new("work")).collect())
        .await
        .unwrap();
    for c in more {
        a.wait_for(c.task.id, Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert!(ran_on.lock().contains(&"a"));
    let out = events_of(&a, event_kinds::NODE_NOT_READY).await;
    let back = events_of(&a, event_kinds::NODE_READY).await;
    assert_eq!((out.len(), back.len()), (1, 1));
    assert_eq!(out[0].data["node"], "a");
    assert!(
        out[0].data["reason"]
            .as_str()
            .unwrap()
            .contains("database is unreachable")
    );
    a.shutdown(Duration::from_secs(1)).await;
}

/// A database too slow for the probe is slow for every node: the node stays in rotation and
/// keeps working (the probe's failures raise the monitor's alert, not an exit).
#[tokio::test(start_paused = true)]
async fn a_slow_database_keeps_the_node_in_rotation() {
    let sick = Faulty::over(Arc::new(MemoryBackend::new()));
    let check = NodeHealthCheck::default().with_failures(2);
    let orch = Orchestrator::builder(sick.clone() as SharedBackend)
        .config(
            config()
                .with_healing(healing().with_node_health(Some(check)))
                .with_monitor(Some(quiet_monitor())),
        )
        .engine(
            "work",
            processor_fn(|_ctx, _input| async { Ok(Value::Null) }),
        )
        .build()
        .await
        .unwrap();
    sick.slow.store(true, Ordering::SeqCst);
    sleep_secs(60.0).await;
    assert!(orch.readiness().ready, "{:?}", orch.readiness());
    let task = orch.dispatch(TaskSpec::new("work")).await.unwrap();
    let done = orch
        .wait_for(task.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert!(
        events_of(&orch, event_kinds::NODE_NOT_READY)
            .await
            .is_empty()
    );
    sick.slow.store(false, Ordering::SeqCst);
    orch.shutdown(Duration::from_secs(1)).await;
}

/// A node out of rotation because the database refused its probes does not come back while
/// the probes only time out: such a pass is no recovery.
#[tokio::test(start_paused = true)]
async fn a_node_out_of_rotation_stays_out_while_its_probes_time_out() {
    let sick = Faulty::over(Arc::new(MemoryBackend::new()));
    let check = NodeHealthCheck::default()
        .with_failures(2)
        .with_recoveries(2);
    let orch = Orchestrator::builder(sick.clone() as SharedBackend)
        .config(
            config()
                .with_healing(healing().with_node_health(Some(check)))
                .with_monitor(Some(quiet_monitor())),
        )
        .build()
        .await
        .unwrap();
    sick.down.store(true, Ordering::SeqCst);
    sleep_secs(5.0).await;
    assert!(!orch.readiness().ready);
    sick.down.store(false, Ordering::SeqCst);
    sick.slow.store(true, Ordering::SeqCst);
    sleep_secs(60.0).await;
    assert!(
        !orch.readiness().ready,
        "back in rotation on probes that timed out"
    );
    sick.slow.store(false, Ordering::SeqCst);
    sleep_secs(10.0).await;
    assert!(orch.readiness().ready);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn rescued_tasks_are_reported() {
    let orch = Orchestrator::builder(crate::backend())
        .config(
            config()
                .with_healing(healing())
                .with_monitor(Some(quiet_monitor()))
                .with_rescue_interval(Duration::from_secs(1)),
        )
        .build()
        .await
        .unwrap();
    orch.dispatch_many((0..3).map(|_| TaskSpec::new("external")).collect())
        .await
        .unwrap();
    // An external worker claims them with a short lease and vanishes.
    let claimed = orch
        .claim("external", 10, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    sleep_secs(10.0).await;
    let reports = events_of(&orch, event_kinds::RESCUE_REPORTED).await;
    let total: u64 = reports
        .iter()
        .map(|e| e.data["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3);
    assert_eq!(reports[0].data["engines"]["external"], 3);
    orch.shutdown(Duration::from_secs(1)).await;
}

/// An engine whose calls return `version`, or fail while `failing`.
fn versioned(
    version: &'static str,
    failing: bool,
    calls: Arc<AtomicUsize>,
) -> impl orch_core::Processor {
    processor_fn(move |_ctx, _input| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if failing {
                return Err(TaskError::retryable(format!(
                    "version {version} cannot load its model"
                )));
            }
            Ok(Value::from(version))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_failing_new_version_is_rolled_back_and_its_tasks_complete_on_the_previous_one() {
    let (old_calls, new_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let breaker = CircuitBreaker::default()
        .with_failures(3)
        .with_cool_down(Duration::from_secs(600));
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_healing(healing().with_isolate(Some(breaker))))
        .engine_with_concurrency("model", versioned("0", true, Arc::default()), 1)
        .build()
        .await
        .unwrap();
    orch.upgrade_engine(
        "model",
        versioned("1", false, old_calls.clone()),
        "1",
        "deploy",
        "first release",
    )
    .await
    .unwrap();
    let task = orch
        .dispatch_and_wait(TaskSpec::new("model"))
        .await
        .unwrap();
    assert_eq!(task.result, Some(Value::from("1")));

    orch.upgrade_engine(
        "model",
        versioned("2", true, new_calls.clone()),
        "2",
        "deploy",
        "new model",
    )
    .await
    .unwrap();
    let state = orch.engine_state("model").unwrap();
    assert_eq!(
        (state.version.as_deref(), state.previous_version.as_deref()),
        (Some("2"), Some("1"))
    );
    let ids: Vec<_> = orch
        .dispatch_many(
            (0..10)
                .map(|_| TaskSpec::new("model").max_attempts(3))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    for id in &ids {
        let task = orch.wait_for(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
        assert_eq!(task.result, Some(Value::from("1")));
    }
    // Three failures of version 2, then back to 1 at once: no quarantine.
    assert_eq!(new_calls.load(Ordering::SeqCst), 3);
    let rolled = events_of(&orch, event_kinds::ENGINE_ROLLED_BACK).await;
    assert_eq!(rolled.len(), 1);
    assert_eq!(rolled[0].data["actor"], "monitor");
    assert_eq!(
        (
            rolled[0].data["from_version"].as_str(),
            rolled[0].data["to_version"].as_str()
        ),
        (Some("2"), Some("1"))
    );
    assert!(
        events_of(&orch, event_kinds::ENGINE_QUARANTINED)
            .await
            .is_empty()
    );
    let state = orch.engine_state("model").unwrap();
    assert_eq!(state.status, EngineStatus::Running);
    assert_eq!(
        (state.version.as_deref(), state.previous_version.as_deref()),
        (Some("1"), Some("2"))
    );

    // The rolled-back version is never rolled back to by itself; an operator can go forward.
    assert!(
        orch.rollback_engine("model", "user:alice", "fixed, try again")
            .await
            .unwrap()
    );
    assert_eq!(
        orch.engine_state("model").unwrap().version.as_deref(),
        Some("2")
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

/// A plugin whose version and health the test picks.
struct Model {
    version: &'static str,
    failing: bool,
}

#[async_trait::async_trait]
impl orch_core::Plugin for Model {
    fn name(&self) -> &str {
        "model"
    }
    fn version(&self) -> &str {
        self.version
    }
    fn description(&self) -> &str {
        "answers with its version"
    }
    async fn initialize(&self, _config: Value) -> orch_core::Result<()> {
        Ok(())
    }
    async fn execute(
        &self,
        _ctx: orch_core::TaskContext,
        _input: Value,
    ) -> Result<Value, TaskError> {
        if self.failing {
            return Err(TaskError::retryable("cannot load the weights"));
        }
        Ok(Value::from(self.version))
    }
    async fn cleanup(&self) -> orch_core::Result<()> {
        Ok(())
    }
    fn capabilities(&self) -> Vec<orch_core::Capability> {
        vec![orch_core::Capability::engine("model")]
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_plugin_upgrade_is_rolled_back_to_the_version_still_loaded() {
    use orch_core::PluginRegistry;
    let breaker = CircuitBreaker::default().with_failures(2);
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_healing(healing().with_isolate(Some(breaker))))
        .build()
        .await
        .unwrap();
    orch.register_plugin(
        Arc::new(Model {
            version: "1.0",
            failing: false,
        }),
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(
        orch.engine_state("model").unwrap().version.as_deref(),
        Some("1.0")
    );
    orch.upgrade_plugin(
        Arc::new(Model {
            version: "2.0",
            failing: true,
        }),
        Value::Null,
        "deploy",
        "2.0 released",
    )
    .await
    .unwrap();
    assert_eq!(orch.plugins().get("model").unwrap().version(), "2.0");
    let ids: Vec<_> = orch
        .dispatch_many(
            (0..5)
                .map(|_| TaskSpec::new("model").max_attempts(3))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    for id in &ids {
        let task = orch.wait_for(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(task.result, Some(Value::from("1.0")));
    }
    assert_eq!(orch.plugins().get("model").unwrap().version(), "1.0");
    assert_eq!(
        events_of(&orch, event_kinds::ENGINE_ROLLED_BACK)
            .await
            .len(),
        1
    );
    orch.shutdown(Duration::from_secs(1)).await;
}
