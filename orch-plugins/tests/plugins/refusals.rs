//! Files that are not usable plugins are refused with one line naming the file and the cause,
//! and the host keeps running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orch_core::{TaskSpec, TaskStatus};
use orch_plugins::{Isolation, LoadError, load_plugin};
use serde_json::json;

use crate::support::{logged, options, orch, plugin, scratch, setup};

async fn refuse(path: &Path, isolation: Isolation) -> LoadError {
    setup();
    let error = load_plugin(path, &options(isolation))
        .await
        .expect_err("must be refused");
    let line = error.to_string();
    assert!(!line.contains('\n'), "not one line: {line}");
    assert!(
        line.contains(&path.display().to_string()),
        "does not name the file: {line}"
    );
    error
}

/// A shared library of the system that is certainly not a plugin.
fn system_library() -> Option<PathBuf> {
    let listed = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .ok()?;
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.contains("libc.so.6") || line.contains("libm.so.6"))
        .filter_map(|line| line.split(" => ").nth(1))
        .map(|path| PathBuf::from(path.trim()))
        .find(|path| path.exists())
}

async fn check_refusals(isolation: Isolation) {
    let dir = scratch(&format!("refusals-{isolation:?}"));

    let missing = dir.join("libmissing.so");
    let error = refuse(&missing, isolation).await;
    assert!(matches!(error, LoadError::NotFound { .. }), "{error}");
    assert!(error.to_string().ends_with("file not found"), "{error}");

    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a library\n").unwrap();
    let error = refuse(&text, isolation).await;
    assert!(matches!(error, LoadError::NotAPlugin { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("not an orch plugin (cannot be loaded as a shared library"),
        "{error}"
    );

    let error = refuse(&plugin("orch_fixture_not_a_plugin"), isolation).await;
    assert!(
        error
            .to_string()
            .contains("not an orch plugin (a shared library without an orch plugin root module)"),
        "{error}"
    );

    if let Some(libc) = system_library() {
        let error = refuse(&libc, isolation).await;
        assert!(matches!(error, LoadError::NotAPlugin { .. }), "{error}");
    }

    let changed = plugin("orch_fixture_changed_layout");
    let error = refuse(&changed, isolation).await;
    assert!(matches!(error, LoadError::Incompatible { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("built against an incompatible plugin interface"),
        "{error}"
    );
    // abi_stable's report is long and kept out of the line, but available (and logged at
    // debug level).
    let report = error.report().expect("a report");
    assert!(report.lines().count() > 5, "{report}");
    assert!(error.to_string().len() < 300, "{error}");
    assert!(logged(&[
        "plugin refused: full report",
        &changed.display().to_string()
    ]));

    let error = refuse(&plugin("orch_fixture_wrong_protocol"), isolation).await;
    assert!(
        matches!(
            error,
            LoadError::UnsupportedProtocol {
                found: 999,
                supported: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("plugin protocol version 999 is not supported (this host supports 1)"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_in_one_line_and_the_host_keeps_running() {
    check_refusals(Isolation::InProcess).await;
    // Nothing of the refused files is in the way: a good plugin loads and runs.
    let orch = orch().await;
    let echo = load_plugin(plugin("echo_engine"), &options(Isolation::InProcess))
        .await
        .unwrap();
    orch.register_plugin(Arc::new(echo), json!({}))
        .await
        .unwrap();
    let task = orch
        .dispatch_and_wait(TaskSpec::new("echo").payload(json!(1)))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_process_refuses_the_same_files_the_same_way() {
    check_refusals(Isolation::Process).await;
}

#[tokio::test]
async fn a_missing_host_program_is_a_clear_error() {
    setup();
    let error = load_plugin(
        plugin("echo_engine"),
        &options(Isolation::Process).with_host_program("/nonexistent/orch-plugin-host"),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, LoadError::Process { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("cannot run /nonexistent/orch-plugin-host"),
        "{error}"
    );
}
