//! Process isolation: the plugin runs in `orch-plugin-host`; a crash kills only the child.

use std::sync::Arc;
use std::time::Duration;

use orch_core::{Orchestrator, PluginRegistry, TaskSpec, TaskStatus};
use orch_plugins::{Isolation, LoadedPlugin, load_plugin};
use serde_json::{Value, json};

use crate::support::{eventually, logged, options, orch, plugin, scratch, setup};

async fn load(lib: &str) -> Arc<LoadedPlugin> {
    setup();
    let loaded = load_plugin(plugin(lib), &options(Isolation::Process))
        .await
        .expect("fixture loads in a child");
    assert_eq!(loaded.isolation(), Isolation::Process);
    Arc::new(loaded)
}

async fn run(orch: &Orchestrator, payload: Value) -> orch_core::Task {
    orch.dispatch_and_wait(
        TaskSpec::new("misbehave")
            .payload(payload)
            .max_attempts(1)
            .timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_plugin_runs_in_a_child_process() {
    let orch = orch().await;
    let echo = load("echo_engine").await;
    assert_eq!(echo.metadata().name, "echo");
    orch.register_plugin(echo.clone(), json!({ "prefix": "child:" }))
        .await
        .unwrap();
    let task = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!("hi")))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(
        task.result,
        Some(json!({ "echo": "child:hi", "attempt": 1 }))
    );
    let refused = orch
        .dispatch_and_wait(TaskSpec::new("echo").max_attempts(3))
        .await
        .unwrap();
    assert_eq!((refused.status, refused.attempt), (TaskStatus::Failed, 1));
    // The child's log line crossed the pipe into the host's tracing.
    assert!(
        logged(&["echo engine ready (prefix \\\"child:\\\")"])
            || logged(&["echo engine ready (prefix \"child:\")"])
    );
    orch.plugins().unregister("echo").await.unwrap();
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_kills_only_the_child_which_restarts_for_the_next_task() {
    let orch = orch().await;
    let misbehave = load("orch_fixture_misbehave").await;
    orch.register_plugin(misbehave.clone(), Value::Null)
        .await
        .unwrap();

    let aborted = run(&orch, json!({ "action": "abort" })).await;
    assert_eq!(aborted.status, TaskStatus::Failed);
    let error = aborted.error.unwrap();
    assert_eq!(
        error,
        "plugin process crashed (killed by signal 6 (SIGABRT))"
    );
    let next = run(&orch, json!({ "action": "ok" })).await;
    assert_eq!(next.status, TaskStatus::Succeeded);
    assert_eq!(misbehave.restarts(), 1);

    let crashed = run(&orch, json!({ "action": "segfault" })).await;
    assert_eq!(crashed.status, TaskStatus::Failed);
    let error = crashed.error.unwrap();
    assert_eq!(
        error,
        "plugin process crashed (killed by signal 11 (SIGSEGV))"
    );
    let next = run(&orch, json!({ "action": "ok" })).await;
    assert_eq!(next.status, TaskStatus::Succeeded);
    assert_eq!(misbehave.restarts(), 2);

    let crashed = run(&orch, json!({ "action": "null_deref" })).await;
    assert_eq!(crashed.status, TaskStatus::Failed);
    let error = crashed.error.unwrap();
    assert!(
        error.starts_with("plugin process crashed (killed by signal"),
        "{error}"
    );
    let next = run(&orch, json!({ "action": "ok" })).await;
    assert_eq!(next.status, TaskStatus::Succeeded);
    assert_eq!(misbehave.restarts(), 3);

    // Panics and errors are still caught inside the child; it is not restarted for them.
    let panicked = run(&orch, json!({ "action": "panic" })).await;
    assert_eq!(
        panicked.error.as_deref(),
        Some("plugin panicked: asked to panic")
    );
    let fatal = orch
        .dispatch_and_wait(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "fail" }))
                .max_attempts(3),
        )
        .await
        .unwrap();
    assert_eq!((fatal.status, fatal.attempt), (TaskStatus::Failed, 1));
    // A plugin printing to stdout does not disturb the protocol.
    let printed = run(&orch, json!({ "action": "print" })).await;
    assert_eq!(printed.result, Some(json!({ "printed": true })));
    assert_eq!(misbehave.restarts(), 3);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_is_cancelled_in_the_child_and_a_spinning_child_is_killed() {
    let orch = orch().await;
    let misbehave = load("orch_fixture_misbehave").await;
    orch.register_plugin(misbehave.clone(), Value::Null)
        .await
        .unwrap();

    // A call that honours cancellation: the child sees it, no restart needed.
    let marker = scratch("process-cancel").join("seen");
    let waited = orch
        .dispatch_and_wait(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "wait_for_cancel", "marker": marker }))
                .timeout(Duration::from_millis(300))
                .max_attempts(1),
        )
        .await
        .unwrap();
    assert_eq!(waited.status, TaskStatus::TimedOut);
    assert!(eventually(Duration::from_secs(5), || marker.exists()).await);
    assert_eq!(misbehave.restarts(), 0);

    // A call that ignores it: the child is killed after the grace and restarted.
    let spun = orch
        .dispatch_and_wait(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "block", "millis": 30_000 }))
                .timeout(Duration::from_millis(300))
                .max_attempts(1),
        )
        .await
        .unwrap();
    assert_eq!(spun.status, TaskStatus::TimedOut);
    // The child is killed once the grace (300 ms in these tests) has passed; the next call
    // starts a new one.
    assert!(
        eventually(Duration::from_secs(5), || logged(&[
            "a cancelled call is still running: killing the plugin process"
        ]))
        .await
    );
    let next = run(&orch, json!({ "action": "ok" })).await;
    assert_eq!(next.status, TaskStatus::Succeeded);
    assert_eq!(misbehave.restarts(), 1);
    orch.shutdown(Duration::from_secs(1)).await;
}

