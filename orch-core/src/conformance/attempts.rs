//! Checks of attempts: outcomes one by one and in batches, stale tokens, retries, cancel,
//! resolve, lease renewal and rescue.

use std::time::Duration;

use serde_json::json;

use super::*;

/// An error message or a result holding NUL (which PostgreSQL's text and `jsonb` refuse) is
/// stored, the NUL replaced if the backend must, and the rest kept.
pub(super) async fn nul_characters_are_stored(b: SharedBackend) -> CheckResult {
    for _ in 0..2 {
        create(&b, TaskSpec::new("c").max_attempts(1)).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 2, LEASE).await);
    ensure!(claimed.len() == 2, "claimed {}", claimed.len());
    let answers = ok!(b
        .finish_attempts(vec![
            report(
                &claimed[0],
                AttemptOutcome::Failed {
                    error: "bad\0byte".into(),
                    retry_in: None,
                },
            ),
            report(
                &claimed[1],
                AttemptOutcome::Succeeded {
                    result: json!({"a\u{0}": ["x\u{0}y"]}),
                },
            ),
        ])
        .await);
    ensure!(
        matches!(
            answers[..],
            [Ok(TaskStatus::Failed), Ok(TaskStatus::Succeeded)]
        ),
        "{answers:?}"
    );
    let failed = ok!(b.get_task(claimed[0].task.id).await).ok_or("task vanished")?;
    let error = failed.error.unwrap_or_default();
    ensure!(
        error.starts_with("bad") && error.ends_with("byte"),
        "stored error {error:?}"
    );
    let succeeded = ok!(b.get_task(claimed[1].task.id).await).ok_or("task vanished")?;
    let result = succeeded.result.ok_or("no result stored")?;
    let text = result.to_string();
    ensure!(
        text.starts_with("{\"a") && text.contains("x") && text.contains("y"),
        "stored result {text}"
    );
    Ok(())
}

pub(super) async fn finish_succeeded(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let done = ok!(finish(
        &b,
        &c,
        AttemptOutcome::Succeeded {
            result: json!({"ok": true})
        }
    )
    .await);
    ensure!(
        done.status == TaskStatus::Succeeded,
        "status {}",
        done.status
    );
    ensure!(
        done.result == Some(json!({"ok": true})),
        "result {:?}",
        done.result
    );
    ensure!(
        done.finished_at.is_some() && done.lease_expires_at.is_none(),
        "timestamps {done:?}"
    );
    let again = finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await;
    ensure!(
        matches!(again, Err(Error::LeaseLost(_))),
        "second report must be refused, got {again:?}"
    );
    ensure!(
        events_of(&b, c.task.id).await?.last() == Some(&EventKind::TaskSucceeded),
        "expected task.succeeded last"
    );
    Ok(())
}

pub(super) async fn finish_attempts_in_one_call(b: SharedBackend) -> CheckResult {
    for _ in 0..3 {
        create(&b, TaskSpec::new("c").max_attempts(2)).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 3, LEASE).await);
    ensure!(claimed.len() == 3, "claimed {}", claimed.len());
    let statuses = ok!(b
        .finish_attempts(vec![
            report(
                &claimed[0],
                AttemptOutcome::Succeeded { result: json!("a") }
            ),
            AttemptReport {
                lease_token: LeaseToken::new(),
                ..report(
                    &claimed[1],
                    AttemptOutcome::Succeeded { result: json!("b") }
                )
            },
            report(
                &claimed[2],
                AttemptOutcome::Failed {
                    error: "again".into(),
                    retry_in: Some(Duration::ZERO)
                }
            ),
        ])
        .await);
    ensure!(statuses.len() == 3, "one status per report expected");
    ensure!(
        matches!(statuses[0], Ok(TaskStatus::Succeeded)),
        "first: {:?}",
        statuses[0]
    );
    ensure!(
        matches!(statuses[1], Err(Error::LeaseLost(_))),
        "stale token: {:?}",
        statuses[1]
    );
    ensure!(
        matches!(statuses[2], Ok(TaskStatus::Queued)),
        "retry: {:?}",
        statuses[2]
    );
    let first = ok!(b.get_task(claimed[0].task.id).await).ok_or("task vanished")?;
    ensure!(first.result == Some(json!("a")), "result not stored");
    let second = ok!(b.get_task(claimed[1].task.id).await).ok_or("task vanished")?;
    ensure!(
        second.status == TaskStatus::Running,
        "a refused report in a batch changed its task"
    );
    ensure!(
        events_of(&b, claimed[2].task.id).await?.last() == Some(&EventKind::TaskRetrying),
        "batched outcomes must log their events"
    );
    Ok(())
}

