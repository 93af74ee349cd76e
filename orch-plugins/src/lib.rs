//! # orch-plugins
//!
//! Engines for orch shipped as `cdylib` plugins and loaded at run time, refused with a clear
//! one-line error when they do not fit, and kept from taking the host down when they misbehave.
//! Plugin authors depend on `orch-plugin-abi` only; see this crate's README for a guide.
//!
//! How the crate is laid out:
//! - [`load_plugin`] and [`load_plugin_dir`]: open a file (or every plugin file of a
//!   directory) and return [`LoadedPlugin`]s, or [`LoadError`]s that print as one line naming
//!   the file and the cause. Each file is loaded through its own library header, so two files
//!   are two plugins (abi_stable's `load_from_file` caches one module per interface type).
//! - [`LoadedPlugin`] implements orch-core's [`Plugin`]: register it with
//!   [`Orchestrator::register_plugin`](orch_core::Orchestrator::register_plugin) and it serves
//!   its engine names. Calls run on the plugin's own threads under a per-plugin concurrency limit;
//!   the task's cancellation (timeout, cancel) reaches the plugin as `ctx.is_cancelled()`.
//! - [`PluginOptions`] and [`Isolation`]: in process (default, about 15 µs per call) or in a
//!   child process (`orch-plugin-host`, JSON lines over stdio) that may crash without harm.
//! - [`child`]: the child process's loop, behind the `orch-plugin-host` binary; an application
//!   can also make its own executable serve as the child.
//! - Private modules: `trust` (which files and directories are loaded from at all),
//!   `library` (opening and checks), `in_process` and `call_threads` (the threads in-process
//!   calls run on), `process` (host side of isolation), `protocol` (the JSON-lines messages),
//!   `calls` (one call, error mapping, log forwarding).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use orch_core::{MemoryBackend, Orchestrator, TaskSpec};
//! use orch_plugins::{PluginOptions, load_plugin};
//!
//! let orch = Orchestrator::builder(Arc::new(MemoryBackend::new())).build().await?;
//! let echo = load_plugin("plugins/libecho_engine.so", &PluginOptions::default()).await?;
//! orch.register_plugin(Arc::new(echo), serde_json::json!({"prefix": ">"})).await?;
//! let task = orch.dispatch_and_wait(TaskSpec::new("echo").payload("hi".into())).await?;
//! assert_eq!(task.result, Some(serde_json::json!({"echo": ">hi", "attempt": 1})));
//! # Ok(()) }
//! ```

mod call_threads;
mod calls;
pub mod child;
mod error;
mod in_process;
mod library;
mod options;
mod process;
mod protocol;
mod trust;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use orch_core::{Capability, Plugin, TaskContext, TaskError};
use serde_json::Value;

pub use error::LoadError;
pub use library::PluginMetadata;
pub use options::{Isolation, PluginOptions};
pub use orch_plugin_abi::PROTOCOL_VERSION;

use in_process::InProcessPlugin;
use process::ProcessPlugin;

/// A plugin file loaded and checked, ready to register with an orchestrator.
pub struct LoadedPlugin {
    inner: Inner,
}

enum Inner {
    /// Boxed: the in-process plugin holds its library and call threads inline.
    InProcess(Box<InProcessPlugin>),
    Process(ProcessPlugin),
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("metadata", self.metadata())
            .field("isolation", &self.isolation())
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// What the plugin says about itself.
    pub fn metadata(&self) -> &PluginMetadata {
        match &self.inner {
            Inner::InProcess(plugin) => plugin.metadata(),
            Inner::Process(plugin) => plugin.metadata(),
        }
    }

    /// Where its code runs.
    pub fn isolation(&self) -> Isolation {
        match &self.inner {
            Inner::InProcess(_) => Isolation::InProcess,
            Inner::Process(_) => Isolation::Process,
        }
    }

    /// How many times its child process was restarted after dying (always 0 in process).
    pub fn restarts(&self) -> u64 {
        match &self.inner {
            Inner::InProcess(_) => 0,
            Inner::Process(plugin) => plugin.restarts(),
        }
    }

    /// How its last child process that died ended (`killed by signal 9 (SIGKILL)`), if one
    /// did (always `None` in process).
    pub fn last_exit(&self) -> Option<String> {
        match &self.inner {
            Inner::InProcess(_) => None,
            Inner::Process(plugin) => plugin.last_exit(),
        }
    }

    /// The process id of its live child process (`None` in process, or between a death and
    /// the restart).
    pub fn child_pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::InProcess(_) => None,
            Inner::Process(plugin) => plugin.child_pid(),
        }
    }
}

