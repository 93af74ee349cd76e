//! Checks of dependencies and workflows: waiting and release, the diamond, fan-out and fan-in
//! of a thousand, each failure policy and their cascades, refused graphs, a retried parent,
//! idempotency, cancel and retry of a workflow, and pruning graphs whole.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::backend::plan_tasks;
use crate::model::{CreatedWorkflow, OnParentFailure, Step, Workflow, WorkflowId, WorkflowStatus};

/// Plans `specs` as one dispatch and stores them; returns the tasks as stored, in order.
async fn create_graph(b: &SharedBackend, specs: Vec<TaskSpec>) -> Result<Vec<Task>, String> {
    let tasks = plan_tasks(specs, None).map_err(|e| format!("planning failed: {e}"))?;
    Ok(ok!(b.create_tasks(tasks).await)
        .into_iter()
        .map(|c| c.task)
        .collect())
}

/// Stores `workflow`.
async fn create_workflow(b: &SharedBackend, workflow: Workflow) -> Result<CreatedWorkflow, String> {
    let (workflow, tasks) = workflow
        .into_new()
        .map_err(|e| format!("planning failed: {e}"))?;
    Ok(ok!(b.create_workflow(workflow, tasks).await))
}

async fn status(b: &SharedBackend, id: TaskId) -> Result<TaskStatus, String> {
    Ok(ok!(b.get_task(id).await)
        .ok_or_else(|| format!("task {id} vanished"))?
        .status)
}

async fn stored(b: &SharedBackend, id: TaskId) -> Result<Task, String> {
    ok!(b.get_task(id).await).ok_or_else(|| format!("task {id} vanished"))
}

/// Claims every due task of `engine` (up to `limit`) and ends each with `outcome`; returns
/// their ids in claim order.
async fn run_all(
    b: &SharedBackend,
    engine: &str,
    limit: usize,
    outcome: AttemptOutcome,
) -> Result<Vec<TaskId>, String> {
    let claimed = ok!(b.claim_tasks(engine, limit, LEASE).await);
    let reports: Vec<AttemptReport> = claimed.iter().map(|c| report(c, outcome.clone())).collect();
    for answer in ok!(b.finish_attempts(reports).await) {
        ok!(answer);
    }
    Ok(claimed.into_iter().map(|c| c.task.id).collect())
}

fn success() -> AttemptOutcome {
    AttemptOutcome::Succeeded { result: json!(1) }
}

fn failure() -> AttemptOutcome {
    AttemptOutcome::Failed {
        error: "broken".into(),
        retry_in: None,
    }
}

/// A task with a parent waits (not claimable, counted as waiting) and is released, queued,
/// by the step that records its parent's success.
pub(super) async fn dependent_waits_until_its_parent_succeeds(b: SharedBackend) -> CheckResult {
    let tasks = create_graph(
        &b,
        vec![TaskSpec::new("p"), TaskSpec::new("c").after(Step(0))],
    )
    .await?;
    let (parent, child) = (&tasks[0], &tasks[1]);
    ensure!(
        parent.status == TaskStatus::Queued,
        "parent {}",
        parent.status
    );
    ensure!(
        child.status == TaskStatus::Waiting && child.waiting_for == 1,
        "child {:?} waiting for {}",
        child.status,
        child.waiting_for
    );
    ensure!(
        ok!(b.claim_tasks("c", 10, LEASE).await).is_empty(),
        "a waiting task was claimed"
    );
    let counts = ok!(b.count_tasks().await);
    let c = counts
        .iter()
        .find(|c| c.engine == "c")
        .ok_or("no counts for the child's engine")?;
    ensure!(
        c.waiting == 1 && c.queued == 0,
        "counts of the waiting engine: {c:?}"
    );
    let waiting = ok!(b
        .list_tasks(TaskFilter {
            status: Some(TaskStatus::Waiting),
            ..TaskFilter::default()
        })
        .await);
    ensure!(
        waiting.len() == 1 && waiting[0].id == child.id,
        "listing waiting tasks gave {waiting:?}"
    );
    ensure!(
        ok!(b.next_run_at("c").await).is_none(),
        "a waiting task has no run time to wake for"
    );
    let claimed = claim_one(&b, "p", LEASE).await?;
    ensure!(
        status(&b, child.id).await? == TaskStatus::Waiting,
        "released while the parent runs"
    );
    finish(&b, &claimed, success())
        .await
        .map_err(|e| e.to_string())?;
    let released = stored(&b, child.id).await?;
    ensure!(
        released.status == TaskStatus::Queued && released.waiting_for == 0,
        "after the parent's success: {released:?}"
    );
    ensure!(
        events_of(&b, child.id).await? == [EventKind::TaskWaiting, EventKind::TaskReleased],
        "child events {:?}",
        events_of(&b, child.id).await?
    );
    let claimed = claim_one(&b, "c", LEASE).await?;
    ensure!(claimed.task.id == child.id, "claimed {:?}", claimed.task);
    Ok(())
}