/// A batch answers as calling `finish_attempt` once per report, in order, would: of two reports
/// of one task the first that holds the lease wins; an unknown task fails only its own item.
pub(super) async fn finish_attempts_duplicates_and_unknowns(b: SharedBackend) -> CheckResult {
    for _ in 0..7 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 7, LEASE).await);
    ensure!(claimed.len() == 7, "claimed {}", claimed.len());
    let success = |n: i64| AttemptOutcome::Succeeded { result: json!(n) };
    let (x, y) = (&claimed[0], &claimed[1]);
    let mut reports = vec![
        // x: a stale report first, then the one holding the lease.
        AttemptReport {
            lease_token: LeaseToken::new(),
            ..report(x, success(1))
        },
        report(x, success(2)),
        // y: the same report twice.
        report(y, success(3)),
        report(y, success(4)),
        // A task that does not exist.
        AttemptReport {
            task_id: TaskId::new(),
            lease_token: LeaseToken::new(),
            attempt: 1,
            outcome: success(5),
        },
    ];
    for (n, c) in (6..).zip(&claimed[2..]) {
        reports.push(report(c, success(n)));
    }
    let statuses = ok!(b.finish_attempts(reports).await);
    ensure!(statuses.len() == 10, "one status per report expected");
    ensure!(
        matches!(statuses[0], Err(Error::LeaseLost(_))),
        "stale first report: {:?}",
        statuses[0]
    );
    ensure!(
        matches!(statuses[1], Ok(TaskStatus::Succeeded)),
        "holder after a stale report: {:?}",
        statuses[1]
    );
    ensure!(
        matches!(statuses[2], Ok(TaskStatus::Succeeded)),
        "first of two: {:?}",
        statuses[2]
    );
    ensure!(
        matches!(statuses[3], Err(Error::LeaseLost(_))),
        "second of two: {:?}",
        statuses[3]
    );
    ensure!(
        matches!(statuses[4], Err(Error::TaskNotFound(_))),
        "unknown task: {:?}",
        statuses[4]
    );
    for (i, status) in statuses.iter().enumerate().skip(5) {
        ensure!(
            matches!(status, Ok(TaskStatus::Succeeded)),
            "report {i}: {status:?}"
        );
    }
    let x_now = ok!(b.get_task(x.task.id).await).ok_or("task vanished")?;
    ensure!(
        x_now.result == Some(json!(2)),
        "x result {:?}",
        x_now.result
    );
    let y_now = ok!(b.get_task(y.task.id).await).ok_or("task vanished")?;
    ensure!(
        y_now.result == Some(json!(3)),
        "y result {:?}",
        y_now.result
    );
    for (n, c) in (6..).zip(&claimed[2..]) {
        let task = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
        ensure!(task.result == Some(json!(n)), "result {:?}", task.result);
    }
    let y_events = events_of(&b, y.task.id).await?;
    ensure!(
        y_events
            .iter()
            .filter(|k| **k == EventKind::TaskSucceeded)
            .count()
            == 1,
        "one success event per task: {y_events:?}"
    );
    Ok(())
}

