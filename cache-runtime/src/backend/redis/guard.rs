//! The request guard: every Redis request runs under one timer (`REDIS_SOCKET_TIMEOUT`,
//! which also covers waiting for a connection) and the circuit breaker, and its faults are
//! remembered for health reports. (A read batched into an MGET waits at most the stall
//! bound for its batch to go, then the MGET's timer: `batch.rs`.)
//!
//! Two kinds of fault open the breaker: connection faults (refused, reset, timeout), after
//! several in a row, since they may pass; and lasting ones (refused credentials, a failed
//! TLS handshake), at once, since every request fails the same way until the
//! configuration or the server changes. While a lasting fault keeps the breaker open,
//! bypassed requests fail with that fault, so that manual operations, health and
//! `cachectl` name the cause rather than "temporarily bypassed".

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::breaker::{Breaker, Permit, PROBE_INTERVAL};
use crate::error::CacheError;

pub(crate) struct Guard {
    breaker: Breaker,
    socket_timeout: Duration,
    /// The last fault that fed the breaker, for health reports while the breaker hides it.
    last_fault: Mutex<Option<String>>,
    /// The lasting fault that holds the breaker open, if that is why it is open: the
    /// answer to bypassed requests.
    lasting: Mutex<Option<CacheError>>,
}

/// Releases a probe if the caller's timeout drops the request half-way.
struct Abandon<'a>(&'a Breaker, Option<Permit>);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.1.take() {
            self.0.abandon(&p);
        }
    }
}

impl Guard {
    pub(crate) fn new(socket_timeout: Duration) -> Self {
        Self {
            breaker: Breaker::default(),
            socket_timeout,
            last_fault: Mutex::new(None),
            lasting: Mutex::new(None),
        }
    }

    /// The answer to a request the open breaker bypasses: the lasting fault that keeps it
    /// open, else [`CacheError::Unavailable`].
    fn bypassed(&self) -> CacheError {
        self.lasting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(CacheError::lasting_copy)
            .unwrap_or(CacheError::Unavailable)
    }

    /// Feeds a fault to the breaker and remembers it.
    fn fault(&self, permit: &Permit, e: &CacheError) {
        let lasting = e.lasting_copy();
        let mut held = self.lasting.lock().unwrap_or_else(PoisonError::into_inner);
        if lasting.is_some() {
            let opened = self.breaker.trip(permit);
            // The only report of it (calls, and the requests it bypasses, stay quiet): when
            // it opens the breaker, or takes over from a passing fault that had opened it
            // (a server restarted with a new password: unreachable, then refusing).
            if opened || held.is_none() {
                tracing::warn!(
                    target: "cache_runtime::connection",
                    error = %e,
                    "Redis refuses this client until its configuration or the server changes: bypassing the cache, retrying every {PROBE_INTERVAL:?}"
                );
            }
        } else {
            self.breaker.failure(permit);
        }
        *held = lasting;
        drop(held);
        *self
            .last_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
    }

    /// Feeds the breaker the fault of a request that shared another's round trip (a read
    /// in a failed MGET): each read counts, as it would have alone, so a hung server opens
    /// the breaker after as many calls with batching as without.
    pub(crate) fn shared_fault(&self, e: &CacheError) {
        // A bypassed request proves nothing (as in `run`).
        if e.trips_breaker() && !matches!(e, CacheError::Unavailable) {
            self.fault(&Permit::Normal, e);
        }
    }

    /// Whether calls currently bypass Redis after repeated failures.
    pub(crate) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The last fault that fed the breaker (message only; never credentials).
    pub(crate) fn last_fault(&self) -> Option<String> {
        self.last_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs a request: connection faults and refused credentials count toward the breaker,
    /// other server replies (even errors like WRONGTYPE or NOPERM) prove the connection
    /// works.
    pub(crate) async fn run<T, F>(&self, request: F) -> Result<T, CacheError>
    where
        F: Future<Output = Result<T, CacheError>>,
    {
        // The driver and the timer need a Tokio runtime: say so instead of panicking.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CacheError::NoRuntime);
        }
        #[cfg(feature = "testing")]
        if super::faults::should_fail() {
            return Err(CacheError::Server {
                code: "INJECTED".to_owned(),
                detail: "injected fault (fault injection is on)".to_owned(),
            });
        }
        let Some(permit) = self.breaker.permit() else {
            // Failing fast never waits: give the scheduler its turn now and then, or a
            // loop of calls would hog its worker thread while the breaker is open.
            tokio::task::consume_budget().await;
            return Err(self.bypassed());
        };
        let mut guard = Abandon(&self.breaker, Some(permit));
        let result = match tokio::time::timeout(self.socket_timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.socket_timeout)),
        };
        if let Some(permit) = guard.1.take() {
            match &result {
                Err(CacheError::Unavailable) => self.breaker.abandon(&permit),
                Err(e) if e.trips_breaker() => self.fault(&permit, e),
                _ => {
                    if self.breaker.success(&permit) {
                        *self.lasting.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    }
                }
            }
        }
        result
    }
}
