//! Durable backends for orch (SQLite by default, PostgreSQL for several processes).
//!
//! Not built yet: use [`orch_core::MemoryBackend`] until it lands.

pub use orch_core;
