//! Checks of the lock table and its waiter queue: grants, fencing tokens, expiry, the order
//! waiters are served in.

use std::time::Duration;

use super::*;

pub(super) async fn lock_grant_release_and_fencing(b: SharedBackend) -> CheckResult {
    let ttl = Duration::from_secs(30);
    let LockAttempt::Acquired(first) = ok!(b.try_acquire_lock("res", "alice", ttl).await) else {
        return Err("free lock not granted".into());
    };
    match ok!(b.try_acquire_lock("res", "bob", ttl).await) {
        LockAttempt::Held(holder) => ensure!(holder.owner == "alice", "holder {holder:?}"),
        LockAttempt::Acquired(_) => return Err("held lock granted twice".into()),
    }
    ensure!(
        matches!(
            ok!(b.try_acquire_lock("res", "alice", ttl).await),
            LockAttempt::Held(_)
        ),
        "locks must not be re-entrant"
    );
    ensure!(
        !ok!(b.release_lock("res", "bob", first.fencing_token.0).await),
        "non-owner released"
    );
    ensure!(
        !ok!(b
            .release_lock("res", "alice", first.fencing_token.0 + 1)
            .await),
        "wrong token released"
    );
    let info = ok!(b.lock_info("res").await).ok_or("lock_info missing")?;
    ensure!(info == first, "lock_info {info:?}");
    ensure!(
        ok!(b.release_lock("res", "alice", first.fencing_token.0).await),
        "owner could not release"
    );
    ensure!(
        ok!(b.lock_info("res").await).is_none(),
        "released lock still listed"
    );
    let mut last = first.fencing_token;
    for owner in ["bob", "carol", "dave"] {
        let LockAttempt::Acquired(grant) = ok!(b.try_acquire_lock("res", owner, ttl).await) else {
            return Err(format!("free lock not granted to {owner}"));
        };
        ensure!(
            grant.fencing_token > last,
            "fencing token did not increase: {} then {}",
            last,
            grant.fencing_token
        );
        last = grant.fencing_token;
        ensure!(
            ok!(b.release_lock("res", owner, grant.fencing_token.0).await),
            "release failed"
        );
    }
    let LockAttempt::Acquired(_) = ok!(b.try_acquire_lock("other", "x", ttl).await) else {
        return Err("independent resource not granted".into());
    };
    let LockAttempt::Acquired(_) = ok!(b.try_acquire_lock("alpha", "y", ttl).await) else {
        return Err("independent resource not granted".into());
    };
    let listed: Vec<String> = ok!(b.list_locks().await)
        .into_iter()
        .map(|l| l.resource)
        .collect();
    ensure!(listed == ["alpha", "other"], "list_locks {listed:?}");
    ensure!(
        matches!(
            b.try_acquire_lock("", "x", ttl).await,
            Err(Error::Invalid { .. })
        ),
        "an empty resource name must be refused"
    );
    Ok(())
}

pub(super) async fn lock_expiry_and_extend(b: SharedBackend) -> CheckResult {
    let short = Duration::from_millis(300);
    let LockAttempt::Acquired(a) = ok!(b.try_acquire_lock("r", "a", short).await) else {
        return Err("not granted".into());
    };
    let extended = ok!(b
        .extend_lock("r", "a", a.fencing_token.0, Duration::from_secs(60))
        .await)
    .ok_or("holder could not extend")?;
    ensure!(
        extended.expires_at > a.expires_at,
        "extend did not move the expiry"
    );
    ensure!(
        ok!(b
            .extend_lock("r", "b", a.fencing_token.0, Duration::from_secs(60))
            .await)
        .is_none(),
        "non-holder extended"
    );
    ensure!(
        ok!(b.release_lock("r", "a", a.fencing_token.0).await),
        "release after extend"
    );
    let LockAttempt::Acquired(first) = ok!(b.try_acquire_lock("r", "a", short).await) else {
        return Err("not granted".into());
    };
    let mut taken = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let LockAttempt::Acquired(grant) = ok!(b.try_acquire_lock("r", "b", short * 10).await) {
            taken = Some(grant);
            break;
        }
    }
    let taken = taken.ok_or("expired lock was never reclaimed")?;
    ensure!(
        taken.fencing_token > first.fencing_token,
        "takeover must get a greater token"
    );
    ensure!(
        !ok!(b.release_lock("r", "a", first.fencing_token.0).await),
        "expired holder released the new grant"
    );
    ensure!(
        ok!(b
            .extend_lock("r", "a", first.fencing_token.0, Duration::from_secs(5))
            .await)
        .is_none(),
        "expired holder extended"
    );
    let LockAttempt::Acquired(gone) = ok!(b.try_acquire_lock("z", "a", short).await) else {
        return Err("not granted".into());
    };
    let mut reclaimed = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reclaimed = ok!(b.reclaim_expired_locks().await);
        if !reclaimed.is_empty() {
            break;
        }
    }
    ensure!(
        reclaimed
            .iter()
            .any(|l| l.resource == "z" && l.fencing_token == gone.fencing_token),
        "reclaim_expired_locks should return the expired lock, got {reclaimed:?}"
    );
    ensure!(
        ok!(b.lock_info("z").await).is_none(),
        "expired lock still reported"
    );
    Ok(())
}

