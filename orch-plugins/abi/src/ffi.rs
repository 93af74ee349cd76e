//! The types that cross the boundary between the host and a plugin. All are `#[repr(C)]` and
//! derive [`StableAbi`], so abi_stable checks their layout when the host loads a plugin.
//!
//! Changing any of them is a breaking change of the interface: bump [`PROTOCOL_VERSION`] (and
//! the crate's version). Fields may only be *appended* to [`PluginMod`] after its
//! `last_prefix_field`; older hosts then ignore them and newer hosts see them as absent.
//!
//! [`PROTOCOL_VERSION`]: crate::PROTOCOL_VERSION

// abi_stable's derives and `#[sabi_trait]` expand to items that trip these lints on current
// rustc; the expansions are abi_stable's, not ours, so the allows are scoped to this module.
#![allow(
    non_local_definitions,
    reason = "abi_stable's derive macros implement traits inside consts"
)]
#![allow(
    non_camel_case_types,
    reason = "#[sabi_trait] generates types named `Trait_TO` and `Trait_MV`"
)]
#![allow(
    missing_docs,
    reason = "#[sabi_trait] generates undocumented helper items (`Trait_MV`, `Trait_CTO`)"
)]
#![allow(
    unreachable_pub,
    reason = "#[sabi_trait] generates pub helper items in a private module"
)]
#![allow(
    unsafe_code,
    reason = "#[sabi_trait] expands to unsafe impls and blocks that abi_stable vouches for"
)]
#![allow(
    clippy::needless_lifetimes,
    reason = "#[sabi_trait] spells out lifetimes in generated methods"
)]

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::RRef;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RStr, RString};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

/// What a plugin says about itself. Static data in the plugin's root module: the host reads it
/// right after the layout check, before any engine is created.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct PluginInfo {
    /// A stable, unique name (`echo`).
    pub name: RStr<'static>,
    /// The plugin's own version (`1.2.0`).
    pub version: RStr<'static>,
    /// One line on what it does.
    pub description: RStr<'static>,
    /// The names of the engines it serves as.
    pub engines: RSlice<'static, RStr<'static>>,
    /// Other named capabilities (free-form, e.g. `pure`).
    pub capabilities: RSlice<'static, RStr<'static>>,
}

/// How bad a log line is, as forwarded to the host's `tracing`.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something is off.
    Warn = 2,
    /// Worth knowing in production.
    Info = 3,
    /// For debugging.
    Debug = 4,
    /// Very verbose.
    Trace = 5,
}

impl LogLevel {
    /// The level's lowercase name (`info`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    /// Parses [`LogLevel::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// What the host gives a plugin when it creates an engine.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct HostServices {
    /// Forwards one log line to the host. Arguments: the plugin's name, the level, the message.
    /// The host never panics out of it.
    pub log: extern "C" fn(RStr<'_>, LogLevel, RStr<'_>),
    /// The most verbose level the host wants (lines above it are not sent).
    pub max_log_level: LogLevel,
}

/// The kind of a [`PluginError`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is not acceptable; no retry will fix it.
    InvalidInput = 0,
    /// The work failed.
    Failed = 1,
    /// The plugin panicked (caught at the boundary).
    Panicked = 2,
    /// The call stopped because the host asked it to.
    Cancelled = 3,
    /// The configuration given at initialization is not acceptable.
    Config = 4,
}

impl ErrorKind {
    /// The kind's snake_case name (`invalid_input`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Failed => "failed",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Config => "config",
        }
    }

    /// Parses [`ErrorKind::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "invalid_input" => ErrorKind::InvalidInput,
            "failed" => ErrorKind::Failed,
            "panicked" => ErrorKind::Panicked,
            "cancelled" => ErrorKind::Cancelled,
            "config" => ErrorKind::Config,
            _ => return None,
        })
    }
}

/// A structured error from a plugin. `retryable` decides whether the orchestrator tries the
/// task again (while attempts are left).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A short, human readable cause.
    pub message: RString,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Structured details as JSON text, if any.
    pub details: ROption<RString>,
}

