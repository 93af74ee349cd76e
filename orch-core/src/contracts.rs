//! The traits an application implements: [`StorageProvider`], [`Processor`] (an engine),
//! [`EventHandler`], [`Plugin`] and [`PluginRegistry`], with a closure adapter and blanket
//! impls.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::TaskContext;
use crate::error::{Result, TaskError};
use crate::model::Event;

/// A key-value space for engines and plugins (snapshots, results). Not the task queue.
///
/// Contract: keys are non-empty UTF-8 strings of at most 1024 bytes (implementations refuse
/// others with [`Error::Invalid`](crate::Error::Invalid)); `store` overwrites; `retrieve` of a
/// missing key is `Ok(None)`; `delete` returns whether the key existed; `list` returns every key
/// starting with `prefix`, sorted. Each call is atomic on its own.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait StorageProvider: Send + Sync {
    /// Stores `value` under `key`, replacing any previous value.
    async fn store(&self, key: &str, value: Vec<u8>) -> Result<()>;
    /// The value under `key`, if any.
    async fn retrieve(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Keys starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Checks a storage key against the [`StorageProvider`] contract.
pub fn check_storage_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(crate::Error::invalid("key", "must not be empty"));
    }
    if key.len() > 1024 {
        return Err(crate::Error::invalid(
            "key",
            format!("is {} bytes long, at most 1024 allowed", key.len()),
        ));
    }
    Ok(())
}

/// An engine: turns a task's payload into a result. Registered under a name
/// ([`OrchestratorBuilder::engine`](crate::OrchestratorBuilder::engine)), it runs the tasks
/// dispatched to that name.
///
/// Contract for implementors: `process` may run concurrently for different tasks (up to the
/// orchestrator's limits); it should return soon after `ctx.cancellation()` fires (timeout,
/// cancel, shutdown), since the attempt is already recorded as ended by then; a panic is caught
/// and fails the attempt. Return [`TaskError::fatal`] for failures no retry can fix.
///
/// Contract for callers: call `validate` before `process` (the dispatcher does, and a
/// validation error fails the task without retry).
///
/// A closure is a processor through [`processor_fn`].
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Processor: Send + Sync {
    /// Checks the input before any attempt runs; a refusal fails the task without retry. The
    /// default accepts everything.
    fn validate(&self, input: &Value) -> Result<(), TaskError> {
        let _ = input;
        Ok(())
    }
    /// Runs one attempt.
    async fn process(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError>;
}

#[async_trait]
impl<P: Processor + ?Sized> Processor for Arc<P> {
    fn validate(&self, input: &Value) -> Result<(), TaskError> {
        (**self).validate(input)
    }
    async fn process(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        (**self).process(ctx, input).await
    }
}

#[async_trait]
impl<P: Processor + ?Sized> Processor for Box<P> {
    fn validate(&self, input: &Value) -> Result<(), TaskError> {
        (**self).validate(input)
    }
    async fn process(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        (**self).process(ctx, input).await
    }
}

/// A [`Processor`] made from a closure; see [`processor_fn`].
pub struct ProcessorFn<F> {
    f: F,
}

/// Makes a processor from an async closure taking the attempt's context and the task's
/// payload.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use orch_core::{processor_fn, Processor, TaskContext, TaskError, TaskId};
///
/// let upper = processor_fn(|_ctx, input: serde_json::Value| async move {
///     let text = input.as_str().ok_or_else(|| TaskError::fatal("expected a string"))?;
///     Ok(serde_json::Value::from(text.to_uppercase()))
/// });
/// let ctx = TaskContext::new(TaskId::new(), "upper");
/// assert_eq!(upper.process(ctx, "hi".into()).await, Ok("HI".into()));
/// # }
/// ```
pub fn processor_fn<F, Fut>(f: F) -> ProcessorFn<F>
where
    F: Fn(TaskContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    ProcessorFn { f }
}

#[async_trait]
impl<F, Fut> Processor for ProcessorFn<F>
where
    F: Fn(TaskContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    async fn process(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        (self.f)(ctx, input).await
    }
}

/// Receives events from the orchestrator's log.
///
/// Contract: `supported_events` returns patterns (`task.succeeded`, `task.*`, `*`) and is read
/// once at registration; `handle_event` gets matching events in sequence order, one at a time.
/// A handler that is slow lags behind and catches up from the log; it never stalls dispatch.
/// An error is logged and the handler goes on with the next event.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles one event.
    async fn handle_event(&self, event: &Event) -> Result<()>;
    /// The event patterns this handler wants.
    fn supported_events(&self) -> Vec<String>;
}

