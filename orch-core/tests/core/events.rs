use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use orch_core::{Event, EventHandler, Orchestrator, TaskSpec, processor_fn};

use crate::{backend, config};

async fn echo_orch() -> Orchestrator {
    Orchestrator::builder(backend())
        .config(config())
        .engine("echo", processor_fn(|_c, i| async move { Ok(i) }))
        .build()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn events_arrive_in_sequence_order_and_replay_returns_exactly_the_rest() {
    let orch = echo_orch().await;
    let mut live = orch.events().subscribe().await.unwrap();
    let created = orch
        .dispatch_many((0..20).map(|_| TaskSpec::new("echo")).collect())
        .await
        .unwrap();
    for c in &created {
        orch.wait_for(c.task.id, Duration::from_secs(10))
            .await
            .unwrap();
    }
    // queued + started + succeeded per task
    let mut seen = Vec::new();
    while seen.len() < 60 {
        let event = live.next().await.unwrap().unwrap();
        seen.push(event);
    }
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "gap or disorder in the live stream"
        );
    }
    for c in &created {
        let kinds: Vec<_> = seen
            .iter()
            .filter(|e| e.task_id == Some(c.task.id))
            .map(|e| e.kind.as_str().to_owned())
            .collect();
        assert_eq!(kinds, ["task.queued", "task.started", "task.succeeded"]);
    }
    let pivot = seen[24].seq;
    let rest = orch.events().replay(pivot, 1000).await.unwrap();
    let expected: Vec<Event> = seen[25..].iter().map(|e| (**e).clone()).collect();
    assert_eq!(
        rest, expected,
        "replay after {pivot} must return exactly the rest"
    );
    // A subscription from an old sequence replays, then continues live, with no duplicates.
    let mut from = orch.events().subscribe_from(pivot);
    let first = from.next().await.unwrap().unwrap();
    assert_eq!(first.seq, pivot + 1);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_lagging_subscriber_catches_up_from_the_log() {
    let orch = Orchestrator::builder(backend())
        .config(
            config().with_tuning(
                orch_core::Tuning::default()
                    .with_poll_interval(Duration::from_millis(200))
                    .with_event_buffer(16),
            ),
        )
        .engine("echo", processor_fn(|_c, i| async move { Ok(i) }))
        .build()
        .await
        .unwrap();
    let mut slow = orch.events().subscribe().await.unwrap();
    let start = slow.cursor();
    let created = orch
        .dispatch_many((0..200).map(|_| TaskSpec::new("echo")).collect())
        .await
        .unwrap();
    for c in &created {
        orch.wait_for(c.task.id, Duration::from_secs(10))
            .await
            .unwrap();
    }
    // 600 events went by a 16-slot buffer while nobody read: the subscriber lagged.
    let mut expected = start + 1;
    while expected <= start + 600 {
        let event = slow.next().await.unwrap().unwrap();
        assert_eq!(
            event.seq, expected,
            "lagging subscriber lost or repeated events"
        );
        expected += 1;
    }
    orch.shutdown(Duration::from_secs(1)).await;
}

struct Collect {
    seen: Arc<Mutex<Vec<String>>>,
    slow: bool,
}

#[async_trait]
impl EventHandler for Collect {
    async fn handle_event(&self, event: &Event) -> orch_core::Result<()> {
        if self.slow {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.seen.lock().push(event.kind.as_str().to_owned());
        Ok(())
    }
    fn supported_events(&self) -> Vec<String> {
        vec!["task.succeeded".into(), "task.fail*".into()]
    }
}

#[tokio::test(start_paused = true)]
async fn handlers_get_supported_events_and_a_slow_one_never_stalls_dispatch() {
    let fast = Arc::new(Mutex::new(Vec::new()));
    let slow = Arc::new(Mutex::new(Vec::new()));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let orch = Orchestrator::builder(backend())
        .config(
            config().with_tuning(
                orch_core::Tuning::default()
                    .with_poll_interval(Duration::from_millis(200))
                    .with_event_buffer(16),
            ),
        )
        .engine(
            "echo",
            processor_fn(move |_c, i: Value| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    if i == "fail" {
                        return Err(orch_core::TaskError::fatal("asked to"));
                    }
                    Ok(i)
                }
            }),
        )
        .event_handler(Collect {
            seen: fast.clone(),
            slow: false,
        })
        .event_handler(Collect {
            seen: slow.clone(),
            slow: true,
        })
        .build()
        .await
        .unwrap();
    tokio::task::yield_now().await;
    let mut specs: Vec<_> = (0..50).map(|_| TaskSpec::new("echo")).collect();
    specs.push(TaskSpec::new("echo").payload("fail".into()));
    let dispatched_at = tokio::time::Instant::now();
    let created = orch.dispatch_many(specs).await.unwrap();
    for c in &created {
        orch.wait_for(c.task.id, Duration::from_secs(10))
            .await
            .unwrap();
    }
    // All 51 tasks finished long before the slow handler (1 s per event) got through them.
    assert_eq!(runs.load(Ordering::SeqCst), 51);
    assert!(dispatched_at.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fast.lock().len(), 51, "fast handler: {:?}", fast.lock());
    assert_eq!(
        fast.lock().iter().filter(|k| *k == "task.failed").count(),
        1
    );
    assert!(
        slow.lock().len() < 51,
        "slow handler should still be behind"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(slow.lock().len(), 51, "slow handler caught up from the log");
    orch.shutdown(Duration::from_secs(1)).await;
}

/// Two callers wait for one task; the first gives up at its own deadline. The second keeps
/// waiting and gets the task once it has finished, not the unfinished task at the first one's
/// deadline (issue 11, finding 14).
#[tokio::test(start_paused = true)]
async fn a_timed_out_wait_leaves_the_other_waiters_of_the_task_waiting() {
    let orch = echo_orch().await;
    let task = orch.dispatch(TaskSpec::new("nobody")).await.unwrap();
    let patient = tokio::spawn({
        let orch = orch.clone();
        async move { orch.wait_for(task.id, Duration::from_secs(60)).await }
    });
    tokio::task::yield_now().await;
    let hasty = orch.wait_for(task.id, Duration::from_secs(1)).await;
    assert!(
        matches!(hasty, Err(orch_core::Error::WaitTimeout(_))),
        "{hasty:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !patient.is_finished(),
        "the other waiter returned when the first one timed out: {:?}",
        patient.await
    );
    orch.resolve(
        task.id,
        orch_core::Resolution::Succeeded(serde_json::json!("done")),
    )
    .await
    .unwrap();
    let finished = patient.await.unwrap().unwrap();
    assert_eq!(finished.status, orch_core::TaskStatus::Succeeded);
}
