//! Findings 2 (lockout bypass), 17 (login timing) and 21 (concurrent admin bootstrap), at the
//! router over one backend; several nodes are several routers over one backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use orch_core::{MemoryBackend, SharedBackend};
use orch_http::Role;
use orch_http::auth::users::UserStore;
use orch_http::config::{LockoutConfig, PasswordHashing};
use orch_http::server::ServerOptions;
use reqwest::StatusCode;

use crate::common::{self, PASSWORD, START_UNIX, Server};
use crate::instrumented::Instrumented;

/// Failed-login events so far, by reason.
async fn reasons(server: &Server) -> Vec<String> {
    server
        .events_of("auth.login_failed")
        .await
        .iter()
        .map(|e| e.data["reason"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn count(reasons: &[String], reason: &str) -> usize {
    reasons.iter().filter(|r| *r == reason).count()
}

/// Twenty concurrent guesses against `max_failures = 5`: exactly five passwords are looked
/// at, the rest find the account locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finding_02_concurrent_guesses_are_verified_at_most_max_failures_times() {
    let server = common::start().await;
    let guesses = (0..20).map(|n| {
        let server = &server;
        async move { server.login("viewer", &format!("guess number {n}!")).await }
    });
    for reply in join_all(guesses).await {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let reasons = reasons(&server).await;
    assert_eq!(count(&reasons, "wrong_password"), 5, "{reasons:?}");
    assert_eq!(count(&reasons, "account_locked"), 15, "{reasons:?}");
    assert_eq!(
        server.login("viewer", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Ten wrong guesses and the right password at once: whatever the order, at least five
/// failures end up counted after any success, so the account ends locked. (Before, a success
/// that came late cleared the lockout the others had set.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finding_02_a_success_never_clears_a_lockout_set_by_concurrent_guesses() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    for round in 0..6 {
        let mut attempts: Vec<_> = (0..10)
            .map(|n| {
                let server = &server;
                Box::pin(async move {
                    server
                        .login("operator", &format!("wrong {round} {n}!!"))
                        .await
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = common::Reply> + Send>>
            })
            .collect();
        // The right password somewhere in the middle of the burst.
        let position = (round * 3) % 11;
        attempts.insert(
            position,
            Box::pin(async { server.login("operator", PASSWORD).await }),
        );
        join_all(attempts).await;
        let state = server.state.users().login_state("operator").await.unwrap();
        assert!(
            state.is_locked(START_UNIX),
            "round {round}: the account is not locked: {state:?}"
        );
        let unlock = server
            .call(
                reqwest::Method::POST,
                "/users/operator/unlock",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(unlock.status, StatusCode::OK);
    }
}

/// Two nodes on one backend, guesses split between them at once: every failure counts, and
/// the lockout one node sets holds on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finding_02_failures_on_two_nodes_are_all_counted_and_the_lockout_holds_on_both() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let a = common::start_on(backend.clone(), common::config()).await;
    let b = common::start_node(
        backend,
        common::orchestrator_config(),
        common::config(),
        ServerOptions::default(),
    )
    .await;
    let guesses = (0..12).map(|n| {
        let node = if n % 2 == 0 { &a } else { &b };
        async move { node.login("viewer", &format!("guess number {n}!")).await }
    });
    join_all(guesses).await;
    // Both nodes append to the one event log.
    let reasons = reasons(&a).await;
    assert_eq!(count(&reasons, "wrong_password"), 5, "{reasons:?}");
    assert_eq!(count(&reasons, "account_locked"), 7, "{reasons:?}");
    for node in [&a, &b] {
        assert_eq!(
            node.login("viewer", PASSWORD).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

/// The median of `runs` timings of `login`.
async fn median_login(
    server: &Server,
    runs: usize,
    username: impl Fn(usize) -> String,
) -> Duration {
    let mut times = Vec::with_capacity(runs);
    for n in 0..runs {
        let name = username(n);
        let started = Instant::now();
        let reply = server.login(&name, "not the right password").await;
        times.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    times.sort();
    times[runs / 2]
}

/// On a backend where every key-value and lock call takes 15 ms (a distant database), a
/// failed login of an unknown user takes as long as one of an existing user (whose failure
/// is recorded) and as one of a locked user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finding_17_login_timing_does_not_tell_existing_users_from_unknown_ones() {
    let backend = Arc::new(Instrumented::default());
    let config = common::config().with_lockout(LockoutConfig {
        max_failures: 1_000,
        ..LockoutConfig::default()
    });
    let server = common::start_on(backend.clone(), config).await;
    server
        .state
        .users()
        .create("locked-user", PASSWORD, Role::Viewer, START_UNIX)
        .await
        .unwrap();
    backend.set_delay(Duration::from_millis(15));
    // Warm up (the first failure of a process measures a guard).
    median_login(&server, 3, |n| format!("warm-{n}")).await;
    let known = median_login(&server, 9, |_| "viewer".to_owned()).await;
    let unknown = median_login(&server, 9, |n| format!("nobody-{n}")).await;
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.75..1.33).contains(&ratio),
        "unknown user {unknown:?} vs existing user {known:?}"
    );
    // A locked account takes as long too (it writes nothing).
    server
        .state
        .users()
        .login(
            "locked-user",
            "x",
            &LockoutConfig {
                max_failures: 1,
                ..LockoutConfig::default()
            },
            START_UNIX,
        )
        .await
        .unwrap();
    let locked = median_login(&server, 9, |_| "locked-user".to_owned()).await;
    let ratio = locked.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.75..1.33).contains(&ratio),
        "locked user {locked:?} vs existing user {known:?}"
    );
}

/// Unknown users cost the database no write: no failure count, no lock, no event each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_17_unknown_users_write_nothing() {
    let backend = Arc::new(Instrumented::default());
    let config = common::config().with_refusal_event_interval(Duration::from_secs(60));
    let server = common::start_on(backend.clone(), config).await;
    // One failure of a known user first (it measures the guard the others are padded by).
    server.login("viewer", "not the right password").await;
    let before = backend.writes();
    for n in 0..30 {
        server.login(&format!("nobody-{n}"), "some password").await;
    }
    // At most the one refusal event of the interval.
    assert!(
        backend.writes() - before <= 1,
        "{} writes for 30 unknown users: {:?}",
        backend.writes() - before,
        backend.calls()
    );
}

/// Eight processes starting on one empty database at once: exactly one creates `admin`, and
/// its password is the one that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finding_21_concurrent_bootstraps_create_the_first_admin_once() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let stores: Vec<UserStore> = (0..8)
        .map(|_| {
            UserStore::new(backend.clone(), PasswordHashing::insecure_fast_for_tests()).unwrap()
        })
        .collect();
    let created = join_all(stores.iter().enumerate().map(|(n, store)| async move {
        let password = format!("password of node {n}");
        store
            .create_first("admin", &password, Role::Admin, START_UNIX)
            .await
            .unwrap()
            .map(|_| password)
    }))
    .await;
    let winners: Vec<String> = created.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let outcome = stores[3]
        .login("admin", &winners[0], &LockoutConfig::default(), START_UNIX)
        .await
        .unwrap();
    assert!(
        matches!(outcome, orch_http::auth::users::LoginOutcome::Success(_)),
        "{outcome:?}"
    );
    // Plain creates of one name at once: one succeeds, the others are told it exists.
    let results = join_all(stores.iter().map(|store| async move {
        store
            .create("ops", "password of ops!", Role::Operator, START_UNIX)
            .await
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}
