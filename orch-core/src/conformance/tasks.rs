//! Checks of the task queue: creation, idempotency, claims, listing, counting and pruning.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use super::*;

pub(super) async fn create_and_get(b: SharedBackend) -> CheckResult {
    let spec = TaskSpec::new("core-a")
        .priority(7)
        .timeout(Duration::from_secs(12))
        .max_attempts(4)
        .payload(json!({"x": 1}))
        .metadata(json!({"source": "test"}))
        .lock("r2")
        .lock("r1");
    let task = create(&b, spec).await?;
    let got = ok!(b.get_task(task.id).await).ok_or("created task not found")?;
    ensure!(
        got == task,
        "get_task differs from created: {got:?} vs {task:?}"
    );
    ensure!(got.status == TaskStatus::Queued, "status {}", got.status);
    ensure!(got.attempt == 0, "attempt {}", got.attempt);
    ensure!(
        got.priority == 7 && got.max_attempts == 4,
        "fields not kept: {got:?}"
    );
    ensure!(
        got.timeout == Duration::from_secs(12),
        "timeout {:?}",
        got.timeout
    );
    ensure!(got.payload == json!({"x": 1}), "payload {}", got.payload);
    ensure!(
        got.metadata == json!({"source": "test"}),
        "metadata {}",
        got.metadata
    );
    ensure!(got.locks == ["r1", "r2"], "locks {:?}", got.locks);
    ensure!(
        events_of(&b, task.id).await? == [EventKind::TaskQueued],
        "expected one task.queued event"
    );
    Ok(())
}

/// A batch hands back each task as stored, whatever its fields: delays, start times,
/// priorities, payloads, locks and trace contexts, and one `task.queued` event each.
/// Each task of a batch as `create_tasks` returned it: created, stored as returned, with one
/// `task.queued` event.
async fn stored_as_returned(b: &SharedBackend, created: &[crate::Created]) -> CheckResult {
    for c in created {
        ensure!(c.created, "task {} not created", c.task.id);
        let got = ok!(b.get_task(c.task.id).await).ok_or("created task not found")?;
        ensure!(
            got == c.task,
            "create_tasks returned {:?}, get_task {got:?}",
            c.task
        );
        ensure!(
            events_of(b, c.task.id).await? == [EventKind::TaskQueued],
            "expected one task.queued event for {}",
            c.task.id
        );
    }
    Ok(())
}