/// Successes only, of distinct tasks (a backend's likely fast path), one of them stale and one
/// of a task that does not exist.
pub(super) async fn finish_attempts_successes_with_stale_and_unknown(
    b: SharedBackend,
) -> CheckResult {
    for _ in 0..3 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 3, LEASE).await);
    ensure!(claimed.len() == 3, "claimed {}", claimed.len());
    let success = |n: i64| AttemptOutcome::Succeeded { result: json!(n) };
    let statuses = ok!(b
        .finish_attempts(vec![
            report(&claimed[0], success(0)),
            AttemptReport {
                lease_token: LeaseToken::new(),
                ..report(&claimed[1], success(1))
            },
            AttemptReport {
                task_id: TaskId::new(),
                lease_token: LeaseToken::new(),
                attempt: 1,
                outcome: success(2),
            },
            report(&claimed[2], success(3)),
        ])
        .await);
    ensure!(statuses.len() == 4, "one status per report expected");
    ensure!(
        matches!(statuses[0], Ok(TaskStatus::Succeeded))
            && matches!(statuses[3], Ok(TaskStatus::Succeeded)),
        "holders: {statuses:?}"
    );
    ensure!(
        matches!(statuses[1], Err(Error::LeaseLost(_))),
        "stale: {:?}",
        statuses[1]
    );
    ensure!(
        matches!(statuses[2], Err(Error::TaskNotFound(_))),
        "unknown: {:?}",
        statuses[2]
    );
    let stale = ok!(b.get_task(claimed[1].task.id).await).ok_or("task vanished")?;
    ensure!(
        stale.status == TaskStatus::Running && stale.result.is_none(),
        "a stale report changed its task: {stale:?}"
    );
    let last = ok!(b.get_task(claimed[2].task.id).await).ok_or("task vanished")?;
    ensure!(last.result == Some(json!(3)), "result {:?}", last.result);
    ensure!(
        events_of(&b, claimed[2].task.id).await?.last() == Some(&EventKind::TaskSucceeded),
        "success event"
    );
    Ok(())
}

pub(super) async fn stale_token_is_refused(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let wrong = b
        .finish_attempts(vec![AttemptReport {
            lease_token: LeaseToken::new(),
            ..report(&c, AttemptOutcome::Succeeded { result: json!(1) })
        }])
        .await
        .map(|mut statuses| statuses.pop());
    ensure!(
        matches!(wrong, Ok(Some(Err(Error::LeaseLost(_))))),
        "wrong token must be LeaseLost, got {wrong:?}"
    );
    let stored = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.status == TaskStatus::Running && stored.result.is_none(),
        "a refused report changed the task"
    );
    Ok(())
}

pub(super) async fn retry_requeues_with_delay(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").max_attempts(3)).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let before = clock::now();
    let t = ok!(finish(
        &b,
        &c,
        AttemptOutcome::Failed {
            error: "boom".into(),
            retry_in: Some(Duration::from_secs(60))
        }
    )
    .await);
    ensure!(t.status == TaskStatus::Queued, "status {}", t.status);
    ensure!(t.error.as_deref() == Some("boom"), "error {:?}", t.error);
    ensure!(
        (t.run_at - before).num_seconds() >= 59,
        "run_at not delayed: {}",
        t.run_at
    );
    ensure!(
        ok!(b.claim_tasks("c", 1, LEASE).await).is_empty(),
        "retry claimed before its delay"
    );
    let t2 = ok!(b.create_tasks(vec![new_task(TaskSpec::new("d"))]).await);
    let c2 = claim_one(&b, "d", LEASE).await?;
    ensure!(c2.task.id == t2[0].task.id, "other core unaffected");
    let retried = ok!(finish(
        &b,
        &c2,
        AttemptOutcome::TimedOut {
            retry_in: Some(Duration::ZERO)
        }
    )
    .await);
    ensure!(
        retried.status == TaskStatus::Queued,
        "timed-out attempt with retry should requeue"
    );
    let again = claim_one(&b, "d", LEASE).await?;
    ensure!(
        again.task.attempt == 2,
        "second attempt numbered {}",
        again.task.attempt
    );
    ensure!(
        again.lease_token != c2.lease_token,
        "a new attempt needs a new lease token"
    );
    let kinds = events_of(&b, c.task.id).await?;
    ensure!(
        kinds.last() == Some(&EventKind::TaskRetrying),
        "expected task.retrying, got {kinds:?}"
    );
    Ok(())
}

pub(super) async fn final_failure_and_timeout(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    create(&b, TaskSpec::new("c")).await?;
    let a = claim_one(&b, "c", LEASE).await?;
    let z = claim_one(&b, "c", LEASE).await?;
    let failed = ok!(finish(
        &b,
        &a,
        AttemptOutcome::Failed {
            error: "bad".into(),
            retry_in: None
        }
    )
    .await);
    ensure!(
        failed.status == TaskStatus::Failed && failed.error.as_deref() == Some("bad"),
        "{failed:?}"
    );
    let timed = ok!(finish(&b, &z, AttemptOutcome::TimedOut { retry_in: None }).await);
    ensure!(
        timed.status == TaskStatus::TimedOut,
        "status {}",
        timed.status
    );
    ensure!(
        events_of(&b, a.task.id).await?.last() == Some(&EventKind::TaskFailed),
        "task.failed missing"
    );
    ensure!(
        events_of(&b, z.task.id).await?.last() == Some(&EventKind::TaskTimedOut),
        "task.timed_out missing"
    );
    Ok(())
}

