use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use orch_core::backend::{LockStore, LockWaiterId, NewLockWaiter};
use orch_core::{Error, FencingToken, LockConfig, LockManager, LockOptions, MemoryBackend};

fn manager() -> LockManager {
    manager_on(Arc::new(MemoryBackend::new()))
}

/// A manager over `backend`: two of them on one backend stand for two processes sharing it
/// (each has its own local queue; only the backend's queue orders their waiters together).
fn manager_on(backend: Arc<MemoryBackend>) -> LockManager {
    LockManager::with_config(
        backend,
        LockConfig::default()
            .with_aging_step(Duration::from_millis(100))
            .with_poll_interval(Duration::from_millis(50))
            .with_waiter_ttl(Duration::from_secs(2)),
    )
}

#[tokio::test(start_paused = true)]
async fn contended_lock_is_never_held_twice_and_tokens_increase() {
    let locks = manager();
    let holders = Arc::new(AtomicUsize::new(0));
    let max_holders = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(AtomicU64::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let (locks, holders, max_holders, last_token, grants) = (
            locks.clone(),
            holders.clone(),
            max_holders.clone(),
            last_token.clone(),
            grants.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                let guard = locks
                    .acquire(
                        "counter",
                        &format!("worker-{worker}"),
                        LockOptions::default()
                            .priority((worker + round) % 3)
                            .wait(Some(Duration::from_secs(600))),
                    )
                    .await
                    .unwrap();
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                max_holders.fetch_max(now, Ordering::SeqCst);
                // The protected resource checks fencing tokens: never an older one after a newer.
                let token = guard.fencing_token().0;
                let previous = last_token.swap(token, Ordering::SeqCst);
                assert!(
                    token > previous,
                    "fencing token went from {previous} to {token}"
                );
                tokio::time::sleep(Duration::from_millis(3)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                grants.fetch_add(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        max_holders.load(Ordering::SeqCst),
        1,
        "lock held twice at once"
    );
    assert_eq!(grants.load(Ordering::SeqCst), 160);
    let stats = locks.stats().await.unwrap();
    assert_eq!(stats.acquired, 160);
    assert_eq!(stats.released, 160);
    assert!(
        stats.waited > 0 && stats.total_wait_seconds > 0.0,
        "{stats:?}"
    );
    assert_eq!((stats.active, stats.waiting), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lock_is_reclaimed() {
    let locks = manager();
    let stale = locks
        .acquire(
            "r",
            "sleepy",
            LockOptions::default().ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let stale_token = stale.fencing_token();
    std::mem::forget(stale); // the holder "dies" without releasing
    let waited_from = tokio::time::Instant::now();
    let fresh = locks
        .acquire(
            "r",
            "next",
            LockOptions::default().wait(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    let waited = waited_from.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "granted before expiry: {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(6),
        "waited well past expiry: {waited:?}"
    );
    assert!(fresh.fencing_token() > stale_token);
    assert!(matches!(
        locks.release("r", "sleepy", stale_token).await,
        Err(Error::NotLockHolder { .. })
    ));
    assert_eq!(locks.info("r").await.unwrap().unwrap().owner, "next");
}

#[tokio::test(start_paused = true)]
async fn try_acquire_release_extend_info_list() {
    let locks = manager();
    let mut guard = locks
        .try_acquire("db", "a", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(
        locks.try_acquire("db", "b", Duration::from_secs(10)).await,
        Err(Error::LockHeld { holder, .. }) if holder == "a"
    ));
    let before = guard.expires_at();
    tokio::time::sleep(Duration::from_secs(5)).await;
    guard.extend(Duration::from_secs(60)).await.unwrap();
    assert!(guard.expires_at() > before);
    assert!(matches!(
        locks.release("db", "b", guard.fencing_token()).await,
        Err(Error::NotLockHolder { .. })
    ));
    assert!(matches!(
        locks
            .extend(
                "db",
                "a",
                FencingToken(guard.fencing_token().0 + 1),
                Duration::from_secs(1)
            )
            .await,
        Err(Error::NotLockHolder { .. })
    ));
    let listed = locks.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner, "a");
    assert_eq!(locks.info("db").await.unwrap().unwrap(), listed[0]);
    guard.release().await.unwrap();
    assert!(locks.info("db").await.unwrap().is_none());
    let stats = locks.stats().await.unwrap();
    assert_eq!(stats.contended, 1);
    // Bad input is refused, naming the field.
    let err = locks
        .try_acquire("", "a", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("resource"), "{err}");
    let err = locks
        .try_acquire("x", "a", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ttl"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_guard_releases() {
    let locks = manager();
    {
        let _guard = locks
            .try_acquire("r", "a", Duration::from_secs(60))
            .await
            .unwrap();
    }
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let again = locks.try_acquire("r", "b", Duration::from_secs(60)).await;
    assert!(again.is_ok(), "dropped guard did not release: {again:?}");
}

#[tokio::test(start_paused = true)]
async fn wait_deadline_is_honoured() {
    let locks = manager();
    let _held = locks
        .try_acquire("r", "a", Duration::from_secs(600))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = locks
        .acquire(
            "r",
            "b",
            LockOptions::default().wait(Some(Duration::from_secs(2))),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LockTimeout(_)));
    assert!(
        locks.waiters("r").await.unwrap().is_empty(),
        "a timed-out waiter stayed in the backend queue"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let stats = locks.stats().await.unwrap();
    assert_eq!((stats.timed_out, stats.waiting), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_by_priority() {
    let locks = manager();
    let holder = locks
        .try_acquire("r", "holder", Duration::from_secs(600))
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, priority) in [("low", 1), ("high", 9), ("mid", 5)] {
        let (locks, order) = (locks.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let guard = locks
                .acquire(
                    "r",
                    name,
                    LockOptions::default().priority(priority).wait(None),
                )
                .await
                .unwrap();
            order.lock().push(name);
            tokio::time::sleep(Duration::from_millis(10)).await;
            guard.release().await.unwrap();
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(locks.stats().await.unwrap().waiting, 3);
    holder.release().await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock(), ["high", "mid", "low"]);
}

#[tokio::test(start_paused = true)]
async fn a_low_priority_waiter_is_not_starved() {
    // Aging step 100 ms: a priority-1 waiter can be overtaken by priority-10 newcomers for at
    // most ~0.9 s, however many keep arriving.
    let locks = manager();
    let first = locks
        .try_acquire("r", "first", Duration::from_secs(600))
        .await
        .unwrap();
    let low_done = Arc::new(Mutex::new(None::<tokio::time::Instant>));
    let start = tokio::time::Instant::now();
    let low = {
        let (locks, low_done) = (locks.clone(), low_done.clone());
        tokio::spawn(async move {
            let guard = locks
                .acquire("r", "low", LockOptions::default().priority(1).wait(None))
                .await
                .unwrap();
            *low_done.lock() = Some(tokio::time::Instant::now());
            guard.release().await.unwrap();
        })
    };
    // A steady stream of high-priority waiters, each holding the lock for 50 ms, for 5 s.
    let stream = {
        let (locks, low_done) = (locks.clone(), low_done.clone());
        tokio::spawn(async move {
            let mut spawned = Vec::new();
            for i in 0..100 {
                let locks = locks.clone();
                spawned.push(tokio::spawn(async move {
                    let guard = locks
                        .acquire(
                            "r",
                            &format!("high-{i}"),
                            LockOptions::default().priority(10).wait(None),
                        )
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    guard.release().await.unwrap();
                }));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = low_done;
            for s in spawned {
                s.await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.release().await.unwrap();
    low.await.unwrap();
    let served_after = low_done.lock().expect("low waiter served") - start;
    assert!(
        served_after < Duration::from_secs(3),
        "low-priority waiter starved for {served_after:?} under a 5 s high-priority stream"
    );
    stream.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_acquire_leaves_the_queue() {
    let locks = manager();
    let held = locks
        .try_acquire("r", "a", Duration::from_secs(600))
        .await
        .unwrap();
    let attempt = tokio::time::timeout(
        Duration::from_secs(1),
        locks.acquire("r", "b", LockOptions::default().wait(None)),
    )
    .await;
    assert!(attempt.is_err());
    let stats = locks.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.queued), (0, 0));
    held.release().await.unwrap();
    // With the abandoned waiter gone, a try-acquire is not blocked by a phantom queue.
    let _guard = locks
        .try_acquire("r", "c", Duration::from_secs(1))
        .await
        .unwrap();
}

/// Spawns a waiter on `locks` that records its name in `order` once granted, holds the lock
/// 10 ms and releases it.
fn spawn_waiter(
    locks: &LockManager,
    name: &'static str,
    priority: i32,
    order: &Arc<Mutex<Vec<&'static str>>>,
) -> tokio::task::JoinHandle<()> {
    let (locks, order) = (locks.clone(), order.clone());
    tokio::spawn(async move {
        let guard = locks
            .acquire(
                "r",
                name,
                LockOptions::default().priority(priority).wait(None),
            )
            .await
            .unwrap();
        order.lock().push(name);
        tokio::time::sleep(Duration::from_millis(10)).await;
        guard.release().await.unwrap();
    })
}

#[tokio::test(start_paused = true)]
async fn waiters_of_two_processes_are_served_by_priority() {
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (manager_on(backend.clone()), manager_on(backend));
    let holder = a
        .try_acquire("r", "holder", Duration::from_secs(600))
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (locks, name, priority) in [
        (&a, "a-low", 1),
        (&b, "b-high", 9),
        (&a, "a-mid", 5),
        (&b, "b-top", 12),
    ] {
        tasks.push(spawn_waiter(locks, name, priority, &order));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Both managers see all four waiters, in line.
    for locks in [&a, &b] {
        let waiting: Vec<String> = locks
            .waiters("r")
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.owner)
            .collect();
        assert_eq!(waiting, ["b-top", "b-high", "a-mid", "a-low"]);
    }
    assert_eq!(
        (
            a.stats().await.unwrap().waiting,
            b.stats().await.unwrap().waiting
        ),
        (2, 2)
    );
    // Released through `a`, which wakes its own head first: still `b`'s waiters come first.
    holder.release().await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock(), ["b-top", "b-high", "a-mid", "a-low"]);
    assert!(a.list_waiters().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_of_another_process_is_not_overtaken_until_its_entry_expires() {
    let backend = Arc::new(MemoryBackend::new());
    let locks = manager_on(backend.clone());
    // A waiter of a process that died right after joining: nobody refreshes its entry.
    let dead = NewLockWaiter {
        resource: "r".to_owned(),
        waiter: LockWaiterId::new(),
        owner: "dead".to_owned(),
        priority: 100,
        rank: i64::MIN,
        ttl: Duration::from_secs(3),
    };
    backend.join_lock_queue(&dead).await.unwrap();
    assert!(matches!(
        locks.try_acquire("r", "eager", Duration::from_secs(60)).await,
        Err(Error::LockHeld { holder, .. }) if holder == "(waiters queued)"
    ));
    let started = tokio::time::Instant::now();
    let guard = locks
        .acquire(
            "r",
            "patient",
            LockOptions::default()
                .priority(1)
                .wait(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_secs(4),
        "granted after {waited:?}, the entry ahead expired after 3 s"
    );
    guard.release().await.unwrap();
    // A live waiter that leaves unblocks at once.
    let leaving = NewLockWaiter {
        waiter: LockWaiterId::new(),
        ttl: Duration::from_secs(600),
        ..dead
    };
    backend.join_lock_queue(&leaving).await.unwrap();
    assert!(
        locks
            .try_acquire("r", "eager", Duration::from_secs(60))
            .await
            .is_err()
    );
    assert!(backend.leave_lock_queue("r", leaving.waiter).await.unwrap());
    let _guard = locks
        .try_acquire("r", "eager", Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiting_entry_is_refreshed_and_shown() {
    // waiter_ttl is 2 s: a waiter that waits 10 s keeps its place by refreshing its entry.
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (manager_on(backend.clone()), manager_on(backend));
    let holder = a
        .try_acquire("r", "holder", Duration::from_secs(600))
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let first = spawn_waiter(&a, "first", 5, &order);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = spawn_waiter(&b, "second", 1, &order);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let overview = b.overview().await.unwrap();
    assert_eq!(overview.len(), 1);
    assert_eq!(overview[0].resource, "r");
    assert_eq!(
        overview[0].holder.as_ref().map(|h| h.owner.as_str()),
        Some("holder")
    );
    let waiting: Vec<&str> = overview[0]
        .waiters
        .iter()
        .map(|w| w.owner.as_str())
        .collect();
    assert_eq!(waiting, ["first", "second"]);
    assert!(overview[0].waiters[0].expires_at > overview[0].waiters[0].enqueued_at);
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.active, stats.waiting, stats.queued), (1, 1, 2));
    holder.release().await.unwrap();
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(*order.lock(), ["first", "second"]);
}
