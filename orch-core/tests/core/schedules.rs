use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use orch_core::backend::clock;
use orch_core::{Orchestrator, Schedule, TaskFilter, TaskSpec};

use crate::{backend, config};

#[tokio::test(start_paused = true)]
async fn a_schedule_fires_once_per_tick_and_two_orchestrators_dispatch_each_tick_once() {
    let shared = backend();
    let schedule = Schedule::every(
        "heartbeat",
        Duration::from_secs(10),
        TaskSpec::new("nobody"),
    )
    .unwrap();
    let a = Orchestrator::builder(shared.clone())
        .config(config())
        .schedule(schedule.clone())
        .build()
        .await
        .unwrap();
    let b = Orchestrator::builder(shared.clone())
        .config(config())
        .schedule(schedule.clone())
        .build()
        .await
        .unwrap();
    let start = clock::now();
    tokio::time::sleep(Duration::from_secs(65)).await;
    let end = clock::now();
    let tasks = a
        .list(TaskFilter {
            engine: Some("nobody".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    // Ticks at multiples of 10 s strictly inside (start, end].
    let mut expected = Vec::new();
    let mut tick = schedule.next_tick(start).unwrap();
    while tick <= end {
        expected.push(schedule.tick_key(tick));
        tick = schedule.next_tick(tick).unwrap();
    }
    assert!(expected.len() >= 6, "{expected:?}");
    let mut keys: Vec<String> = tasks
        .iter()
        .filter_map(|t| t.idempotency_key.clone())
        .collect();
    keys.sort();
    assert_eq!(
        keys, expected,
        "each tick must be dispatched exactly once by two orchestrators"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn ticks_are_aligned_and_cron_is_parsed() {
    let every = Schedule::every("s", Duration::from_secs(60), TaskSpec::new("x")).unwrap();
    let at: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 30).unwrap();
    assert_eq!(
        every.next_tick(at).unwrap(),
        Utc.with_ymd_and_hms(2026, 1, 1, 10, 1, 0).unwrap()
    );
    let on_tick = Utc.with_ymd_and_hms(2026, 1, 1, 10, 1, 0).unwrap();
    assert_eq!(
        every.next_tick(on_tick).unwrap(),
        Utc.with_ymd_and_hms(2026, 1, 1, 10, 2, 0).unwrap()
    );
    let cron = Schedule::cron("c", "30 4 * * *", TaskSpec::new("x")).unwrap();
    assert_eq!(
        cron.next_tick(at).unwrap(),
        Utc.with_ymd_and_hms(2026, 1, 2, 4, 30, 0).unwrap()
    );
    assert_eq!(cron.tick_key(on_tick), "c:2026-01-01T10:01:00.000Z");
    let err = Schedule::cron("c", "61 * * * *", TaskSpec::new("x")).unwrap_err();
    assert!(err.to_string().contains("cron expression"), "{err}");
    let err = Schedule::every("c", Duration::from_millis(10), TaskSpec::new("x")).unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
}