/// A diamond A -> (B, C) -> D runs in order: B and C only after A, D only after both; the
/// workflow ends succeeded with one `workflow.succeeded` event.
pub(super) async fn diamond_runs_in_order(b: SharedBackend) -> CheckResult {
    let mut flow = Workflow::new();
    let a = flow.add(TaskSpec::new("d").payload(json!("a")));
    let left = flow.add(TaskSpec::new("d").payload(json!("b")).after(a));
    let right = flow.add(TaskSpec::new("d").payload(json!("c")).after(a));
    flow.add(
        TaskSpec::new("d")
            .payload(json!("d"))
            .after(left)
            .after(right),
    );
    let created = create_workflow(&b, flow).await?;
    ensure!(created.created, "not created");
    let id = created.workflow.id;
    ensure!(
        created.workflow.status == WorkflowStatus::Running
            && created.workflow.tasks == 4
            && created.workflow.unfinished == 4,
        "workflow {:?}",
        created.workflow
    );
    let ids: Vec<TaskId> = created.tasks.iter().map(|c| c.task.id).collect();
    ensure!(
        created.tasks.iter().all(|c| c.task.workflow_id == Some(id)),
        "tasks without their workflow"
    );
    let mut order = Vec::new();
    loop {
        let ran = run_all(&b, "d", 10, success()).await?;
        if ran.is_empty() {
            break;
        }
        order.push(ran);
    }
    ensure!(
        order.len() == 3
            && order[0] == [ids[0]]
            && order[1].len() == 2
            && order[1].contains(&ids[1])
            && order[1].contains(&ids[2])
            && order[2] == [ids[3]],
        "ran in rounds {order:?} for {ids:?}"
    );
    let info = ok!(b.get_workflow(id).await).ok_or("workflow vanished")?;
    ensure!(
        info.status == WorkflowStatus::Succeeded
            && info.unfinished == 0
            && info.succeeded == 4
            && info.finished_at.is_some(),
        "workflow at the end {info:?}"
    );
    // From the log: each task started after each of its parents succeeded, and one end event.
    let events = events_after(&b, 0).await?;
    let seq = |kind: EventKind, task: TaskId| {
        events
            .iter()
            .find(|e| e.kind == kind && e.task_id == Some(task))
            .map(|e| e.seq)
    };
    for (child, parents) in [
        (ids[1], vec![ids[0]]),
        (ids[2], vec![ids[0]]),
        (ids[3], vec![ids[1], ids[2]]),
    ] {
        let started = seq(EventKind::TaskStarted, child).ok_or("a child never started")?;
        for parent in parents {
            let done = seq(EventKind::TaskSucceeded, parent).ok_or("a parent never succeeded")?;
            ensure!(done < started, "{child} started before {parent} succeeded");
        }
    }
    let ends: Vec<_> = events.iter().filter(|e| e.kind.is_workflow_end()).collect();
    ensure!(
        ends.len() == 1
            && ends[0].kind == EventKind::WorkflowSucceeded
            && ends[0].data["workflow_id"] == json!(id)
            && ends[0].data["status"] == json!("succeeded"),
        "workflow end events {ends:?}"
    );
    let tasks = ok!(b.workflow_tasks(id).await);
    ensure!(
        tasks.iter().map(|t| t.step).eq(0..4)
            && tasks[3]
                .parents
                .iter()
                .map(|d| d.parent)
                .eq([ids[1], ids[2]]),
        "workflow tasks {tasks:?}"
    );
    Ok(())
}

