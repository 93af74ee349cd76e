//! The HTTP front of orch and its daemon `orchd`.
//!
//! Not built yet: this crate is a placeholder so the workspace layout is fixed.

pub use orch_core;
