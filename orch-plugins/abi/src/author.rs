//! The plugin author's side: the [`Engine`] trait, log forwarding, and what
//! [`export_plugin!`](crate::export_plugin) expands to.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Once, OnceLock};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};
use serde_json::Value;

use crate::ffi::{
    CallContext, EngineBox, EngineFfi, EngineFfi_TO, HostServices, LogLevel, NewEngineFn,
    PluginError, PluginInfo, PluginMod, PluginModRef,
};

/// An engine, as a plugin author writes it: synchronous, JSON in and JSON out.
///
/// Contract: `execute` may be called from several host threads at once (up to the host's
/// per-plugin concurrency limit), so shared state needs `Sync`. A call that runs long should
/// check [`CallContext::is_cancelled`] and return [`PluginError::cancelled`] once it is true.
/// A panic in any method is caught at the boundary and reported as a "plugin panicked" error;
/// it never unwinds into the host.
pub trait Engine: Send + Sync + 'static {
    /// Checks the input before the attempt runs. A refusal fails the task without retry.
    fn validate(&self, input: &Value) -> Result<(), PluginError> {
        let _ = input;
        Ok(())
    }

    /// Runs one attempt.
    fn execute(&self, ctx: &CallContext<'_>, input: Value) -> Result<Value, PluginError>;

    /// Releases what the engine holds; called once, after the last call.
    fn cleanup(&self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// The host's services for this plugin: set once, when the host creates the engine.
static HOST: OnceLock<(HostServices, &'static str)> = OnceLock::new();

/// Whether a line at `level` would reach the host (the host told us its most verbose level).
pub fn log_enabled(level: LogLevel) -> bool {
    match HOST.get() {
        Some((host, _)) => level <= host.max_log_level,
        None => level <= LogLevel::Info,
    }
}

/// Sends one log line to the host's `tracing` (to stderr before the host has connected).
/// Prefer the macros [`error!`](crate::error), [`warn!`](crate::warn), [`info!`](crate::info),
/// [`debug!`](crate::debug), [`trace!`](crate::trace).
pub fn log(level: LogLevel, message: &str) {
    match HOST.get() {
        Some((host, plugin)) => {
            if level <= host.max_log_level {
                (host.log)(RStr::from_str(plugin), level, RStr::from_str(message));
            }
        }
        None => eprintln!("[{}] {message}", level.as_str()),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Runs `f`, turning a panic into [`PluginError::panicked`].
fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(PluginError::panicked(&panic_message(&*payload))))
}

fn parse_input(input: RStr<'_>) -> Result<Value, PluginError> {
    serde_json::from_str(input.as_str())
        .map_err(|error| PluginError::invalid_input(format!("input is not valid JSON: {error}")))
}

/// An author's engine behind the FFI interface, every call guarded.
struct Guarded<E: Engine> {
    /// `Option` so that `Drop` can run the engine's destructor inside `catch_unwind`.
    engine: Option<E>,
}

impl<E: Engine> Guarded<E> {
    fn engine(&self) -> Result<&E, PluginError> {
        self.engine
            .as_ref()
            .ok_or_else(|| PluginError::fatal("engine already dropped"))
    }
}

impl<E: Engine> EngineFfi for Guarded<E> {
    fn validate(&self, input: RStr<'_>) -> RResult<(), PluginError> {
        guard(|| self.engine()?.validate(&parse_input(input)?)).into()
    }

    fn execute(&self, ctx: &CallContext<'_>, input: RStr<'_>) -> RResult<RString, PluginError> {
        guard(|| {
            let engine = self.engine()?;
            let input = parse_input(input)?;
            // Validation runs here too (one JSON parse for both); a refusal is never retried.
            engine.validate(&input).map_err(|mut error| {
                error.retryable = false;
                error
            })?;
            let output = engine.execute(ctx, input)?;
            Ok(RString::from(output.to_string()))
        })
        .into()
    }

    fn cleanup(&self) -> RResult<(), PluginError> {
        guard(|| self.engine()?.cleanup()).into()
    }
}

impl<E: Engine> Drop for Guarded<E> {
    fn drop(&mut self) {
        let engine = self.engine.take();
        if catch_unwind(AssertUnwindSafe(move || drop(engine))).is_err() {
            log(LogLevel::Error, "the engine's destructor panicked");
        }
    }
}

/// Forwards the plugin's panic messages to the host's log instead of the plugin's stderr.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = panic_message(info.payload());
            log(LogLevel::Error, &format!("panicked{location}: {message}"));
        }));
    });
}

/// What [`export_plugin!`](crate::export_plugin)'s `new_engine` entry point runs.
#[doc(hidden)]
pub fn new_engine<E, F>(
    plugin: &'static str,
    host: HostServices,
    config: RStr<'_>,
    constructor: F,
) -> RResult<EngineBox, PluginError>
where
    E: Engine,
    F: FnOnce(Value) -> Result<E, PluginError>,
{
    guard(|| {
        let _ = HOST.set((host, plugin));
        install_panic_hook();
        let config: Value = serde_json::from_str(config.as_str())
            .map_err(|error| PluginError::config(format!("config is not valid JSON: {error}")))?;
        let engine = constructor(config)?;
        Ok(EngineFfi_TO::from_value(
            Guarded {
                engine: Some(engine),
            },
            TD_Opaque,
        ))
    })
    .into()
}

/// Builds the root module [`export_plugin!`](crate::export_plugin) exports.
#[doc(hidden)]
pub fn root_module(info: PluginInfo, new_engine: NewEngineFn) -> PluginModRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    PluginMod {
        protocol_version: crate::PROTOCOL_VERSION,
        info,
        new_engine,
    }
    .leak_into_prefix()
}