/// A thousand children of one parent are released by its success, and a task depending on
/// all of them waits until the last one succeeded; it reads their results in order.
pub(super) async fn fan_out_and_fan_in_of_a_thousand(b: SharedBackend) -> CheckResult {
    const WIDTH: usize = 1000;
    let mut specs = vec![TaskSpec::new("root")];
    specs.extend((0..WIDTH).map(|i| TaskSpec::new("leaf").payload(json!(i)).after(Step(0))));
    let mut merge = TaskSpec::new("merge");
    for i in 0..WIDTH {
        merge = merge.after(Step(i + 1));
    }
    specs.push(merge);
    let tasks = create_graph(&b, specs).await?;
    let merge = tasks[WIDTH + 1].clone();
    ensure!(
        merge.status == TaskStatus::Waiting && merge.waiting_for == WIDTH as u32,
        "fan-in task {:?} waiting for {}",
        merge.status,
        merge.waiting_for
    );
    run_all(&b, "root", 1, success()).await?;
    let counts = ok!(b.count_tasks().await);
    let leaves = counts
        .iter()
        .find(|c| c.engine == "leaf")
        .ok_or("no leaf counts")?;
    ensure!(
        leaves.queued == WIDTH as u64 && leaves.waiting == 0,
        "after the root: {leaves:?}"
    );
    let mut done = 0;
    while done < WIDTH {
        let claimed = ok!(b.claim_tasks("leaf", 100, LEASE).await);
        ensure!(!claimed.is_empty(), "leaves stopped after {done}");
        let reports = claimed
            .iter()
            .map(|c| {
                report(
                    c,
                    AttemptOutcome::Succeeded {
                        result: c.task.payload.clone(),
                    },
                )
            })
            .collect();
        for answer in ok!(b.finish_attempts(reports).await) {
            ok!(answer);
        }
        done += claimed.len();
        let merge = stored(&b, merge.id).await?;
        if done < WIDTH {
            ensure!(
                merge.status == TaskStatus::Waiting && merge.waiting_for == (WIDTH - done) as u32,
                "after {done} leaves the fan-in task is {:?} waiting for {}",
                merge.status,
                merge.waiting_for
            );
        }
    }
    ensure!(
        status(&b, merge.id).await? == TaskStatus::Queued,
        "the fan-in task was not released"
    );
    let released = events_of(&b, merge.id).await?;
    ensure!(
        released == [EventKind::TaskWaiting, EventKind::TaskReleased],
        "fan-in events {released:?}"
    );
    let mut parents = Vec::new();
    loop {
        let page = ok!(b.list_parents(merge.id, parents.len() as u32, 300).await);
        if page.is_empty() {
            break;
        }
        parents.extend(page);
    }
    ensure!(parents.len() == WIDTH, "{} parents read", parents.len());
    for (i, parent) in parents.iter().enumerate() {
        let result = parent.task.as_ref().and_then(|t| t.result.clone());
        ensure!(
            parent.position == i as u32
                && parent.task_id == tasks[i + 1].id
                && result == Some(json!(i)),
            "parent {i}: {parent:?}"
        );
    }
    Ok(())
}

