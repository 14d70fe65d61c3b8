//! Fault injection for soak tests (feature `testing`): a share of Redis operations fails
//! before being sent.
//! Off (one relaxed atomic load per operation) unless a test turns it on through
//! `__private::testing`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

/// Failures per million operations.
static PER_MILLION: AtomicU32 = AtomicU32::new(0);

pub(crate) fn set_rate(rate: f64) {
    let per_million = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
    PER_MILLION.store(per_million, Ordering::Relaxed);
}

pub(crate) fn should_fail() -> bool {
    let per_million = PER_MILLION.load(Ordering::Relaxed);
    if per_million == 0 {
        return false;
    }
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
    }
    // xorshift64*: fast, and good enough to spread failures.
    let x = STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    (x % 1_000_000) < u64::from(per_million)
}
