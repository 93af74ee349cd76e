//! Browser sessions: login sets an `HttpOnly`, `SameSite=Strict` cookie that signs requests in
//! (the live stream included, which a browser's `EventSource` opens without headers); calls
//! that change something need the CSRF token; bearer tokens work as before.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, PASSWORD, Server};

/// Logs `username` in with `"cookie": true`: the `Cookie` header a browser would send from then
/// on, and the CSRF token.
async fn browser_login(server: &Server, username: &str) -> (String, String) {
    let response = server
        .http
        .post(server.url("/auth/login"))
        .json(&json!({"username": username, "password": PASSWORD, "cookie": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let set: Vec<String> = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    let body: serde_json::Value = response.json().await.unwrap();
    let session = set
        .iter()
        .find(|cookie| cookie.starts_with("orch_session="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(!session.contains("Secure"), "plain HTTP here: {session}");
    let csrf = set
        .iter()
        .find(|cookie| cookie.starts_with("orch_csrf="))
        .expect("a CSRF cookie");
    assert!(!csrf.contains("HttpOnly"), "the page must read it: {csrf}");
    let token = body["csrf_token"].as_str().unwrap().to_owned();
    // The token is in the HttpOnly cookie only, out of scripts' reach.
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(csrf.starts_with(&format!("orch_csrf={token};")), "{csrf}");
    let pairs: Vec<&str> = set
        .iter()
        .map(|cookie| cookie.split(';').next().unwrap())
        .collect();
    (pairs.join("; "), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_signs_in_and_changes_need_the_csrf_token() {
    let server = common::start().await;
    let (cookie, csrf) = browser_login(&server, "operator").await;
    let call = |method: Method, path: &str| {
        server
            .http
            .request(method, server.url(path))
            .header(reqwest::header::COOKIE, cookie.clone())
    };
    // Reading needs no more than the cookie.
    let jobs = call(Method::GET, "/jobs").send().await.unwrap();
    assert_eq!(jobs.status(), StatusCode::OK);
    // The live stream opens on the cookie alone, as an EventSource would open it.
    let stream = call(Method::GET, "/sse/events").send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    drop(stream);

    // A change without the CSRF token is refused, and nothing is dispatched.
    let refused = call(Method::POST, "/dispatch")
        .json(&json!({"core_id": "nobody-serves-this"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["field"], "X-CSRF-Token", "{body}");
    let wrong = call(Method::POST, "/dispatch")
        .header("X-CSRF-Token", "0".repeat(64))
        .json(&json!({"core_id": "nobody-serves-this"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let listed = server
        .orch
        .list(orch_core::TaskFilter::default())
        .await
        .unwrap();
    assert!(listed.is_empty(), "a refused call dispatched {listed:?}");
    // With it, from the page's own origin, it goes through.
    let origin = format!("http://{}", server.addr());
    let dispatched = call(Method::POST, "/dispatch")
        .header("X-CSRF-Token", &csrf)
        .header(reqwest::header::ORIGIN, &origin)
        .json(&json!({"core_id": "nobody-serves-this"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dispatched.status(), StatusCode::CREATED);

    // A cross-site form post carrying the cookie (had the browser sent it) is refused even
    // with the token: the origin is not this server's.
    let task: serde_json::Value = dispatched.json().await.unwrap();
    let id = task["task_id"].as_str().unwrap();
    let forged = call(Method::POST, &format!("/jobs/{id}/cancel"))
        .header(reqwest::header::ORIGIN, "https://evil.example")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header("X-CSRF-Token", &csrf)
        .body("confirm=1")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let still = server.orch.get(id.parse().unwrap()).await.unwrap();
    assert_eq!(still.status, orch_core::TaskStatus::Queued);
    // The same without the token and without an Origin (a form from a page that hides it).
    let forged = call(Method::POST, &format!("/jobs/{id}/cancel"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("confirm=1")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // With an Authorization header the cookie is not read: a malformed header is refused even
    // beside a good cookie, and a bearer token needs no CSRF token.
    let malformed = call(Method::GET, "/jobs")
        .header(reqwest::header::AUTHORIZATION, "Basic b3A6cGFzcw==")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNAUTHORIZED);
    let bearer = server.token("operator").await;
    let both = call(Method::POST, "/dispatch")
        .bearer_auth(&bearer)
        .json(&json!({"core_id": "nobody-serves-this"}))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), StatusCode::CREATED);
    let cancelled = server
        .call(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);

    // A second session cookie beside the first (one planted by a sibling site) is refused.
    let planted = server
        .http
        .get(server.url("/jobs"))
        .header(
            reqwest::header::COOKIE,
            format!("{cookie}; orch_session=planted"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(planted.status(), StatusCode::UNAUTHORIZED);
    // Logging out clears both cookies, signed in or not.
    let out = server
        .http
        .post(server.url("/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared: Vec<String> = out
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_the_role_checks_and_a_plain_login_sets_no_cookie() {
    let server = common::start().await;
    let (cookie, csrf) = browser_login(&server, "viewer").await;
    let refused = server
        .http
        .post(server.url("/engines/echo/pause"))
        .header(reqwest::header::COOKIE, cookie)
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("viewer"),
        "refused for its role, not its CSRF token: {body}"
    );
    let plain = server.login("viewer", PASSWORD).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.headers.get(reqwest::header::SET_COOKIE).is_none());
    assert!(plain.body.get("csrf_token").is_none(), "{}", plain.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_session_cookies_are_host_only_and_https_only() {
    let mut config = common::config();
    config.secure_cookies = true;
    let server = common::start_with(config).await;
    let response = server
        .http
        .post(server.url("/auth/login"))
        .json(&json!({"username": "operator", "password": PASSWORD, "cookie": true}))
        .send()
        .await
        .unwrap();
    let set: Vec<String> = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(set.len(), 2, "{set:?}");
    for cookie in &set {
        assert!(cookie.starts_with("__Host-orch_"), "{cookie}");
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert!(
            cookie.contains("Path=/") && !cookie.contains("Domain"),
            "{cookie}"
        );
    }
    // The unprefixed name signs nobody in then.
    let session = set[0].split(';').next().unwrap().to_owned();
    let signed_in = server
        .http
        .get(server.url("/jobs"))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    let unprefixed = session.trim_start_matches("__Host-");
    let refused = server
        .http
        .get(server.url("/jobs"))
        .header(reqwest::header::COOKIE, unprefixed)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}