/// A final failure of a parent fails, cancels or releases each child by its dependency, and
/// cascades: a child failed by its parent fails its own children, a cancelled one lets a
/// run-anyway child run.
pub(super) async fn failure_policies_and_their_cascades(b: SharedBackend) -> CheckResult {
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("p"),
            TaskSpec::new("x").after(Step(0)),
            TaskSpec::new("x").after_with(Step(0), OnParentFailure::Cancel),
            TaskSpec::new("x").after_with(Step(0), OnParentFailure::RunAnyway),
            TaskSpec::new("x").after(Step(1)),
            TaskSpec::new("x").after_with(Step(2), OnParentFailure::RunAnyway),
            TaskSpec::new("x").after_with(Step(4), OnParentFailure::Cancel),
        ],
    )
    .await?;
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    run_all(&b, "p", 1, failure()).await?;
    let want = [
        TaskStatus::Failed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Queued,
        TaskStatus::Failed,
        TaskStatus::Queued,
        TaskStatus::Cancelled,
    ];
    for (i, want) in want.into_iter().enumerate() {
        let got = stored(&b, ids[i]).await?;
        ensure!(
            got.status == want,
            "step {i}: {:?}, expected {want}",
            got.status
        );
        ensure!(
            !want.is_terminal() || got.finished_at.is_some(),
            "step {i} ended without a finish time"
        );
    }
    let failed = stored(&b, ids[1]).await?;
    ensure!(
        failed.error == Some(rules::dependency_error(ids[0], TaskStatus::Failed))
            && failed.attempt == 0,
        "the failed child: {failed:?}"
    );
    let events = events_after(&b, 0).await?;
    let failed_event = events
        .iter()
        .find(|e| e.task_id == Some(ids[4]) && e.kind == EventKind::TaskFailed)
        .ok_or("no task.failed for the grandchild")?;
    ensure!(
        failed_event.data["parent"] == json!(ids[1]),
        "grandchild failure names {:?}",
        failed_event.data
    );
    let cancelled = events
        .iter()
        .find(|e| e.task_id == Some(ids[2]) && e.kind == EventKind::TaskCancelled)
        .ok_or("no task.cancelled for the cancel child")?;
    ensure!(
        cancelled.data == json!({"from": "waiting", "parent": ids[0]}),
        "cancel event {:?}",
        cancelled.data
    );
    // Timeouts and cancellations count as failures too.
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("t"),
            TaskSpec::new("y").after(Step(0)),
            TaskSpec::new("y").after_with(Step(0), OnParentFailure::RunAnyway),
        ],
    )
    .await?;
    run_all(&b, "t", 1, AttemptOutcome::TimedOut { retry_in: None }).await?;
    ensure!(
        status(&b, tasks[1].id).await? == TaskStatus::Failed,
        "after a timeout"
    );
    ensure!(
        status(&b, tasks[2].id).await? == TaskStatus::Queued,
        "run anyway"
    );
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("k"),
            TaskSpec::new("z").after_with(Step(0), OnParentFailure::Cancel),
        ],
    )
    .await?;
    ok!(b.cancel_task(tasks[0].id).await);
    ensure!(
        status(&b, tasks[1].id).await? == TaskStatus::Cancelled,
        "after the parent's cancellation"
    );
    Ok(())
}

/// A rescue after the final attempt and an external resolution end parents too.
pub(super) async fn rescue_and_resolve_end_parents(b: SharedBackend) -> CheckResult {
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("r").max_attempts(1),
            TaskSpec::new("w").after(Step(0)),
            TaskSpec::new("e"),
            TaskSpec::new("w").after(Step(2)),
            TaskSpec::new("w").after(Step(3)),
        ],
    )
    .await?;
    claim_one(&b, "r", Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rescued = ok!(b.rescue_expired(10).await);
    ensure!(
        rescued.len() == 1 && rescued[0].status == TaskStatus::Failed,
        "rescued {rescued:?}"
    );
    ensure!(
        status(&b, tasks[1].id).await? == TaskStatus::Failed,
        "the child of a task failed by a rescue"
    );
    // A waiting task resolved by an external system releases its own children.
    ok!(b
        .resolve_task(tasks[2].id, Resolution::Succeeded(json!("done")))
        .await);
    ensure!(
        status(&b, tasks[3].id).await? == TaskStatus::Queued,
        "the child of a resolved task"
    );
    let resolved = ok!(b
        .resolve_task(tasks[3].id, Resolution::Succeeded(json!("early")))
        .await);
    ensure!(resolved.status == TaskStatus::Succeeded, "{resolved:?}");
    ensure!(
        status(&b, tasks[4].id).await? == TaskStatus::Queued,
        "the child of a resolved queued task"
    );
    Ok(())
}

