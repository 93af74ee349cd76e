//! End-to-end tests of the HTTP front over real TCP: the router on a loopback listener over an
//! in-memory orchestrator (and SQLite for the daemon path), driven by reqwest.

mod common;

mod auth;
#[cfg(feature = "orchd")]
mod daemon;
mod fuzz;
mod jobs;
mod limits;
mod locks;
mod metrics;
mod roles;
mod settings;
mod sse;
mod system;
mod webhook;
