//! Builds the fixture plugins and sets up orchestrators and log capture for the tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use orch_core::{MemoryBackend, Orchestrator, OrchestratorConfig, RetryPolicy};
use orch_plugins::{Isolation, PluginOptions};

/// The packages the tests load, built in one `cargo build`.
const FIXTURE_PACKAGES: &[&str] = &[
    "echo-engine",
    "orch-fixture-misbehave",
    "orch-fixture-wrong-protocol",
    "orch-fixture-changed-layout",
    "orch-fixture-not-a-plugin",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("orch-plugins is inside the workspace")
        .to_owned()
}

/// Builds every fixture plugin once (debug or release) into `<target>/plugin-fixtures`, a
/// target directory of its own (the outer `cargo test` holds the lock on the main one) shared
/// by all fixtures, and returns the directory holding the libraries.
pub(crate) fn fixtures_built(release: bool) -> PathBuf {
    static DEBUG: OnceLock<PathBuf> = OnceLock::new();
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    let cell = if release { &RELEASE } else { &DEBUG };
    cell.get_or_init(|| {
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("plugin-fixtures");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .arg("build")
            .arg("--quiet")
            .arg("--target-dir")
            .arg(&target);
        if release {
            command.arg("--release");
        }
        for package in FIXTURE_PACKAGES {
            command.arg("-p").arg(package);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the fixture plugins failed");
        target.join(if release { "release" } else { "debug" })
    })
    .clone()
}

/// The debug fixtures' directory.
pub(crate) fn fixtures() -> PathBuf {
    fixtures_built(false)
}

/// The path of the library built from the crate named `lib_name` (underscores).
pub(crate) fn plugin_in(dir: &Path, lib_name: &str) -> PathBuf {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    dir.join(format!("{DLL_PREFIX}{lib_name}{DLL_SUFFIX}"))
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