/// A cycle, an unknown step and an unknown parent are refused, nothing stored.
pub(super) async fn bad_graphs_are_refused_with_nothing_stored(b: SharedBackend) -> CheckResult {
    let cycle = plan_tasks(
        vec![
            TaskSpec::new("g").after(Step(1)),
            TaskSpec::new("g").after(Step(0)),
        ],
        None,
    );
    ensure!(
        matches!(&cycle, Err(Error::Invalid { field: "depends_on", reason }) if reason.contains("cycle")),
        "a cycle was planned: {cycle:?}"
    );
    let missing = TaskId::new();
    let tasks = plan_tasks(
        vec![
            TaskSpec::new("g"),
            TaskSpec::new("g").after(Step(0)).after(missing),
        ],
        None,
    )
    .map_err(|e| e.to_string())?;
    let child = tasks[1].id;
    let refused = b.create_tasks(tasks).await;
    ensure!(
        matches!(&refused, Err(Error::Invalid { field: "depends_on", reason })
            if reason.contains(&missing.to_string()) && reason.contains(&child.to_string())),
        "an unknown parent was accepted: {refused:?}"
    );
    let (workflow, tasks) = {
        let mut flow = Workflow::new();
        let first = flow.add(TaskSpec::new("g"));
        flow.add(TaskSpec::new("g").after(first).after(missing));
        flow.into_new().map_err(|e| e.to_string())?
    };
    let id = workflow.id;
    let refused = b.create_workflow(workflow, tasks).await;
    ensure!(
        matches!(refused, Err(Error::Invalid { .. })),
        "a workflow with an unknown parent was accepted: {refused:?}"
    );
    ensure!(
        ok!(b.list_tasks(TaskFilter::default()).await).is_empty(),
        "a refused graph left tasks"
    );
    ensure!(
        ok!(b.read_events(0, 10).await).is_empty(),
        "a refused graph left events"
    );
    ensure!(
        ok!(b.get_workflow(id).await).is_none(),
        "a refused workflow was stored"
    );
    Ok(())
}

