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