pub(super) async fn a_batch_returns_what_it_stores(b: SharedBackend) -> CheckResult {
    use crate::model::TraceContext;
    let context = TraceContext::new(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("vendor=one".to_owned()),
    )
    .map_err(|e| e.to_string())?;
    // Later than any clock skew between host and database; with a part below a microsecond,
    // which the durable backends drop.
    let at = clock::now() + chrono::Duration::hours(2) + chrono::Duration::nanoseconds(700);
    let specs = vec![
        TaskSpec::new("batch").priority(3).payload(json!({"n": 1})),
        TaskSpec::new("batch")
            .delay(Duration::from_millis(1_500))
            .metadata(json!({"m": [1, 2]})),
        TaskSpec::new("batch").run_at(at).lock("b").lock("a"),
        TaskSpec::new("batch")
            .run_at(at)
            .delay(Duration::from_secs(3 * 3_600))
            .timeout(Duration::from_micros(1_234_567)),
        TaskSpec::new("other")
            .max_attempts(5)
            .trace_context(context.clone()),
        TaskSpec::new("batch").delay(Duration::from_secs(365 * 24 * 3600)),
    ];
    let created = ok!(b
        .create_tasks(specs.into_iter().map(new_task).collect())
        .await);
    ensure!(
        created.len() == 6,
        "expected 6 results, got {}",
        created.len()
    );
    stored_as_returned(&b, &created).await?;
    let (soon, later) = (&created[1].task, &created[3].task);
    ensure!(
        soon.run_at - soon.created_at == chrono::Duration::milliseconds(1_500),
        "a delay of 1.5 s gave run_at {} for created_at {}",
        soon.run_at,
        soon.created_at
    );
    ensure!(
        (created[2].task.run_at - at).abs() < chrono::Duration::microseconds(1),
        "run_at {} for a start at {at}",
        created[2].task.run_at
    );
    ensure!(
        later.run_at - later.created_at == chrono::Duration::seconds(3 * 3_600),
        "the later of a delay and a start time is when it runs: {} for {}",
        later.run_at,
        later.created_at
    );
    // Tasks that share every setting but their ids (which a backend may send once for the
    // whole batch): each is stored with them.
    let alike = || {
        TaskSpec::new("alike")
            .priority(-2)
            .payload(json!({"same": true}))
            .metadata(json!({"m": 1}))
            .lock("x")
            .timeout(Duration::from_micros(7_654_321))
            .max_attempts(4)
            .run_at(at)
            .delay(Duration::from_secs(60))
            .trace_context(context.clone())
    };
    let created = ok!(b
        .create_tasks((0..3).map(|_| new_task(alike())).collect())
        .await);
    ensure!(
        created.len() == 3,
        "expected 3 results, got {}",
        created.len()
    );
    stored_as_returned(&b, &created).await?;
    for got in created.iter().map(|c| &c.task) {
        ensure!(
            got.priority == -2
                && got.payload == json!({"same": true})
                && got.metadata == json!({"m": 1})
                && got.locks == ["x"]
                && got.timeout == Duration::from_micros(7_654_321)
                && got.max_attempts == 4
                && (got.run_at - at).abs() < chrono::Duration::microseconds(1)
                && got.traceparent.as_deref() == Some(context.traceparent())
                && got.tracestate.as_deref() == Some("vendor=one"),
            "a task of a batch of alike tasks was stored as {got:?}"
        );
    }
    Ok(())
}

pub(super) async fn idempotency_key_returns_first_task(b: SharedBackend) -> CheckResult {
    let first = create(&b, TaskSpec::new("c").idempotency_key("k1")).await?;
    let batch = ok!(b
        .create_tasks(vec![
            new_task(TaskSpec::new("c").idempotency_key("k1").priority(9)),
            new_task(TaskSpec::new("c").idempotency_key("k2")),
            new_task(TaskSpec::new("c").idempotency_key("k2")),
        ])
        .await);
    ensure!(batch.len() == 3, "expected 3 results, got {}", batch.len());
    ensure!(
        !batch[0].created && batch[0].task.id == first.id,
        "k1 should return the first task"
    );
    ensure!(
        batch[0].task.priority == 1,
        "the first task must be unchanged"
    );
    ensure!(batch[1].created, "k2 first use should create");
    ensure!(
        !batch[2].created && batch[2].task.id == batch[1].task.id,
        "k2 repeated within a batch should return the task created earlier in the batch"
    );
    let all = ok!(b.list_tasks(TaskFilter::default()).await);
    ensure!(
        all.len() == 2,
        "expected 2 stored tasks, found {}",
        all.len()
    );
    Ok(())
}

pub(super) async fn tasks_are_found_by_idempotency_key(b: SharedBackend) -> CheckResult {
    let first = create(&b, TaskSpec::new("c").idempotency_key("order-1")).await?;
    let second = create(&b, TaskSpec::new("d").idempotency_key("order-2")).await?;
    create(&b, TaskSpec::new("c")).await?;
    let found = ok!(b.task_by_idempotency_key("order-1").await);
    ensure!(
        found.as_ref().map(|t| t.id) == Some(first.id),
        "order-1 should find the first task, found {found:?}"
    );
    let found = ok!(b.task_by_idempotency_key("order-2").await);
    ensure!(
        found.as_ref().map(|t| t.id) == Some(second.id),
        "order-2 should find the second task, found {found:?}"
    );
    let missing = ok!(b.task_by_idempotency_key("order-3").await);
    ensure!(missing.is_none(), "an unused key found {missing:?}");
    let prefix = ok!(b.task_by_idempotency_key("order").await);
    ensure!(prefix.is_none(), "a key's prefix found {prefix:?}");
    Ok(())
}

