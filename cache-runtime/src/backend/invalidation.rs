//! The invalidation seam: how a process hears that keys changed elsewhere, so its L1 can
//! drop them.
//!
//! A backend that can tell (today: Redis, by a pub/sub channel that every process's writes
//! announce on, see `redis/pubsub.rs`) feeds a [`Sink`]; the L1 is the sink. Other
//! mechanisms (RESP3 client tracking, per-node channels on a cluster) are further
//! implementations behind the same sink: the L1 never knows which one it listens to.

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
