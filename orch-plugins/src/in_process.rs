//! A plugin loaded into this process, adapted to orch-core's async [`Plugin`].
//!
//! Every call runs on the plugin's own threads ([`CallThreads`], off tokio's workers) under a
//! per-plugin semaphore.
//! The plugin sees the task's cancellation token through its call context: when the
//! dispatcher times the attempt out (or it is cancelled), `is_cancelled()` turns true.

use std::sync::Arc;

use orch_core::{Capability, TaskContext, TaskError};
use orch_plugin_abi::{CancelSignal, EngineBox};
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::call_threads::CallThreads;
use crate::calls::{CallError, CallInfo, call_engine, cleanup_engine, create_engine};
use crate::library::{Library, PluginMetadata};

/// The host's cancellation token, as the plugin's cancellation check.
struct TokenSignal(CancellationToken);

impl CancelSignal for TokenSignal {
    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// A plugin running in this process.
pub(crate) struct InProcessPlugin {
    metadata: PluginMetadata,
    library: Library,
    /// Set by `initialize`, taken by `cleanup`. Calls hold their own `Arc`, so an engine whose
    /// call timed out is dropped only when that call finally returns.
    engine: RwLock<Option<Arc<EngineBox>>>,
    /// Per-plugin concurrency limit; a permit lives as long as the call on its thread, so a
    /// call that ignores cancellation keeps its slot (and cannot pile up threads).
    slots: Arc<Semaphore>,
    /// Where calls run: as many threads as slots, started on demand.
    threads: CallThreads,
}

impl InProcessPlugin {
    pub(crate) fn new(library: Library, metadata: PluginMetadata, slots: usize) -> Self {
        InProcessPlugin {
            threads: CallThreads::new(&metadata.name, slots),
            metadata,
            library,
            engine: RwLock::new(None),
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    pub(crate) fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    fn plugin_error(&self, message: String) -> orch_core::Error {
        orch_core::Error::Plugin {
            name: self.metadata.name.clone(),
            message,
        }
    }

    pub(crate) async fn initialize(&self, config: Value) -> orch_core::Result<()> {
        let module = self.library.module;
        let level = crate::calls::current_max_level();
        let engine = tokio::task::spawn_blocking(move || create_engine(module, level, &config))
            .await
            .map_err(|error| self.plugin_error(format!("initialization failed: {error}")))?
            .map_err(|error| self.plugin_error(error.message))?;
        *self.engine.write() = Some(Arc::new(engine));
        Ok(())
    }

    pub(crate) async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let name = self.metadata.name.as_str();
        let engine = self
            .engine
            .read()
            .clone()
            .ok_or_else(|| TaskError::fatal(format!("plugin {name} is not initialized")))?;
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TaskError::retryable(format!("plugin {name} is shut down")))?;
        let call = CallInfo {
            task_id: ctx.task_id().to_string(),
            engine: ctx.engine().to_owned(),
            attempt: ctx.attempt(),
            max_attempts: ctx.max_attempts(),
        };
        let signal = TokenSignal(ctx.cancellation().clone());
        let result = self
            .threads
            .run(move || {
                let _permit = permit;
                call_engine(&engine, &call, &signal, &input.to_string())
            })
            .await
            .unwrap_or_else(|_| Err(CallError::host("no thread to run the call", true)));
        result.map_err(|error| error.into_task_error(name))
    }

    pub(crate) async fn cleanup(&self) -> orch_core::Result<()> {
        let Some(engine) = self.engine.write().take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || cleanup_engine(&engine))
            .await
            .map_err(|error| self.plugin_error(format!("cleanup failed: {error}")))?
            .map_err(|error| self.plugin_error(error.message))
    }
}

/// Capabilities as orch-core spells them.
pub(crate) fn capabilities(metadata: &PluginMetadata) -> Vec<Capability> {
    metadata
        .engines
        .iter()
        .map(Capability::engine)
        .chain(metadata.capabilities.iter().map(Capability::named))
        .collect()
}