pub(super) async fn abandon_gives_attempt_back(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").max_attempts(1)).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let t = ok!(finish(&b, &c, AttemptOutcome::Abandoned).await);
    ensure!(
        t.status == TaskStatus::Queued && t.attempt == 0,
        "abandoned task {t:?}"
    );
    let again = claim_one(&b, "c", LEASE).await?;
    ensure!(
        again.task.attempt == 1,
        "attempt after abandon {}",
        again.task.attempt
    );
    Ok(())
}

pub(super) async fn cancel_queued_and_running(b: SharedBackend) -> CheckResult {
    let queued = create(&b, TaskSpec::new("c")).await?;
    let t = ok!(b.cancel_task(queued.id).await);
    ensure!(t.status == TaskStatus::Cancelled, "status {}", t.status);
    let again = b.cancel_task(queued.id).await;
    ensure!(
        matches!(
            again,
            Err(Error::IllegalTransition {
                from: TaskStatus::Cancelled,
                ..
            })
        ),
        "cancelling twice must be an illegal transition, got {again:?}"
    );
    ensure!(
        ok!(b.claim_tasks("c", 10, LEASE).await).is_empty(),
        "a cancelled task was claimed"
    );
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    ok!(b.cancel_task(c.task.id).await);
    let late = finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await;
    ensure!(
        matches!(late, Err(Error::LeaseLost(_))),
        "holder of a cancelled task must be refused, got {late:?}"
    );
    let renewed = ok!(b.renew_leases(vec![held(&c)], LEASE).await);
    ensure!(renewed == [None], "heartbeat of a cancelled task must fail");
    ensure!(
        events_of(&b, c.task.id).await?.last() == Some(&EventKind::TaskCancelled),
        "task.cancelled missing"
    );
    Ok(())
}

pub(super) async fn resolve_without_lease(b: SharedBackend) -> CheckResult {
    let queued = create(&b, TaskSpec::new("c")).await?;
    let t = ok!(b
        .resolve_task(queued.id, Resolution::Succeeded(json!({"out": 1})))
        .await);
    ensure!(
        t.status == TaskStatus::Succeeded && t.result == Some(json!({"out": 1})),
        "{t:?}"
    );
    let again = b
        .resolve_task(queued.id, Resolution::Failed("late".into()))
        .await;
    ensure!(
        matches!(again, Err(Error::IllegalTransition { .. })),
        "resolving a finished task must be refused, got {again:?}"
    );
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let t = ok!(b
        .resolve_task(c.task.id, Resolution::Failed("external".into()))
        .await);
    ensure!(
        t.status == TaskStatus::Failed && t.error.as_deref() == Some("external"),
        "{t:?}"
    );
    let late = finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await;
    ensure!(
        matches!(late, Err(Error::LeaseLost(_))),
        "holder of a resolved task must be refused"
    );
    Ok(())
}

pub(super) async fn renew_leases_checks_token(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", Duration::from_secs(10)).await?;
    let renewed = ok!(b
        .renew_leases(
            vec![
                held(&c),
                HeldLease {
                    task_id: c.task.id,
                    lease_token: LeaseToken::new(),
                },
                HeldLease {
                    task_id: TaskId::new(),
                    lease_token: LeaseToken::new(),
                }
            ],
            Duration::from_secs(120)
        )
        .await);
    ensure!(renewed.len() == 3, "one answer per lease expected");
    let expires = renewed[0].ok_or("the valid lease was not renewed")?;
    ensure!(
        (expires - clock::now()).num_seconds() >= 100,
        "renewal did not extend to ~120 s"
    );
    ensure!(
        renewed[1].is_none() && renewed[2].is_none(),
        "stale or unknown leases renewed: {renewed:?}"
    );
    let stored = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.lease_expires_at == Some(expires),
        "stored expiry not updated"
    );
    Ok(())
}

