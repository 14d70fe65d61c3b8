//! Circuit breaker: after repeated connection faults, or at once after a lasting one
//! (refused credentials, a failed TLS handshake), calls stop paying for Redis and fail
//! fast, while one probe at a time checks whether Redis is back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive connection faults that open the circuit.
pub const FAILURE_THRESHOLD: u32 = 5;
/// How long the circuit stays open before the next probe.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls fail fast (0: closed).
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

/// Permission to call Redis; a probe must report its outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    Normal,
    Probe,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn interval_ms() -> u64 {
        u64::try_from(PROBE_INTERVAL.as_millis()).unwrap_or(500)
    }

    /// `None`: fail fast. While open, one caller per interval gets a probe.
    pub(crate) fn permit(&self) -> Option<Permit> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Some(Permit::Normal);
        }
        if self.now_ms() < until {
            return None;
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Permit::Probe)
    }

    /// Whether calls currently fail fast.
    pub(crate) fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    /// Records a request that reached Redis; whether that closed the circuit.
    pub(crate) fn success(&self, permit: &Permit) -> bool {
        self.failures.store(0, Ordering::Release);
        let closed = self.open_until_ms.swap(0, Ordering::AcqRel) != 0;
        if closed {
            tracing::info!(target: "cache_runtime::connection", "Redis answers again; caching resumes");
        }
        if *permit == Permit::Probe {
            self.probing.store(false, Ordering::Release);
        }
        closed
    }

    /// Records a fault that will not go away by itself (refused credentials, a failed TLS
    /// handshake): opens the circuit at once, since the next requests would only fail the
    /// same way. Whether it was closed until now (the caller logs the cause then).
    pub(crate) fn trip(&self, permit: &Permit) -> bool {
        self.failures.fetch_max(FAILURE_THRESHOLD, Ordering::AcqRel);
        let was_open = self
            .open_until_ms
            .swap(self.now_ms() + Self::interval_ms(), Ordering::AcqRel)
            != 0;
        if *permit == Permit::Probe {
            self.probing.store(false, Ordering::Release);
        }
        !was_open
    }

    /// Records a connection fault (not a server-side error like WRONGTYPE).
    pub(crate) fn failure(&self, permit: &Permit) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if *permit == Permit::Probe || failures >= FAILURE_THRESHOLD {
            let was_open = self
                .open_until_ms
                .swap(self.now_ms() + Self::interval_ms(), Ordering::AcqRel)
                != 0;
            if !was_open {
                tracing::warn!(
                    target: "cache_runtime::connection",
                    failures,
                    "Redis keeps failing: bypassing the cache, probing every {PROBE_INTERVAL:?}"
                );
            }
        }
        if *permit == Permit::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Releases a probe that ended without a verdict (cancelled).
    pub(crate) fn abandon(&self, permit: &Permit) {
        if *permit == Permit::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A breaker whose clock started a minute ago, so "open until 1 ms" has passed.
    fn aged() -> Breaker {
        let mut b = Breaker::default();
        b.epoch -= Duration::from_secs(60);
        b
    }

    #[test]
    fn opens_after_threshold_and_probes_one_at_a_time() {
        let b = aged();
        for _ in 0..FAILURE_THRESHOLD - 1 {
            let p = b.permit().unwrap();
            b.failure(&p);
        }
        assert!(!b.is_open());
        let p = b.permit().unwrap();
        b.failure(&p);
        assert!(b.is_open());
        assert_eq!(b.permit(), None, "fails fast while open");
        // Pretend the interval passed.
        b.open_until_ms.store(1, Ordering::Release);
        let probe = b.permit().unwrap();
        assert_eq!(probe, Permit::Probe);
        assert_eq!(b.permit(), None, "only one probe at a time");
        b.success(&probe);
        assert!(!b.is_open());
        assert_eq!(b.permit(), Some(Permit::Normal));
    }

    #[test]
    fn a_lasting_fault_opens_at_once_and_a_successful_probe_closes() {
        let b = aged();
        let p = b.permit().unwrap();
        assert!(b.trip(&p), "opened by this fault");
        assert!(b.is_open());
        assert_eq!(b.permit(), None, "fails fast while open");
        b.open_until_ms.store(1, Ordering::Release);
        let probe = b.permit().unwrap();
        assert_eq!(probe, Permit::Probe);
        assert!(!b.trip(&probe), "already open");
        assert_eq!(b.permit(), None, "the failed probe reopened it");
        b.open_until_ms.store(1, Ordering::Release);
        let probe = b.permit().unwrap();
        assert!(b.success(&probe), "closed by this probe");
        assert!(!b.is_open());
        assert_eq!(b.permit(), Some(Permit::Normal));
    }

    #[test]
    fn failed_probe_reopens() {
        let b = aged();
        for _ in 0..FAILURE_THRESHOLD {
            let p = b.permit().unwrap();
            b.failure(&p);
        }
        b.open_until_ms.store(1, Ordering::Release);
        let probe = b.permit().unwrap();
        b.failure(&probe);
        assert!(b.is_open());
        assert_eq!(b.permit(), None);
    }
}
