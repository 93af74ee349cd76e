//! Checks of the event log and the key-value space.

use serde_json::json;

use super::*;

pub(super) async fn events_are_ordered_and_replayable(b: SharedBackend) -> CheckResult {
    let start = ok!(b.last_event_seq().await);
    let custom = ok!(b
        .append_event(
            NewEvent::new(EventKind::Custom("test.custom".into())).with_data(json!({"n": 1}))
        )
        .await);
    ensure!(custom.seq > start, "sequence did not grow");
    ensure!(
        custom.kind.as_str() == "test.custom" && custom.data == json!({"n": 1}),
        "{custom:?}"
    );
    for _ in 0..3 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let all = ok!(b.read_events(start, 100).await);
    ensure!(all.len() == 4, "expected 4 events, got {}", all.len());
    ensure!(
        all.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at),
        "sequence or time not increasing"
    );
    ensure!(
        ok!(b.last_event_seq().await) == all[3].seq,
        "last_event_seq wrong"
    );
    let rest = ok!(b.read_events(all[1].seq, 100).await);
    ensure!(
        rest == all[2..],
        "replay after seq {} should return exactly the rest",
        all[1].seq
    );
    let limited = ok!(b.read_events(start, 2).await);
    ensure!(limited == all[..2], "limit not honoured");
    ensure!(
        ok!(b.read_events(all[3].seq, 10).await).is_empty(),
        "nothing after the last"
    );
    Ok(())
}

pub(super) async fn the_tail_starts_below_what_comes_next(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let start = ok!(b.tail_start_seq().await);
    let last = ok!(b.last_event_seq().await);
    ensure!(
        start <= last,
        "tail_start_seq {start} is past the last event, {last}"
    );
    let created = create(&b, TaskSpec::new("c")).await?;
    let events = ok!(b.read_task_events(created.id, 0, 10).await);
    ensure!(
        events.len() == 1 && events[0].seq > start,
        "the next event {events:?} is not after tail_start_seq {start}"
    );
    // With every event read (so numbered, where a backend numbers them when read): the start
    // is the last one.
    let last = ok!(b.last_event_seq().await);
    let start = ok!(b.tail_start_seq().await);
    ensure!(
        start == last,
        "tail_start_seq {start} with every event read, up to {last}"
    );
    Ok(())
}

pub(super) async fn a_large_batch_logs_its_tasks_in_order(b: SharedBackend) -> CheckResult {
    let start = ok!(b.last_event_seq().await);
    // More than a backend may store in one statement (SQLite: 500 rows; PostgreSQL: events in
    // rows of 256).
    let created = ok!(b
        .create_tasks(
            (0..1_100)
                .map(|_| new_task(TaskSpec::new("many")))
                .collect()
        )
        .await);
    let events = events_after(&b, start).await?;
    ensure!(
        events.len() == created.len(),
        "{} events for {} tasks",
        events.len(),
        created.len()
    );
    for (event, c) in events.iter().zip(&created) {
        ensure!(
            event.kind == EventKind::TaskQueued
                && event.task_id == Some(c.task.id)
                && event.engine.as_deref() == Some("many")
                && event.attempt == Some(0),
            "event {event:?} for task {}",
            c.task.id
        );
    }
    Ok(())
}

pub(super) async fn events_are_read_by_task(b: SharedBackend) -> CheckResult {
    let start = ok!(b.last_event_seq().await);
    // Ten tasks created in one call (one statement, whose events a backend may store
    // together), then events of two of them interleaved with others.
    let created = ok!(b
        .create_tasks((0..10).map(|_| new_task(TaskSpec::new("c"))).collect())
        .await);
    let ids: Vec<TaskId> = created.iter().map(|c| c.task.id).collect();
    let (a, z) = (ids[4], ids[9]);
    for n in 0..5 {
        let custom = |task| {
            NewEvent::for_task(
                EventKind::Custom("test.note".into()),
                task,
                "c",
                json!({"n": n}),
            )
        };
        ok!(b.append_event(custom(a)).await);
        ok!(b
            .append_event(NewEvent::new(EventKind::Custom("test.other".into())))
            .await);
        ok!(b.append_event(custom(z)).await);
    }
    let all = ok!(b.read_events(start, 1000).await);
    for task in [a, z, ids[0]] {
        let expected: Vec<_> = all
            .iter()
            .filter(|e| e.task_id == Some(task))
            .cloned()
            .collect();
        let read = ok!(b.read_task_events(task, start, 100).await);
        ensure!(
            read == expected,
            "task {task}: read {:?}, the log holds {:?}",
            read.iter().map(|e| e.seq).collect::<Vec<_>>(),
            expected.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
    }
    let of_a: Vec<_> = all.iter().filter(|e| e.task_id == Some(a)).collect();
    ensure!(of_a.len() == 6, "task {a} has {} events", of_a.len());
    let rest = ok!(b.read_task_events(a, of_a[2].seq, 100).await);
    ensure!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>()
            == of_a[3..].iter().map(|e| e.seq).collect::<Vec<_>>(),
        "after seq {}: {rest:?}",
        of_a[2].seq
    );
    let limited = ok!(b.read_task_events(a, start, 2).await);
    ensure!(
        limited.len() == 2 && limited[0] == *of_a[0] && limited[1] == *of_a[1],
        "limit not honoured: {limited:?}"
    );
    ensure!(
        ok!(b.read_task_events(a, of_a[5].seq, 10).await).is_empty(),
        "nothing after the task's last event"
    );
    ensure!(
        ok!(b.read_task_events(TaskId::new(), 0, 10).await).is_empty(),
        "an unknown task has no events"
    );
    ensure!(
        ok!(b.read_task_events(a, start, 0).await).is_empty(),
        "a limit of 0 reads nothing"
    );
    Ok(())
}

pub(super) async fn storage_provider_kv(b: SharedBackend) -> CheckResult {
    ok!(b.store("snap/1", b"one".to_vec()).await);
    ok!(b.store("snap/2", b"two".to_vec()).await);
    ok!(b.store("snapshot", b"x".to_vec()).await);
    ok!(b.store("result/1", vec![0, 255]).await);
    ensure!(
        ok!(b.retrieve("snap/1").await) == Some(b"one".to_vec()),
        "retrieve"
    );
    ok!(b.store("snap/1", b"uno".to_vec()).await);
    ensure!(
        ok!(b.retrieve("snap/1").await) == Some(b"uno".to_vec()),
        "overwrite"
    );
    ensure!(ok!(b.retrieve("missing").await).is_none(), "missing key");
    ensure!(
        ok!(b.list("snap/").await) == ["snap/1", "snap/2"],
        "list by prefix"
    );
    ensure!(ok!(b.list("").await).len() == 4, "empty prefix lists all");
    ensure!(
        ok!(b.list("snap%").await).is_empty(),
        "prefix must be literal, not a pattern"
    );
    for key in ["é/y", "é/x", "é0"] {
        ok!(b.store(key, key.as_bytes().to_vec()).await);
    }
    ensure!(
        ok!(b.list("é/").await) == ["é/x", "é/y"],
        "a prefix beyond ASCII"
    );
    for key in ["é/y", "é/x", "é0"] {
        ok!(b.delete(key).await);
    }
    ensure!(ok!(b.delete("snap/2").await), "delete existing");
    ensure!(!ok!(b.delete("snap/2").await), "delete missing");
    ensure!(
        ok!(b.retrieve("result/1").await) == Some(vec![0, 255]),
        "binary value"
    );
    ensure!(
        matches!(b.store("", vec![]).await, Err(Error::Invalid { .. })),
        "empty key must be refused"
    );
    Ok(())
}