/// A queue entry of `resource` for `owner` at `rank`, living `ttl`.
pub(super) fn waiter(resource: &str, owner: &str, rank: i64, ttl: Duration) -> NewLockWaiter {
    NewLockWaiter {
        resource: resource.to_owned(),
        waiter: LockWaiterId::new(),
        owner: owner.to_owned(),
        priority: 1,
        rank,
        ttl,
    }
}

/// The acquisition in turn of the entry `w` (for 30 s).
pub(super) fn turn_of(w: &NewLockWaiter) -> LockRequest {
    LockRequest {
        resource: w.resource.clone(),
        owner: w.owner.clone(),
        ttl: Duration::from_secs(30),
        rank: w.rank,
        waiter: Some(w.waiter),
    }
}

/// An acquisition in turn without a queue entry.
pub(super) fn unqueued(resource: &str, owner: &str, rank: i64) -> LockRequest {
    LockRequest {
        resource: resource.to_owned(),
        owner: owner.to_owned(),
        ttl: Duration::from_secs(30),
        rank,
        waiter: None,
    }
}

pub(super) fn owners(waiters: &[LockWaiter]) -> Vec<(&str, &str)> {
    waiters
        .iter()
        .map(|w| (w.resource.as_str(), w.owner.as_str()))
        .collect()
}

/// Waits (up to 5 s, in 100 ms steps) until `probe` holds.
pub(super) async fn until<F, Fut>(what: &str, mut probe: F) -> CheckResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if probe().await? {
            return Ok(());
        }
    }
    Err(format!("timed out waiting until {what}"))
}

pub(super) async fn lock_queue_serves_by_rank(b: SharedBackend) -> CheckResult {
    let minute = Duration::from_secs(60);
    let first = waiter("q", "first", 100, minute);
    let second = waiter("q", "second", 200, minute);
    // Joined later with the same rank: after `second` (a later id), ties go by id.
    let third = waiter("q", "third", 200, minute);
    for w in [&third, &second, &first] {
        let joined = ok!(b.join_lock_queue(w).await);
        ensure!(
            joined.waiter == w.waiter && joined.rank == w.rank && joined.owner == w.owner,
            "join returned {joined:?}"
        );
        ensure!(joined.expires_at > joined.enqueued_at, "entry {joined:?}");
    }
    let other = waiter("p", "elsewhere", 500, minute);
    ok!(b.join_lock_queue(&other).await);
    let listed = ok!(b.lock_waiters("q").await);
    ensure!(
        owners(&listed) == [("q", "first"), ("q", "second"), ("q", "third")],
        "lock_waiters {:?}",
        owners(&listed)
    );
    let all = ok!(b.list_lock_waiters().await);
    ensure!(
        owners(&all)
            == [
                ("p", "elsewhere"),
                ("q", "first"),
                ("q", "second"),
                ("q", "third")
            ],
        "list_lock_waiters {:?}",
        owners(&all)
    );
    // A refresh keeps the place in line and when it joined.
    let before = listed[0].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refreshed = ok!(b.join_lock_queue(&first).await);
    ensure!(
        refreshed.enqueued_at == before.enqueued_at && refreshed.expires_at > before.expires_at,
        "refresh gave {refreshed:?} after {before:?}"
    );
    ensure!(
        ok!(b.lock_waiters("q").await).len() == 3,
        "a refresh added an entry"
    );

    // The lock is free, but only the first in line gets it.
    for (w, name) in [(&third, "third"), (&second, "second")] {
        match ok!(b.acquire_lock_in_turn(&turn_of(w)).await) {
            LockTurn::Behind(ahead) => ensure!(
                ahead.waiter == first.waiter,
                "{name} is behind {ahead:?}, not the first in line"
            ),
            other => return Err(format!("{name} overtook the first in line: {other:?}")),
        }
    }
    match ok!(b
        .acquire_lock_in_turn(&unqueued("q", "newcomer", 150))
        .await)
    {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == first.waiter, "behind {ahead:?}"),
        other => return Err(format!("a newcomer overtook the queue: {other:?}")),
    }
    // Equal rank without an entry comes after the entry.
    match ok!(b.acquire_lock_in_turn(&unqueued("q", "tie", 100)).await) {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == first.waiter, "behind {ahead:?}"),
        other => return Err(format!("a newcomer won a tie against an entry: {other:?}")),
    }
    let LockTurn::Acquired(granted) = ok!(b.acquire_lock_in_turn(&turn_of(&first)).await) else {
        return Err("the first in line was not granted the free lock".into());
    };
    ensure!(
        granted.owner == "first" && ok!(b.lock_info("q").await) == Some(granted.clone()),
        "grant {granted:?}"
    );
    ensure!(
        owners(&ok!(b.lock_waiters("q").await)) == [("q", "second"), ("q", "third")],
        "the grant did not take the waiter out of line"
    );
    // While held, everyone (the next in line included) sees the holder.
    match ok!(b.acquire_lock_in_turn(&turn_of(&second)).await) {
        LockTurn::Held(holder) => ensure!(holder == granted, "held by {holder:?}"),
        other => return Err(format!("a held lock gave {other:?}")),
    }
    ensure!(
        ok!(b.release_lock("q", "first", granted.fencing_token.0).await),
        "release"
    );
    // Ties in rank go by waiter id: `second` before `third`.
    match ok!(b.acquire_lock_in_turn(&turn_of(&third)).await) {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == second.waiter, "behind {ahead:?}"),
        other => return Err(format!("a tie was not broken by waiter id: {other:?}")),
    }
    let LockTurn::Acquired(next) = ok!(b.acquire_lock_in_turn(&turn_of(&second)).await) else {
        return Err("the second in line was not granted".into());
    };
    ensure!(
        next.fencing_token > granted.fencing_token,
        "fencing token went from {} to {}",
        granted.fencing_token,
        next.fencing_token
    );
    // Another resource's queue is its own.
    ensure!(
        matches!(
            ok!(b.acquire_lock_in_turn(&turn_of(&other)).await),
            LockTurn::Acquired(_)
        ),
        "the only waiter of another resource was not granted"
    );
    Ok(())
}