/// Something a plugin can do. A plugin with [`Capability::engine`] entries serves as those
/// engines when registered with an orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capability {
    /// The capability's name (`engine` for an engine).
    pub name: String,
    /// Its argument (the engine's name for an engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Capability {
    /// The plugin serves as the engine `name`.
    pub fn engine(name: impl Into<String>) -> Self {
        Capability {
            name: "engine".to_owned(),
            detail: Some(name.into()),
        }
    }

    /// A named capability with no argument.
    pub fn named(name: impl Into<String>) -> Self {
        Capability {
            name: name.into(),
            detail: None,
        }
    }

    /// The engine's name, if this is an engine capability.
    pub fn engine_name(&self) -> Option<&str> {
        (self.name == "engine")
            .then_some(self.detail.as_deref())
            .flatten()
    }
}

/// A plugin: an engine with a lifecycle and metadata, in process or loaded from a `cdylib`
/// (`orch-plugins`).
///
/// Contract: `initialize` is called once before any `execute`; `execute` follows the same rules
/// as [`Processor::process`]; `cleanup` is called once when the plugin is unregistered, after
/// which no more calls are made.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Plugin: Send + Sync {
    /// A stable, unique name.
    fn name(&self) -> &str;
    /// The plugin's version.
    fn version(&self) -> &str;
    /// One line on what it does.
    fn description(&self) -> &str;
    /// Prepares the plugin with its configuration.
    async fn initialize(&self, config: Value) -> Result<()>;
    /// Checks a task's input before any attempt runs (a refusal fails the task without
    /// retry). The default accepts everything.
    fn validate(&self, _input: &Value) -> Result<(), TaskError> {
        Ok(())
    }
    /// Runs one attempt of a task.
    async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError>;
    /// Releases what `initialize` took.
    async fn cleanup(&self) -> Result<()>;
    /// What the plugin can do.
    fn capabilities(&self) -> Vec<Capability>;
    /// How many times the plugin's isolated process was restarted after it died (a plugin
    /// running in process never is: the default says 0). The monitor records each restart as
    /// an event.
    fn restarts(&self) -> u64 {
        0
    }
}

/// A [`Processor`] over a [`Plugin`], so a plugin serves wherever an engine is expected.
pub(crate) struct PluginProcessor(pub(crate) Arc<dyn Plugin>);

#[async_trait]
impl Processor for PluginProcessor {
    fn validate(&self, input: &Value) -> Result<(), TaskError> {
        self.0.validate(input)
    }
    async fn process(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        self.0.execute(ctx, input).await
    }
}

/// Holds plugins by name.
///
/// Contract: `register` initializes the plugin with `config` and refuses a name already taken
/// ([`Error::PluginExists`](crate::Error::PluginExists)); `get` of an unknown name is
/// [`Error::PluginNotFound`](crate::Error::PluginNotFound); `list` is sorted by name;
/// `unregister` removes the plugin and runs its `cleanup`.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait PluginRegistry: Send + Sync {
    /// Initializes and adds a plugin.
    async fn register(&self, plugin: Arc<dyn Plugin>, config: Value) -> Result<()>;
    /// The plugin named `name`.
    fn get(&self, name: &str) -> Result<Arc<dyn Plugin>>;
    /// Every plugin, sorted by name.
    fn list(&self) -> Vec<Arc<dyn Plugin>>;
    /// Removes a plugin and runs its cleanup.
    async fn unregister(&self, name: &str) -> Result<Arc<dyn Plugin>>;
}
