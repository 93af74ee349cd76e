//! Fresh ids and lease tokens without a system call each.
//!
//! uuid without its `fast-rng` feature (which would bring `rand` and a ChaCha generator into
//! every build) asks the operating system for randomness on every id, a system call that cost
//! the in-memory dispatcher a fifth of its time. Here:
//! - lease tokens, which prove who holds a task, take their bytes from the operating system's
//!   generator (`getrandom`, already in the tree through uuid), drawn 4 KiB at a time into a
//!   buffer per thread;
//! - task ids are UUIDv7 whose random part needs no secrecy: a millisecond timestamp, a counter
//!   that keeps ids of one process strictly increasing within a millisecond (RFC 9562's
//!   "fixed-length dedicated counter"), and bits from `fastrand`.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use uuid::{Builder, Uuid};

/// Bytes drawn from the operating system at once.
const POOL: usize = 4096;

struct Pool {
    bytes: [u8; POOL],
    used: usize,
}

thread_local! {
    static SECURE: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL], used: POOL }) };
}

/// 16 bytes from the operating system's generator.
fn secure_bytes() -> [u8; 16] {
    SECURE.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used + 16 > POOL {
            // Like uuid's own `new_v4`: without randomness from the system no token can be
            // made safely, and there is no sensible fallback.
            getrandom::fill(&mut pool.bytes)
                .expect("the operating system's random number generator failed");
            pool.used = 0;
        }
        let start = pool.used;
        pool.used += 16;
        let mut out = [0; 16];
        out.copy_from_slice(&pool.bytes[start..start + 16]);
        out
    })
}

/// A random (version 4) UUID from the operating system's generator.
pub(super) fn secure_v4() -> Uuid {
    Builder::from_random_bytes(secure_bytes()).into_uuid()
}

/// The last millisecond an id was made in, and the counter within it.
static V7: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// Bits of the counter: the top 12 go into `rand_a`, the rest lead `rand_b`.
const COUNTER_BITS: u32 = 42;

/// A time-ordered (version 7) UUID, strictly greater than every one made before by this
/// process.
pub(super) fn monotonic_v7() -> Uuid {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (millis, counter) = {
        let mut state = V7.lock();
        let (last, counter) = &mut *state;
        if now > *last {
            *last = now;
            // A random start, with headroom so the counter rarely runs out in one millisecond.
            *counter = fastrand::u64(..) >> (64 - COUNTER_BITS + 1);
        } else {
            *counter += 1;
            if *counter >> COUNTER_BITS != 0 {
                // Out of counter: borrow the next millisecond.
                *last += 1;
                *counter = 0;
            }
        }
        (*last, *counter)
    };
    let random = u128::from(fastrand::u64(..)) & ((1 << (80 - COUNTER_BITS)) - 1);
    let tail = (u128::from(counter) << (80 - COUNTER_BITS)) | random;
    let bytes: [u8; 16] = tail.to_be_bytes();
    let mut ten = [0; 10];
    ten.copy_from_slice(&bytes[6..]);
    Builder::from_unix_timestamp_millis(millis, &ten).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_ids_strictly_increase_and_carry_their_version() {
        let mut last = monotonic_v7();
        assert_eq!(last.get_version_num(), 7);
        for _ in 0..100_000 {
            let next = monotonic_v7();
            assert!(next > last, "{next} after {last}");
            last = next;
        }
    }

    #[test]
    fn v4_tokens_are_random_and_distinct() {
        let tokens: std::collections::HashSet<Uuid> = (0..10_000).map(|_| secure_v4()).collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(tokens.iter().all(|t| t.get_version_num() == 4));
    }
}
