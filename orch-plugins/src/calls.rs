//! One call into a loaded engine, shared by the in-process adapter and the child process:
//! the host services handed to plugins (log forwarding), the synchronous call, and the mapping
//! of plugin errors to orch-core's [`TaskError`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::std_types::RStr;
use orch_core::TaskError;
use orch_plugin_abi::{
    CallContext, CancelSignal, EngineBox, ErrorKind, HostServices, LogLevel, PluginError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::level_filters::LevelFilter;

/// Forwards a plugin's log line to this process's `tracing` (target `orch_plugins::plugin`).
pub(crate) fn emit_log(plugin: &str, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(target: "orch_plugins::plugin", plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "orch_plugins::plugin", plugin, "{message}"),
        LogLevel::Info => tracing::info!(target: "orch_plugins::plugin", plugin, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "orch_plugins::plugin", plugin, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "orch_plugins::plugin", plugin, "{message}"),
    }
}

extern "C" fn host_log(plugin: RStr<'_>, level: LogLevel, message: RStr<'_>) {
    // Never unwind into plugin code.
    let _ = catch_unwind(|| emit_log(plugin.as_str(), level, message.as_str()));
}

/// The most verbose level this process's `tracing` currently records.
pub(crate) fn current_max_level() -> LogLevel {
    match LevelFilter::current() {
        LevelFilter::OFF | LevelFilter::ERROR => LogLevel::Error,
        LevelFilter::WARN => LogLevel::Warn,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

/// The services an in-process host hands to a plugin.
pub(crate) fn host_services(max_log_level: LogLevel) -> HostServices {
    HostServices {
        log: host_log,
        max_log_level,
    }
}

/// Which attempt a call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallInfo {
    pub(crate) task_id: String,
    pub(crate) engine: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
}

/// A plugin error with the stage it came from, as it crosses the process boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CallError {
    pub(crate) kind: String,
    pub(crate) message: String,
    pub(crate) retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<Value>,
}

impl CallError {
    fn from_plugin(error: &PluginError) -> Self {
        CallError {
            kind: error.kind.as_str().to_owned(),
            message: error.message().to_owned(),
            // A refused input fails the task without retry, whatever the plugin says.
            retryable: error.retryable && error.kind != ErrorKind::InvalidInput,
            details: error.details(),
        }
    }

    pub(crate) fn host(message: impl Into<String>, retryable: bool) -> Self {
        CallError {
            kind: "host".to_owned(),
            message: message.into(),
            retryable,
            details: None,
        }
    }

    /// The error orch-core records for the attempt.
    pub(crate) fn into_task_error(self, plugin: &str) -> TaskError {
        let mut details = json!({ "plugin": plugin, "kind": self.kind });
        if let Some(inner) = self.details {
            details["details"] = inner;
        }
        TaskError {
            message: self.message,
            retryable: self.retryable,
            details: Some(details),
        }
    }
}

/// Runs one attempt on the calling thread (the plugin validates the input first). The engine
/// catches its own panics (the authoring macro wraps every entry point); this only adds JSON
/// handling and the error mapping.
pub(crate) fn call_engine(
    engine: &EngineBox,
    call: &CallInfo,
    cancel: &impl CancelSignal,
    input: &str,
) -> Result<Value, CallError> {
    let ctx = CallContext::new(
        &call.task_id,
        &call.engine,
        call.attempt,
        call.max_attempts,
        cancel,
    );
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        engine
            .execute(&ctx, RStr::from_str(input))
            .into_result()
            .map_err(|error| CallError::from_plugin(&error))
    }));
    let output = match outcome {
        Ok(result) => result?,
        Err(_) => return Err(CallError::host("plugin panicked across the boundary", true)),
    };
    serde_json::from_str(output.as_str())
        .map_err(|error| CallError::host(format!("plugin returned invalid JSON: {error}"), false))
}

/// Creates an engine on the calling thread.
pub(crate) fn create_engine(
    module: orch_plugin_abi::PluginModRef,
    max_log_level: LogLevel,
    config: &Value,
) -> Result<EngineBox, CallError> {
    let config = config.to_string();
    let new_engine = module.new_engine();
    new_engine(host_services(max_log_level), RStr::from_str(&config))
        .into_result()
        .map_err(|error| CallError::from_plugin(&error))
}

/// Runs the engine's cleanup on the calling thread.
pub(crate) fn cleanup_engine(engine: &EngineBox) -> Result<(), CallError> {
    engine
        .cleanup()
        .into_result()
        .map_err(|error| CallError::from_plugin(&error))
}
