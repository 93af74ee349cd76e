//! Orchestrators, plugin options and log capture for the tests (the fixture plugins are built
//! by `fixtures`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use orch_core::{MemoryBackend, Orchestrator, OrchestratorConfig, RetryPolicy};
use orch_plugins::{Isolation, PluginOptions};

use crate::fixtures::{fixtures_built, plugin_in};

/// The debug fixtures' directory.
pub(crate) fn fixtures() -> PathBuf {
    fixtures_built(false)
}

/// The path of a debug fixture library.
pub(crate) fn plugin(lib_name: &str) -> PathBuf {
    plugin_in(&fixtures(), lib_name)
}

/// Options for the tests: in process or with the freshly built `orch-plugin-host`.
pub(crate) fn options(isolation: Isolation) -> PluginOptions {
    PluginOptions::default()
        .with_isolation(isolation)
        .with_host_program(env!("CARGO_BIN_EXE_orch-plugin-host"))
        .with_kill_grace(Duration::from_millis(300))
}

/// An orchestrator with short retry delays and a short grace after timeouts.
pub(crate) async fn orch() -> Orchestrator {
    setup();
    Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .config(
            OrchestratorConfig::default()
                .with_retry(RetryPolicy {
                    base: Duration::from_millis(10),
                    max: Duration::from_millis(50),
                    jitter: false,
                })
                .with_poll_interval(Duration::from_millis(20))
                .with_cancel_grace(Duration::from_millis(100)),
        )
        .build()
        .await
        .expect("valid config")
}

/// Everything logged through `tracing` in this test binary (all tests share it).
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (debug level) and builds the fixtures.
pub(crate) fn setup() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    });
    fixtures();
}

/// Whether a captured log line contains all of `parts`.
pub(crate) fn logged(parts: &[&str]) -> bool {
    let Some(buffer) = LOGS.get() else {
        return false;
    };
    let text = String::from_utf8_lossy(&buffer.lock().expect("log buffer")).into_owned();
    text.lines()
        .any(|line| parts.iter().all(|part| line.contains(part)))
}

/// Polls `check` for up to `limit`.
pub(crate) async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A fresh scratch directory for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orch-plugins-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