/// A parent that fails twice with retries and then succeeds releases its child once, after
/// the success.
pub(super) async fn retried_parent_releases_its_child_once(b: SharedBackend) -> CheckResult {
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("flaky").max_attempts(3),
            TaskSpec::new("after").after(Step(0)),
        ],
    )
    .await?;
    for attempt in 1..=2 {
        let claimed = claim_one(&b, "flaky", LEASE).await?;
        ensure!(
            claimed.task.attempt == attempt,
            "attempt {}",
            claimed.task.attempt
        );
        finish(
            &b,
            &claimed,
            AttemptOutcome::Failed {
                error: format!("failure {attempt}"),
                retry_in: Some(Duration::ZERO),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let child = stored(&b, tasks[1].id).await?;
        ensure!(
            child.status == TaskStatus::Waiting && child.waiting_for == 1,
            "after failed attempt {attempt}: {child:?}"
        );
    }
    let claimed = claim_one(&b, "flaky", LEASE).await?;
    finish(&b, &claimed, success())
        .await
        .map_err(|e| e.to_string())?;
    let kinds = events_of(&b, tasks[1].id).await?;
    ensure!(
        kinds == [EventKind::TaskWaiting, EventKind::TaskReleased],
        "child events {kinds:?}"
    );
    let parent_kinds = events_of(&b, tasks[0].id).await?;
    ensure!(
        parent_kinds
            .iter()
            .filter(|k| **k == EventKind::TaskRetrying)
            .count()
            == 2,
        "parent events {parent_kinds:?}"
    );
    ensure!(
        ok!(b.claim_tasks("after", 5, LEASE).await).len() == 1,
        "the child is not claimable exactly once"
    );
    Ok(())
}

/// A dependency on a task that already finished counts at once: a success or a run-anyway
/// failure leaves the new task queued; a failing dependency ends it as it is stored.
pub(super) async fn dependencies_on_finished_tasks(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("old")).await?;
    create(&b, TaskSpec::new("old")).await?;
    let good = claim_one(&b, "old", LEASE).await?;
    finish(&b, &good, success())
        .await
        .map_err(|e| e.to_string())?;
    let bad = claim_one(&b, "old", LEASE).await?;
    finish(&b, &bad, failure())
        .await
        .map_err(|e| e.to_string())?;
    let created = create_graph(
        &b,
        vec![
            TaskSpec::new("new").after(good.task.id),
            TaskSpec::new("new").after_with(bad.task.id, OnParentFailure::RunAnyway),
            TaskSpec::new("new").after(bad.task.id),
            TaskSpec::new("new").after(Step(2)),
        ],
    )
    .await?;
    ensure!(
        created[0].status == TaskStatus::Queued && created[1].status == TaskStatus::Queued,
        "{:?}",
        created.iter().map(|t| t.status).collect::<Vec<_>>()
    );
    for i in [2, 3] {
        ensure!(
            status(&b, created[i].id).await? == TaskStatus::Failed,
            "task {i} depending on a failed task was not failed"
        );
    }
    ensure!(
        events_of(&b, created[0].id).await? == [EventKind::TaskQueued],
        "a task whose parent succeeded earlier"
    );
    ensure!(
        events_of(&b, created[2].id).await? == [EventKind::TaskWaiting, EventKind::TaskFailed],
        "a task whose parent failed earlier: {:?}",
        events_of(&b, created[2].id).await?
    );
    // A dependency on a running task waits for it.
    create(&b, TaskSpec::new("busy")).await?;
    let busy = claim_one(&b, "busy", LEASE).await?;
    let later = create_graph(&b, vec![TaskSpec::new("later").after(busy.task.id)]).await?;
    ensure!(
        later[0].status == TaskStatus::Waiting,
        "{:?}",
        later[0].status
    );
    finish(&b, &busy, success())
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        status(&b, later[0].id).await? == TaskStatus::Queued,
        "not released by a parent it was added to while running"
    );
    Ok(())
}

/// A released task keeps its priority and its delay.
pub(super) async fn released_tasks_keep_priority_and_delay(b: SharedBackend) -> CheckResult {
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("first"),
            TaskSpec::new("next").priority(1).after(Step(0)),
            TaskSpec::new("next").priority(9).after(Step(0)),
            TaskSpec::new("next")
                .priority(20)
                .delay(Duration::from_secs(3600))
                .after(Step(0)),
        ],
    )
    .await?;
    run_all(&b, "first", 1, success()).await?;
    let order: Vec<TaskId> = ok!(b.claim_tasks("next", 10, LEASE).await)
        .iter()
        .map(|c| c.task.id)
        .collect();
    ensure!(
        order == [tasks[2].id, tasks[1].id],
        "claimed {order:?}: higher priority first, the delayed one not yet"
    );
    ensure!(
        status(&b, tasks[3].id).await? == TaskStatus::Queued,
        "the delayed child was not released"
    );
    Ok(())
}