pub(super) async fn rescue_expired_leases(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").max_attempts(2)).await?;
    create(&b, TaskSpec::new("c").max_attempts(1).priority(0)).await?;
    let retryable = claim_one(&b, "c", Duration::from_millis(200)).await?;
    let last = claim_one(&b, "c", Duration::from_millis(200)).await?;
    ensure!(
        ok!(b.rescue_expired(100).await).is_empty(),
        "rescued a live lease"
    );
    let mut rescued = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rescued.extend(ok!(b.rescue_expired(100).await));
        if rescued.len() >= 2 {
            break;
        }
    }
    ensure!(
        rescued.len() == 2,
        "expected 2 rescued tasks, got {}",
        rescued.len()
    );
    let r = ok!(b.get_task(retryable.task.id).await).ok_or("task vanished")?;
    ensure!(
        r.status == TaskStatus::Queued,
        "task with attempts left should be queued, is {}",
        r.status
    );
    let l = ok!(b.get_task(last.task.id).await).ok_or("task vanished")?;
    ensure!(
        l.status == TaskStatus::Failed,
        "task without attempts left should fail, is {}",
        l.status
    );
    let stale = finish(
        &b,
        &retryable,
        AttemptOutcome::Succeeded { result: json!(1) },
    )
    .await;
    ensure!(
        matches!(stale, Err(Error::LeaseLost(_))),
        "old holder's report must be refused, got {stale:?}"
    );
    let again = claim_one(&b, "c", LEASE).await?;
    ensure!(
        again.task.id == retryable.task.id && again.task.attempt == 2,
        "rescued task should run again as attempt 2"
    );
    ensure!(
        events_of(&b, retryable.task.id)
            .await?
            .contains(&EventKind::TaskRescued),
        "task.rescued missing"
    );
    Ok(())
}

pub(super) async fn unknown_task_errors(b: SharedBackend) -> CheckResult {
    let id = TaskId::new();
    ensure!(ok!(b.get_task(id).await).is_none(), "unknown task found");
    let r = b.cancel_task(id).await;
    ensure!(
        matches!(r, Err(Error::TaskNotFound(_))),
        "cancel unknown: {r:?}"
    );
    let r = b.resolve_task(id, Resolution::Succeeded(json!(1))).await;
    ensure!(
        matches!(r, Err(Error::TaskNotFound(_))),
        "resolve unknown: {r:?}"
    );
    let r = finish_report(
        &b,
        AttemptReport {
            task_id: id,
            lease_token: LeaseToken::new(),
            attempt: 1,
            outcome: AttemptOutcome::Succeeded { result: json!(1) },
        },
    )
    .await;
    ensure!(
        matches!(r, Err(Error::TaskNotFound(_))),
        "finish unknown: {r:?}"
    );
    Ok(())
}

/// A cancel by a named caller records it in `task.cancelled`.
pub(super) async fn a_cancel_names_its_caller(b: SharedBackend) -> CheckResult {
    let task = create(&b, TaskSpec::new("cn")).await?;
    let cancelled = ok!(b.cancel_task_by(task.id, "user:ops").await);
    ensure!(cancelled.status == TaskStatus::Cancelled, "{cancelled:?}");
    let events = ok!(b.read_task_events(task.id, 0, 10).await);
    let last = events.last().ok_or("no event")?;
    ensure!(
        last.kind == EventKind::TaskCancelled
            && last.data == json!({"from": "queued", "actor": "user:ops"}),
        "the cancel's event: {last:?}"
    );
    let again = b.cancel_task_by(task.id, "user:ops").await;
    ensure!(
        matches!(again, Err(Error::IllegalTransition { .. })),
        "a second cancel: {again:?}"
    );
    Ok(())
}

