//! Pickup latency on an idle queue: from just before a task is dispatched to its engine's
//! start, one task at a time, with the idle loops waiting for their wake-ups in between.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use orch::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, processor_fn};
use serde_json::Value;
use tokio::sync::mpsc;

/// The probe engine's name.
const ENGINE: &str = "probe";

/// Latencies in milliseconds, each list sorted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pickup {
    /// From just before the dispatch to the engine's start.
    pub(crate) pickup_ms: Vec<f64>,
    /// The dispatch call alone.
    pub(crate) dispatch_ms: Vec<f64>,
}

/// Measures `samples` pickups (after 20 to warm up the connections), 5 ms apart, on an
/// orchestrator over `backend` with `config`. With `other`, the tasks are created through that
/// backend instead, as another process on the same database would (the orchestrator hears of
/// them through the backend's change signals); without, through `Orchestrator::dispatch`.
pub(crate) async fn pickup_latency(
    backend: SharedBackend,
    other: Option<SharedBackend>,
    config: OrchestratorConfig,
    samples: usize,
) -> anyhow::Result<Pickup> {
    let (started_tx, mut started) = mpsc::unbounded_channel::<Instant>();
    let orch = Orchestrator::builder(backend)
        .config(config)
        .engine(
            ENGINE,
            processor_fn(move |_ctx, _input| {
                started_tx.send(Instant::now()).ok();
                std::future::ready(Ok(Value::Null))
            }),
        )
        .build()
        .await
        .context("building the orchestrator")?;
    for _ in 0..20 {
        let task = orch.dispatch(TaskSpec::new(ENGINE)).await?;
        orch.wait_for(task.id, Duration::from_secs(30)).await?;
        started.recv().await;
    }
    let mut measured = Pickup {
        pickup_ms: Vec::with_capacity(samples),
        dispatch_ms: Vec::with_capacity(samples),
    };
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = Instant::now();
        match &other {
            Some(client) => {
                client
                    .create_tasks(vec![TaskSpec::new(ENGINE).into_new_task()?])
                    .await?;
            }
            None => {
                orch.dispatch(TaskSpec::new(ENGINE)).await?;
            }
        }
        let dispatched = before.elapsed();
        let at = tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .context("a task was not picked up within 30 s")?
            .context("the engine is gone")?;
        measured
            .pickup_ms
            .push(at.duration_since(before).as_secs_f64() * 1e3);
        measured.dispatch_ms.push(dispatched.as_secs_f64() * 1e3);
    }
    orch.shutdown(Duration::from_secs(5)).await;
    measured.pickup_ms.sort_by(f64::total_cmp);
    measured.dispatch_ms.sort_by(f64::total_cmp);
    Ok(measured)
}
