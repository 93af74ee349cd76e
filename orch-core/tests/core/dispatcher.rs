use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use orch_core::backend::clock;
use orch_core::{
    Error, Orchestrator, TaskError, TaskId, TaskSpec, TaskStatus, WorkerReport, processor_fn,
};

use crate::{backend, config, orch};

/// An engine that records the order of the payloads it runs.
fn recorder(order: Arc<Mutex<Vec<Value>>>) -> impl orch_core::Processor {
    processor_fn(move |_ctx, input| {
        let order = order.clone();
        async move {
            order.lock().push(input.clone());
            Ok(input)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn priority_order_and_fifo_within_a_priority() {
    let orch = orch(backend(), config().with_global_concurrency(1)).await;
    let specs = [(1, "a"), (5, "b"), (3, "c"), (5, "d"), (1, "e"), (3, "f")]
        .into_iter()
        .map(|(p, name)| TaskSpec::new("work").priority(p).payload(json!(name)))
        .collect();
    let created = orch.dispatch_many(specs).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("work", recorder(order.clone()))
        .unwrap();
    for c in created {
        orch.wait_for(c.task.id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert_eq!(
        *order.lock(),
        ["b", "d", "c", "f", "a", "e"].map(|s| json!(s))
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn delayed_tasks_do_not_start_early() {
    let started = Arc::new(Mutex::new(None));
    let seen = started.clone();
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "later",
        processor_fn(move |_ctx, _input| {
            let seen = seen.clone();
            async move {
                *seen.lock() = Some(clock::now());
                Ok(Value::Null)
            }
        }),
    )
    .unwrap();
    let dispatched_at = clock::now();
    let task = orch
        .dispatch(TaskSpec::new("later").delay(Duration::from_secs(90)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(89)).await;
    assert!(started.lock().is_none(), "started before its delay");
    let done = orch
        .wait_for(task.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    let started_at = started.lock().expect("engine ran");
    assert!(started_at - dispatched_at >= chrono::TimeDelta::seconds(90));
    // It did not wait for some long poll either.
    assert!(started_at - dispatched_at < chrono::TimeDelta::seconds(92));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_limits_are_never_exceeded() {
    let global = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let core_a = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let core_b = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let both = |local: &(Arc<AtomicUsize>, Arc<AtomicUsize>)| {
        let (local_in, local_max) = local.clone();
        let (global_in, global_max) = global.clone();
        processor_fn(move |_ctx, _input| {
            let (local_in, local_max, global_in, global_max) = (
                local_in.clone(),
                local_max.clone(),
                global_in.clone(),
                global_max.clone(),
            );
            async move {
                let l = local_in.fetch_add(1, Ordering::SeqCst) + 1;
                local_max.fetch_max(l, Ordering::SeqCst);
                let g = global_in.fetch_add(1, Ordering::SeqCst) + 1;
                global_max.fetch_max(g, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                local_in.fetch_sub(1, Ordering::SeqCst);
                global_in.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
    };
    let orch = Orchestrator::builder(backend())
        .config(config().with_global_concurrency(5))
        .engine_with_concurrency("a", both(&core_a), 2)
        .engine_with_concurrency("b", both(&core_b), 4)
        .build()
        .await
        .unwrap();
    let mut specs: Vec<TaskSpec> = (0..40).map(|_| TaskSpec::new("a")).collect();
    specs.extend((0..40).map(|_| TaskSpec::new("b")));
    let created = orch.dispatch_many(specs).await.unwrap();
    for c in created {
        orch.wait_for(c.task.id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert_eq!(core_a.1.load(Ordering::SeqCst), 2, "core a limit 2");
    assert!(core_b.1.load(Ordering::SeqCst) <= 4, "core b limit 4");
    assert_eq!(
        global.1.load(Ordering::SeqCst),
        5,
        "global limit 5 reached, never exceeded"
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_cancels_the_engine_and_the_attempt_is_retried() {
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let flag = saw_cancel.clone();
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "slow",
        processor_fn(move |ctx, _input| {
            let flag = flag.clone();
            async move {
                if ctx.attempt() == 1 {
                    // Hangs until told to stop; the timeout must tell it.
                    let child = ctx.cancellation().clone();
                    tokio::spawn(async move {
                        child.cancelled().await;
                        flag.store(true, Ordering::SeqCst);
                    });
                    std::future::pending::<()>().await;
                }
                Ok(json!(ctx.attempt()))
            }
        }),
    )
    .unwrap();
    let task = orch
        .dispatch_and_wait(
            TaskSpec::new("slow")
                .timeout(Duration::from_secs(5))
                .max_attempts(2),
        )
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.attempt, 2);
    assert_eq!(task.result, Some(json!(2)));
    tokio::task::yield_now().await;
    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "the timed-out engine was not cancelled"
    );
    let events = orch.events().replay(0, 100).await.unwrap();
    let retry = events
        .iter()
        .find(|e| e.kind.as_str() == "task.retrying")
        .expect("task.retrying event");
    assert_eq!(retry.data["reason"], "timed_out");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn final_timeout_is_recorded_as_timed_out() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "hang",
        processor_fn(|_ctx, _input| async move {
            std::future::pending::<()>().await;
            Ok(Value::Null)
        }),
    )
    .unwrap();
    let task = orch
        .dispatch_and_wait(
            TaskSpec::new("hang")
                .timeout(Duration::from_secs(2))
                .max_attempts(1),
        )
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::TimedOut);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_and_exhausted_attempts_fail() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = starts.clone();
    let orch = orch(
        backend(),
        config().with_retry(orch_core::RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(600),
            jitter: true,
        }),
    )
    .await;
    orch.register_engine(
        "flaky",
        processor_fn(move |_ctx, _input| {
            let seen = seen.clone();
            async move {
                seen.lock().push(clock::now());
                Err::<Value, _>(TaskError::retryable("still broken"))
            }
        }),
    )
    .unwrap();
    let task = orch
        .dispatch_and_wait(TaskSpec::new("flaky").max_attempts(5))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.attempt, 5);
    assert_eq!(task.error.as_deref(), Some("still broken"));
    let starts = starts.lock().clone();
    assert_eq!(starts.len(), 5);
    let gaps: Vec<_> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] >= pair[0], "backoff shrank: {gaps:?}");
    }
    assert!(
        gaps[3] >= gaps[0] * 4,
        "backoff did not grow exponentially: {gaps:?}"
    );
    assert!(
        gaps[0] >= chrono::TimeDelta::seconds(1),
        "first delay below base/2: {gaps:?}"
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_and_panics() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "fatal",
        processor_fn(|_ctx, _input| async move { Err::<Value, _>(TaskError::fatal("bad input")) }),
    )
    .unwrap();
    orch.register_engine(
        "panics",
        processor_fn(|ctx, _input| async move {
            if ctx.attempt() == 1 {
                panic!("engine bug");
            }
            Ok(json!("recovered"))
        }),
    )
    .unwrap();
    let fatal = orch
        .dispatch_and_wait(TaskSpec::new("fatal").max_attempts(3))
        .await
        .unwrap();
    assert_eq!((fatal.status, fatal.attempt), (TaskStatus::Failed, 1));
    let panicked = orch
        .dispatch_and_wait(TaskSpec::new("panics").max_attempts(2))
        .await
        .unwrap();
    assert_eq!(panicked.status, TaskStatus::Succeeded);
    assert_eq!(panicked.attempt, 2);
    assert!(
        panicked
            .error
            .unwrap()
            .contains("engine panicked: engine bug")
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_reaches_a_running_engine() {
    let started = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(AtomicBool::new(false));
    let (s, st) = (started.clone(), stopped.clone());
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "long",
        processor_fn(move |ctx, _input| {
            let (s, st) = (s.clone(), st.clone());
            async move {
                s.notify_one();
                ctx.cancelled().await;
                st.store(true, Ordering::SeqCst);
                Ok(Value::Null)
            }
        }),
    )
    .unwrap();
    let queued = orch
        .dispatch(TaskSpec::new("nobody-runs-this"))
        .await
        .unwrap();
    let cancelled = orch.cancel(queued.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);

    let task = orch.dispatch(TaskSpec::new("long")).await.unwrap();
    started.notified().await;
    let cancelled = orch.cancel(task.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        stopped.load(Ordering::SeqCst),
        "engine never saw the cancellation"
    );
    let after = orch.get(task.id).await.unwrap();
    assert_eq!(
        after.status,
        TaskStatus::Cancelled,
        "the engine's late result overwrote the cancel"
    );
    assert!(matches!(
        orch.cancel(task.id).await,
        Err(Error::IllegalTransition {
            from: TaskStatus::Cancelled,
            to: TaskStatus::Cancelled,
            ..
        })
    ));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn idempotency_key_returns_the_first_task() {
    let orch = orch(backend(), config()).await;
    let first = orch
        .dispatch(
            TaskSpec::new("x")
                .idempotency_key("order-1")
                .payload(json!(1)),
        )
        .await
        .unwrap();
    let second = orch
        .dispatch(
            TaskSpec::new("x")
                .idempotency_key("order-1")
                .payload(json!(2)),
        )
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.payload, json!(1));
    let other = orch
        .dispatch(TaskSpec::new("x").idempotency_key("order-2"))
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn expired_lease_is_rescued_and_old_holder_refused() {
    let orch = orch(
        backend(),
        config().with_rescue_interval(Duration::from_secs(1)),
    )
    .await;
    let task = orch
        .dispatch(TaskSpec::new("external").max_attempts(3))
        .await
        .unwrap();
    let claimed = orch
        .claim("external", 1, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let old = claimed[0].clone();
    assert_eq!(old.task.id, task.id);
    // The worker heartbeats once, then goes silent.
    orch.heartbeat(task.id, old.lease_token, None)
        .await
        .unwrap();
    let expires = orch
        .heartbeat(task.id, old.lease_token, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(expires > clock::now());
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rescued = orch.get(task.id).await.unwrap();
    assert_eq!(
        rescued.status,
        TaskStatus::Queued,
        "lease expired but the task was not rescued"
    );
    let stale = orch
        .report(
            task.id,
            old.lease_token,
            WorkerReport::Succeeded(json!("late")),
        )
        .await;
    assert!(
        matches!(stale, Err(Error::LeaseLost(id)) if id == task.id),
        "{stale:?}"
    );
    assert!(matches!(
        orch.heartbeat(task.id, old.lease_token, None).await,
        Err(Error::LeaseLost(_))
    ));
    let fresh = orch.claim("external", 1, None).await.unwrap().remove(0);
    assert_eq!(fresh.task.attempt, 2);
    let done = orch
        .report(
            task.id,
            fresh.lease_token,
            WorkerReport::Succeeded(json!("ok")),
        )
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result, Some(json!("ok")));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn external_worker_failure_retries_then_fails() {
    let orch = orch(backend(), config()).await;
    let task = orch
        .dispatch(TaskSpec::new("ext").max_attempts(2))
        .await
        .unwrap();
    let first = orch.claim("ext", 1, None).await.unwrap().remove(0);
    let requeued = orch
        .report(
            task.id,
            first.lease_token,
            WorkerReport::Failed(TaskError::retryable("try again")),
        )
        .await
        .unwrap();
    assert_eq!(requeued.status, TaskStatus::Queued);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = orch.claim("ext", 1, None).await.unwrap().remove(0);
    let failed = orch
        .report(
            task.id,
            second.lease_token,
            WorkerReport::Failed(TaskError::retryable("again")),
        )
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn illegal_transitions_are_refused() {
    let orch = orch(backend(), config()).await;
    orch.register_engine("ok", processor_fn(|_c, i| async move { Ok(i) }))
        .unwrap();
    let done = orch.dispatch_and_wait(TaskSpec::new("ok")).await.unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    let err = orch.cancel(done.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::IllegalTransition {
                from: TaskStatus::Succeeded,
                to: TaskStatus::Cancelled,
                ..
            }
        ),
        "{err}"
    );
    let err = orch
        .resolve(done.id, orch_core::Resolution::Failed("x".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");
    assert_eq!(
        orch.get(done.id).await.unwrap(),
        done,
        "a refused transition changed the task"
    );
    assert!(matches!(
        orch.cancel(TaskId::new()).await,
        Err(Error::TaskNotFound(_))
    ));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_and_wait_returns_the_final_task() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "work",
        processor_fn(|_ctx, input| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(json!({"echo": input}))
        }),
    )
    .unwrap();
    let task = orch
        .dispatch_and_wait(TaskSpec::new("work").payload(json!(7)))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.result, Some(json!({"echo": 7})));
    assert!(task.finished_at.is_some());
    // A task nobody runs makes the wait time out with a typed error.
    let orphan = orch.dispatch(TaskSpec::new("nobody")).await.unwrap();
    let err = orch
        .wait_for(orphan.id, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WaitTimeout(id) if id == orphan.id));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_within_its_deadline() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "work",
        processor_fn(|_ctx, _input| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Value::Null)
        }),
    )
    .unwrap();
    let created = orch
        .dispatch_many((0..10).map(|_| TaskSpec::new("work")).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = orch.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained && report.abandoned == 0, "{report:?}");
    for c in created {
        assert_eq!(
            orch.get(c.task.id).await.unwrap().status,
            TaskStatus::Succeeded
        );
    }
    assert!(matches!(
        orch.dispatch(TaskSpec::new("work")).await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_past_its_deadline_gives_tasks_back() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "stuck",
        processor_fn(|ctx, _input| async move {
            ctx.cancelled().await;
            Ok(Value::Null)
        }),
    )
    .unwrap();
    let task = orch
        .dispatch(TaskSpec::new("stuck").max_attempts(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = clock::now();
    let report = orch.shutdown(Duration::from_secs(3)).await;
    assert!(!report.drained && report.abandoned == 1, "{report:?}");
    assert!(
        clock::now() - started < chrono::TimeDelta::seconds(5),
        "shutdown overran"
    );
    let back = orch.get(task.id).await.unwrap();
    assert_eq!(
        back.status,
        TaskStatus::Queued,
        "abandoned task should be queued again"
    );
    assert_eq!(back.attempt, 0, "an abandoned attempt does not count");
}

#[tokio::test(start_paused = true)]
async fn bad_specs_are_refused_with_the_field_named() {
    let orch = orch(backend(), config()).await;
    let err = orch.dispatch(TaskSpec::new("")).await.unwrap_err();
    assert!(err.to_string().contains("engine"), "{err}");
    let err = orch
        .dispatch(TaskSpec::new("x").lock("").clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("locks"), "{err}");
    let err = orch
        .dispatch_many(vec![
            TaskSpec::new("ok"),
            TaskSpec::new("x").max_attempts(0),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
    assert!(
        orch.list(Default::default()).await.unwrap().is_empty(),
        "a batch with a bad spec must store nothing"
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn the_pruner_deletes_old_finished_tasks_and_events() {
    let retention = orch_core::Retention::default()
        .with_finished_tasks(Duration::from_secs(3600))
        .with_events(Duration::from_secs(3600))
        .with_interval(Duration::from_secs(60));
    let orch = orch(backend(), config().with_retention(Some(retention))).await;
    orch.register_engine("ok", processor_fn(|_c, i| async move { Ok(i) }))
        .unwrap();
    let old = orch.dispatch_and_wait(TaskSpec::new("ok")).await.unwrap();
    let waiting = orch.dispatch(TaskSpec::new("nobody")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3000)).await;
    let recent = orch.dispatch_and_wait(TaskSpec::new("ok")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(900)).await;
    // The old task finished over an hour ago: pruned with its events. The recent one and the
    // still-queued one stay.
    assert!(matches!(
        orch.get(old.id).await,
        Err(Error::TaskNotFound(_))
    ));
    assert_eq!(
        orch.get(recent.id).await.unwrap().status,
        TaskStatus::Succeeded
    );
    assert_eq!(
        orch.get(waiting.id).await.unwrap().status,
        TaskStatus::Queued
    );
    let events = orch.events().replay(0, 100).await.unwrap();
    assert!(
        events.iter().all(|e| e.task_id != Some(old.id)),
        "old events kept"
    );
    assert!(events.iter().any(|e| e.task_id == Some(recent.id)));
    // Nothing left to prune by hand: the pruner already did it.
    assert_eq!(
        orch.prune(retention).await.unwrap(),
        orch_core::Pruned::default()
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

/// A task cancelled while its engine ignores the cancellation, retried at once and claimed
/// again here, keeps its new attempt: the old attempt, dropped after its grace, must not take
/// the new one's registration with it (its lease would then go unrenewed, expire and the task
/// run a third time beside the second).
#[tokio::test(start_paused = true)]
async fn a_retried_task_claimed_again_keeps_its_new_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let stubborn = processor_fn(move |_ctx, _input| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            // Deaf to cancellation.
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(json!("done"))
        }
    });
    let orch = Orchestrator::builder(backend())
        .config(
            config()
                .with_lease(Duration::from_secs(3))
                .with_cancel_grace(Duration::from_secs(1))
                .with_rescue_interval(Duration::from_secs(1)),
        )
        .engine("stubborn", stubborn)
        .build()
        .await
        .unwrap();
    let task = orch.dispatch(TaskSpec::new("stubborn")).await.unwrap();
    while calls.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    orch.cancel(task.id).await.unwrap();
    orch.retry(task.id, "user:test").await.unwrap();
    while calls.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the old attempt's grace and many times the lease.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let now = orch.get(task.id).await.unwrap();
    assert_eq!(
        (now.status, now.attempt, calls.load(Ordering::SeqCst)),
        (TaskStatus::Running, 1, 2),
        "{now:?}"
    );
    orch.shutdown(Duration::from_millis(10)).await;
}

/// The memory backend keeps a bounded number of finished tasks: a task an operator deleted no
/// longer counts towards that bound (it used to, so the oldest kept tasks went early).
#[tokio::test(start_paused = true)]
async fn deleted_tasks_do_not_count_towards_the_memory_backends_retention() {
    use orch_core::backend::TaskStore as _;
    let backend = Arc::new(orch_core::MemoryBackend::with_retention(1_000, 3));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = backend
            .create_tasks(vec![TaskSpec::new("kept").into_new_task().unwrap()])
            .await
            .unwrap();
        let id = created[0].task.id;
        backend.cancel_task(id).await.unwrap();
        ids.push(id);
    }
    // Two of the three deleted: one finished task is left, room for two more.
    backend.delete_task(ids[1]).await.unwrap();
    backend.delete_task(ids[2]).await.unwrap();
    for _ in 0..2 {
        let created = backend
            .create_tasks(vec![TaskSpec::new("kept").into_new_task().unwrap()])
            .await
            .unwrap();
        backend.cancel_task(created[0].task.id).await.unwrap();
    }
    assert!(
        backend.get_task(ids[0]).await.unwrap().is_some(),
        "the oldest finished task was dropped while the bound had room"
    );
}
