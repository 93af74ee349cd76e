//! Several processes sharing one PostgreSQL: each process that runs `work` claims from the same
//! queue, and a task whose process dies is rescued by another once its lease expires.
//!
//! ```sh
//! export DATABASE_URL=postgres://orch:secret@localhost/orch
//! cargo run --example postgres_workers --features postgres -- work     # in two or three terminals
//! cargo run --example postgres_workers --features postgres -- produce 200
//! ```
//!
//! Each worker prints the tasks it ran; stop it with Ctrl-C (it finishes what it runs, then
//! gives the rest back).

use std::sync::Arc;
use std::time::Duration;

use orch::storage::{PostgresBackend, PostgresOptions};
use orch::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, processor_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("set DATABASE_URL=postgres://user:password@host/database"))?;
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_else(|| "work".to_owned());
    let backend: SharedBackend = Arc::new(
        PostgresBackend::connect_with(&url, PostgresOptions::default().with_pool_size(8)).await?,
    );
    let node = format!("worker-{}", std::process::id());
    match role.as_str() {
        "produce" => {
            let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
            // A producer needs no engine: it only dispatches.
            let orch = Orchestrator::builder(backend).build().await?;
            let specs = (0..count)
                .map(|n| TaskSpec::new("render").payload(json!({ "page": n })))
                .collect();
            let created = orch.dispatch_many(specs).await?;
            println!("dispatched {} tasks", created.len());
            orch.shutdown(Duration::from_secs(1)).await;
        }
        "work" => {
            let me = node.clone();
            let orch = Orchestrator::builder(backend)
                .config(
                    OrchestratorConfig::default()
                        .with_node_id(node)
                        // A dead process's tasks are rescued this long after it stopped renewing.
                        .with_lease(Duration::from_secs(15)),
                )
                .engine(
                    "render",
                    processor_fn(move |ctx, input: Value| {
                        let me = me.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            println!("{me}: page {} (attempt {})", input["page"], ctx.attempt());
                            Ok(json!({ "rendered_by": me }))
                        }
                    }),
                )
                .build()
                .await?;
            println!("working; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            let report = orch.shutdown(Duration::from_secs(10)).await;
            println!("stopped (gave back {} attempts)", report.abandoned);
        }
        other => anyhow::bail!("unknown role {other:?}: use `work` or `produce <count>`"),
    }
    Ok(())
}
