//! The handlers, one module per area. Each takes the parts of the state it needs
//! (`State<Orchestrator>`, `State<AuthState>`, ...); a part used by one area only is defined
//! here beside its handlers ([`jobs::Dispatching`], [`sse::SseStreams`],
//! [`health::HealthCheck`], [`webhook::WebhookState`]). [`crate::router`] puts them together.

pub mod auth;
pub mod engines;
pub mod health;
pub mod jobs;
pub mod locks;
pub mod misc;
pub mod overview;
pub mod sse;
pub mod ui;
pub mod webhook;
pub mod workflows;