pub(super) async fn claim_order_priority_then_fifo(b: SharedBackend) -> CheckResult {
    let mut ids = Vec::new();
    for priority in [1, 5, 3, 5, 1] {
        ids.push(create(&b, TaskSpec::new("c").priority(priority)).await?.id);
        // Distinct creation instants, so FIFO is observable on coarse clocks too.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let expected = [ids[1], ids[3], ids[2], ids[0], ids[4]];
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(claim_one(&b, "c", LEASE).await?.task.id);
    }
    ensure!(
        got == expected,
        "claim order {got:?}, expected {expected:?}"
    );
    ensure!(
        ok!(b.claim_tasks("c", 10, LEASE).await).is_empty(),
        "queue should be empty"
    );
    Ok(())
}

pub(super) async fn claims_above_a_priority_take_only_more_urgent_tasks(
    b: SharedBackend,
) -> CheckResult {
    let mut ids = Vec::new();
    for priority in [i32::MIN, 0, 5, 9, 9] {
        ids.push(create(&b, TaskSpec::new("c").priority(priority)).await?.id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let none = ok!(b.claim_tasks_above("c", 10, LEASE, 9).await);
    ensure!(none.is_empty(), "nothing is above 9, got {none:?}");
    let urgent: Vec<TaskId> = ok!(b.claim_tasks_above("c", 10, LEASE, 0).await)
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    ensure!(
        urgent == [ids[3], ids[4], ids[2]],
        "above 0: {urgent:?}, expected {:?}",
        [ids[3], ids[4], ids[2]]
    );
    // The bound counts, and the lowest priority there is can be claimed above `i32::MIN`
    // only by a plain claim.
    let none = ok!(b.claim_tasks_above("c", 10, LEASE, 0).await);
    ensure!(none.is_empty(), "claimed twice: {none:?}");
    let one = ok!(b.claim_tasks_above("c", 1, LEASE, i32::MIN).await);
    ensure!(
        one.len() == 1 && one[0].task.id == ids[1],
        "above i32::MIN: {one:?}"
    );
    let rest = ok!(b.claim_tasks("c", 10, LEASE).await);
    ensure!(
        rest.len() == 1 && rest[0].task.id == ids[0],
        "the plain claim takes the lowest priority: {rest:?}"
    );
    Ok(())
}

pub(super) async fn claim_skips_tasks_not_yet_due(b: SharedBackend) -> CheckResult {
    let later = create(
        &b,
        TaskSpec::new("c")
            .priority(10)
            .delay(Duration::from_secs(3600)),
    )
    .await?;
    let at = create(
        &b,
        TaskSpec::new("c").run_at(clock::now() + chrono::TimeDelta::hours(2)),
    )
    .await?;
    let now = create(&b, TaskSpec::new("c")).await?;
    let claimed = ok!(b.claim_tasks("c", 10, LEASE).await);
    ensure!(
        claimed.len() == 1 && claimed[0].task.id == now.id,
        "only the due task may be claimed, got {claimed:?}"
    );
    let next = ok!(b.next_run_at("c").await).ok_or("next_run_at should see the delayed tasks")?;
    ensure!(
        (next - later.run_at).num_milliseconds().abs() < 5,
        "next_run_at {next} should be the earliest delayed run_at {}",
        later.run_at
    );
    ensure!(
        at.run_at > later.run_at,
        "run_at should honour the absolute time"
    );
    Ok(())
}

pub(super) async fn claim_is_per_core_and_bounded(b: SharedBackend) -> CheckResult {
    for _ in 0..5 {
        create(&b, TaskSpec::new("a")).await?;
    }
    create(&b, TaskSpec::new("b")).await?;
    let claimed = ok!(b.claim_tasks("a", 3, LEASE).await);
    ensure!(claimed.len() == 3, "limit 3 gave {}", claimed.len());
    ensure!(
        claimed.iter().all(|c| c.task.engine == "a"),
        "claimed another core's task"
    );
    let rest = ok!(b.claim_tasks("a", 10, LEASE).await);
    ensure!(
        rest.len() == 2,
        "expected the 2 remaining, got {}",
        rest.len()
    );
    ensure!(
        ok!(b.claim_tasks("b", 0, LEASE).await).is_empty(),
        "limit 0 must claim nothing"
    );
    ensure!(
        ok!(b.claim_tasks("zzz", 10, LEASE).await).is_empty(),
        "unknown core has no tasks"
    );
    Ok(())
}

pub(super) async fn claim_leases_and_logs(b: SharedBackend) -> CheckResult {
    let task = create(&b, TaskSpec::new("c")).await?;
    let before = clock::now();
    let claimed = claim_one(&b, "c", Duration::from_secs(60)).await?;
    let t = &claimed.task;
    ensure!(
        t.id == task.id && t.status == TaskStatus::Running,
        "claimed {t:?}"
    );
    ensure!(t.attempt == 1, "attempt should be 1, is {}", t.attempt);
    let expires = t
        .lease_expires_at
        .ok_or("running task has no lease expiry")?;
    let ahead = (expires - before).num_seconds();
    ensure!(
        (55..=65).contains(&ahead),
        "lease expires {ahead} s ahead, expected ~60"
    );
    ensure!(t.started_at.is_some(), "started_at unset");
    let stored = ok!(b.get_task(task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.status == TaskStatus::Running,
        "stored status {}",
        stored.status
    );
    ensure!(
        events_of(&b, task.id).await? == [EventKind::TaskQueued, EventKind::TaskStarted],
        "expected queued, started"
    );
    Ok(())
}

/// Every claim gets a lease token of its own, and `next_run_at` names the earliest queued task
/// of the engine, due or not.
pub(super) async fn leases_are_distinct_and_next_run_at_is_the_earliest(
    b: SharedBackend,
) -> CheckResult {
    let delayed = create(
        &b,
        TaskSpec::new("c")
            .priority(9)
            .delay(Duration::from_secs(3600)),
    )
    .await?;
    for _ in 0..5 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 10, LEASE).await);
    ensure!(
        claimed.len() == 5,
        "claimed {} of the 5 due tasks",
        claimed.len()
    );
    let tokens: HashSet<LeaseToken> = claimed.iter().map(|c| c.lease_token).collect();
    ensure!(tokens.len() == 5, "lease tokens are not unique");
    // At the microsecond precision every backend keeps.
    let next = ok!(b.next_run_at("c").await).map(|at| at.timestamp_micros());
    ensure!(
        next == Some(delayed.run_at.timestamp_micros()),
        "next_run_at {next:?}, the delayed task runs at {}",
        delayed.run_at
    );
    ensure!(
        ok!(b.next_run_at("nobody").await).is_none(),
        "an engine without tasks has no next run"
    );
    Ok(())
}

pub(super) async fn list_filters_and_pages(b: SharedBackend) -> CheckResult {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create(&b, TaskSpec::new(if i % 2 == 0 { "even" } else { "odd" }))
                .await?
                .id,
        );
    }
    let c = claim_one(&b, "odd", LEASE).await?;
    let page1 = ok!(b
        .list_tasks(TaskFilter {
            limit: 2,
            ..Default::default()
        })
        .await);
    ensure!(
        page1.iter().map(|t| t.id).collect::<Vec<_>>() == ids[..2],
        "first page {page1:?}"
    );
    let page2 = ok!(b
        .list_tasks(TaskFilter {
            limit: 2,
            after: Some(ids[1]),
            ..Default::default()
        })
        .await);
    ensure!(
        page2.iter().map(|t| t.id).collect::<Vec<_>>() == ids[2..4],
        "second page wrong"
    );
    let even = ok!(b
        .list_tasks(TaskFilter {
            engine: Some("even".into()),
            ..Default::default()
        })
        .await);
    ensure!(
        even.len() == 3 && even.iter().all(|t| t.engine == "even"),
        "core filter"
    );
    let running = ok!(b
        .list_tasks(TaskFilter {
            status: Some(TaskStatus::Running),
            ..Default::default()
        })
        .await);
    ensure!(
        running.len() == 1 && running[0].id == c.task.id,
        "status filter"
    );
    // Newest first: the same pages from the other end.
    let newest = |after: Option<TaskId>, engine: Option<&str>| {
        let b = b.clone();
        let engine = engine.map(str::to_owned);
        async move {
            b.list_tasks(TaskFilter {
                limit: 2,
                after,
                engine,
                newest_first: true,
                ..Default::default()
            })
            .await
            .map(|page| page.iter().map(|t| t.id).collect::<Vec<_>>())
        }
    };
    let first = ok!(newest(None, None).await);
    ensure!(first == [ids[4], ids[3]], "newest first page {first:?}");
    let second = ok!(newest(Some(ids[3]), None).await);
    ensure!(second == [ids[2], ids[1]], "newest second page {second:?}");
    let last = ok!(newest(Some(ids[1]), None).await);
    ensure!(last == [ids[0]], "newest last page {last:?}");
    let even = ok!(newest(Some(ids[4]), Some("even")).await);
    ensure!(even == [ids[2], ids[0]], "newest with a filter {even:?}");
    // Due or not: queued tasks only, by their run time.
    let later = create(&b, TaskSpec::new("odd").delay(Duration::from_secs(3600))).await?;
    let by_due = |due: bool| {
        let b = b.clone();
        async move {
            b.list_tasks(TaskFilter {
                due: Some(due),
                ..Default::default()
            })
            .await
            .map(|page| page.iter().map(|t| t.id).collect::<Vec<_>>())
        }
    };
    let delayed = ok!(by_due(false).await);
    ensure!(delayed == [later.id], "not due yet: {delayed:?}");
    let due = ok!(by_due(true).await);
    let expected: Vec<TaskId> = ids.iter().copied().filter(|id| *id != c.task.id).collect();
    ensure!(due == expected, "due: {due:?}, expected {expected:?}");
    Ok(())
}

