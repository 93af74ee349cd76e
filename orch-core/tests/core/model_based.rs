//! Model-based tests of the lock manager: random operation sequences run against the real
//! implementation and a small reference model, which must agree at every step. (The task
//! queue's model-based property is in the public conformance suite, run on every backend.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orch_core::{LockManager, MemoryBackend};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
enum LockOp {
    TryAcquire { resource: u8, owner: u8 },
    Release { resource: u8, owner: u8 },
    Advance { millis: u64 },
}

fn lock_op() -> impl Strategy<Value = LockOp> {
    prop_oneof![
        3 => (0u8..2, 0u8..3).prop_map(|(resource, owner)| LockOp::TryAcquire { resource, owner }),
        2 => (0u8..2, 0u8..3).prop_map(|(resource, owner)| LockOp::Release { resource, owner }),
        1 => (1u64..150).prop_map(|millis| LockOp::Advance { millis }),
    ]
}

const TTL: Duration = Duration::from_millis(100);

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lock_manager_grants_match_the_model(ops in proptest::collection::vec(lock_op(), 1..80)) {
        let rt = runtime();
        rt.block_on(async move {
            let locks = LockManager::new(Arc::new(MemoryBackend::new()));
            // Model: resource -> (owner, expires at ms, token)
            let mut model: HashMap<u8, (u8, u64, u64)> = HashMap::new();
            let mut guards: HashMap<(u8, u8), orch_core::LockGuard> = HashMap::new();
            let mut now_ms = 0u64;
            let mut last_token: HashMap<u8, u64> = HashMap::new();
            for op in ops {
                match op {
                    LockOp::Advance { millis } => {
                        tokio::time::advance(Duration::from_millis(millis)).await;
                        now_ms += millis;
                    }
                    LockOp::TryAcquire { resource, owner } => {
                        let free = model.get(&resource).is_none_or(|&(_, expires, _)| expires <= now_ms);
                        let got = locks.try_acquire(&format!("r{resource}"), &format!("o{owner}"), TTL).await;
                        prop_assert_eq!(got.is_ok(), free, "grant disagrees with the model");
                        if let Ok(guard) = got {
                            let token = guard.fencing_token().0;
                            let last = last_token.insert(resource, token).unwrap_or(0);
                            prop_assert!(token > last, "fencing token did not increase");
                            model.insert(resource, (owner, now_ms + TTL.as_millis() as u64, token));
                            if let Some(old) = guards.insert((resource, owner), guard) {
                                std::mem::forget(old);
                            }
                        }
                    }
                    LockOp::Release { resource, owner } => {
                        let Some(guard) = guards.remove(&(resource, owner)) else { continue };
                        let token = guard.fencing_token().0;
                        let holds = model.get(&resource).is_some_and(|&(o, _, t)| o == owner && t == token);
                        let released = guard.release().await;
                        prop_assert_eq!(released.is_ok(), holds, "release disagrees with the model");
                        if holds {
                            model.remove(&resource);
                        }
                    }
                }
            }
            for (_, guard) in guards {
                std::mem::forget(guard);
            }
            Ok(())
        })?;
    }
}