pub(super) async fn lock_queue_expired_waiter_does_not_block(b: SharedBackend) -> CheckResult {
    let minute = Duration::from_secs(60);
    let short = Duration::from_millis(300);
    let dead = waiter("q", "dead", 0, short);
    let alive = waiter("q", "alive", 10, minute);
    ok!(b.join_lock_queue(&dead).await);
    ok!(b.join_lock_queue(&alive).await);
    match ok!(b.acquire_lock_in_turn(&turn_of(&alive)).await) {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == dead.waiter, "behind {ahead:?}"),
        other => return Err(format!("a live entry ahead did not block: {other:?}")),
    }
    // Once its entry expires (nobody refreshes it), the dead waiter blocks nobody and is no
    // longer listed.
    until("the unrefreshed entry expires", || async {
        Ok(ok!(b.lock_waiters("q").await).len() == 1)
    })
    .await?;
    let LockTurn::Acquired(_) = ok!(b.acquire_lock_in_turn(&turn_of(&alive)).await) else {
        return Err("an expired entry still blocked the queue".into());
    };
    ensure!(
        ok!(b.list_lock_waiters().await).is_empty(),
        "expired entry listed"
    );

    // Expired entries are deleted by reclaim_expired_locks.
    let gone = waiter("r", "gone", 0, short);
    ok!(b.join_lock_queue(&gone).await);
    until("the entry expires", || async {
        Ok(ok!(b.list_lock_waiters().await).is_empty())
    })
    .await?;
    ok!(b.reclaim_expired_locks().await);
    ensure!(
        !ok!(b.leave_lock_queue("r", gone.waiter).await),
        "reclaim_expired_locks left an expired entry in the queue"
    );
    // Bad entries are refused, naming the field.
    let mut zero = waiter("r", "x", 0, Duration::ZERO);
    ensure!(
        matches!(
            b.join_lock_queue(&zero).await,
            Err(Error::Invalid { field: "ttl", .. })
        ),
        "a zero TTL must be refused"
    );
    zero.ttl = minute;
    zero.resource = String::new();
    ensure!(
        matches!(
            b.join_lock_queue(&zero).await,
            Err(Error::Invalid {
                field: "resource",
                ..
            })
        ),
        "an empty resource must be refused"
    );
    ensure!(
        matches!(
            b.acquire_lock_in_turn(&unqueued("", "x", 0)).await,
            Err(Error::Invalid {
                field: "resource",
                ..
            })
        ),
        "an empty resource must be refused"
    );
    Ok(())
}