impl PluginError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        PluginError {
            kind,
            message: RString::from(message.into()),
            retryable,
            details: ROption::RNone,
        }
    }

    /// A failure that another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message, true)
    }

    /// A failure that no retry will fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message, false)
    }

    /// Bad input: never retried.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message, false)
    }

    /// Bad configuration: the plugin cannot start.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message, false)
    }

    /// The call stopped because [`CallContext::is_cancelled`] turned true.
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "cancelled", true)
    }

    /// The plugin panicked; `message` is the panic's payload.
    pub fn panicked(message: &str) -> Self {
        Self::new(
            ErrorKind::Panicked,
            format!("plugin panicked: {message}"),
            true,
        )
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: &serde_json::Value) -> Self {
        self.details = ROption::RSome(RString::from(details.to_string()));
        self
    }

    /// The message as a `&str`.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }

    /// The details, parsed (`None` if absent or not JSON).
    pub fn details(&self) -> Option<serde_json::Value> {
        match &self.details {
            ROption::RSome(text) => serde_json::from_str(text.as_str()).ok(),
            ROption::RNone => None,
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for PluginError {}

/// The host's cancellation check, as the plugin sees it.
#[sabi_trait]
pub trait CancelSignal: Sync {
    /// Whether the call has been told to stop (timeout, cancellation, shutdown).
    #[sabi(last_prefix_field)]
    fn is_cancelled(&self) -> bool;
}

/// What a plugin gets with each call: which task and attempt, and a cancellation check.
#[repr(C)]
#[derive(StableAbi)]
pub struct CallContext<'a> {
    task_id: RStr<'a>,
    engine: RStr<'a>,
    attempt: u32,
    max_attempts: u32,
    cancel: CancelSignal_TO<'a, RRef<'a, ()>>,
}

impl<'a> CallContext<'a> {
    /// A context over the host's data. Used by hosts (and plugin unit tests).
    pub fn new<C: CancelSignal>(
        task_id: &'a str,
        engine: &'a str,
        attempt: u32,
        max_attempts: u32,
        cancel: &'a C,
    ) -> Self {
        CallContext {
            task_id: RStr::from_str(task_id),
            engine: RStr::from_str(engine),
            attempt,
            max_attempts,
            cancel: CancelSignal_TO::from_ptr(cancel, sabi_trait::TD_Opaque),
        }
    }

    /// The task being run (a UUID in text form).
    pub fn task_id(&self) -> &str {
        self.task_id.as_str()
    }

    /// The engine the task was dispatched to.
    pub fn engine(&self) -> &str {
        self.engine.as_str()
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether the host wants this call to stop (the task timed out or was cancelled). A
    /// long-running engine should check it regularly and return [`PluginError::cancelled`]:
    /// the host cannot stop a thread that is running plugin code.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl std::fmt::Debug for CallContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("task_id", &self.task_id())
            .field("engine", &self.engine())
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// A cancellation signal that never fires, for calls made outside a task (and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverCancelled;

impl CancelSignal for NeverCancelled {
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// The engine as the host sees it: JSON text in and out. Plugin authors implement
/// [`Engine`](crate::Engine) instead; [`export_plugin!`](crate::export_plugin) wraps it in this
/// interface with a `catch_unwind` around every call.
#[sabi_trait]
pub trait EngineFfi: Send + Sync {
    /// Checks an input (JSON text) without running anything, for hosts that check inputs
    /// early. Refusals are not retryable.
    fn validate(&self, input: RStr<'_>) -> RResult<(), PluginError>;
    /// Runs one attempt: JSON text in, JSON text out. Validates the input first (a refusal
    /// comes back with `retryable: false`), so a host need not call `validate` as well.
    fn execute(&self, ctx: &CallContext<'_>, input: RStr<'_>) -> RResult<RString, PluginError>;
    /// Releases what the engine holds; no call follows.
    #[sabi(last_prefix_field)]
    fn cleanup(&self) -> RResult<(), PluginError>;
}

/// An engine owned by the host.
pub type EngineBox = EngineFfi_TO<'static, RBox<()>>;

/// Creates an engine: the host's services and the configuration (JSON text) in.
pub type NewEngineFn = extern "C" fn(HostServices, RStr<'_>) -> RResult<EngineBox, PluginError>;

/// A plugin's root module: what the host finds in the library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
pub struct PluginMod {
    /// The [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) the plugin was built against.
    pub protocol_version: u32,
    /// What the plugin says about itself.
    pub info: PluginInfo,
    /// Creates the engine (called once, at initialization).
    /// (The type is spelled out, not [`NewEngineFn`]: abi_stable's derive needs to see it.)
    #[sabi(last_prefix_field)]
    pub new_engine: extern "C" fn(HostServices, RStr<'_>) -> RResult<EngineBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "orch_plugin";
    const NAME: &'static str = "orch plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