/// A child killed from outside is restarted by its supervisor before any call needs it, with
/// its config replayed; the monitor records the restart as an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_from_outside_is_restarted_by_its_supervisor() {
    use orch_core::monitor::MonitorConfig;
    use orch_core::{MemoryBackend, OrchestratorConfig, RestartBackoff, event_kinds};

    setup();
    let monitor = MonitorConfig::default()
        .with_interval(Duration::from_millis(100))
        .with_rules(Vec::new())
        .with_anomaly(None);
    let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .config(OrchestratorConfig::default().with_monitor(Some(monitor)))
        .build()
        .await
        .unwrap();
    let restart = RestartBackoff::default().with_initial(Duration::from_millis(200));
    let echo = load_plugin(
        plugin("echo_engine"),
        &options(Isolation::Process).with_restart(Some(restart)),
    )
    .await
    .expect("fixture loads in a child");
    let echo = Arc::new(echo);
    orch.register_plugin(echo.clone(), json!({ "prefix": "again:" }))
        .await
        .unwrap();
    let first = echo.child_pid().expect("a child runs");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    // No call comes: the supervisor alone brings a new child up.
    assert!(
        eventually(Duration::from_secs(10), || echo.restarts() == 1
            && echo.child_pid().is_some_and(|pid| pid != first))
        .await,
        "not restarted: {} restarts",
        echo.restarts()
    );
    assert_eq!(
        echo.last_exit().as_deref(),
        Some("killed by signal 9 (SIGKILL)")
    );
    // The new child got the plugin's config.
    let task = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!("hi")))
        .await
        .unwrap();
    assert_eq!(
        task.result,
        Some(json!({ "echo": "again:hi", "attempt": 1 }))
    );
    assert_eq!(echo.restarts(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let events = orch.events().replay(0, 10_000).await.unwrap();
        if let Some(event) = events
            .into_iter()
            .find(|e| e.kind.as_str() == event_kinds::PLUGIN_RESTARTED)
        {
            break event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no plugin.restarted event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event.data["plugin"], "echo");
    assert_eq!(event.data["restarts"], 1);
    orch.plugins().unregister("echo").await.unwrap();
    orch.shutdown(Duration::from_secs(1)).await;
}