pub(super) async fn concurrent_claims_never_overlap(b: SharedBackend) -> CheckResult {
    let specs: Vec<NewTask> = (0..200).map(|_| new_task(TaskSpec::new("c"))).collect();
    ok!(b.create_tasks(specs).await);
    let mut handles = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = b
                    .claim_tasks("c", 7, LEASE)
                    .await
                    .map_err(|e| e.to_string())?;
                if claimed.is_empty() {
                    return Ok::<_, String>(mine);
                }
                mine.extend(claimed.into_iter().map(|c| c.task.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for handle in handles {
        let mine = handle.await.map_err(|e| e.to_string())??;
        for id in mine {
            ensure!(seen.insert(id), "task {id} was claimed twice");
        }
    }
    ensure!(seen.len() == 200, "claimed {} of 200", seen.len());
    Ok(())
}

pub(super) async fn prune_finished_tasks(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").idempotency_key("gone")).await?;
    let keep = create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    ok!(finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pruned = ok!(b.prune_tasks(clock::now(), 100).await);
    ensure!(pruned == 1, "pruned {pruned}");
    ensure!(
        ok!(b.get_task(c.task.id).await).is_none(),
        "pruned task still there"
    );
    ensure!(
        ok!(b.get_task(keep.id).await).is_some(),
        "queued task pruned"
    );
    let again = create(&b, TaskSpec::new("c").idempotency_key("gone")).await?;
    ensure!(
        again.id != c.task.id,
        "idempotency key of a pruned task should be free again"
    );
    Ok(())
}

pub(super) async fn queue_depth_counts_queued(b: SharedBackend) -> CheckResult {
    for p in [1, 1, 2] {
        create(&b, TaskSpec::new("a").priority(p)).await?;
    }
    create(&b, TaskSpec::new("b")).await?;
    create(&b, TaskSpec::new("b")).await?;
    claim_one(&b, "b", LEASE).await?;
    let depth = ok!(b.queue_depth().await);
    let row = |engine: &str, priority, queued| QueueDepth {
        engine: engine.to_owned(),
        priority,
        queued,
    };
    ensure!(
        depth == [row("a", 1, 2), row("a", 2, 1), row("b", 1, 1)],
        "queue_depth {depth:?}"
    );
    Ok(())
}

/// A task's W3C trace context is stored as given and handed back by every read: alone, in a
/// batch, in a graph, on a claim and after its outcome.
pub(super) async fn trace_context_is_stored_and_returned(b: SharedBackend) -> CheckResult {
    use crate::model::TraceContext;
    let context = |n: u8, state: Option<&str>| {
        TraceContext::new(
            format!("00-4bf92f3577b34da6a3ce929d0e0e47{n:02x}-00f067aa0ba902b7-01"),
            state.map(str::to_owned),
        )
        .expect("a valid context")
    };
    let alone = create(
        &b,
        TaskSpec::new("traced").trace_context(context(1, Some("vendor=one,other=two"))),
    )
    .await?;
    let batch: Vec<Task> = ok!(b
        .create_tasks(vec![
            new_task(TaskSpec::new("traced").trace_context(context(2, None))),
            new_task(TaskSpec::new("traced")),
        ])
        .await)
    .into_iter()
    .map(|c| c.task)
    .collect();
    let parent = batch[0].id;
    let graph: Vec<Task> = ok!(b
        .create_tasks(vec![new_task(
            TaskSpec::new("traced-child")
                .after(parent)
                .trace_context(context(3, Some("k=v")))
        )])
        .await)
    .into_iter()
    .map(|c| c.task)
    .collect();
    let expected = [
        (alone.id, Some(context(1, Some("vendor=one,other=two")))),
        (batch[0].id, Some(context(2, None))),
        (batch[1].id, None),
        (graph[0].id, Some(context(3, Some("k=v")))),
    ];
    let created = [&alone, &batch[0], &batch[1], &graph[0]];
    for ((id, want), task) in expected.iter().zip(created) {
        ensure!(
            task.trace_context() == *want,
            "create_tasks returned {:?}/{:?} for {id}",
            task.traceparent,
            task.tracestate
        );
        let got = ok!(b.get_task(*id).await).ok_or("created task not found")?;
        ensure!(
            got.traceparent == want.as_ref().map(|c| c.traceparent().to_owned())
                && got.tracestate
                    == want
                        .as_ref()
                        .and_then(|c| c.tracestate().map(str::to_owned)),
            "get_task returned {:?}/{:?} for {id}",
            got.traceparent,
            got.tracestate
        );
    }
    let listed = ok!(b
        .list_tasks(TaskFilter {
            engine: Some("traced".into()),
            ..TaskFilter::default()
        })
        .await);
    ensure!(
        listed.iter().filter(|t| t.traceparent.is_some()).count() == 2,
        "list_tasks lost a trace context: {listed:?}"
    );
    let claimed = ok!(b.claim_tasks("traced", 10, Duration::from_secs(30)).await);
    ensure!(claimed.len() == 3, "claimed {} tasks", claimed.len());
    for claim in &claimed {
        let want = expected
            .iter()
            .find(|(id, _)| *id == claim.task.id)
            .map(|(_, want)| want.clone())
            .ok_or("claimed an unknown task")?;
        ensure!(
            claim.task.trace_context() == want,
            "claim_tasks returned {:?}/{:?} for {}",
            claim.task.traceparent,
            claim.task.tracestate,
            claim.task.id
        );
    }
    let reports = claimed
        .iter()
        .map(|c| AttemptReport {
            task_id: c.task.id,
            lease_token: c.lease_token,
            attempt: c.task.attempt,
            outcome: AttemptOutcome::Succeeded { result: json!(1) },
        })
        .collect();
    ok!(b.finish_attempts(reports).await);
    let finished = ok!(b.get_task(alone.id).await).ok_or("finished task not found")?;
    ensure!(
        finished.status == TaskStatus::Succeeded
            && finished.trace_context() == Some(context(1, Some("vendor=one,other=two"))),
        "the finished task lost its trace context: {finished:?}"
    );
    Ok(())
}
