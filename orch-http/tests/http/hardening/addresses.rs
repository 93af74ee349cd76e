//! Findings 1 (client-chosen address) and 10 (rate-limiter maps grow forever).

use std::net::IpAddr;
use std::sync::Arc;

use orch_core::MemoryBackend;
use orch_http::config::{IpNet, Limit, RateLimitConfig};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{self, PASSWORD, Server};

/// A login sent through "a proxy" on loopback with this `X-Forwarded-For`.
async fn login_via(server: &Server, forwarded_for: &str, password: &str) -> StatusCode {
    server
        .http
        .post(server.url("/auth/login"))
        .header("X-Forwarded-For", forwarded_for)
        .json(&json!({"username": "viewer", "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

fn login_limit(trusted: &[&str]) -> orch_http::HttpConfig {
    let limits = RateLimitConfig {
        login_per_ip: Limit::new(60, 2),
        ..RateLimitConfig::disabled()
    };
    common::config()
        .with_rate_limit(limits)
        .with_trusted_proxies(trusted.iter().map(|p| p.parse().unwrap()).collect())
}

/// Behind a proxy that appends the address it saw (nginx's `$proxy_add_x_forwarded_for`), a
/// client writes whatever it likes on the left: the limit keys on the hop the proxy wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_01_a_client_cannot_choose_its_address_behind_a_trusted_proxy() {
    let server = common::start_with(login_limit(&["127.0.0.1"])).await;
    for n in 0..2 {
        let forged = format!("10.9.{n}.1, 203.0.113.7");
        assert_eq!(login_via(&server, &forged, PASSWORD).await, StatusCode::OK);
    }
    // A third forged leftmost hop does not make a new client.
    let status = login_via(&server, "10.9.99.1, 203.0.113.7", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own bucket.
    assert_eq!(
        login_via(&server, "198.51.100.4", PASSWORD).await,
        StatusCode::OK
    );
    // Security events carry the address the proxy saw, not the forged one.
    let failed = login_via(&server, "6.6.6.6, 198.51.100.4", "wrong password!").await;
    assert_eq!(failed, StatusCode::UNAUTHORIZED);
    let events = server.events_of("auth.login_failed").await;
    assert_eq!(events.last().unwrap().data["ip"], "198.51.100.4");
}

/// Without trusted proxies (the default), `X-Forwarded-For` is ignored entirely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_01_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let server = common::start_with(login_limit(&[])).await;
    for n in 0..2 {
        let forged = format!("192.0.2.{n}");
        assert_eq!(login_via(&server, &forged, PASSWORD).await, StatusCode::OK);
    }
    assert_eq!(
        login_via(&server, "192.0.2.77", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A proxy that is trusted but not the peer (here: some other network) changes nothing.
    let server = common::start_with(login_limit(&["10.0.0.0/8"])).await;
    for n in 0..2 {
        assert_eq!(
            login_via(&server, &format!("10.1.1.{n}"), PASSWORD).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        login_via(&server, "10.1.1.9", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// One IPv6 host holds a whole /64: its addresses share one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_01_ipv6_clients_are_keyed_per_64() {
    let server = common::start_with(login_limit(&["127.0.0.1"])).await;
    assert_eq!(
        login_via(&server, "2001:db8:7:1::1", PASSWORD).await,
        StatusCode::OK
    );
    assert_eq!(
        login_via(&server, "2001:db8:7:1:aaaa::2", PASSWORD).await,
        StatusCode::OK
    );
    assert_eq!(
        login_via(&server, "2001:db8:7:1:ffff:ffff:ffff:ffff", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The next /64 is another client.
    assert_eq!(
        login_via(&server, "2001:db8:7:2::1", PASSWORD).await,
        StatusCode::OK
    );
}

/// A flood of logins from distinct forged addresses (through a trusted proxy) leaves each
/// limiter at its bound; the clients it tracked before keep their own buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_rate_limiter_maps_stay_bounded_under_a_distinct_address_flood() {
    let limits = RateLimitConfig {
        per_ip: Limit::new(60, 5),
        login_per_ip: Limit::new(60, 1),
        max_tracked_clients: 64,
        ..RateLimitConfig::disabled()
    };
    let config = common::config()
        .with_rate_limit(limits)
        .with_trusted_proxies(vec!["127.0.0.1".parse::<IpNet>().unwrap()]);
    let server = common::start_on(Arc::new(MemoryBackend::new()), config).await;
    // A client seen before the flood (per client: 1 request of a burst of 5).
    assert_eq!(
        plugins_via(&server, "198.51.100.1").await,
        StatusCode::UNAUTHORIZED
    );
    for n in 0..1_500u32 {
        let forged = IpAddr::from((0x0b00_0000 + n).to_be_bytes()).to_string();
        login_via(&server, &forged, "not the password").await;
    }
    // Directly too: 200,000 more addresses.
    for n in 0..200_000u32 {
        let ip = IpAddr::from((0x0c00_0000 + n).to_be_bytes());
        let _ = server.state.limits().check_login(ip);
        let _ = server.state.limits().check_ip(ip);
    }
    let tracked = server.state.limits().tracked_keys();
    assert!(
        tracked <= 2 * 64,
        "tracked {tracked} keys for two limiters of 64"
    );
    // The client tracked before the flood still has its own bucket; a new one shares the
    // flood's, which is empty.
    assert_eq!(
        plugins_via(&server, "198.51.100.1").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        plugins_via(&server, "198.51.100.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// `GET /plugins` without a token through "a proxy": 401 if the per-client limit lets it
/// through, 429 if not.
async fn plugins_via(server: &Server, forwarded_for: &str) -> StatusCode {
    server
        .http
        .get(server.url("/plugins"))
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
}
