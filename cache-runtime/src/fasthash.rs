//! A fast keyed hash for in-process maps whose keys carry caller data (user ids).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A folded-multiply hash (as in foldhash/ahash's fallback) with random per-instance
/// seeds: a few ns for a typical key, and collisions cannot be chosen without the seeds.
pub(crate) struct KeyedHash {
    seeds: [u64; 3],
}

/// 64-bit product folded to 64 bits: the core mixing step.
#[inline]
fn fold(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

impl KeyedHash {
    pub(crate) fn new() -> Self {
        // RandomState is seeded from the OS; hashing through it yields independent seeds.
        let state = RandomState::new();
        Self {
            seeds: std::array::from_fn(|i| state.hash_one(i)),
        }
    }

    #[inline]
    pub(crate) fn hash(&self, bytes: &[u8]) -> u64 {
        self.hash_from(self.seeds[0], bytes)
    }

    /// The hash of `tag` and `bytes` together: the same bytes under two tags hash apart.
    #[inline]
    pub(crate) fn hash_tagged(&self, tag: u64, bytes: &[u8]) -> u64 {
        self.hash_from(fold(self.seeds[0] ^ tag, self.seeds[2]), bytes)
    }

    #[inline]
    fn hash_from(&self, start: u64, bytes: &[u8]) -> u64 {
        let [_, s1, s2] = self.seeds;
        // The length goes in so that zero padding of the tail cannot collide.
        let mut h = start ^ (bytes.len() as u64);
        let mut blocks = bytes.chunks_exact(16);
        for b in &mut blocks {
            h = fold(word(&b[..8]) ^ s1, word(&b[8..]) ^ h);
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 16];
            buf[..rest.len()].copy_from_slice(rest);
            h = fold(word(&buf[..8]) ^ s1, word(&buf[8..]) ^ h);
        }
        fold(h ^ s2, 0x9e37_79b9_7f4a_7c15)
    }
}

/// The map's hasher: its keys are already keyed hashes, so it passes them through.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; stay correct (if slow) for anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