/// An operator's requeue makes a delayed task due at once (attempts and priority kept, the
/// actor in `task.requeued`); a due, running, finished or unknown task is refused.
pub(super) async fn requeue_runs_a_waiting_task_now(b: SharedBackend) -> CheckResult {
    let later = create(
        &b,
        TaskSpec::new("rq")
            .delay(Duration::from_secs(3600))
            .priority(4),
    )
    .await?;
    let nothing = ok!(b.claim_tasks("rq", 1, LEASE).await);
    ensure!(nothing.is_empty(), "a task due in an hour was claimed");
    let requeued = ok!(b.requeue_task(later.id, "user:ops").await);
    ensure!(
        requeued.status == TaskStatus::Queued
            && requeued.run_at <= clock::now()
            && requeued.attempt == 0
            && requeued.priority == 4,
        "after the requeue: {requeued:?}"
    );
    let kinds = events_of(&b, later.id).await?;
    ensure!(
        kinds == [EventKind::TaskQueued, EventKind::TaskRequeued],
        "events {kinds:?}"
    );
    let events = ok!(b.read_task_events(later.id, 0, 10).await);
    let data = &events.last().ok_or("no event")?.data;
    ensure!(
        *data == json!({"from": "queued", "actor": "user:ops"}),
        "task.requeued data {data}"
    );
    // Requeues at once (operators, nodes): one applies, the others are refused.
    let racing = create(
        &b,
        TaskSpec::new("rq-race").delay(Duration::from_secs(3600)),
    )
    .await?;
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.requeue_task(racing.id, "user:ops").await })
        })
        .collect();
    let mut applied = 0;
    for racer in racers {
        match racer
            .await
            .map_err(|e| format!("a requeue panicked: {e}"))?
        {
            Ok(_) => applied += 1,
            Err(Error::Invalid { .. }) => {}
            Err(other) => return Err(format!("a raced requeue failed: {other:?}")),
        }
    }
    ensure!(applied == 1, "{applied} of 8 requeues at once applied");
    let kinds = events_of(&b, racing.id).await?;
    ensure!(
        kinds == [EventKind::TaskQueued, EventKind::TaskRequeued],
        "events of a raced requeue {kinds:?}"
    );
    // Due now: a second requeue (a double click) is refused, saying why.
    let again = b.requeue_task(later.id, "user:ops").await;
    ensure!(
        matches!(
            again,
            Err(Error::Invalid {
                field: "task_id",
                ..
            })
        ),
        "requeue of a due task: {again:?}"
    );
    let claimed = claim_one(&b, "rq", LEASE).await?;
    ensure!(claimed.task.id == later.id, "claimed {:?}", claimed.task);
    // Running (and then finished) tasks are not requeued.
    let refused = b.requeue_task(later.id, "user:ops").await;
    ensure!(
        matches!(refused, Err(Error::IllegalTransition { .. })),
        "requeue of a running task: {refused:?}"
    );
    ok!(finish(&b, &claimed, AttemptOutcome::Succeeded { result: json!(1) }).await);
    let refused = b.requeue_task(later.id, "user:ops").await;
    ensure!(
        matches!(refused, Err(Error::IllegalTransition { .. })),
        "requeue of a succeeded task: {refused:?}"
    );
    let missing = b.requeue_task(TaskId::new(), "user:ops").await;
    ensure!(
        matches!(missing, Err(Error::TaskNotFound(_))),
        "requeue of an unknown task: {missing:?}"
    );
    Ok(())
}

