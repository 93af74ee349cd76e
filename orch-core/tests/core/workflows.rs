//! Workflows through the orchestrator, on tokio's paused clock: graphs run in order with real
//! engines, engines read their parents' results, retries and timeouts of parents, failure
//! policies, cancel and retry of a workflow, external workers, task locks, and refused graphs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use orch_core::{
    Error, EventKind, OnParentFailure, Step, TaskError, TaskFilter, TaskId, TaskSpec, TaskStatus,
    WorkerReport, Workflow, WorkflowStatus, processor_fn,
};

use crate::{backend, config, orch};

const WAIT: Duration = Duration::from_secs(120);

/// An engine that records the payload of each task it runs, in order, and returns it.
fn recorder(seen: Arc<Mutex<Vec<Value>>>) -> impl orch_core::Processor {
    processor_fn(move |_ctx, input| {
        let seen = seen.clone();
        async move {
            seen.lock().push(input.clone());
            Ok(input)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_diamond_runs_in_order_and_the_join_sees_both_results() {
    let orch = orch(backend(), config()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("step", recorder(seen.clone()))
        .unwrap();
    orch.register_engine(
        "join",
        processor_fn(|ctx, _input| async move {
            let parents = ctx.parents().all().await?;
            let results: Vec<Value> = parents
                .into_iter()
                .map(|p| p.task.and_then(|t| t.result).unwrap_or(Value::Null))
                .collect();
            Ok(json!(results))
        }),
    )
    .unwrap();
    let mut flow = Workflow::new();
    let a = flow.add(TaskSpec::new("step").payload(json!("a")));
    let b = flow.add(TaskSpec::new("step").payload(json!("b")).after(a));
    let c = flow.add(TaskSpec::new("step").payload(json!("c")).after(a));
    let d = flow.add(TaskSpec::new("join").after(b).after(c));
    let created = orch.dispatch_workflow(flow).await.unwrap();
    let done = orch
        .wait_for_workflow(created.workflow.id, WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, WorkflowStatus::Succeeded);
    let order = seen.lock().clone();
    assert_eq!(order[0], json!("a"), "{order:?}");
    assert_eq!(order.len(), 3);
    let join = orch.get(created.tasks[d.index()].task.id).await.unwrap();
    assert_eq!(join.result, Some(json!(["b", "c"])));
    // Topological order: the root, its children in step order, the join.
    let tasks = orch.workflow_tasks(created.workflow.id).await.unwrap();
    let steps: Vec<usize> = tasks.iter().map(|t| t.step).collect();
    assert_eq!(steps, [0, 1, 2, 3]);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_fan_in_task_reads_a_thousand_parents_in_pages() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "number",
        processor_fn(|_ctx, input| async move { Ok(input) }),
    )
    .unwrap();
    let pages = Arc::new(Mutex::new(0));
    let counted = pages.clone();
    orch.register_engine(
        "sum",
        processor_fn(move |ctx, _input| {
            let counted = counted.clone();
            async move {
                let mut parents = ctx.parents();
                let mut sum = 0;
                let mut read = 0;
                while let Some(page) = parents.next_page().await? {
                    *counted.lock() += 1;
                    for parent in page {
                        assert_eq!(parent.position, read);
                        read += 1;
                        sum += parent
                            .task
                            .and_then(|t| t.result)
                            .and_then(|r| r.as_i64())
                            .unwrap_or(0);
                    }
                }
                Ok(json!(sum))
            }
        }),
    )
    .unwrap();
    let mut flow = Workflow::new();
    let mut sum = TaskSpec::new("sum");
    for i in 0..1000 {
        sum = sum.after(flow.add(TaskSpec::new("number").payload(json!(i))));
    }
    let sum = flow.add(sum);
    let created = orch.dispatch_workflow(flow).await.unwrap();
    orch.wait_for_workflow(created.workflow.id, WAIT)
        .await
        .unwrap();
    let sum = orch.get(created.tasks[sum.index()].task.id).await.unwrap();
    assert_eq!(sum.result, Some(json!(999 * 1000 / 2)));
    assert_eq!(*pages.lock(), 2, "a thousand parents in pages of 500");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_parent_retried_twice_releases_its_child_once_after_its_backoff() {
    let orch = orch(backend(), config()).await;
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    orch.register_engine(
        "flaky",
        processor_fn(move |ctx, _input| {
            let counted = counted.clone();
            async move {
                *counted.lock() += 1;
                if ctx.attempt() < 3 {
                    Err(TaskError::retryable("not yet"))
                } else {
                    Ok(json!("finally"))
                }
            }
        }),
    )
    .unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("after", recorder(runs.clone()))
        .unwrap();
    let created = orch
        .dispatch_many(vec![
            TaskSpec::new("flaky").max_attempts(3),
            TaskSpec::new("after")
                .payload(json!("child"))
                .after(Step(0)),
        ])
        .await
        .unwrap();
    let child = orch.wait_for(created[1].task.id, WAIT).await.unwrap();
    assert_eq!(child.status, TaskStatus::Succeeded);
    assert_eq!(*calls.lock(), 3);
    assert_eq!(runs.lock().len(), 1, "the child ran once");
    // From the log: the child started after its parent's success, and was released once.
    let events = orch.events().replay(0, 1000).await.unwrap();
    let seq = |kind: EventKind, id: TaskId| {
        events
            .iter()
            .filter(|e| e.kind == kind && e.task_id == Some(id))
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    let succeeded = seq(EventKind::TaskSucceeded, created[0].task.id);
    let started = seq(EventKind::TaskStarted, child.id);
    assert_eq!(seq(EventKind::TaskReleased, child.id).len(), 1);
    assert!(started.len() == 1 && succeeded.len() == 1 && started[0] > succeeded[0]);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_parent_that_times_out_fails_its_child_and_a_clean_up_runs_anyway() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "slow",
        processor_fn(|_ctx, _input| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Value::Null)
        }),
    )
    .unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("next", recorder(runs.clone()))
        .unwrap();
    let mut flow = Workflow::new();
    let slow = flow.add(
        TaskSpec::new("slow")
            .timeout(Duration::from_secs(5))
            .max_attempts(1),
    );
    let dependent = flow.add(
        TaskSpec::new("next")
            .payload(json!("dependent"))
            .after(slow),
    );
    let cancelled = flow.add(
        TaskSpec::new("next")
            .payload(json!("cancelled"))
            .after_with(slow, OnParentFailure::Cancel),
    );
    let clean_up = flow.add(
        TaskSpec::new("next")
            .payload(json!("clean-up"))
            .after_with(slow, OnParentFailure::RunAnyway),
    );
    let created = orch.dispatch_workflow(flow).await.unwrap();
    let done = orch
        .wait_for_workflow(created.workflow.id, WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, WorkflowStatus::Partly);
    let status = |step: Step| created.tasks[step.index()].task.id;
    assert_eq!(
        orch.get(status(slow)).await.unwrap().status,
        TaskStatus::TimedOut
    );
    assert_eq!(
        orch.get(status(dependent)).await.unwrap().status,
        TaskStatus::Failed
    );
    assert_eq!(
        orch.get(status(cancelled)).await.unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(
        orch.get(status(clean_up)).await.unwrap().status,
        TaskStatus::Succeeded
    );
    assert_eq!(*runs.lock(), [json!("clean-up")]);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_what_has_not_run_and_retry_runs_the_failed_part() {
    let orch = orch(backend(), config()).await;
    let fail_first = Arc::new(Mutex::new(true));
    let flag = fail_first.clone();
    orch.register_engine(
        "gate",
        processor_fn(move |_ctx, _input| {
            let flag = flag.clone();
            async move {
                if std::mem::replace(&mut *flag.lock(), false) {
                    Err(TaskError::fatal("closed"))
                } else {
                    Ok(json!("open"))
                }
            }
        }),
    )
    .unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("work", recorder(runs.clone()))
        .unwrap();
    let mut flow = Workflow::new();
    let gate = flow.add(TaskSpec::new("gate"));
    let first = flow.add(TaskSpec::new("work").payload(json!(1)).after(gate));
    flow.add(TaskSpec::new("work").payload(json!(2)).after(first));
    let created = orch.dispatch_workflow(flow).await.unwrap();
    let id = created.workflow.id;
    let failed = orch.wait_for_workflow(id, WAIT).await.unwrap();
    assert_eq!(failed.status, WorkflowStatus::Failed);
    assert!(runs.lock().is_empty());
    let reopened = orch.retry_workflow(id).await.unwrap();
    assert_eq!(reopened.status, WorkflowStatus::Running);
    let done = orch.wait_for_workflow(id, WAIT).await.unwrap();
    assert_eq!(done.status, WorkflowStatus::Succeeded);
    assert_eq!(*runs.lock(), [json!(1), json!(2)]);

    // A workflow cancelled while its first task runs: the rest never runs.
    orch.register_engine(
        "hold",
        processor_fn(|_ctx, _input| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Value::Null)
        }),
    )
    .unwrap();
    let mut flow = Workflow::new();
    let hold = flow.add(TaskSpec::new("hold"));
    flow.add(TaskSpec::new("work").payload(json!("never")).after(hold));
    let created = orch.dispatch_workflow(flow).await.unwrap();
    let holding = created.tasks[0].task.id;
    while orch.get(holding).await.unwrap().status != TaskStatus::Running {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let info = orch.cancel_workflow(created.workflow.id).await.unwrap();
    assert_eq!(
        info.status,
        WorkflowStatus::Running,
        "the running task goes on"
    );
    let done = orch
        .wait_for_workflow(created.workflow.id, WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, WorkflowStatus::Partly);
    assert!(!runs.lock().contains(&json!("never")));
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_external_workers_report_releases_the_child() {
    let orch = orch(backend(), config()).await;
    let created = orch
        .dispatch_many(vec![
            TaskSpec::new("remote"),
            TaskSpec::new("remote").after(Step(0)),
        ])
        .await
        .unwrap();
    let claimed = orch.claim("remote", 10, None).await.unwrap();
    assert_eq!(claimed.len(), 1, "only the parent is claimable");
    orch.report(
        claimed[0].task.id,
        claimed[0].lease_token,
        WorkerReport::Succeeded(json!("ok")),
    )
    .await
    .unwrap();
    let next = orch.claim("remote", 10, None).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].task.id, created[1].task.id);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn tasks_of_a_workflow_take_their_locks() {
    let orch = orch(backend(), config()).await;
    let inside = Arc::new(Mutex::new(0usize));
    let overlap = Arc::new(Mutex::new(false));
    let (count, seen) = (inside.clone(), overlap.clone());
    orch.register_engine(
        "locked",
        processor_fn(move |ctx, _input| {
            let (count, seen) = (count.clone(), seen.clone());
            async move {
                assert!(ctx.fencing_token("printer").is_some());
                {
                    let mut n = count.lock();
                    *n += 1;
                    if *n > 1 {
                        *seen.lock() = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                *count.lock() -= 1;
                Ok(Value::Null)
            }
        }),
    )
    .unwrap();
    let mut flow = Workflow::new();
    let root = flow.add(TaskSpec::new("locked").lock("printer"));
    for _ in 0..4 {
        flow.add(TaskSpec::new("locked").lock("printer").after(root));
    }
    let created = orch.dispatch_workflow(flow).await.unwrap();
    let done = orch
        .wait_for_workflow(created.workflow.id, WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, WorkflowStatus::Succeeded);
    assert!(!*overlap.lock(), "two tasks held the lock at once");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn graphs_with_a_cycle_or_an_unknown_parent_are_refused_with_nothing_stored() {
    let orch = orch(backend(), config()).await;
    let cycle = orch
        .dispatch_many(vec![
            TaskSpec::new("x").after(Step(2)),
            TaskSpec::new("y").after(Step(0)),
            TaskSpec::new("z").after(Step(1)),
        ])
        .await;
    let Err(Error::Invalid { field, reason }) = cycle else {
        panic!("a cycle was dispatched: {cycle:?}");
    };
    assert_eq!(field, "depends_on");
    assert!(reason.contains("cycle of steps"), "{reason}");
    let mut flow = Workflow::new();
    flow.add(TaskSpec::new("x").after(TaskId::new()));
    let unknown = orch.dispatch_workflow(flow).await;
    assert!(
        matches!(&unknown, Err(Error::Invalid { field: "depends_on", reason }) if reason.contains("does not exist")),
        "{unknown:?}"
    );
    let step = orch
        .dispatch(TaskSpec::new("x").after(Step(0)))
        .await
        .unwrap_err();
    assert!(step.to_string().contains("depends on itself"), "{step}");
    assert!(orch.list(TaskFilter::default()).await.unwrap().is_empty());
    assert!(
        orch.workflow_tasks(orch_core::WorkflowId::new())
            .await
            .is_err()
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_redispatched_workflow_with_a_key_runs_once() {
    let orch = orch(backend(), config()).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    orch.register_engine("once", recorder(runs.clone()))
        .unwrap();
    let build = || {
        let mut flow = Workflow::new().idempotency_key("daily-report");
        let a = flow.add(TaskSpec::new("once").payload(json!("a")));
        flow.add(TaskSpec::new("once").payload(json!("b")).after(a));
        flow
    };
    let first = orch.dispatch_workflow(build()).await.unwrap();
    let again = orch.dispatch_workflow(build()).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.workflow.id, again.workflow.id);
    orch.wait_for_workflow(first.workflow.id, WAIT)
        .await
        .unwrap();
    let third = orch.dispatch_workflow(build()).await.unwrap();
    assert!(!third.created);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(runs.lock().len(), 2);
    // The log has one end event for the workflow.
    let events = orch.events().replay(0, 1000).await.unwrap();
    let ends: HashMap<EventKind, usize> =
        events
            .iter()
            .filter(|e| e.kind.is_workflow_end())
            .fold(HashMap::new(), |mut m, e| {
                *m.entry(e.kind.clone()).or_default() += 1;
                m
            });
    assert_eq!(ends.get(&EventKind::WorkflowSucceeded), Some(&1));
    orch.shutdown(Duration::from_secs(1)).await;
}

/// A task that names one parent twice (once directly, once through a step stood in for by
/// that parent's idempotency key) counts each edge with its own policy: when the parent is
/// cancelled, the `cancel` edge cancels it although the other edge runs anyway.
#[tokio::test(start_paused = true)]
async fn a_parent_named_twice_through_a_stood_in_step_counts_each_edge() {
    let orch = orch(backend(), config()).await;
    let parent = orch
        .dispatch(TaskSpec::new("nobody").idempotency_key("shared"))
        .await
        .unwrap();
    let mut flow = Workflow::new();
    let stood_in = flow.add(TaskSpec::new("nobody").idempotency_key("shared"));
    let child = flow.add(
        TaskSpec::new("nobody")
            .after_with(stood_in, OnParentFailure::RunAnyway)
            .after_with(parent.id, OnParentFailure::Cancel),
    );
    let created = orch.dispatch_workflow(flow).await.unwrap();
    assert_eq!(created.tasks[stood_in.0].task.id, parent.id);
    let child = created.tasks[child.0].task.id;
    assert_eq!(orch.get(child).await.unwrap().status, TaskStatus::Waiting);
    orch.cancel(parent.id).await.unwrap();
    assert_eq!(orch.get(child).await.unwrap().status, TaskStatus::Cancelled);
    orch.shutdown(Duration::from_secs(1)).await;
}
