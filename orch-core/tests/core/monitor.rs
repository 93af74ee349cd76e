//! The monitor on tokio's paused clock: synthetic readings driven through each rule (fires
//! after its duration and not before, once; resolves once; no flapping), the orchestrator's
//! own readings, EWMA anomaly detection (a step is flagged, noise is not), one alert per
//! cluster for cluster-wide readings, and notifier delivery (retries with backoff, failures
//! counted, a receiver that hangs delays nothing else).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use orch_core::monitor::{
    AlertRule, AnomalyDetection, Delivery, Metric, MonitorConfig, Reading, Severity,
};
use orch_core::{
    LockOptions, MemoryBackend, Orchestrator, SharedBackend, TaskError, TaskSpec, TaskStatus,
    event_kinds, processor_fn,
};

use crate::config;
use crate::watch::{Faulty, Recorder, Script, alerts_of};

/// Sleeps until `seconds` after `start` on the paused clock.
async fn at(start: Instant, seconds: f64) {
    tokio::time::sleep_until(start + Duration::from_secs_f64(seconds)).await;
}

/// An orchestrator whose monitor runs `rules` (no anomaly detection) over `script`'s readings.
async fn watched(
    backend: SharedBackend,
    monitor: MonitorConfig,
    script: &Script,
    notifier: Option<Recorder>,
) -> (Orchestrator, Instant) {
    let mut builder = Orchestrator::builder(backend)
        .config(config().with_monitor(Some(monitor)))
        .sampler(script.sampler());
    if let Some(notifier) = notifier {
        builder = builder.notifier(notifier);
    }
    let orch = builder.build().await.unwrap();
    // The first pass runs at once, then one a second from here.
    (orch, Instant::now())
}

