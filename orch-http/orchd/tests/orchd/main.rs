//! Tests of the daemon package: the `orchd` binary spawned on a fresh data directory (SQLite,
//! and PostgreSQL when one can be started), and its YAML config and environment variables.

mod backups;
mod daemon;
mod data_dir;
mod deploy;
mod hardening;
mod logs;
mod monitoring;
mod notifications;
mod postgres;
mod postgres_server;
mod settings;
mod traces;
mod two_nodes;
