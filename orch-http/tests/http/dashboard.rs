//! What the dashboard reads besides the task API: `GET /stats`, `GET /auth/me`, tasks found by
//! idempotency key, lock waiters in `GET /locks`, and the page's own assets at `/ui`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_tasks_by_engine_and_state_and_the_minutes_outcomes() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let viewer = server.token("viewer").await;
    let anonymous = server.call(Method::GET, "/stats", None, None).await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED);

    for payload in [json!({"a": 1}), json!({"a": 2})] {
        let done = server
            .call(
                Method::POST,
                "/dispatch",
                Some(&operator),
                Some(json!({"core_id": "echo", "payload": payload, "stay": true})),
            )
            .await;
        assert_eq!(done.body["status"], "succeeded", "{}", done.body);
    }
    let failed = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "sleep", "payload": {}, "stay": true})),
        )
        .await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.body);
    for _ in 0..3 {
        let parked = server
            .call(
                Method::POST,
                "/dispatch",
                Some(&operator),
                Some(json!({"core_id": "nobody-serves-this"})),
            )
            .await;
        assert_eq!(parked.status, StatusCode::CREATED, "{}", parked.body);
    }

    // The outcomes reach the overview through the event log (the counts are reused for 2 s):
    // wait for both. They may fall on either side of a minute's end.
    let sum = |stats: &serde_json::Value, field: &str| -> u64 {
        stats["activity"]
            .as_array()
            .map(|minutes| minutes.iter().map(|m| m[field].as_u64().unwrap()).sum())
            .unwrap_or(0)
    };
    let mut stats = json!(null);
    for _ in 0..400 {
        stats = server
            .call(Method::GET, "/stats", Some(&viewer), None)
            .await
            .body;
        if sum(&stats, "succeeded") == 2
            && sum(&stats, "failed") == 1
            && stats["totals"]["queued"] == 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let totals = &stats["totals"];
    assert_eq!(
        (
            &totals["succeeded"],
            &totals["failed"],
            &totals["queued"],
            &totals["running"]
        ),
        (&json!(2), &json!(1), &json!(3), &json!(0)),
        "{stats}"
    );
    assert!(totals.get("core_id").is_none(), "{totals}");
    let engines = stats["engines"].as_array().unwrap();
    let by_name = |name: &str| {
        engines
            .iter()
            .find(|e| e["core_id"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {stats}"))
    };
    assert_eq!(by_name("echo")["succeeded"], 2);
    assert_eq!(by_name("sleep")["failed"], 1);
    assert_eq!(by_name("nobody-serves-this")["queued"], 3);
    let activity = stats["activity"].as_array().unwrap();
    assert_eq!(activity.len(), 60, "one entry per minute of the hour");
    assert_eq!(
        (sum(&stats, "succeeded"), sum(&stats, "failed")),
        (2, 1),
        "{stats}"
    );
    // Oldest first, a minute apart, the current minute last.
    let minutes: Vec<chrono::DateTime<chrono::Utc>> = activity
        .iter()
        .map(|m| m["minute"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        minutes
            .windows(2)
            .all(|w| (w[1] - w[0]).num_seconds() == 60)
    );
    assert!(chrono::Utc::now() - minutes[59] < chrono::Duration::seconds(61));
    assert!(stats["activity_since"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_names_the_caller_and_its_role() {
    let server = common::start().await;
    for user in ["admin", "operator", "viewer", "system"] {
        let token = server.token(user).await;
        let me = server
            .call(Method::GET, "/auth/me", Some(&token), None)
            .await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        assert_eq!(me.body, json!({"username": user, "role": user}));
    }
    let anonymous = server.call(Method::GET, "/auth/me", None, None).await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED);
    let forged = server
        .call(Method::GET, "/auth/me", Some("not-a-token"), None)
        .await;
    assert_error(&forged, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_found_by_its_idempotency_key() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let viewer = server.token("viewer").await;
    let dispatch = |key: &'static str, core: &'static str| {
        let server = &server;
        let operator = operator.clone();
        async move {
            server
                .call(
                    Method::POST,
                    "/dispatch",
                    Some(&operator),
                    Some(json!({"core_id": core, "idempotency_key": key})),
                )
                .await
                .body["task_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let order = dispatch("order-7", "parked").await;
    dispatch("order-8", "parked").await;
    let find = |query: String| {
        let server = &server;
        let viewer = viewer.clone();
        async move {
            server
                .call(Method::GET, &format!("/jobs?{query}"), Some(&viewer), None)
                .await
        }
    };
    let found = find("idempotency_key=order-7".into()).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    let jobs = found.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{}", found.body);
    assert_eq!(jobs[0]["task_id"], order.as_str());
    assert_eq!(found.body["next_after"], json!(null));
    // The other filters still apply; an unknown key finds nothing.
    for query in [
        "idempotency_key=order-7&status=running",
        "idempotency_key=order-7&core_id=other",
        "idempotency_key=order-9",
        "idempotency_key=order",
    ] {
        let none = find(query.into()).await;
        assert_eq!(none.status, StatusCode::OK, "{query}: {}", none.body);
        assert_eq!(none.body["jobs"], json!([]), "{query}");
    }
    let both = find("idempotency_key=order-7&status=queued&core_id=parked".into()).await;
    assert_eq!(both.body["jobs"].as_array().unwrap().len(), 1);
    let long = find(format!("idempotency_key={}", "k".repeat(257))).await;
    assert_error(&long, StatusCode::BAD_REQUEST);
    assert!(
        long.body["error"].as_str().unwrap().contains("256"),
        "{}",
        long.body
    );
    // No stored key is empty or holds a control character: said so, not a database error.
    for query in [
        "idempotency_key=",
        "idempotency_key=a%00b",
        "idempotency_key=%1B",
    ] {
        let bad = find(query.into()).await;
        assert_error(&bad, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_list_shows_who_waits_next_first() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let system = server.token("system").await;
    let held = server
        .call(
            Method::POST,
            "/locks/ledger/acquire",
            Some(&operator),
            Some(json!({"ttl": 60})),
        )
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    // Two callers wait (in the background) with different priorities.
    let wait = |owner: &'static str, priority: i32| {
        let http = server.http.clone();
        let url = server.url("/locks/ledger/acquire");
        let token = system.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"owner": owner, "priority": priority, "wait": 5, "ttl": 1}))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let low = wait("system/batch-job", 1);
    let mut waiters = json!(null);
    for _ in 0..250 {
        let list = server
            .call(Method::GET, "/locks", Some(&operator), None)
            .await;
        waiters = list.body[0]["waiters"].clone();
        if waiters.as_array().is_some_and(|w| w.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waiters[0]["owner"], "system/batch-job", "{waiters}");
    let high = wait("system/payroll", 9);
    for _ in 0..250 {
        let list = server
            .call(Method::GET, "/locks", Some(&operator), None)
            .await;
        waiters = list.body[0]["waiters"].clone();
        if waiters.as_array().is_some_and(|w| w.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owners: Vec<&str> = waiters
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["system/payroll", "system/batch-job"], "{waiters}");
    assert_eq!(waiters[0]["priority"], 9);
    // A single lock's answer is unchanged: no waiters field.
    let one = server
        .call(Method::GET, "/locks/ledger", Some(&operator), None)
        .await;
    assert!(one.body.get("waiters").is_none(), "{}", one.body);
    let release = server
        .call(
            Method::POST,
            "/locks/ledger/release",
            Some(&operator),
            Some(json!({"fencing_token": held.body["fencing_token"]})),
        )
        .await;
    assert_eq!(release.status, StatusCode::OK, "{}", release.body);
    assert_eq!(high.await.unwrap().unwrap(), StatusCode::OK);
    let _ = low.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_under_a_strict_policy() {
    let server = common::start().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirects.get(server.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()["location"], "/ui");
    for (path, content_type, marker) in [
        (
            "/ui",
            "text/html",
            "<script type=\"module\" src=\"/ui/app.js\">",
        ),
        ("/ui/", "text/html", "/ui/app.css"),
        (
            "/ui/app.js",
            "text/javascript",
            "new EventSource(`/sse/events",
        ),
        ("/ui/app.css", "text/css", ".badge"),
        ("/ui/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {:?}",
            headers["content-type"]
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let body = response.text().await.unwrap();
        assert!(body.contains(marker), "{path} lacks {marker}");
    }
    // The page is not an API operation.
    let document = server.call(Method::GET, "/openapi.json", None, None).await;
    assert!(document.body["paths"].get("/ui").is_none());
    let missing = server
        .http
        .get(server.url("/ui/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_newest_first_on_request() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let task = server
            .call(
                Method::POST,
                "/dispatch",
                Some(&operator),
                Some(json!({"core_id": "nobody-serves-this"})),
            )
            .await;
        ids.push(task.body["task_id"].as_str().unwrap().to_owned());
    }
    let page = |query: String| {
        let server = &server;
        let operator = operator.clone();
        async move {
            let reply = server
                .call(
                    Method::GET,
                    &format!("/jobs?{query}"),
                    Some(&operator),
                    None,
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.body);
            let listed: Vec<String> = reply.body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_owned())
                .collect();
            (listed, reply.body["next_after"].as_str().map(str::to_owned))
        }
    };
    let (first, next) = page("order=newest&limit=2".into()).await;
    assert_eq!(first, [ids[4].clone(), ids[3].clone()]);
    let (second, next) = page(format!("order=newest&limit=2&after={}", next.unwrap())).await;
    assert_eq!(second, [ids[2].clone(), ids[1].clone()]);
    let (last, _) = page(format!("order=newest&limit=2&after={}", next.unwrap())).await;
    assert_eq!(last, [ids[0].clone()]);
    let (oldest, _) = page("order=oldest&limit=2".into()).await;
    assert_eq!(oldest, [ids[0].clone(), ids[1].clone()]);
    let bad = server
        .call(Method::GET, "/jobs?order=random", Some(&operator), None)
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST);
    // Queued tasks due now, or still waiting for their run time.
    let later = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "nobody-serves-this", "delay": 3600})),
        )
        .await;
    let later = later.body["task_id"].as_str().unwrap().to_owned();
    let (delayed, _) = page("status=queued&due=false".into()).await;
    assert_eq!(delayed, std::slice::from_ref(&later));
    let (due, _) = page("status=queued&due=true&order=newest".into()).await;
    assert_eq!(due.len(), 5);
    assert!(!due.contains(&later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_overviews_share_one_count_of_the_tasks() {
    let backend = std::sync::Arc::new(crate::instrumented::Instrumented::default());
    let server = common::start_on(backend.clone(), common::config()).await;
    let viewer = server.token("viewer").await;
    backend.set_delay(Duration::from_millis(200));
    let before = backend.count("count_tasks");
    // Eight pages ask at once while the store takes 200 ms to count: one count serves all.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let http = server.http.clone();
            let url = server.url("/stats");
            let token = viewer.clone();
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(backend.count("count_tasks") - before, 1);
    // Two seconds on, the next one counts again.
    tokio::time::sleep(orch_http::routes::overview::STATS_CACHE).await;
    let again = server
        .call(Method::GET, "/stats", Some(&viewer), None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(backend.count("count_tasks") - before, 2);
}