/// An operator's retry reopens a failed, timed-out or cancelled task (attempts start over, the
/// earlier attempts stay in its events, the actor in `task.reopened`); it runs again. A task
/// in another state, or one of a workflow, is refused with nothing changed.
pub(super) async fn retry_reopens_a_finished_task(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("rt").max_attempts(1)).await?;
    let c = claim_one(&b, "rt", LEASE).await?;
    let failed = ok!(finish(
        &b,
        &c,
        AttemptOutcome::Failed {
            error: "bad".into(),
            retry_in: None
        }
    )
    .await);
    ensure!(failed.status == TaskStatus::Failed, "{failed:?}");
    let retried = ok!(b.retry_task(c.task.id, "user:ops").await);
    ensure!(
        retried.status == TaskStatus::Queued
            && retried.attempt == 0
            && retried.finished_at.is_none()
            && retried.error.is_none()
            && retried.lease_expires_at.is_none(),
        "after the retry: {retried:?}"
    );
    let stored = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.finished_at.is_none() && stored.error.is_none(),
        "finished_at or the error kept after the retry: {stored:?}"
    );
    let kinds = events_of(&b, c.task.id).await?;
    ensure!(
        kinds.ends_with(&[EventKind::TaskFailed, EventKind::TaskReopened]),
        "events {kinds:?}"
    );
    let mut after = 0;
    let mut reopened = None;
    loop {
        let batch = ok!(b.read_events(after, 1000).await);
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        after = last;
        reopened = batch
            .into_iter()
            .rfind(|e| e.task_id == Some(c.task.id) && e.kind == EventKind::TaskReopened)
            .or(reopened);
    }
    let reopened = reopened.ok_or("no task.reopened")?;
    ensure!(
        reopened.data == json!({"from": "failed", "actor": "user:ops"}),
        "task.reopened data {}",
        reopened.data
    );
    // It runs again, with a fresh attempt budget.
    let again = claim_one(&b, "rt", LEASE).await?;
    ensure!(
        again.task.id == c.task.id && again.task.attempt == 1,
        "claimed again: {:?}",
        again.task
    );
    let done = ok!(finish(&b, &again, AttemptOutcome::Succeeded { result: json!(2) }).await);
    ensure!(done.status == TaskStatus::Succeeded, "{done:?}");
    // A succeeded task is not retried; neither is a queued one.
    let refused = b.retry_task(c.task.id, "user:ops").await;
    ensure!(
        matches!(refused, Err(Error::IllegalTransition { .. })),
        "retry of a succeeded task: {refused:?}"
    );
    let queued = create(&b, TaskSpec::new("rt")).await?;
    let refused = b.retry_task(queued.id, "user:ops").await;
    ensure!(
        matches!(refused, Err(Error::IllegalTransition { .. })),
        "retry of a queued task: {refused:?}"
    );
    // Cancelled and timed out are retried too.
    let cancelled = ok!(b.cancel_task(queued.id).await);
    ensure!(cancelled.status == TaskStatus::Cancelled, "{cancelled:?}");
    let retried = ok!(b.retry_task(queued.id, "user:ops").await);
    ensure!(retried.status == TaskStatus::Queued, "{retried:?}");
    // A task of a workflow is left to the workflow's retry.
    let mut flow = crate::Workflow::new();
    flow.add(TaskSpec::new("rt-flow").max_attempts(1));
    let (workflow, tasks) = flow
        .into_new()
        .map_err(|e| format!("planning failed: {e}"))?;
    ok!(b.create_workflow(workflow, tasks).await);
    let member = claim_one(&b, "rt-flow", LEASE).await?;
    ok!(finish(
        &b,
        &member,
        AttemptOutcome::Failed {
            error: "bad".into(),
            retry_in: None
        }
    )
    .await);
    let refused = b.retry_task(member.task.id, "user:ops").await;
    ensure!(
        matches!(
            &refused,
            Err(Error::Invalid {
                field: "task_id",
                ..
            })
        ),
        "retry of a workflow's task: {refused:?}"
    );
    let member = ok!(b.get_task(member.task.id).await).ok_or("task vanished")?;
    ensure!(
        member.status == TaskStatus::Failed,
        "a refused retry changed the task"
    );
    // Nor is a task with dependencies: alone, it could run before its parents or end its
    // dependents' waits twice.
    let parent = create(&b, TaskSpec::new("rt-parent").max_attempts(1)).await?;
    let planned = crate::backend::plan_tasks(
        vec![TaskSpec::new("rt-child").after(parent.id).max_attempts(1)],
        None,
    )
    .map_err(|e| format!("planning failed: {e}"))?;
    let child = ok!(b.create_tasks(planned).await).remove(0).task;
    ok!(b.cancel_task(child.id).await);
    let parent_claim = claim_one(&b, "rt-parent", LEASE).await?;
    ok!(finish(
        &b,
        &parent_claim,
        AttemptOutcome::TimedOut { retry_in: None }
    )
    .await);
    for id in [parent.id, child.id] {
        let refused = b.retry_task(id, "user:ops").await;
        ensure!(
            matches!(
                &refused,
                Err(Error::Invalid {
                    field: "task_id",
                    ..
                })
            ),
            "retry of a task with dependencies: {refused:?}"
        );
    }
    // A task that timed out is retried like one that failed.
    create(&b, TaskSpec::new("rt-timeout").max_attempts(1)).await?;
    let timing = claim_one(&b, "rt-timeout", LEASE).await?;
    ok!(finish(&b, &timing, AttemptOutcome::TimedOut { retry_in: None }).await);
    let retried = ok!(b.retry_task(timing.task.id, "user:ops").await);
    ensure!(retried.status == TaskStatus::Queued, "{retried:?}");
    let missing = b.retry_task(TaskId::new(), "user:ops").await;
    ensure!(
        matches!(missing, Err(Error::TaskNotFound(_))),
        "retry of an unknown task: {missing:?}"
    );
    Ok(())
}

