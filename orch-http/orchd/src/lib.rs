//! # orchd
//!
//! The orch daemon: [`orch_http`]'s router over SQLite or PostgreSQL (`orch-storage`), with
//! plugins (`orch-plugins`), a YAML config file and a command line. Applications that mount the
//! router in their own server depend on `orch-http` alone and build none of this.
//!
//! How the package is laid out:
//! - this library: what the binaries share and the tests check at their boundary:
//!   [`settings`] (the YAML file and environment variables, turned into an
//!   [`HttpConfig`](orch_http::HttpConfig)), [`engines`] (the built-in `echo` and `sleep`)
//!   [`tls`] (HTTPS: a rustls handshake for orch-http's server) and [`machine`] (the
//!   monitor's readings of the machine, from `sysinfo`), [`notify`] (alerts out: a signed
//!   webhook, Slack, email), [`logging`] (JSON log lines carrying the request's
//!   `correlation_id`) and [`traces`] (OpenTelemetry spans over OTLP, and the propagator
//!   that carries a task's trace context into its claim).
//! - `src/bin/orchd/`: the daemon and its subcommands (`serve`, `dispatch`, `user
//!   add|list|passwd|role|disable|enable|unlock|delete`, `backup`, `restore`, `migrate`), the
//!   log subscriber, secrets kept in the data directory.
//! - `tests/orchd/`: the daemon binary over real TCP, on SQLite and on PostgreSQL.

pub mod engines;
pub mod logging;
pub mod machine;
pub mod notify;
pub mod settings;
pub mod tls;
pub mod traces;
