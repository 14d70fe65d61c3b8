//! The invalidation seam: how a process hears that keys changed elsewhere, so its L1 can
//! drop them.
//!
//! A backend that can tell feeds a [`Sink`]; the L1 is the sink, and never knows which
//! mechanism it listens to. Redis has two (`redis/tracking.rs` picks one per server):
//!
//! - server-assisted client tracking (RESP3 `CLIENT TRACKING ON BCAST`, `redis/tracking.rs`):
//!   the server itself reports every change of a key under the prefix, whoever made it
//!   (this library, `redis-cli`, another service, expiry, eviction, `FLUSHDB`);
//! - a pub/sub channel that every writer of this library announces its writes on
//!   (`redis/pubsub.rs`): the fallback where the server refuses tracking.

use std::sync::Weak;

/// What became stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalidated<'a> {
    /// One key.
    Key(&'a str),
    /// Every key starting with this.
    Prefix(&'a str),
    /// Everything (an unknown message, a flush).
    All,
}

/// Receives invalidations. Implemented by the L1.
pub(crate) trait Sink: Send + Sync {
    /// The stream is up. Messages may have been missed while it was down: drop
    /// everything held, then serve again.
    fn up(&self);
    /// The stream is down: serve nothing until [`up`](Self::up).
    fn down(&self);
    /// Drops what became stale.
    fn invalidate(&self, what: Invalidated<'_>);
    /// The listener ended (its runtime is gone, or it could not start): a later call may
    /// start another.
    fn ended(&self);
}

/// Tells the sink the stream is down and the listener gone, however the listener ends:
/// error, the sink dropped, or its runtime dropped mid-await.
pub(crate) struct Ended(pub(crate) Weak<dyn Sink>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(sink) = self.0.upgrade() {
            sink.down();
            sink.ended();
        }
    }
}

/// Runs a listener for `sink` in the current Tokio runtime (the sink hears `down` and
/// `ended` whenever it stops); with none, tells the sink it ended at once (a later call
/// from inside a runtime starts it).
pub(crate) fn spawn_listener<F>(sink: Weak<dyn Sink>, listener: impl FnOnce(Weak<dyn Sink>) -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        if let Some(sink) = sink.upgrade() {
            sink.ended();
        }
        return;
    };
    let guard = Ended(sink.clone());
    let run = listener(sink);
    handle.spawn(async move {
        let _ended = guard;
        run.await;
    });
}

/// A sink that writes down what it hears (unit tests of the listeners).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder(pub(crate) std::sync::Mutex<Vec<String>>);

#[cfg(test)]
impl Sink for Recorder {
    fn up(&self) {}
    fn down(&self) {}
    fn invalidate(&self, what: Invalidated<'_>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{what:?}"));
    }
    fn ended(&self) {}
}
