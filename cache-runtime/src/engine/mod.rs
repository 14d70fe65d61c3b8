//! The call engine: everything between a cache operation and the store.
//!
//! - `read.rs`: the read path (L1, one shared round trip for concurrent reads of a key,
//!   decoding; an undecodable value is a miss);
//! - `write.rs`: encoding, writing, and the write fence (local state forgotten before and
//!   after every write, delete and clear, so a read never sees what a write replaced);
//! - `call.rs`: a decorated call (hit, or one body run per key and the store of its result,
//!   with the rules for when not to store);
//! - `resilience.rs`: fail-safe, soft timeouts, refresh ahead and the distributed lock
//!   around a decorated call's body;
//! - `copier.rs`: which stored types an L1 hit clones from a kept decoded copy instead of
//!   decoding;
//! - `returns.rs`: which part of a return value is stored (`Result`: `Ok`; `Option`: `Some`);
//! - `site.rs`: what a decorated function knows at compile time, and the state derived from
//!   it once.
//!
//! The state it works on lives in the [`Cache`](crate::Cache) handle: the flights of this
//! process (`flight.rs`), the counters (`counters.rs`), the L1 and the backend.

pub(crate) mod call;
pub(crate) mod copier;
pub(crate) mod read;
pub(crate) mod resilience;
pub(crate) mod returns;
pub(crate) mod site;
pub(crate) mod write;

pub(crate) use crate::backend::unix_ms;
