//! Engines shipped as `cdylib` plugins, loaded at run time.
//!
//! Not built yet: this crate is a placeholder so the workspace layout is fixed. Until it lands,
//! implement [`orch_core::Plugin`] in process and register it with the orchestrator.

pub use orch_core;
