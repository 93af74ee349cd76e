//! Child processes for the tests that need several OS processes: the test binary re-runs
//! itself with only [`child_process_entry_point`] selected and [`ROLE_VAR`] naming what the
//! child does. Without the variable (a normal test run) the entry point does nothing.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};

/// Names the child's role; unset in a normal test run.
pub(crate) const ROLE_VAR: &str = "ORCH_TEST_CHILD_ROLE";

/// Starts this test binary as a child in `role`, with `envs`. Its stdin is a pipe whose end
/// (the parent dropping it, or dying) tells the child to stop; stdout is piped when
/// `capture_stdout`, else discarded; stderr is inherited. The child is killed when the handle
/// is dropped.
pub(crate) fn spawn(
    role: &str,
    envs: &[(&str, String)],
    capture_stdout: bool,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "cases::child::child_process_entry_point",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(ROLE_VAR, role)
        .stdin(Stdio::piped())
        .stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.spawn().context("starting a child process")
}

/// Completes when the parent closes our stdin (or dies).
pub(crate) async fn parent_gone() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0_u8; 64];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// An environment variable the parent must have set.
pub(crate) fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// The child's `main`: runs the role named by [`ROLE_VAR`], if any.
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let outcome = runtime
        .context("building a runtime")
        .and_then(|runtime| runtime.block_on(run(&role)));
    if let Err(error) = outcome {
        eprintln!("child {role}: {error:#}");
        std::process::exit(1);
    }
}

async fn run(role: &str) -> anyhow::Result<()> {
    match role {
        #[cfg(feature = "postgres")]
        "multiprocess" => super::multiprocess::child().await,
        #[cfg(feature = "sqlite")]
        "sqlite-crash" => super::crash::child().await,
        "lock-queue" => super::lock_queue::child().await,
        #[cfg(feature = "sqlite")]
        "local-queue" => super::local_queue::child().await,
        #[cfg(feature = "postgres")]
        "workflow-crash" => super::workflow_crash::child().await,
        other => bail!("unknown child role {other:?}"),
    }
}