/// A finished task outside workflows is deleted (its idempotency key free again); one that has
/// not finished, one of a workflow and one an unfinished task depends on are refused with
/// nothing changed.
pub(super) async fn delete_removes_a_finished_task(b: SharedBackend) -> CheckResult {
    let keyed = create(&b, TaskSpec::new("dt").idempotency_key("dt-key")).await?;
    let refused = b.delete_task(keyed.id).await;
    ensure!(
        matches!(
            &refused,
            Err(Error::Invalid {
                field: "task_id",
                ..
            })
        ),
        "deleting a queued task: {refused:?}"
    );
    ensure!(
        ok!(b.get_task(keyed.id).await).is_some(),
        "a refused deletion removed the task"
    );
    ok!(b.cancel_task(keyed.id).await);
    let deleted = ok!(b.delete_task(keyed.id).await);
    ensure!(
        deleted.id == keyed.id && deleted.status == TaskStatus::Cancelled,
        "{deleted:?}"
    );
    ensure!(
        ok!(b.get_task(keyed.id).await).is_none(),
        "the deleted task is still there"
    );
    let again = b.delete_task(keyed.id).await;
    ensure!(
        matches!(again, Err(Error::TaskNotFound(_))),
        "deleting twice: {again:?}"
    );
    // Its key is free again.
    let renewed = ok!(b
        .create_tasks(vec![new_task(
            TaskSpec::new("dt").idempotency_key("dt-key")
        )])
        .await);
    ensure!(
        renewed.len() == 1 && renewed[0].created && renewed[0].task.id != keyed.id,
        "the key of a deleted task: {renewed:?}"
    );

    // A finished parent stays while a task depends on it, finished or not.
    let parent = create(&b, TaskSpec::new("dt-parent")).await?;
    let planned =
        crate::backend::plan_tasks(vec![TaskSpec::new("dt-child").after(parent.id)], None)
            .map_err(|e| format!("planning failed: {e}"))?;
    let child = ok!(b.create_tasks(planned).await).remove(0).task;
    let claimed = claim_one(&b, "dt-parent", LEASE).await?;
    ok!(finish(&b, &claimed, AttemptOutcome::Succeeded { result: json!(1) }).await);
    let refused = b.delete_task(parent.id).await;
    ensure!(
        matches!(
            &refused,
            Err(Error::Invalid {
                field: "task_id",
                ..
            })
        ),
        "deleting a parent of a queued task: {refused:?}"
    );
    ok!(b.cancel_task(child.id).await);
    let refused = b.delete_task(parent.id).await;
    ensure!(
        matches!(
            &refused,
            Err(Error::Invalid {
                field: "task_id",
                ..
            })
        ),
        "deleting a parent of a finished task: {refused:?}"
    );
    // The child goes first; then nothing depends on the parent.
    ok!(b.delete_task(child.id).await);
    ok!(b.delete_task(parent.id).await);

    // A workflow's tasks go with their workflow.
    let mut flow = crate::Workflow::new();
    flow.add(TaskSpec::new("dt-flow"));
    let (workflow, tasks) = flow
        .into_new()
        .map_err(|e| format!("planning failed: {e}"))?;
    let created = ok!(b.create_workflow(workflow, tasks).await);
    let member = created.tasks[0].task.id;
    ok!(b.cancel_task(member).await);
    let refused = b.delete_task(member).await;
    ensure!(
        matches!(
            &refused,
            Err(Error::Invalid {
                field: "task_id",
                ..
            })
        ),
        "deleting a workflow's task: {refused:?}"
    );
    ensure!(
        ok!(b.get_task(member).await).is_some(),
        "a refused deletion removed the workflow's task"
    );
    Ok(())
}