#[async_trait]
impl Plugin for LoadedPlugin {
    fn name(&self) -> &str {
        &self.metadata().name
    }
    fn version(&self) -> &str {
        &self.metadata().version
    }
    fn description(&self) -> &str {
        &self.metadata().description
    }
    async fn initialize(&self, config: Value) -> orch_core::Result<()> {
        match &self.inner {
            Inner::InProcess(plugin) => plugin.initialize(config).await,
            Inner::Process(plugin) => plugin.initialize(config).await,
        }
    }
    async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        match &self.inner {
            Inner::InProcess(plugin) => plugin.execute(ctx, input).await,
            Inner::Process(plugin) => plugin.execute(ctx, input).await,
        }
    }
    async fn cleanup(&self) -> orch_core::Result<()> {
        match &self.inner {
            Inner::InProcess(plugin) => plugin.cleanup().await,
            Inner::Process(plugin) => plugin.cleanup().await,
        }
    }
    fn capabilities(&self) -> Vec<Capability> {
        in_process::capabilities(self.metadata())
    }
    fn restarts(&self) -> u64 {
        LoadedPlugin::restarts(self)
    }
}

/// Loads the plugin file at `path` and checks it: first that no other user could have written
/// it (a regular file, not a symbolic link, not writable by every user, owned by this
/// process's user or root, in a directory of which the same holds:
/// [`LoadError::UntrustedFile`] / [`LoadError::UntrustedDirectory`] otherwise), then
/// abi_stable's version and layout checks, [`PROTOCOL_VERSION`] and the plugin's info. With
/// [`Isolation::Process`] the checks after the first (and all plugin code) run in the child
/// process.
///
/// Errors: a [`LoadError`] that prints as one line naming the file and the cause; the long
/// report, if any, is in [`LoadError::report`] and logged at debug level.
pub async fn load_plugin(
    path: impl AsRef<Path>,
    options: &PluginOptions,
) -> Result<LoadedPlugin, LoadError> {
    let path = path.as_ref().to_owned();
    trust::check_file(&path)?;
    let inner = match options.isolation {
        Isolation::InProcess => {
            let opened = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || library::open(&path)).await
            };
            let (library, metadata) = opened.map_err(|error| LoadError::NotAPlugin {
                path: path.clone(),
                reason: format!("loading it failed: {error}"),
                report: String::new(),
            })??;
            Inner::InProcess(Box::new(InProcessPlugin::new(
                library,
                metadata,
                options.slots(),
            )))
        }
        Isolation::Process => Inner::Process(ProcessPlugin::start(&path, options).await?),
    };
    let loaded = LoadedPlugin { inner };
    let metadata = loaded.metadata();
    tracing::info!(
        plugin = %metadata.name,
        version = %metadata.version,
        engines = ?metadata.engines,
        isolation = ?options.isolation,
        path = %path.display(),
        "plugin loaded"
    );
    Ok(loaded)
}

/// What [`load_plugin_dir`] found.
#[derive(Debug, Default)]
pub struct LoadedDir {
    /// The plugins that loaded, in file name order.
    pub plugins: Vec<LoadedPlugin>,
    /// The files that were refused (each also logged at warn level).
    pub refused: Vec<LoadError>,
}

/// Whether `path` looks like a plugin file on this platform (`.so`, `.dylib`, `.dll`).
pub fn is_plugin_file(path: &Path) -> bool {
    path.is_file()
        && path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(std::env::consts::DLL_SUFFIX))
}

/// A symbolic link named like a plugin file (listed, to be refused with a reason).
fn is_plugin_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(std::env::consts::DLL_SUFFIX))
}

/// Loads every plugin file (see [`is_plugin_file`]) in `dir`, not recursing. One bad file does
/// not stop the others: it ends up in [`LoadedDir::refused`]. A directory that another user
/// could write to is refused as a whole ([`LoadError::UntrustedDirectory`]); a symbolic link
/// with a plugin file's name is refused like any file others could have changed.
pub async fn load_plugin_dir(
    dir: impl AsRef<Path>,
    options: &PluginOptions,
) -> Result<LoadedDir, LoadError> {
    let dir = dir.as_ref();
    let directory_error = |source| LoadError::Directory {
        path: dir.to_owned(),
        source,
    };
    trust::check_directory(dir)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(directory_error)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| is_plugin_file(path) || is_plugin_link(path))
        .collect();
    files.sort();
    let mut found = LoadedDir::default();
    for file in files {
        match load_plugin(&file, options).await {
            Ok(plugin) => found.plugins.push(plugin),
            Err(error) => {
                tracing::warn!("{error}");
                found.refused.push(error);
            }
        }
    }
    Ok(found)
}