/// Drives `rule` with `trouble` readings, then `fine` ones, and checks it fires exactly
/// `for_secs` after the first pass that saw the trouble, once, and resolves a minute after the
/// first pass that saw it fine, once.
async fn check_rule(rule: &str, trouble: Reading, fine: Reading, for_secs: f64) {
    let script = Script::default();
    let recorder = Recorder::default();
    let monitor = MonitorConfig::default().with_anomaly(None);
    let (orch, start) = watched(crate::backend(), monitor, &script, Some(recorder.clone())).await;
    at(start, 0.5).await;
    script.set(vec![trouble.clone()]);
    // The pass at 1 s sees it first.
    at(start, 1.0 + for_secs - 0.5).await;
    assert!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, rule)
            .await
            .is_empty(),
        "{rule} fired before its duration"
    );
    at(start, 1.0 + for_secs + 0.5).await;
    let fired = alerts_of(&orch, event_kinds::ALERT_FIRED, rule).await;
    assert_eq!(fired.len(), 1, "{rule} did not fire once at its duration");
    assert_eq!(fired[0].data["value"], trouble.value);
    assert_eq!(fired[0].data["state"], "firing");
    assert_eq!(fired[0].engine, trouble.engine);
    let firing = orch.monitor().unwrap().alerts();
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].rule, rule);

    // Held for a long while: still one.
    at(start, 1.0 + for_secs + 200.5).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, rule).await.len(),
        1
    );
    script.set(vec![fine]);
    let cleared = 1.0 + for_secs + 201.0;
    at(start, cleared + 59.5).await;
    assert!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, rule)
            .await
            .is_empty()
    );
    at(start, cleared + 60.5).await;
    let resolved = alerts_of(&orch, event_kinds::ALERT_RESOLVED, rule).await;
    assert_eq!(resolved.len(), 1, "{rule} did not resolve once");
    assert_eq!(resolved[0].data["state"], "resolved");
    at(start, cleared + 400.0).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, rule).await.len(),
        1
    );
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, rule)
            .await
            .len(),
        1
    );
    assert!(orch.monitor().unwrap().alerts().is_empty());
    // The notifier got both.
    let received = recorder.received.lock().clone();
    let states: Vec<_> = received.iter().map(|alert| alert.state).collect();
    assert_eq!(
        states,
        [
            orch_core::monitor::AlertState::Firing,
            orch_core::monitor::AlertState::Resolved
        ]
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn each_default_rule_on_sampled_readings_fires_after_its_duration_once_and_resolves_once() {
    let node = |metric, value| Reading::new(metric, value);
    let engine = |metric, value| Reading::of_engine(metric, "mail", value);
    check_rule(
        "cpu_high",
        node(Metric::CpuPercent, 95.0),
        node(Metric::CpuPercent, 40.0),
        300.0,
    )
    .await;
    check_rule(
        "memory_high",
        node(Metric::MemoryPercent, 97.0),
        node(Metric::MemoryPercent, 60.0),
        120.0,
    )
    .await;
    check_rule(
        "disk_high",
        node(Metric::DiskPercent, 85.0),
        node(Metric::DiskPercent, 50.0),
        0.0,
    )
    .await;
    check_rule(
        "auth_failures",
        node(Metric::AuthFailures, 50.0),
        node(Metric::AuthFailures, 0.0),
        0.0,
    )
    .await;
    check_rule(
        "queue_deep",
        engine(Metric::QueueDepth, 150.0),
        engine(Metric::QueueDepth, 3.0),
        0.0,
    )
    .await;
    check_rule(
        "error_rate_high",
        engine(Metric::ErrorRate, 0.2),
        engine(Metric::ErrorRate, 0.01),
        600.0,
    )
    .await;
    check_rule(
        "task_duration_p95_high",
        engine(Metric::TaskDurationP95, 3.5),
        engine(Metric::TaskDurationP95, 0.4),
        0.0,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_value_hovering_at_the_threshold_fires_once_and_does_not_flap() {
    let script = Script::default();
    let monitor = MonitorConfig::default()
        .with_anomaly(None)
        .with_rules(vec![AlertRule::above("hot", Metric::CpuPercent, 90.0)]);
    let (orch, start) = watched(crate::backend(), monitor, &script, None).await;
    for second in 0..300 {
        at(start, second as f64 + 0.5).await;
        let value = if second % 2 == 0 { 91.0 } else { 89.0 };
        script.set(vec![Reading::new(Metric::CpuPercent, value)]);
    }
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "hot")
            .await
            .len(),
        1
    );
    assert!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "hot")
            .await
            .is_empty()
    );
    script.set(vec![Reading::new(Metric::CpuPercent, 50.0)]);
    at(start, 400.0).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "hot")
            .await
            .len(),
        1
    );
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "hot")
            .await
            .len(),
        1
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_database_fires_at_the_first_failed_probe_and_resolves_once() {
    let backend = Faulty::over(Arc::new(MemoryBackend::new()));
    let monitor = MonitorConfig::default().with_anomaly(None);
    let (orch, start) = watched(
        backend.clone() as SharedBackend,
        monitor,
        &Script::default(),
        None,
    )
    .await;
    at(start, 10.5).await;
    assert!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "database_down")
            .await
            .is_empty()
    );
    backend.down.store(true, Ordering::SeqCst);
    at(start, 11.5).await;
    let readings = orch.monitor().unwrap().readings();
    assert_eq!(readings.get(&Metric::DatabaseUp, None), Some(0.0));
    assert_eq!(readings.get(&Metric::DatabaseLatency, None), None);
    let fired = alerts_of(&orch, event_kinds::ALERT_FIRED, "database_down").await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].data["severity"], "critical");
    at(start, 100.5).await;
    backend.down.store(false, Ordering::SeqCst);
    at(start, 160.5).await;
    assert!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "database_down")
            .await
            .is_empty()
    );
    at(start, 161.5).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "database_down")
            .await
            .len(),
        1
    );
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "database_down")
            .await
            .len(),
        1
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

