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

/// Bits of the counter: the 12 of `rand_a` and the top 30 of `rand_b`. The other 32 bits of
/// `rand_b` are random.
const COUNTER_BITS: u32 = 42;

/// Bits of `rand_b` (the 6 low bits of byte 8 and bytes 9 to 15).
const RAND_B_BITS: u32 = 62;

/// Bits of the random tail below the counter.
const RANDOM_BITS: u32 = RAND_B_BITS + 12 - COUNTER_BITS;

/// The current time in milliseconds since the Unix epoch.
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time-ordered (version 7) UUID, strictly greater than every one made before by this
/// function.
pub(super) fn monotonic_v7() -> Uuid {
    let now = now_millis();
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
    encode_v7(millis, counter, fastrand::u32(..))
}

/// The version 7 UUID of `millis`, `counter` and 32 random bits: the counter fills `rand_a`
/// and leads `rand_b`, every one of its bits kept (the version and variant bits sit beside
/// them), so ids order as (millisecond, counter).
fn encode_v7(millis: u64, counter: u64, random: u32) -> Uuid {
    let tail = (u128::from(counter) << RANDOM_BITS) | u128::from(random);
    let rand_a = (tail >> RAND_B_BITS) as u16 & 0x0FFF;
    let rand_b = (tail as u64) & ((1 << RAND_B_BITS) - 1);
    let mut ten = [0; 10];
    ten[..2].copy_from_slice(&rand_a.to_be_bytes());
    ten[2..].copy_from_slice(&rand_b.to_be_bytes());
    Builder::from_unix_timestamp_millis(millis, &ten).into_uuid()
}

/// The millisecond and counter of a version 7 UUID laid out as [`encode_v7`] does.
fn decode_v7(id: Uuid) -> (u64, u64) {
    let value = id.as_u128();
    let millis = (value >> 80) as u64;
    let rand_a = (value >> 64) & 0x0FFF;
    let rand_b = value & ((1 << RAND_B_BITS) - 1);
    let tail = (rand_a << RAND_B_BITS) | rand_b;
    (millis, (tail >> RANDOM_BITS) as u64)
}

/// A version 7 UUID shortly after `id` (its millisecond, its counter a random step of 1 to
/// 2^20 ahead, carrying into the next millisecond; random below), for an id made elsewhere,
/// perhaps by a process whose clock runs ahead. The random step keeps graphs that continue
/// from the same parent at once apart. `None` for an id more than an hour ahead of this
/// clock, or not a version 7 UUID: ids never jump that far.
pub(super) fn v7_after(id: Uuid) -> Option<Uuid> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (mut millis, mut counter) = decode_v7(id);
    if millis > now_millis().saturating_add(3_600_000) {
        return None;
    }
    counter += 1 + fastrand::u64(..1 << 20);
    if counter >> COUNTER_BITS != 0 {
        millis += 1;
        counter &= (1 << COUNTER_BITS) - 1;
    }
    Some(encode_v7(millis, counter, fastrand::u32(..)))
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
    fn v7_ids_keep_their_order_across_counter_carries() {
        // A carry into every counter bit still gives a greater id.
        for bit in 0..COUNTER_BITS - 1 {
            let below = (1u64 << bit) - 1;
            let a = encode_v7(1_000, below, u32::MAX);
            let b = encode_v7(1_000, below + 1, 0);
            assert!(b > a, "carry into counter bit {bit}");
            assert_eq!(decode_v7(b), (1_000, below + 1));
        }
    }

    #[test]
    fn the_id_after_one_ahead_is_above_it_and_nothing_else_moves() {
        let ahead = encode_v7(now_millis() + 60_000, 5, 7);
        let after = v7_after(ahead).unwrap();
        assert!(after > ahead);
        let (millis, counter) = decode_v7(after);
        assert_eq!(millis, now_millis_of(ahead));
        assert!((6..=5 + (1 << 20)).contains(&counter), "{counter}");
        assert!(monotonic_v7() < ahead, "ids made here keep to this clock");
        // Graphs continuing from one parent at once get ids of their own.
        let many: std::collections::HashSet<Uuid> =
            (0..10_000).map(|_| v7_after(ahead).unwrap()).collect();
        assert_eq!(many.len(), 10_000);
        let carry = encode_v7(1_000, (1 << COUNTER_BITS) - 1, u32::MAX);
        let carried = v7_after(carry).unwrap();
        assert!(carried > carry);
        assert_eq!(decode_v7(carried).0, 1_001);
        let far = encode_v7(now_millis() + 7_200_000, 5, 7);
        assert!(v7_after(far).is_none(), "an id hours ahead is ignored");
        assert!(v7_after(Uuid::new_v4()).is_none());
    }

    fn now_millis_of(id: Uuid) -> u64 {
        decode_v7(id).0
    }

    #[test]
    fn v4_tokens_are_random_and_distinct() {
        let tokens: std::collections::HashSet<Uuid> = (0..10_000).map(|_| secure_v4()).collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(tokens.iter().all(|t| t.get_version_num() == 4));
    }
}
