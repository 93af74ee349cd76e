//! What the host does not take from a plugin directory or a child process (issue 11, findings
//! 11 and 19): files others could have changed, symbolic links, and a child whose output has
//! no end.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use orch_core::{TaskSpec, TaskStatus};
use orch_plugins::{Isolation, PROTOCOL_VERSION, PluginOptions, load_plugin, load_plugin_dir};
use serde_json::json;

use crate::support::{options, orch, plugin, scratch, setup};

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The reason a file was refused, from the directory load's refusals.
fn refusal_of(refused: &[orch_plugins::LoadError], file: &Path) -> String {
    refused
        .iter()
        .find(|error| error.path() == file)
        .unwrap_or_else(|| panic!("{} was not refused: {refused:?}", file.display()))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_directory_refuses_files_others_could_change_and_symlinks() {
    setup();
    let echo = plugin("echo_engine");
    let dir = scratch("untrusted-dir");
    set_mode(&dir, 0o755);
    let good = dir.join(format!("libgood{}", std::env::consts::DLL_SUFFIX));
    std::fs::copy(&echo, &good).unwrap();
    set_mode(&good, 0o755);
    let writable = dir.join(format!("libwritable{}", std::env::consts::DLL_SUFFIX));
    std::fs::copy(&echo, &writable).unwrap();
    set_mode(&writable, 0o777);
    let link = dir.join(format!("liblink{}", std::env::consts::DLL_SUFFIX));
    symlink(&echo, &link).unwrap();
    // A file of another user, when this process may make one (as root).
    let foreign = dir.join(format!("libforeign{}", std::env::consts::DLL_SUFFIX));
    std::fs::copy(&echo, &foreign).unwrap();
    let as_root = std::fs::metadata(&foreign).unwrap().uid() == 0;
    if as_root {
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    } else {
        std::fs::remove_file(&foreign).unwrap();
    }

    let found = load_plugin_dir(&dir, &options(Isolation::InProcess))
        .await
        .unwrap();
    let loaded: Vec<_> = found
        .plugins
        .iter()
        .map(|p| p.metadata().path.clone())
        .collect();
    assert_eq!(loaded, [good], "refused: {:?}", found.refused);
    let reason = refusal_of(&found.refused, &writable);
    assert!(reason.contains("writable by every user"), "{reason}");
    assert!(!reason.contains('\n'));
    let reason = refusal_of(&found.refused, &link);
    assert!(reason.contains("symbolic link"), "{reason}");
    if as_root {
        let reason = refusal_of(&found.refused, &foreign);
        assert!(reason.contains("owned by uid 65534"), "{reason}");
    }
    // Loading one file by its path applies the same checks.
    let error = load_plugin(&link, &options(Isolation::InProcess))
        .await
        .expect_err("a symbolic link is refused");
    assert!(error.to_string().contains("symbolic link"), "{error}");
    let error = load_plugin(&writable, &options(Isolation::Process))
        .await
        .expect_err("a world-writable file is refused");
    assert!(
        error.to_string().contains("writable by every user"),
        "{error}"
    );

    // A directory anyone may write to is refused as a whole.
    set_mode(&dir, 0o777);
    let error = load_plugin_dir(&dir, &options(Isolation::InProcess))
        .await
        .expect_err("a world-writable directory is refused");
    assert!(
        error.to_string().contains("writable by every user"),
        "{error}"
    );
    set_mode(&dir, 0o755);
    let _ = std::fs::remove_dir_all(dir);
}

/// A child that answers a call with a line that never ends: the host reads up to its bound,
/// stops the child, fails the call with an error saying why, and the next call gets a new
/// child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_sends_an_endless_line_is_stopped_and_the_call_fails() {
    let dir = scratch("endless-line");
    let host = dir.join("flooding-host.sh");
    let hello = json!({"type": "hello", "metadata": {
        "name": "flood", "version": "1", "description": "sends one endless line",
        "engines": ["flood"], "capabilities": [], "protocol_version": PROTOCOL_VERSION,
        "path": "/flood"}});
    // Hello, the reply to `init` (id 1), then, for the first call, 200 MB without a newline
    // (a bounded stand-in for an endless line: enough to show that the host stops early).
    std::fs::write(
        &host,
        format!(
            "#!/bin/sh\nprintf '%s\\n' '{hello}'\nread -r _init\n\
             printf '%s\\n' '{{\"type\":\"reply\",\"id\":1,\"outcome\":{{\"ok\":null}}}}'\n\
             read -r _call\nhead -c 200000000 /dev/zero | tr '\\000' x\nprintf '\\n'\nsleep 30\n"
        ),
    )
    .unwrap();
    set_mode(&host, 0o755);
    let fake_plugin = dir.join("libflood.so");
    std::fs::write(&fake_plugin, b"not loaded by this host").unwrap();
    let options = PluginOptions::process()
        .with_host_program(&host)
        .with_kill_grace(Duration::from_millis(300));
    let orch = orch().await;
    let loaded = load_plugin(&fake_plugin, &options).await.unwrap();
    orch.register_plugin(std::sync::Arc::new(loaded), json!(null))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let task = orch
        .dispatch_and_wait(
            TaskSpec::new("flood")
                .max_attempts(1)
                .timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    let error = task.error.unwrap_or_default();
    assert!(error.contains("longer than"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the call failed only after {:?}",
        started.elapsed()
    );
    orch.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(dir);
}
