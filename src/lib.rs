//! placeholder
pub use orch_core::*;
