//! The request guard: every Redis request runs under one timer (`REDIS_SOCKET_TIMEOUT`,
//! which also covers waiting for a connection) and the circuit breaker, and its connection
//! faults are remembered for health reports.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use super::breaker::{Breaker, Permit};
use crate::error::CacheError;

pub(crate) struct Guard {
    breaker: Breaker,
    socket_timeout: Duration,
    /// The last connection fault, for health reports while the breaker hides it.
    last_fault: Mutex<Option<String>>,
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
        }
    }

    /// Whether calls currently bypass Redis after repeated failures.
    pub(crate) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The last connection fault seen (message only; never credentials).
    pub(crate) fn last_fault(&self) -> Option<String> {
        self.last_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs a request: connection faults count toward the breaker, server replies (even
    /// errors like WRONGTYPE) prove the connection works.
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
            return Err(CacheError::Unavailable);
        };
        let mut guard = Abandon(&self.breaker, Some(permit));
        let result = match tokio::time::timeout(self.socket_timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.socket_timeout)),
        };
        if let Some(permit) = guard.1.take() {
            match &result {
                Err(CacheError::Unavailable) => self.breaker.abandon(&permit),
                Err(e) if e.is_connection_fault() => {
                    self.breaker.failure(&permit);
                    *self
                        .last_fault
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                }
                _ => self.breaker.success(&permit),
            }
        }
        result
    }
}
