//! End-to-end tests of the HTTP front over real TCP: the router on a loopback listener over an
//! in-memory orchestrator, driven by reqwest. (The daemon's tests are in `orchd/tests/`.)

mod common;
mod instrumented;

mod auth;
mod bounded;
mod dashboard;
mod dispatch_batch;
mod engines;
mod fuzz;
mod hardening;
mod jobs;
mod limits;
mod locks;
mod metrics;
mod nodes;
mod openapi;
mod overflow;
mod roles;
mod sessions;
mod sse;
mod system;
mod webhook;
mod workflows;
mod wrapped;
