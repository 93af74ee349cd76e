//! Mounting orch's HTTP API in your own axum application: your routes and orch's side by side
//! on one server, over an orchestrator your application built (on any backend).
//!
//! Run it with `cargo run --example axum_app --features http`, then:
//!
//! ```sh
//! TOKEN=$(curl -s -X POST localhost:3000/orch/auth/login -H 'Content-Type: application/json' \
//!   -d '{"username":"app","password":"an app password"}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
//! curl -s -X POST localhost:3000/orch/dispatch -H "Authorization: Bearer $TOKEN" \
//!   -H 'Content-Type: application/json' -d '{"core_id":"greet","payload":"world","stay":true}'
//! curl -s localhost:3000/hello
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use orch::http::auth::Role;
use orch::http::{AppState, HttpConfig, Secret};
use orch::{MemoryBackend, Orchestrator, processor_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .engine(
            "greet",
            processor_fn(|_ctx, input: Value| async move {
                Ok(format!("hello, {}", input.as_str().unwrap_or("you")).into())
            }),
        )
        .build()
        .await?;
    // A real application reads the signing secret from its own configuration.
    let secret = std::env::var("JWT_SECRET")
        .unwrap_or_else(|_| "an example secret of at least 32 bytes!".to_owned());
    let state = AppState::new(orch.clone(), HttpConfig::new(Secret::new(secret)))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    state
        .users()
        .create("app", "an app password", Role::Operator, now)
        .await?;

    let app = Router::new()
        .route("/hello", get(|| async { "your own route" }))
        .nest("/orch", orch::http::router(state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        // Open event streams end so the server can drain.
        state.begin_shutdown();
    })
    .await?;
    orch.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