pub(super) async fn lock_queue_leaving_unblocks(b: SharedBackend) -> CheckResult {
    let minute = Duration::from_secs(60);
    let first = waiter("q", "first", 0, minute);
    let second = waiter("q", "second", 10, minute);
    ok!(b.join_lock_queue(&first).await);
    ok!(b.join_lock_queue(&second).await);
    ensure!(
        matches!(
            ok!(b.acquire_lock_in_turn(&turn_of(&second)).await),
            LockTurn::Behind(_)
        ),
        "not blocked by the first in line"
    );
    ensure!(
        !ok!(b.leave_lock_queue("other", first.waiter).await),
        "left the queue of another resource"
    );
    ensure!(
        ok!(b.leave_lock_queue("q", first.waiter).await),
        "could not leave"
    );
    ensure!(
        !ok!(b.leave_lock_queue("q", first.waiter).await),
        "left twice"
    );
    let LockTurn::Acquired(_) = ok!(b.acquire_lock_in_turn(&turn_of(&second)).await) else {
        return Err("still blocked after the waiter ahead left".into());
    };
    ensure!(ok!(b.lock_waiters("q").await).is_empty(), "queue not empty");
    Ok(())
}

pub(super) async fn lock_queue_is_not_overtaken_without_an_entry(b: SharedBackend) -> CheckResult {
    let queued = waiter("q", "queued", i64::MAX - 1, Duration::from_secs(60));
    ok!(b.join_lock_queue(&queued).await);
    // What `LockManager::try_acquire` asks: after every queued live waiter.
    match ok!(b
        .acquire_lock_in_turn(&unqueued("q", "eager", i64::MAX))
        .await)
    {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == queued.waiter, "behind {ahead:?}"),
        other => {
            return Err(format!(
                "an unqueued request overtook a live waiter: {other:?}"
            ));
        }
    }
    ensure!(
        ok!(b.lock_info("q").await).is_none(),
        "a refused request left a grant"
    );
    // With nobody queued for it, a resource is granted to an unqueued request.
    let LockTurn::Acquired(_) = ok!(b
        .acquire_lock_in_turn(&unqueued("free", "eager", i64::MAX))
        .await)
    else {
        return Err("a free resource with an empty queue was not granted".into());
    };
    Ok(())
}

pub(super) async fn lock_queue_keeps_fencing_increasing(b: SharedBackend) -> CheckResult {
    let short = Duration::from_millis(300);
    let mut last = FencingToken(0);
    let check = |last: &mut FencingToken, grant: &crate::model::LockInfo, how: &str| {
        ensure!(
            grant.fencing_token > *last,
            "{how}: fencing token went from {last} to {}",
            grant.fencing_token
        );
        *last = grant.fencing_token;
        Ok(())
    };
    let LockAttempt::Acquired(plain) = ok!(b.try_acquire_lock("r", "plain", short).await) else {
        return Err("not granted".into());
    };
    check(&mut last, &plain, "grant")?;
    ensure!(
        ok!(b.release_lock("r", "plain", plain.fencing_token.0).await),
        "release"
    );
    for round in 0..3 {
        let w = waiter("r", &format!("w{round}"), round, Duration::from_secs(60));
        ok!(b.join_lock_queue(&w).await);
        let mut request = turn_of(&w);
        request.ttl = short;
        let LockTurn::Acquired(grant) = ok!(b.acquire_lock_in_turn(&request).await) else {
            return Err(format!("round {round}: the only waiter was not granted"));
        };
        check(&mut last, &grant, "grant in turn")?;
        if round < 2 {
            ensure!(
                ok!(b.release_lock("r", &w.owner, grant.fencing_token.0).await),
                "release"
            );
        }
    }
    // A takeover of the expired grant in turn gets a greater token, and the old holder can
    // neither extend nor release.
    let holder = last;
    let next = waiter("r", "taker", 100, Duration::from_secs(60));
    ok!(b.join_lock_queue(&next).await);
    let mut taken = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let LockTurn::Acquired(grant) = ok!(b.acquire_lock_in_turn(&turn_of(&next)).await) {
            taken = Some(grant);
            break;
        }
    }
    let taken = taken.ok_or("the expired grant was never taken over in turn")?;
    check(&mut last, &taken, "takeover in turn")?;
    ensure!(
        !ok!(b.release_lock("r", "w2", holder.0).await),
        "expired holder released the new grant"
    );
    Ok(())
}
