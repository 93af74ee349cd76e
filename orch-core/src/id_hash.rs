//! A fast hasher for maps keyed by [`TaskId`], used on the dispatcher's hot paths.

use std::collections::HashMap;

use crate::model::TaskId;

/// Hashes a [`TaskId`] by its random low half, mixed with a per-process key: ids are UUIDv7,
/// whose last 8 bytes are random, so this is as good as SipHash here at a fraction of the cost.
#[derive(Clone)]
pub(crate) struct IdHashBuilder(u64);

impl Default for IdHashBuilder {
    fn default() -> Self {
        IdHashBuilder(fastrand::u64(..) | 1)
    }
}

pub(crate) struct IdHasher {
    key: u64,
    hash: u64,
}

impl std::hash::BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            key: self.0,
            hash: 0,
        }
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.hash =
                (self.hash.rotate_left(29) ^ u64::from_le_bytes(word)).wrapping_mul(self.key);
        }
    }
    fn write_usize(&mut self, _length_prefix: usize) {}
}

/// A map keyed by task id with [`IdHashBuilder`].
pub(crate) type IdMap<V> = HashMap<TaskId, V, IdHashBuilder>;