/// A sampler that fails says nothing about its metrics: an alert on one of them stays firing
/// (neither resolved nor fired again) while it fails, and resolves once, when the sampler
/// answers again without the reading.
#[tokio::test(start_paused = true)]
async fn an_alert_outlives_a_failing_sampler_and_resolves_when_it_answers_again() {
    use std::sync::atomic::AtomicU8;
    // 0: the reading is high, 1: the sampler fails, 2: it answers without the reading.
    let phase = Arc::new(AtomicU8::new(0));
    let sampler = {
        let phase = phase.clone();
        orch_core::monitor::sampler_fn(move || {
            let phase = phase.load(Ordering::SeqCst);
            async move {
                match phase {
                    0 => Ok(vec![Reading::new(Metric::Custom("backlog".into()), 50.0)]),
                    1 => Err(orch_core::Error::backend("sample", "the source is down")),
                    _ => Ok(Vec::new()),
                }
            }
        })
    };
    let monitor = MonitorConfig::default().with_anomaly(None).with_rules(vec![
        AlertRule::above("backlog_high", Metric::Custom("backlog".into()), 10.0)
            .for_duration(Duration::ZERO)
            .clear_for(Duration::from_secs(5)),
    ]);
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_monitor(Some(monitor)))
        .sampler(sampler)
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    at(start, 2.5).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "backlog_high")
            .await
            .len(),
        1
    );
    phase.store(1, Ordering::SeqCst);
    at(start, 30.5).await;
    assert!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "backlog_high")
            .await
            .is_empty(),
        "resolved while its sampler failed"
    );
    assert_eq!(orch.monitor().unwrap().alerts().len(), 1);
    phase.store(2, Ordering::SeqCst);
    at(start, 40.5).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "backlog_high")
            .await
            .len(),
        1
    );
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "backlog_high")
            .await
            .len(),
        1
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

