//! # orch-plugin-abi
//!
//! The interface between orch and engine plugins shipped as `cdylib` shared libraries. A
//! plugin author depends on this crate only (no tokio, no orch-core) and writes:
//!
//! ```
//! use orch_plugin_abi::{CallContext, Engine, PluginError, export_plugin};
//! use serde_json::Value;
//!
//! struct Echo;
//!
//! impl Engine for Echo {
//!     fn execute(&self, _ctx: &CallContext<'_>, input: Value) -> Result<Value, PluginError> {
//!         Ok(input)
//!     }
//! }
//!
//! export_plugin! {
//!     name: "echo",
//!     version: env!("CARGO_PKG_VERSION"),
//!     description: "returns its input",
//!     engines: ["echo"],
//!     engine: |_config| Ok(Echo),
//! }
//! # fn main() {}
//! ```
//!
//! How the crate is laid out:
//! - [`ffi`]: the `#[repr(C)]` types that cross the boundary, checked by abi_stable when the
//!   host loads the library: the root module [`PluginMod`] (protocol version, [`PluginInfo`],
//!   engine constructor), the engine object [`EngineFfi`], [`CallContext`], [`PluginError`],
//!   [`HostServices`] (log forwarding).
//! - The author's side: the [`Engine`] trait, the [`export_plugin!`] macro (which wraps every
//!   entry point in `catch_unwind`, so a panic becomes a "plugin panicked" error instead of
//!   aborting the host), and log macros ([`info!`] and friends) that forward to the host's
//!   `tracing`.
//!
//! Versioning: [`PROTOCOL_VERSION`] names the interface; a host refuses a plugin built for
//! another protocol. abi_stable additionally refuses a plugin whose types' layout differs.

pub mod ffi;

mod author;

pub use author::{Engine, log, log_enabled};
pub use ffi::{
    CallContext, CancelSignal, EngineBox, EngineFfi, ErrorKind, HostServices, LogLevel,
    NeverCancelled, PluginError, PluginInfo, PluginMod, PluginModRef,
};
pub use serde_json;

/// The version of the plugin protocol this crate speaks. A host loads only plugins built for a
/// protocol it supports. Bumped on every incompatible change of the types in [`ffi`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The exported symbol the host looks for (abi_stable's root module loader name).
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// What the macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::author::{new_engine, root_module};
    pub use crate::ffi::{EngineBox, HostServices, PluginError, PluginInfo, PluginModRef};
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use abi_stable::std_types::{RResult, RSlice, RStr};
}

/// Exports an [`Engine`] as an orch plugin: the library's root module with its info, and an
/// engine constructor. Use it once, at the root of a `cdylib` crate.
///
/// `engine` is a `FnOnce(serde_json::Value) -> Result<E, PluginError>` called with the
/// configuration the host passes at registration. `capabilities` (other named capabilities)
/// is optional. Every call into the plugin runs inside `catch_unwind`; build plugins with
/// `panic = "unwind"` (the default).
///
/// See the crate documentation for an example.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        description: $description:expr,
        engines: [$($engine:expr),* $(,)?],
        $(capabilities: [$($capability:expr),* $(,)?],)?
        engine: $constructor:expr $(,)?
    ) => {
        const _: () = {
            use $crate::__private as p;

            const ENGINES: &[p::RStr<'static>] = &[$(p::RStr::from_str($engine)),*];
            const CAPABILITIES: &[p::RStr<'static>] = &[$($(p::RStr::from_str($capability)),*)?];
            const INFO: p::PluginInfo = p::PluginInfo {
                name: p::RStr::from_str($name),
                version: p::RStr::from_str($version),
                description: p::RStr::from_str($description),
                engines: p::RSlice::from_slice(ENGINES),
                capabilities: p::RSlice::from_slice(CAPABILITIES),
            };

            extern "C" fn new_engine(
                host: p::HostServices,
                config: p::RStr<'_>,
            ) -> p::RResult<p::EngineBox, p::PluginError> {
                p::new_engine($name, host, config, $constructor)
            }

            fn root_module() -> p::PluginModRef {
                p::root_module(INFO, new_engine)
            }

            extern "C" fn erased_root_module() -> p::RootModuleResult {
                p::__call_root_module_loader(root_module)
            }

            // The symbol abi_stable's loader looks up (what `#[export_root_module]` emits).
            #[allow(unsafe_code, reason = "exporting a symbol is how a plugin is found")]
            #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
            static ROOT_MODULE_LOADER: p::LibHeader = {
                // SAFETY: the constructor returns the root module of type `PluginModRef`, which
                // is what `from_constructor` is instantiated with.
                #[allow(unsafe_code, reason = "abi_stable's header constructor is unsafe")]
                unsafe {
                    p::LibHeader::from_constructor::<p::PluginModRef>(
                        erased_root_module,
                        p::CheckTypeLayout::Yes,
                    )
                }
            };
        };
    };
}

/// Logs at a level through the host's `tracing` (see [`log`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log_enabled($level) {
            $crate::log($level, &::std::format!($($arg)+));
        }
    };
}

/// Logs an error line through the host's `tracing`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::__log_at!($crate::LogLevel::Error, $($arg)+) };
}

/// Logs a warning through the host's `tracing`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::__log_at!($crate::LogLevel::Warn, $($arg)+) };
}

/// Logs an info line through the host's `tracing`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::__log_at!($crate::LogLevel::Info, $($arg)+) };
}

/// Logs a debug line through the host's `tracing`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::__log_at!($crate::LogLevel::Debug, $($arg)+) };
}

/// Logs a trace line through the host's `tracing`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::__log_at!($crate::LogLevel::Trace, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_looks_up() {
        assert_eq!(
            ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    struct Boom;
    impl Engine for Boom {
        fn validate(&self, input: &serde_json::Value) -> Result<(), PluginError> {
            if input == "refuse" {
                // Claims retryable; a refused input must still not be retried.
                return Err(PluginError::retryable("refused"));
            }
            Ok(())
        }
        fn execute(
            &self,
            ctx: &CallContext<'_>,
            input: serde_json::Value,
        ) -> Result<serde_json::Value, PluginError> {
            if input == "panic" {
                panic!("boom in {}", ctx.task_id());
            }
            Ok(input)
        }
    }

    extern "C" fn quiet(
        _: abi_stable::std_types::RStr<'_>,
        _: LogLevel,
        _: abi_stable::std_types::RStr<'_>,
    ) {
    }

    #[test]
    fn a_panic_in_execute_becomes_an_error() {
        let host = HostServices {
            log: quiet,
            max_log_level: LogLevel::Error,
        };
        let engine = author::new_engine("boom", host, "null".into(), |_| Ok(Boom))
            .into_result()
            .unwrap();
        let ctx = CallContext::new("t1", "boom", 1, 1, &NeverCancelled);
        let error = engine
            .execute(&ctx, "\"panic\"".into())
            .into_result()
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Panicked);
        assert_eq!(error.message(), "plugin panicked: boom in t1");
        let ok = engine.execute(&ctx, "[1]".into()).into_result().unwrap();
        assert_eq!(ok.as_str(), "[1]");
        let bad = engine.execute(&ctx, "{".into()).into_result().unwrap_err();
        assert_eq!(bad.kind, ErrorKind::InvalidInput);
        let refused = engine
            .execute(&ctx, "\"refuse\"".into())
            .into_result()
            .unwrap_err();
        assert_eq!((refused.message(), refused.retryable), ("refused", false));
        assert!(engine.validate("\"refuse\"".into()).is_rerr());
    }
}