/// A key taken by an existing task makes that task stand in for its step: the step's
/// children wait for it. A workflow's own key returns the first workflow, storing nothing.
pub(super) async fn idempotency_keys_in_graphs(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("keyed").idempotency_key("shared")).await?;
    let holder = claim_one(&b, "keyed", LEASE).await?;
    let tasks = create_graph(
        &b,
        vec![
            TaskSpec::new("keyed").idempotency_key("shared"),
            TaskSpec::new("child").after(Step(0)),
        ],
    )
    .await?;
    ensure!(
        tasks[0].id == holder.task.id,
        "the key's holder did not stand in"
    );
    ensure!(tasks[1].status == TaskStatus::Waiting, "{:?}", tasks[1]);
    finish(&b, &holder, success())
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        status(&b, tasks[1].id).await? == TaskStatus::Queued,
        "the stand-in's success did not release the child"
    );

    let graph = || {
        let mut flow = Workflow::new().idempotency_key("nightly");
        let a = flow.add(TaskSpec::new("night"));
        flow.add(TaskSpec::new("night").after(a));
        flow
    };
    let first = create_workflow(&b, graph()).await?;
    let before = ok!(b.list_tasks(TaskFilter::default()).await).len();
    let again = create_workflow(&b, graph()).await?;
    ensure!(
        !again.created && again.workflow.id == first.workflow.id,
        "the workflow's key did not return the first workflow"
    );
    ensure!(
        again
            .tasks
            .iter()
            .map(|c| c.task.id)
            .eq(first.tasks.iter().map(|c| c.task.id))
            && again.tasks.iter().all(|c| !c.created),
        "the earlier workflow's tasks: {:?}",
        again.tasks
    );
    ensure!(
        ok!(b.list_tasks(TaskFilter::default()).await).len() == before,
        "a repeated workflow stored tasks"
    );
    Ok(())
}

/// A workflow's cancel cancels what has not run (running tasks go on) and its children by
/// their dependency; the workflow ends once the running task does, `partly`.
pub(super) async fn cancelling_a_workflow_cancels_what_has_not_run(
    b: SharedBackend,
) -> CheckResult {
    let mut flow = Workflow::new();
    let a = flow.add(TaskSpec::new("wa"));
    let b_step = flow.add(TaskSpec::new("wb"));
    let c = flow.add(TaskSpec::new("wc").after(a));
    flow.add(TaskSpec::new("wc").after(b_step).after(c));
    let created = create_workflow(&b, flow).await?;
    let id = created.workflow.id;
    let ids: Vec<TaskId> = created.tasks.iter().map(|c| c.task.id).collect();
    // An outside task waits for the workflow's last task, running anyway.
    let outside = create_graph(
        &b,
        vec![TaskSpec::new("outside").after_with(ids[3], OnParentFailure::RunAnyway)],
    )
    .await?;
    let running = claim_one(&b, "wa", LEASE).await?;
    let info = ok!(b.cancel_workflow(id).await);
    ensure!(
        info.status == WorkflowStatus::Running && info.unfinished == 1,
        "after the cancel: {info:?}"
    );
    for (i, want) in [
        TaskStatus::Running,
        TaskStatus::Cancelled,
        TaskStatus::Cancelled,
        TaskStatus::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        ensure!(status(&b, ids[i]).await? == want, "task {i} is not {want}");
    }
    ensure!(
        status(&b, outside[0].id).await? == TaskStatus::Queued,
        "the outside task did not run anyway"
    );
    finish(&b, &running, success())
        .await
        .map_err(|e| e.to_string())?;
    let info = ok!(b.get_workflow(id).await).ok_or("workflow vanished")?;
    ensure!(
        info.status == WorkflowStatus::Partly && info.succeeded == 1,
        "at the end: {info:?}"
    );
    let ends: Vec<_> = events_after(&b, 0)
        .await?
        .into_iter()
        .filter(|e| e.kind.is_workflow_end())
        .collect();
    ensure!(
        ends.len() == 1
            && ends[0].kind == EventKind::WorkflowFailed
            && ends[0].data["status"] == json!("partly"),
        "end events {ends:?}"
    );
    ensure!(
        matches!(
            b.cancel_workflow(WorkflowId::new()).await,
            Err(Error::WorkflowNotFound(_))
        ),
        "an unknown workflow was cancelled"
    );
    Ok(())
}

