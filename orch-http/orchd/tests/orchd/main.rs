//! Tests of the daemon package: the `orchd` binary spawned on a fresh data directory (SQLite,
//! and PostgreSQL when one can be started), and its YAML config and environment variables.

mod daemon;
mod hardening;
mod postgres;
mod postgres_server;
mod settings;
