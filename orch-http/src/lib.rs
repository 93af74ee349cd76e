//! # orch-http
//!
//! The HTTP front of orch: an axum [`Router`](axum::Router) over an
//! [`Orchestrator`](orch_core::Orchestrator) that applications mount in their own server. It
//! depends on orch-core alone, so an application with its own backend mounts it unchanged. The
//! daemon that runs it on SQLite or PostgreSQL is the separate package `orchd`
//! (`orch-http/orchd/`).
//!
//! How the crate is laid out:
//! - [`router`] (`router.rs`): the routes with their middleware; [`AppState`] (`state.rs`): what
//!   they share, in parts each handler takes through axum's `FromRef`.
//! - [`config`]: [`HttpConfig`], validated once.
//! - [`auth`]: roles, HS256 JWTs with `exp`/`iat`/`iss`/`aud`/`sub` required and rotating
//!   keys, the [`Authed`] extractor that checks token, its user (revocation), role and per-user
//!   rate limit; [`auth::users`]: Argon2id hashes, lockout across processes, disable, delete,
//!   re-password, stored in the backend's key-value space; security events with refusals
//!   summarised.
//! - [`webhook`]: Stripe's signature scheme, tolerance, rotation, and replay refusal across
//!   processes and restarts.
//! - [`client_ip`]: who the client is (the socket peer, or the nearest untrusted
//!   `X-Forwarded-For` hop behind trusted proxies).
//! - [`ratelimit`]: bounded GCRA limiters per user and endpoint, per client address (IPv6 per
//!   network), per client address on login.
//! - [`metrics`]: ORCH-Next's Prometheus metrics in the classic text format.
//! - [`routes`]: one module per area (`jobs`, `locks`, `sse`, `auth`, `webhook`, `health`,
//!   `misc`); [`openapi`]: the generated document at `/openapi.json`.
//! - [`serve`] (`server.rs`): the lean HTTP/1.1 server `orchd` runs the router on, with
//!   header, body and write timeouts and a connection cap ([`server::ServerOptions`]), over
//!   plain TCP or a [`server::Handshake`] (orchd's TLS).
//! - [`Clock`]: injectable time for token expiry, lockout, limits and webhook tolerance.
//!
//! Every 4xx is JSON `{"error": "...", "field": ...}` ([`ApiError`]); no request data is
//! unwrapped and a panic in a handler becomes a 500 JSON error.

pub mod auth;
mod batch;
pub mod client_ip;
mod clock;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
mod router;
pub mod routes;
pub mod server;
mod state;
pub mod webhook;
mod whole;

pub use auth::{Authed, Role};
pub use clock::Clock;
pub use config::{ConfigError, HttpConfig, Secret};
pub use error::ApiError;
pub use orch_core;
pub use router::router;
pub use server::serve;
pub use state::AppState;