/// A workflow whose first task failed ends `failed`; its retry reopens the failed part
/// (waiting again behind the reopened parent) and it ends `succeeded`.
pub(super) async fn retrying_a_workflow_reopens_the_failed_part(b: SharedBackend) -> CheckResult {
    let mut flow = Workflow::new();
    let a = flow.add(TaskSpec::new("ra").max_attempts(1));
    let next = flow.add(TaskSpec::new("rb").after(a));
    flow.add(TaskSpec::new("rb").after(next));
    let created = create_workflow(&b, flow).await?;
    let id = created.workflow.id;
    let ids: Vec<TaskId> = created.tasks.iter().map(|c| c.task.id).collect();
    run_all(&b, "ra", 1, failure()).await?;
    let info = ok!(b.get_workflow(id).await).ok_or("workflow vanished")?;
    ensure!(
        info.status == WorkflowStatus::Failed && info.succeeded == 0,
        "after the failure: {info:?}"
    );
    let info = ok!(b.retry_workflow(id).await);
    ensure!(
        info.status == WorkflowStatus::Running
            && info.unfinished == 3
            && info.finished_at.is_none(),
        "after the retry: {info:?}"
    );
    let first = stored(&b, ids[0]).await?;
    ensure!(
        first.status == TaskStatus::Queued
            && first.attempt == 0
            && first.finished_at.is_none()
            && first.error.is_none(),
        "the reopened root {first:?}"
    );
    for (i, waiting_for) in [(1, 1), (2, 1)] {
        let task = stored(&b, ids[i]).await?;
        ensure!(
            task.status == TaskStatus::Waiting && task.waiting_for == waiting_for,
            "reopened task {i}: {task:?}"
        );
    }
    ensure!(
        events_of(&b, ids[0]).await?.last() == Some(&EventKind::TaskReopened),
        "no task.reopened"
    );
    run_all(&b, "ra", 1, success()).await?;
    run_all(&b, "rb", 1, success()).await?;
    run_all(&b, "rb", 1, success()).await?;
    let info = ok!(b.get_workflow(id).await).ok_or("workflow vanished")?;
    ensure!(
        info.status == WorkflowStatus::Succeeded && info.succeeded == 3,
        "after the retry ran: {info:?}"
    );
    let ends: Vec<EventKind> = events_after(&b, 0)
        .await?
        .into_iter()
        .filter(|e| e.kind.is_workflow_end())
        .map(|e| e.kind)
        .collect();
    ensure!(
        ends == [EventKind::WorkflowFailed, EventKind::WorkflowSucceeded],
        "end events {ends:?}"
    );
    Ok(())
}

/// A finished task some unfinished task depends on is kept; a workflow goes whole, once it
/// finished.
pub(super) async fn pruning_keeps_graphs_whole(b: SharedBackend) -> CheckResult {
    let tasks = create_graph(
        &b,
        vec![TaskSpec::new("pp"), TaskSpec::new("pc").after(Step(0))],
    )
    .await?;
    run_all(&b, "pp", 1, success()).await?;
    let mut flow = Workflow::new();
    let a = flow.add(TaskSpec::new("wf"));
    flow.add(TaskSpec::new("wf2").after(a));
    let workflow = create_workflow(&b, flow).await?;
    run_all(&b, "wf", 1, success()).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = ok!(b.prune_tasks(clock::now(), 100).await);
    ensure!(
        pruned == 0,
        "pruned {pruned}: a parent with a waiting child, or a running workflow's task"
    );
    ensure!(
        ok!(b.get_task(tasks[0].id).await).is_some(),
        "the parent went"
    );
    run_all(&b, "pc", 1, success()).await?;
    run_all(&b, "wf2", 1, success()).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = ok!(b.prune_tasks(clock::now(), 100).await);
    ensure!(
        pruned == 4,
        "pruned {pruned}, expected the pair and the workflow's two"
    );
    ensure!(
        ok!(b.get_workflow(workflow.workflow.id).await).is_none(),
        "the pruned workflow stayed"
    );
    Ok(())
}
