//! Plugins loaded into the test process and run through the dispatcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::{Plugin, PluginRegistry, TaskContext, TaskId, TaskSpec, TaskStatus};
use orch_plugins::{Isolation, LoadedPlugin, load_plugin, load_plugin_dir};
use serde_json::{Value, json};

use crate::support::{eventually, logged, options, orch, plugin, scratch, setup};

async fn load(lib: &str) -> LoadedPlugin {
    setup();
    load_plugin(plugin(lib), &options(Isolation::InProcess))
        .await
        .expect("fixture loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_plugin_runs_tasks_through_the_dispatcher() {
    let orch = orch().await;
    let echo = load("echo_engine").await;
    orch.register_plugin(Arc::new(echo), json!({ "prefix": ">" }))
        .await
        .unwrap();
    assert_eq!(orch.engines(), ["echo"]);

    let task = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!("hi")))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.result, Some(json!({ "echo": ">hi", "attempt": 1 })));

    let task = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!({ "n": [1, 2] })))
        .await
        .unwrap();
    assert_eq!(
        task.result,
        Some(json!({ "echo": { "n": [1, 2] }, "attempt": 1 }))
    );

    // `validate` refuses null: the task fails at once, without retry.
    let refused = orch
        .dispatch_and_wait(TaskSpec::new("echo").max_attempts(3))
        .await
        .unwrap();
    assert_eq!((refused.status, refused.attempt), (TaskStatus::Failed, 1));
    assert_eq!(refused.error.as_deref(), Some("nothing to echo"));

    // The plugin's log line reached the host's tracing, tagged with the plugin's name.
    assert!(
        logged(&["echo engine ready", "plugin=\"echo\""])
            || logged(&["echo engine ready", "plugin=echo"])
    );

    let removed = orch.plugins().unregister("echo").await.unwrap();
    assert_eq!(removed.name(), "echo");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn metadata_is_read_before_any_engine_exists() {
    let echo = load("echo_engine").await;
    let metadata = echo.metadata();
    assert_eq!(metadata.name, "echo");
    assert_eq!(metadata.version, "0.1.0");
    assert_eq!(metadata.description, "returns its input");
    assert_eq!(metadata.engines, ["echo"]);
    assert_eq!(metadata.protocol_version, orch_plugins::PROTOCOL_VERSION);
    let misbehave = load("orch_fixture_misbehave").await;
    assert_eq!(
        misbehave.capabilities(),
        [
            orch_core::Capability::engine("misbehave"),
            orch_core::Capability::named("test-only")
        ]
    );
    // No engine until `initialize`.
    let error = echo
        .execute(TaskContext::new(TaskId::new(), "echo"), json!(1))
        .await
        .unwrap_err();
    assert!(error.message.contains("not initialized"), "{error:?}");
    assert!(!error.retryable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_fails_the_attempt_and_the_host_carries_on() {
    let orch = orch().await;
    orch.register_plugin(Arc::new(load("orch_fixture_misbehave").await), Value::Null)
        .await
        .unwrap();
    let panicked = orch
        .dispatch_and_wait(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "panic" }))
                .max_attempts(1),
        )
        .await
        .unwrap();
    assert_eq!(panicked.status, TaskStatus::Failed);
    assert_eq!(
        panicked.error.as_deref(),
        Some("plugin panicked: asked to panic")
    );
    // The panic message went to the host's log, not the plugin's stderr.
    assert!(logged(&["panicked at", "asked to panic", "misbehave"]));
    // The host and the plugin carry on.
    let fine = orch
        .dispatch_and_wait(TaskSpec::new("misbehave").payload(json!({ "action": "ok" })))
        .await
        .unwrap();
    assert_eq!(fine.status, TaskStatus::Succeeded);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_fail_or_retry_by_their_retryable_flag() {
    let orch = orch().await;
    orch.register_plugin(Arc::new(load("orch_fixture_misbehave").await), Value::Null)
        .await
        .unwrap();
    let retried = orch
        .dispatch_and_wait(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "fail", "retryable": true }))
                .max_attempts(3),
        )
        .await
        .unwrap();
    assert_eq!((retried.status, retried.attempt), (TaskStatus::Failed, 3));
    assert_eq!(retried.error.as_deref(), Some("asked to fail"));
    let fatal = orch
        .dispatch_and_wait(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "fail", "retryable": false }))
                .max_attempts(3),
        )
        .await
        .unwrap();
    assert_eq!((fatal.status, fatal.attempt), (TaskStatus::Failed, 1));

    // Called directly, the structured error carries the plugin's name, kind and details.
    let plugin = orch.plugins().get("misbehave").unwrap();
    let error = plugin
        .execute(
            TaskContext::new(TaskId::new(), "misbehave").with_attempt(2, 3),
            json!({ "action": "fail" }),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.details,
        Some(json!({ "plugin": "misbehave", "kind": "failed", "details": { "attempt": 2 } }))
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_blocking_past_the_timeout_times_out_and_sees_the_cancellation() {
    let orch = orch().await;
    orch.register_plugin(Arc::new(load("orch_fixture_misbehave").await), Value::Null)
        .await
        .unwrap();
    orch.register_plugin(Arc::new(load("echo_engine").await), Value::Null)
        .await
        .unwrap();
    let marker = scratch("cancel").join("seen");
    let waiting = orch
        .dispatch(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "wait_for_cancel", "marker": marker }))
                .timeout(Duration::from_millis(300))
                .max_attempts(1),
        )
        .await
        .unwrap();
    let blocking = orch
        .dispatch(
            TaskSpec::new("misbehave")
                .payload(json!({ "action": "block", "millis": 3000 }))
                .timeout(Duration::from_millis(300))
                .max_attempts(1),
        )
        .await
        .unwrap();
    // The host stays responsive while both plugin calls hang.
    let started = Instant::now();
    let echoed = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!("still here")))
        .await
        .unwrap();
    assert_eq!(echoed.status, TaskStatus::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let waiting = orch
        .wait_for(waiting.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(waiting.status, TaskStatus::TimedOut);
    let blocking = orch
        .wait_for(blocking.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(blocking.status, TaskStatus::TimedOut);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // The plugin's cancellation check turned true for the timed-out call.
    assert!(eventually(Duration::from_secs(5), || marker.exists()).await);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        waiting.id.to_string()
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_concurrency_limit_wait_for_a_slot() {
    setup();
    let misbehave = load_plugin(
        plugin("orch_fixture_misbehave"),
        &options(Isolation::InProcess).with_max_concurrency(1),
    )
    .await
    .unwrap();
    misbehave.initialize(Value::Null).await.unwrap();
    let call = || {
        misbehave.execute(
            TaskContext::new(TaskId::new(), "misbehave"),
            json!({ "action": "block", "millis": 200 }),
        )
    };
    let started = Instant::now();
    let (first, second) = tokio::join!(call(), call());
    assert!(first.is_ok() && second.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_plugins_loaded_at_once_are_both_usable() {
    // abi_stable's `load_from_file` would return the first plugin for the second file.
    let orch = orch().await;
    let echo = load("echo_engine").await;
    let misbehave = load("orch_fixture_misbehave").await;
    assert_eq!(
        (
            echo.metadata().name.as_str(),
            misbehave.metadata().name.as_str()
        ),
        ("echo", "misbehave")
    );
    orch.register_plugin(Arc::new(echo), Value::Null)
        .await
        .unwrap();
    orch.register_plugin(Arc::new(misbehave), Value::Null)
        .await
        .unwrap();
    let mut engines = orch.engines();
    engines.sort();
    assert_eq!(engines, ["echo", "misbehave"]);
    let echoed = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!("a")))
        .await
        .unwrap();
    assert_eq!(echoed.result, Some(json!({ "echo": "a", "attempt": 1 })));
    let fine = orch
        .dispatch_and_wait(TaskSpec::new("misbehave").payload(json!({ "action": "ok" })))
        .await
        .unwrap();
    assert_eq!(fine.result, Some(json!({ "ok": true, "attempt": 1 })));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_directory_yields_its_plugins_and_its_refusals() {
    setup();
    let found = load_plugin_dir(crate::support::fixtures(), &options(Isolation::InProcess))
        .await
        .unwrap();
    let mut names: Vec<_> = found
        .plugins
        .iter()
        .map(|p| p.metadata().name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["echo", "misbehave"]);
    let mut refused: Vec<_> = found
        .refused
        .iter()
        .map(|e| e.path().file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    refused.sort();
    let lib = |name: &str| {
        format!(
            "{}{name}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )
    };
    assert_eq!(
        refused,
        [
            lib("orch_fixture_changed_layout"),
            lib("orch_fixture_not_a_plugin"),
            lib("orch_fixture_wrong_protocol")
        ]
    );
}