/// While the database probe fails, the queue's depth is unknown: an alert on it stays firing
/// (not resolved for want of a reading), and is not fired again once the probe answers.
#[tokio::test(start_paused = true)]
async fn an_alert_on_the_queue_outlives_a_database_outage() {
    let backend = Faulty::over(Arc::new(MemoryBackend::new()));
    let monitor = MonitorConfig::default().with_anomaly(None).with_rules(vec![
        AlertRule::above("backlog", Metric::QueueDepth, 0.5)
            .for_duration(Duration::ZERO)
            .clear_for(Duration::from_secs(5)),
    ]);
    let (orch, start) = watched(
        backend.clone() as SharedBackend,
        monitor,
        &Script::default(),
        None,
    )
    .await;
    // A task of an engine nobody serves stays queued.
    orch.dispatch(TaskSpec::new("nobody")).await.unwrap();
    at(start, 2.5).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "backlog")
            .await
            .len(),
        1
    );
    backend.down.store(true, Ordering::SeqCst);
    at(start, 30.5).await;
    assert_eq!(
        orch.monitor().unwrap().alerts().len(),
        1,
        "resolved during the outage"
    );
    backend.down.store(false, Ordering::SeqCst);
    at(start, 40.5).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "backlog")
            .await
            .len(),
        1
    );
    assert!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "backlog")
            .await
            .is_empty()
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_lock_waited_for_over_thirty_seconds_fires() {
    let monitor = MonitorConfig::default().with_anomaly(None);
    let (orch, start) = watched(crate::backend(), monitor, &Script::default(), None).await;
    let held = orch
        .locks()
        .acquire(
            "ledger",
            "holder",
            LockOptions::default().ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let locks = orch.locks().clone();
    let waiter = tokio::spawn(async move {
        locks
            .acquire(
                "ledger",
                "waiter",
                LockOptions::default().wait(Some(Duration::from_secs(300))),
            )
            .await
    });
    at(start, 30.5).await;
    assert!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, "lock_wait_long")
            .await
            .is_empty()
    );
    at(start, 31.5).await;
    let fired = alerts_of(&orch, event_kinds::ALERT_FIRED, "lock_wait_long").await;
    assert_eq!(fired.len(), 1);
    assert!(fired[0].data["value"].as_f64().unwrap() > 30.0);
    held.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
    at(start, 100.0).await;
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_RESOLVED, "lock_wait_long")
            .await
            .len(),
        1
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn the_orchestrator_measures_its_own_queue_attempts_errors_and_durations() {
    let monitor = MonitorConfig::default()
        .with_anomaly(None)
        .with_rules(Vec::new());
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_monitor(Some(monitor)))
        .engine_with_concurrency(
            "half",
            processor_fn(|_ctx, input| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if input.as_i64().unwrap_or_default() % 2 == 0 {
                    Ok(Value::Null)
                } else {
                    Err(TaskError::fatal("odd"))
                }
            }),
            4,
        )
        .build()
        .await
        .unwrap();
    let created = orch
        .dispatch_many(
            (0..40)
                .map(|i| {
                    TaskSpec::new("half")
                        .priority(i % 2)
                        .payload(Value::from(i / 2))
                        .max_attempts(1)
                })
                .collect(),
        )
        .await
        .unwrap();
    orch.dispatch(TaskSpec::new("idle").delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let readings = orch.monitor().unwrap().check_now().await.unwrap();
    let engine = |metric: Metric| readings.get(&metric, Some("half"));
    assert_eq!(engine(Metric::ConcurrencyLimit), Some(4.0));
    // A delayed task counts in its engine's queue.
    assert_eq!(readings.get(&Metric::QueueDepth, Some("idle")), Some(1.0));
    let by_priority: Vec<_> = readings
        .values
        .iter()
        .filter(|r| r.metric == Metric::QueuedByPriority && r.engine.as_deref() == Some("half"))
        .map(|r| (r.priority.unwrap(), r.value))
        .collect();
    assert_eq!(by_priority.len(), 2);
    let queued = engine(Metric::QueueDepth).unwrap();
    assert_eq!(by_priority.iter().map(|(_, v)| v).sum::<f64>(), queued);
    // The rest are the attempts already started (at most the limit).
    let started = 40.0 - queued;
    assert!((0.0..=4.0).contains(&started), "{started}");
    assert_eq!(engine(Metric::InFlight), Some(started));
    for c in created {
        orch.wait_for(c.task.id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let readings = orch.monitor().unwrap().check_now().await.unwrap();
    let engine = |metric: Metric| readings.get(&metric, Some("half"));
    assert_eq!(engine(Metric::QueueDepth), Some(0.0));
    assert_eq!(engine(Metric::Attempts), Some(40.0));
    assert_eq!(engine(Metric::ErrorRate), Some(0.5));
    let p95 = engine(Metric::TaskDurationP95).unwrap();
    assert!((0.3..0.4).contains(&p95), "p95 {p95}");
    assert_eq!(readings.get(&Metric::DatabaseUp, None), Some(1.0));
    assert!(readings.get(&Metric::DatabaseLatency, None).is_some());
    // The one lock is the monitor leader's.
    assert_eq!(readings.get(&Metric::LocksHeld, None), Some(1.0));
    // Out of the rate window, the calls are forgotten.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let readings = orch.monitor().unwrap().readings();
    assert_eq!(readings.get(&Metric::Attempts, Some("half")), Some(0.0));
    assert_eq!(readings.get(&Metric::ErrorRate, Some("half")), None);
    orch.shutdown(Duration::from_secs(1)).await;
}

/// Gaussian noise around `mean` (Box-Muller over a seeded generator: the same every run).
fn noise(rng: &mut fastrand::Rng, mean: f64, sigma: f64) -> f64 {
    let (u, v) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    mean + sigma * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn anomaly_monitor() -> MonitorConfig {
    MonitorConfig::default()
        .with_rules(Vec::new())
        .with_anomaly(Some(
            AnomalyDetection::default().with_metrics([(Metric::Custom("signal".into()), 1.0)]),
        ))
}

#[tokio::test(start_paused = true)]
async fn ewma_flags_a_step_change_once_and_not_noise() {
    let script = Script::default();
    let (orch, start) = watched(crate::backend(), anomaly_monitor(), &script, None).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let signal = |value| vec![Reading::new(Metric::Custom("signal".into()), value)];
    let rule = "signal_anomaly";
    // An hour of noise: nothing.
    for second in 0..3600 {
        script.set(signal(noise(&mut rng, 100.0, 5.0)));
        at(start, second as f64 + 0.5).await;
    }
    assert!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, rule)
            .await
            .is_empty()
    );
    // A step to 200 at 3600 s: flagged once it has lasted the hold (3 s), not before.
    for second in 3600..3603 {
        script.set(signal(noise(&mut rng, 200.0, 5.0)));
        at(start, second as f64 + 0.5).await;
    }
    assert!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, rule)
            .await
            .is_empty()
    );
    script.set(signal(noise(&mut rng, 200.0, 5.0)));
    at(start, 3603.5).await;
    let fired = alerts_of(&orch, event_kinds::ALERT_FIRED, rule).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].data["comparison"], "above");
    let baseline = fired[0].data["baseline"].as_f64().unwrap();
    assert!((95.0..105.0).contains(&baseline), "baseline {baseline}");
    assert_eq!(fired[0].data["severity"], Severity::Warning.as_str());
    // The new level lasts: after ten minutes it is the baseline and the alert resolves, once.
    for second in 3604..5400 {
        script.set(signal(noise(&mut rng, 200.0, 5.0)));
        at(start, second as f64 + 0.5).await;
    }
    assert_eq!(
        alerts_of(&orch, event_kinds::ALERT_FIRED, rule).await.len(),
        1
    );
    let resolved = alerts_of(&orch, event_kinds::ALERT_RESOLVED, rule).await;
    assert_eq!(resolved.len(), 1);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn cluster_wide_readings_raise_one_alert_per_cluster_and_node_readings_one_per_node() {
    let shared: SharedBackend = Arc::new(MemoryBackend::new());
    let script = Script::default();
    script.set(vec![
        Reading::of_engine(Metric::QueueDepth, "mail", 500.0),
        Reading::new(Metric::DiskPercent, 90.0),
    ]);
    let monitor = MonitorConfig::default().with_anomaly(None);
    let node = |id: &str| {
        Orchestrator::builder(shared.clone())
            .config(
                config()
                    .with_node_id(id)
                    .with_monitor(Some(monitor.clone())),
            )
            .sampler(script.sampler())
            .build()
    };
    let (a, b) = (node("a").await.unwrap(), node("b").await.unwrap());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let queue = alerts_of(&a, event_kinds::ALERT_FIRED, "queue_deep").await;
    assert_eq!(queue.len(), 1, "one alert for the cluster");
    let disk = alerts_of(&a, event_kinds::ALERT_FIRED, "disk_high").await;
    let mut nodes: Vec<_> = disk.iter().map(|e| e.data["node"].clone()).collect();
    nodes.sort_by_key(|n| n.to_string());
    assert_eq!(nodes, [Value::from("a"), Value::from("b")]);
    assert_ne!(
        a.monitor().unwrap().is_leader(),
        b.monitor().unwrap().is_leader()
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// When the leader goes, the node that takes over the cluster-wide rules carries on its firing
/// alerts: the alert is not fired a second time, and resolves once when its condition clears.
#[tokio::test(start_paused = true)]
async fn a_new_leader_carries_on_the_cluster_wide_alerts_of_the_one_before() {
    let shared: SharedBackend = Arc::new(MemoryBackend::new());
    let script = Script::default();
    script.set(vec![Reading::of_engine(Metric::QueueDepth, "mail", 500.0)]);
    let monitor = MonitorConfig::default().with_anomaly(None);
    let node = |id: &str| {
        Orchestrator::builder(shared.clone())
            .config(
                config()
                    .with_node_id(id)
                    .with_monitor(Some(monitor.clone())),
            )
            .sampler(script.sampler())
            .build()
    };
    let (a, b) = (node("a").await.unwrap(), node("b").await.unwrap());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        alerts_of(&a, event_kinds::ALERT_FIRED, "queue_deep")
            .await
            .len(),
        1
    );
    let (leader, other) = if a.monitor().unwrap().is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    leader.shutdown(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(other.monitor().unwrap().is_leader());
    assert_eq!(
        alerts_of(&other, event_kinds::ALERT_FIRED, "queue_deep")
            .await
            .len(),
        1,
        "fired again by the new leader"
    );
    assert_eq!(other.monitor().unwrap().alerts().len(), 1);
    script.set(Vec::new());
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        alerts_of(&other, event_kinds::ALERT_RESOLVED, "queue_deep")
            .await
            .len(),
        1
    );
    assert!(other.monitor().unwrap().alerts().is_empty());
    other.shutdown(Duration::from_secs(1)).await;
}

/// Eight alerts at once, on eight engines' series of one rule.
fn eight_alerts(script: &Script) -> MonitorConfig {
    script.set(
        (0..8)
            .map(|i| Reading::of_engine(Metric::Custom("backlog".into()), format!("e{i}"), 10.0))
            .collect(),
    );
    MonitorConfig::default()
        .with_anomaly(None)
        .with_rules(vec![AlertRule::above(
            "backlog",
            Metric::Custom("backlog".into()),
            5.0,
        )])
}

#[tokio::test(start_paused = true)]
async fn failed_deliveries_are_retried_with_backoff_and_counted() {
    let script = Script::default();
    let monitor = eight_alerts(&script)
        .with_rules(vec![
            AlertRule::above("backlog", Metric::Custom("backlog".into()), 5.0).engine("e0"),
        ])
        .with_delivery(
            Delivery::default()
                .with_attempts(3)
                .with_backoff(Duration::from_secs(1), Duration::from_secs(60)),
        );
    let recorder = Recorder::default();
    recorder.failures.store(2, Ordering::SeqCst);
    let (orch, start) = watched(crate::backend(), monitor, &script, Some(recorder.clone())).await;
    // Fired at 0 s; attempts at 0, 1 and 3 s.
    at(start, 2.5).await;
    assert!(recorder.received.lock().is_empty());
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 2);
    at(start, 3.5).await;
    assert_eq!(recorder.received.lock().len(), 1);
    let stats = &orch.monitor().unwrap().notifier_stats()[0];
    assert_eq!(
        (
            stats.name.as_str(),
            stats.delivered,
            stats.failed_attempts,
            stats.given_up
        ),
        ("recorder", 1, 2, 0)
    );
    // A receiver that keeps failing is given up after three attempts.
    recorder.failures.store(100, Ordering::SeqCst);
    script.set(Vec::new());
    at(start, 100.0).await;
    let stats = &orch.monitor().unwrap().notifier_stats()[0];
    assert_eq!(
        (stats.delivered, stats.failed_attempts, stats.given_up),
        (1, 5, 1)
    );
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_hangs_delays_neither_the_monitor_nor_dispatch_nor_other_notifiers() {
    let script = Script::default();
    let monitor = eight_alerts(&script).with_delivery(
        Delivery::default()
            .with_queue(8)
            .with_timeout(Duration::from_secs(3600)),
    );
    let hanging = Recorder::default();
    hanging.hang.store(true, Ordering::SeqCst);
    let working = Recorder::default();
    let orch = Orchestrator::builder(crate::backend())
        .config(config().with_monitor(Some(monitor)))
        .sampler(script.sampler())
        .notifier(hanging.clone())
        .notifier(working.clone())
        .engine("echo", processor_fn(|_ctx, input| async move { Ok(input) }))
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    let task = orch.dispatch_and_wait(TaskSpec::new("echo")).await.unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert!(start.elapsed() < Duration::from_secs(1));
    at(start, 0.5).await;
    // Every alert reached the working receiver at once, while the other one hangs.
    assert_eq!(working.received.lock().len(), 8);
    assert_eq!(hanging.calls.load(Ordering::SeqCst), 1);
    // The monitor goes on: the alerts resolve on time.
    script.set(Vec::new());
    at(start, 62.5).await;
    assert_eq!(working.received.lock().len(), 16);
    let stats = orch.monitor().unwrap().notifier_stats();
    // The hanging one took one alert, queued seven, then had room for one of the eight
    // resolutions: seven dropped. The other one dropped nothing.
    assert_eq!((stats[0].delivered, stats[0].dropped), (0, 7));
    assert_eq!((stats[1].delivered, stats[1].dropped), (16, 0));
    let task = orch.dispatch_and_wait(TaskSpec::new("echo")).await.unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    orch.shutdown(Duration::from_secs(1)).await;
}
