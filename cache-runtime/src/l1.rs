//! The optional in-process L1 in front of Redis, coherent across processes.
//!
//! - It is the [`Sink`] of the backend's invalidation stream (`backend/invalidation.rs`):
//!   whatever another process (or this one) changes is dropped from it.
//! - L1 is filled only from Redis reads, never from local writes, with the key's remaining
//!   Redis TTL (capped by `CACHE_L1_MAX_TTL`): it never holds a value longer than Redis.
//! - A read that raced with an invalidation does not fill (striped sequence numbers).
//! - While the stream is down, L1 serves and fills nothing; when it comes back, L1 starts
//!   empty (invalidations may have been missed meanwhile).
//!
//! The store is purpose-built so that a hit costs one keyed hash, one uncontended read
//! lock, one map probe, one clock read and an `Arc` clone (no channel, no GC), plus a clone
//! of the kept decoded value or, for types that cannot be cloned, a decode:
//!
//! - Decorated calls find their entry by [`Ident`] (the call's site and its serialised
//!   arguments), not by key text: the argument digest (BLAKE3) and the key text were a
//!   third of a hit. Each shard also maps an ident's hash to the key's hash (an alias, in
//!   the shard of the ident's hash); the entry keeps the ident and a hit compares it, so
//!   an alias that went stale (its entry replaced or gone) is a miss, never a wrong value.
//!   An alias counts the fills and entries that use it: taken before the entry is
//!   inserted, given back after it is gone (or was not kept), never holding two shard
//!   locks at once, so aliases neither leak nor go missing. Invalidation stays by key.
//! - Shards (a power of two, up to 32) of `RwLock<Table>`, chosen by key hash, so reads
//!   on several cores rarely touch the same lock. Each shard holds `max_entries / shards`
//!   entries and `max_bytes / shards` bytes (key + twice the value: room for the decoded copy
//!   that hits of cloneable types return, `engine/copier.rs`): the totals are bounds, and
//!   a value larger than one shard's byte share is simply not kept in L1.
//! - Eviction is sampled LRU, as in Redis: a read stores a coarse (millisecond) last-use
//!   stamp with a relaxed atomic; an insert over budget samples [`SAMPLES`] entries of its
//!   shard and evicts an expired one, else the least recently used. Entries live in a
//!   dense `Vec` so sampling is O(1); the map only holds the index.
//! - Hashing: a folded-multiply hash keyed with per-instance random seeds (keys carry
//!   user ids, so collisions must not be predictable). The map is keyed by that 64-bit
//!   hash (hashed once, not again by the map); two keys with the same hash evict each
//!   other, which a cache may always do, so collisions can cost hits but never CPU.
//! - Time: expiry is computed from the time taken *before* the Redis read, minus
//!   [`LEAD_MS`] (PTTL rounding), and checked against the monotonic clock on every read,
//!   so an entry is never served after its Redis TTL. (A coarse clock kept by a ticker
//!   thread would save ~35 ns per hit, but a late ticker on a busy machine could serve a
//!   value past its TTL: correctness first.)

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::backend::invalidation::{Invalidated, Sink};
use crate::backend::unix_ms;
use crate::config::L1Config;
use crate::fasthash::{KeyedHash, PassThrough};

const STRIPES: usize = 64;

/// Most shards (a power of two); fewer for small caches so per-shard budgets stay meaningful.
const MAX_SHARDS: usize = 32;
/// Entries per shard below which fewer shards are used.
const MIN_SHARD_ENTRIES: u64 = 128;
/// Entries looked at per eviction (Redis' `maxmemory-samples` default).
const SAMPLES: usize = 5;
/// Taken off every TTL: Redis' PTTL rounding and the millisecond truncation here.
/// Entries whose TTL is shorter are not kept (they would expire almost at once anyway).
const LEAD_MS: u64 = 2;

/// Milliseconds on the monotonic clock since the L1 was made.
struct Clock {
    base: Instant,
}

impl Clock {
    fn start() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
        })
    }

    /// Milliseconds since `base`, rounded down.
    fn precise_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The same clock; the name marks reads where millisecond precision is all we need.
    #[inline]
    fn coarse_ms(&self) -> u64 {
        self.precise_ms()
    }
}

/// A decoded copy of an entry's value (its type is the stored type of the call that kept it).
pub(crate) type Kept = Box<dyn std::any::Any + Send + Sync>;

/// What an entry holds: the bytes read from the store and, for types the L1 may clone
/// (`engine/copier.rs`), the first decoded copy, which later hits clone instead of decoding.
pub(crate) struct Held {
    pub(crate) bytes: Arc<[u8]>,
    decoded: OnceLock<Decoded>,
}

/// A decoded copy and when it stops being fresh.
pub(crate) struct Decoded {
    pub(crate) value: Kept,
    /// The envelope's logical expiry (Unix ms), for refresh ahead.
    pub(crate) fresh_until: Option<u64>,
    /// The same instant on this L1's clock: a hit compares it with the clock reading it
    /// already took, instead of reading the wall clock too. (The two clocks may drift
    /// apart by the clock's slew over an entry's life, at most `CACHE_L1_MAX_TTL`.)
    fresh_ms: Option<u64>,
}

impl Held {
    /// The decoded copy, once a hit kept one.
    pub(crate) fn decoded(&self) -> Option<&Decoded> {
        self.decoded.get()
    }
}

impl Decoded {
    /// Past its logical expiry at `now_ms` (this L1's clock).
    pub(crate) fn stale_at(&self, now_ms: u64) -> bool {
        self.fresh_ms.is_some_and(|fresh| fresh <= now_ms)
    }
}

/// What a decorated call's entry is found by, without its key text: the address of the
/// site's `Keyed` for the stored type (a static, one per site and type) and the call's
/// serialised arguments. Within one L1 (one cache), it determines the key.
#[derive(Clone, Copy)]
pub(crate) struct Ident<'a> {
    pub(crate) site: usize,
    pub(crate) args: &'a [u8],
}

/// An entry's [`Ident`], kept to check hits found through its alias.
struct Alias {
    /// The ident's hash: where the alias is (shard and map key).
    hash: u64,
    site: usize,
    args: Box<[u8]>,
}

impl Alias {
    fn is(&self, ident: &Ident<'_>) -> bool {
        self.site == ident.site && *self.args == *ident.args
    }
}

/// An L1 hit: the entry, and the clock reading the hit was checked at.
pub(crate) struct Hit {
    pub(crate) held: Arc<Held>,
    pub(crate) now_ms: u64,
}

struct Slot {
    hash: u64,
    key: Box<str>,
    held: Arc<Held>,
    /// Served only while the coarse clock is below this.
    expires_ms: u64,
    /// Coarse clock at the last read, for eviction.
    last_used: AtomicU64,
    /// Set when a decorated call filled it: hits find it through this.
    alias: Option<Alias>,
}

impl Slot {
    /// The key, the ident, the bytes, and as much again for the decoded copy hits may keep.
    fn weight(&self) -> u64 {
        let ident = self.alias.as_ref().map_or(0, |a| a.args.len());
        (self.key.len() + ident + 2 * self.held.bytes.len()) as u64
    }

    /// (ident hash, key hash): the alias that leads to this entry.
    fn alias_pair(&self) -> Option<(u64, u64)> {
        self.alias.as_ref().map(|a| (a.hash, self.hash))
    }
}

/// One shard: entries densely in `slots` (O(1) random sampling), `index` from hash to
/// position. Invariant: `index[h] == i` exactly when `slots[i].hash == h`. `aliases`: from
/// the hash of an [`Ident`] (whose shard this is) to the hash of its entry's key (in any
/// shard).
struct Table {
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    aliases: HashMap<u64, AliasTo, BuildHasherDefault<PassThrough>>,
    slots: Vec<Slot>,
    bytes: u64,
    /// xorshift state for sampling (never zero).
    rng: u64,
}

impl Table {
    fn find(&self, hash: u64, key: &str) -> Option<&Slot> {
        let slot = self.slots.get(*self.index.get(&hash)?)?;
        (&*slot.key == key).then_some(slot)
    }

    fn remove_at(&mut self, i: usize) -> Option<Slot> {
        if i >= self.slots.len() {
            return None;
        }
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.hash);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.hash, i);
        }
        self.bytes = self.bytes.saturating_sub(slot.weight());
        Some(slot)
    }

    fn remove_key(&mut self, hash: u64, key: &str) -> Option<Slot> {
        let i = *self.index.get(&hash)?;
        if self.slots.get(i).is_some_and(|s| &*s.key == key) {
            self.remove_at(i)
        } else {
            None
        }
    }

    /// Removes every entry whose key matches; returns them to be dropped after unlocking.
    fn remove_matching(&mut self, predicate: impl Fn(&str) -> bool) -> Vec<Slot> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots.get(i).is_some_and(|s| predicate(&s.key)) {
                removed.extend(self.remove_at(i));
            } else {
                i += 1;
            }
        }
        removed
    }

    fn clear(&mut self) -> Vec<Slot> {
        self.index.clear();
        self.bytes = 0;
        std::mem::take(&mut self.slots)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for picking eviction samples.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// An expired entry among the sampled ones, else the least recently used of them.
    fn victim(&mut self, now: u64) -> Option<usize> {
        let n = self.slots.len();
        let mut best: Option<(usize, u64)> = None;
        for k in 0..SAMPLES.min(n) {
            // Small shards are scanned whole, larger ones sampled.
            let i = if n <= SAMPLES {
                k
            } else {
                (self.next_random() % n as u64) as usize
            };
            let slot = self.slots.get(i)?;
            if slot.expires_ms <= now {
                return Some(i);
            }
            let used = slot.last_used.load(Ordering::Relaxed);
            if best.is_none_or(|(_, b)| used < b) {
                best = Some((i, used));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Inserts (replacing the entry of the same hash), evicting down to the budget.
    /// Returns the entries it displaced (with itself when not kept), to be dropped, and
    /// their aliases given back, after unlocking.
    fn insert(&mut self, slot: Slot, budget: &Budget, now: u64) -> Vec<Slot> {
        let mut out = Vec::new();
        if let Some(&i) = self.index.get(&slot.hash) {
            out.extend(self.remove_at(i));
        }
        let weight = slot.weight();
        if weight > budget.bytes || budget.entries == 0 {
            out.push(slot);
            return out;
        }
        while self.slots.len() as u64 >= budget.entries || self.bytes + weight > budget.bytes {
            match self.victim(now).and_then(|i| self.remove_at(i)) {
                Some(evicted) => out.push(evicted),
                None => {
                    out.push(slot);
                    return out;
                }
            }
        }
        self.index.insert(slot.hash, self.slots.len());
        self.bytes += weight;
        self.slots.push(slot);
        out
    }
}

/// Where an alias leads: the key's hash, and how many entries (and fills under way) use it.
struct AliasTo {
    hash: u64,
    refs: u32,
}

/// Per-shard limits.
struct Budget {
    entries: u64,
    bytes: u64,
}

/// Padded to its own cache lines so locking one shard does not slow its neighbours.
#[repr(align(128))]
struct Shard(RwLock<Table>);

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent in a way that
        // serves wrong data (keys are compared on every hit), so keep going.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct L1 {
    /// Always [`MAX_SHARDS`] (indexing cannot fail); small caches use the first few.
    shards: Box<[Shard; MAX_SHARDS]>,
    /// `shards.len() - 1` (a power of two minus one).
    shard_mask: usize,
    budget: Budget,
    hasher: KeyedHash,
    clock: Arc<Clock>,
    healthy: AtomicBool,
    stripes: [AtomicU64; STRIPES],
    max_ttl: Duration,
    /// A listener feeds this L1 (or is starting).
    listening: AtomicBool,
}

fn stripe(key: &str) -> usize {
    // FNV-1a: cheap, and only spreads keys over stripes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

/// The sequence observed before a Redis read; the fill happens only if it is unchanged.
/// Also the time before the read: Redis' remaining TTL counts from no earlier than that.
pub(crate) struct Ticket {
    seq: u64,
    stripe: usize,
    start_ms: u64,
}

impl L1 {
    pub(crate) fn new(config: &L1Config) -> Self {
        let (max_entries, max_bytes) = (config.max_entries.get(), config.max_bytes.get());
        let wanted = (max_entries / MIN_SHARD_ENTRIES).clamp(1, MAX_SHARDS as u64);
        // Round down to a power of two so the shard is a mask of the hash.
        let shards = 1u64 << (63 - wanted.leading_zeros());
        let state = RandomState::new();
        Self {
            shards: Box::new(std::array::from_fn(|i| {
                Shard(RwLock::new(Table {
                    index: HashMap::default(),
                    aliases: HashMap::default(),
                    slots: Vec::new(),
                    bytes: 0,
                    rng: state.hash_one(i) | 1,
                }))
            })),
            shard_mask: (shards - 1) as usize,
            budget: Budget {
                entries: max_entries / shards,
                bytes: max_bytes / shards,
            },
            hasher: KeyedHash::new(),
            clock: Clock::start(),
            healthy: AtomicBool::new(false),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            max_ttl: config.max_ttl,
            listening: AtomicBool::new(false),
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        // Middle bits: the map uses the low bits for buckets and the top ones for tags.
        &self.shards[(hash >> 32) as usize & self.shard_mask & (MAX_SHARDS - 1)]
    }

    /// Whether a listener must be started (true once, until it ends). A plain load first:
    /// this runs on every read, and a swap would bounce the cache line.
    pub(crate) fn needs_listener(&self) -> bool {
        !self.listening.load(Ordering::Acquire) && !self.listening.swap(true, Ordering::AcqRel)
    }

    /// Whether L1 may serve: the invalidation channel is up.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Hit> {
        if !self.is_healthy() {
            return None;
        }
        let hash = self.hasher.hash(key.as_bytes());
        let table = self.shard(hash).read();
        self.serve(table.find(hash, key)?)
    }

    /// The entry a decorated call filled with `ident` (see [`Ident`]).
    pub(crate) fn get_by(&self, ident: &Ident<'_>) -> Option<Hit> {
        if !self.is_healthy() {
            return None;
        }
        let alias = self.hasher.hash_tagged(ident.site as u64, ident.args);
        // One lock at a time: the alias's shard, then the entry's.
        let hash = self.shard(alias).read().aliases.get(&alias)?.hash;
        let table = self.shard(hash).read();
        let slot = table.slots.get(*table.index.get(&hash)?)?;
        if !slot.alias.as_ref().is_some_and(|a| a.is(ident)) {
            return None;
        }
        self.serve(slot)
    }

    /// A hit of `slot`, unless it expired.
    #[inline]
    fn serve(&self, slot: &Slot) -> Option<Hit> {
        let now = self.clock.coarse_ms();
        if now >= slot.expires_ms {
            // Left for eviction to reclaim: removing needs the write lock.
            return None;
        }
        // Skip the store when unchanged: keeps a hot entry's cache line shared.
        if slot.last_used.load(Ordering::Relaxed) != now {
            slot.last_used.store(now, Ordering::Relaxed);
        }
        Some(Hit {
            held: Arc::clone(&slot.held),
            now_ms: now,
        })
    }

    /// Keeps `value`, just decoded from `hit`'s bytes, for the entry's later hits (the
    /// first copy kept wins; it is dropped with the entry).
    pub(crate) fn keep(&self, hit: &Hit, value: Kept, fresh_until: Option<u64>) {
        // Less the millisecond truncation of both clocks ([`LEAD_MS`]): never served as
        // fresh after `fresh_until`, at worst 2 ms early.
        let fresh_ms = fresh_until.map(|until| {
            let left = until.saturating_sub(unix_ms()).saturating_sub(LEAD_MS);
            self.clock.precise_ms().saturating_add(left)
        });
        let _ = hit.held.decoded.set(Decoded {
            value,
            fresh_until,
            fresh_ms,
        });
    }

    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let i = stripe(key);
        Ticket {
            seq: self.stripes[i].load(Ordering::Acquire),
            stripe: i,
            // Precise: this is on the miss path, next to a Redis round trip.
            start_ms: self.clock.precise_ms(),
        }
    }

    /// Fills from a Redis read, unless an invalidation arrived since `ticket` or the
    /// channel is down; `ident`: the decorated call that read it, whose later hits find the
    /// entry by it.
    pub(crate) fn fill(
        &self,
        key: &str,
        bytes: Arc<[u8]>,
        redis_ttl: Duration,
        ticket: &Ticket,
        ident: Option<Ident<'_>>,
    ) {
        if !self.is_healthy() || redis_ttl.is_zero() {
            return;
        }
        let ttl_ms = u64::try_from(redis_ttl.min(self.max_ttl).as_millis()).unwrap_or(u64::MAX);
        let Some(life_ms) = ttl_ms.checked_sub(LEAD_MS).filter(|l| *l > 0) else {
            return;
        };
        let hash = self.hasher.hash(key.as_bytes());
        let now = self.clock.coarse_ms();
        let slot = Slot {
            hash,
            key: key.into(),
            held: Arc::new(Held {
                bytes,
                decoded: OnceLock::new(),
            }),
            expires_ms: ticket.start_ms.saturating_add(life_ms),
            last_used: AtomicU64::new(now),
            alias: ident.map(|i| Alias {
                hash: self.hasher.hash_tagged(i.site as u64, i.args),
                site: i.site,
                args: i.args.into(),
            }),
        };
        // The alias first: whatever removes the entry later finds it and gives it back.
        if let Some((alias, hash)) = slot.alias_pair() {
            let mut table = self.shard(alias).write();
            let to = table
                .aliases
                .entry(alias)
                .or_insert(AliasTo { hash, refs: 0 });
            if to.hash != hash {
                // Two idents with one hash: the newer wins (the older entry's calls miss).
                *to = AliasTo { hash, refs: 0 };
            }
            to.refs += 1;
        }
        let mut table = self.shard(hash).write();
        // Checked under the shard lock: an invalidation bumps the stripe *before* taking
        // this lock to remove, so either we see the bump here, or its removal runs after
        // our insert and drops it.
        if self.stripes[ticket.stripe].load(Ordering::Acquire) != ticket.seq {
            drop(table);
            self.forget(&[slot]);
            return;
        }
        let out = table.insert(slot, &self.budget, now);
        drop(table);
        self.forget(&out);
    }

    /// Gives back the aliases of entries that are gone (or were not kept); an alias no
    /// entry uses any more is dropped. Called without any shard lock held.
    fn forget(&self, gone: &[Slot]) {
        for (alias, hash) in gone.iter().filter_map(Slot::alias_pair) {
            let mut table = self.shard(alias).write();
            // Only if it still leads to that entry (else a colliding ident took it over).
            if let Some(to) = table.aliases.get_mut(&alias).filter(|to| to.hash == hash) {
                to.refs -= 1;
                if to.refs == 0 {
                    table.aliases.remove(&alias);
                }
            }
        }
    }

    pub(crate) fn invalidate_key(&self, key: &str) {
        self.stripes[stripe(key)].fetch_add(1, Ordering::AcqRel);
        let hash = self.hasher.hash(key.as_bytes());
        let removed = self.shard(hash).write().remove_key(hash, key);
        if let Some(slot) = removed {
            self.forget(&[slot]);
        }
    }

    pub(crate) fn invalidate_prefix(&self, prefix: &str) {
        self.invalidate_matching_ref(&|k: &str| k.starts_with(prefix));
    }

    pub(crate) fn invalidate_matching(&self, predicate: impl Fn(&str) -> bool) {
        self.invalidate_matching_ref(&predicate);
    }

    fn invalidate_matching_ref(&self, predicate: &dyn Fn(&str) -> bool) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
        for shard in &*self.shards {
            let removed = shard.write().remove_matching(predicate);
            // Values are freed outside the lock.
            self.forget(&removed);
        }
    }

    fn invalidate_all(&self) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
        for shard in &*self.shards {
            let removed = shard.write().clear();
            self.forget(&removed);
        }
    }

    /// Entries and bytes held (tests, and the `cache_l1_*` gauges).
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) fn usage(&self) -> (usize, u64) {
        self.shards.iter().fold((0, 0), |(n, b), s| {
            let t = s.read();
            (n + t.slots.len(), b + t.bytes)
        })
    }
}

impl Sink for L1 {
    fn up(&self) {
        self.invalidate_all();
        self.healthy.store(true, Ordering::Release);
    }

    fn down(&self) {
        self.healthy.store(false, Ordering::Release);
        self.invalidate_all();
    }

    fn invalidate(&self, what: Invalidated<'_>) {
        match what {
            Invalidated::Key(key) => self.invalidate_key(key),
            Invalidated::Prefix(prefix) => self.invalidate_prefix(prefix),
            Invalidated::All => self.invalidate_all(),
        }
    }

    fn ended(&self) {
        self.listening.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;

    fn healthy_with(config: &L1Config) -> L1 {
        let l1 = L1::new(config);
        l1.healthy.store(true, Ordering::Release);
        l1
    }

    fn healthy() -> L1 {
        healthy_with(&L1Config::default())
    }

    fn put(l1: &L1, key: &str, value: &[u8], ttl: Duration) {
        let t = l1.ticket(key);
        l1.fill(key, Arc::from(value), ttl, &t, None);
    }

    const SITE: usize = 0x1000;

    fn put_by(l1: &L1, key: &str, args: &[u8], value: &[u8]) {
        let t = l1.ticket(key);
        let ident = Ident { site: SITE, args };
        l1.fill(
            key,
            Arc::from(value),
            Duration::from_secs(60),
            &t,
            Some(ident),
        );
    }

    fn by(l1: &L1, site: usize, args: &[u8]) -> Option<Vec<u8>> {
        l1.get_by(&Ident { site, args })
            .map(|hit| hit.held.bytes.to_vec())
    }

    /// Every alias leads to an entry holding its ident, and every entry with an ident has
    /// its alias (no lost or leaked aliases).
    fn aliases_agree(l1: &L1) {
        let mut aliased = 0;
        for shard in l1.shards.iter() {
            let t = shard.read();
            assert_eq!(t.index.len(), t.slots.len());
            for (alias, to) in &t.aliases {
                let owner = l1.shards.iter().find_map(|s| {
                    let s = s.read();
                    let slot = s.slots.get(*s.index.get(&to.hash)?)?;
                    Some(slot.alias.as_ref()?.hash == *alias)
                });
                assert_eq!(owner, Some(true), "alias {alias:x} leads nowhere");
                assert_eq!(to.refs, 1, "one entry per alias once fills are done");
            }
            aliased += t.slots.iter().filter(|s| s.alias.is_some()).count();
        }
        let aliases: usize = l1.shards.iter().map(|s| s.read().aliases.len()).sum();
        assert_eq!(aliases, aliased, "one alias per entry filled by a call");
    }

    #[test]
    fn a_call_finds_its_entry_by_ident_and_only_its_own() {
        let l1 = healthy();
        put_by(&l1, "p:f:aa", b"args-1", b"one");
        put_by(&l1, "p:f:bb", b"args-2", b"two");
        assert_eq!(by(&l1, SITE, b"args-1").as_deref(), Some(&b"one"[..]));
        assert_eq!(by(&l1, SITE, b"args-2").as_deref(), Some(&b"two"[..]));
        assert!(by(&l1, SITE, b"args-3").is_none());
        assert!(by(&l1, SITE + 8, b"args-1").is_none(), "another site");
        assert!(
            by(&l1, SITE, b"args-").is_none(),
            "a prefix of the arguments"
        );
        // The key still finds it (invalidation, manual reads).
        assert_eq!(l1.get("p:f:aa").unwrap().held.bytes[..], b"one"[..]);
        // A fill without an ident adds no alias: two, for the two calls' entries.
        put(&l1, "p:g:cc", b"three", Duration::from_secs(60));
        let aliases: usize = l1.shards.iter().map(|s| s.read().aliases.len()).sum();
        assert_eq!(aliases, 2);
        aliases_agree(&l1);
        l1.healthy.store(false, Ordering::Release);
        assert!(
            by(&l1, SITE, b"args-1").is_none(),
            "not while the stream is down"
        );
    }

    #[test]
    fn invalidation_by_key_prefix_or_flush_reaches_entries_found_by_ident() {
        let l1 = healthy();
        put_by(&l1, "p:a:1", b"1", b"v");
        put_by(&l1, "p:a:2", b"2", b"v");
        put_by(&l1, "p:b:3", b"3", b"v");
        l1.invalidate(Invalidated::Key("p:a:1"));
        assert!(by(&l1, SITE, b"1").is_none());
        aliases_agree(&l1);
        l1.invalidate(Invalidated::Prefix("p:a:"));
        assert!(by(&l1, SITE, b"2").is_none());
        assert!(by(&l1, SITE, b"3").is_some());
        aliases_agree(&l1);
        l1.invalidate(Invalidated::All);
        assert!(by(&l1, SITE, b"3").is_none());
        aliases_agree(&l1);
        assert_eq!(l1.usage(), (0, 0));
    }

    #[test]
    fn refills_replacements_and_raced_fills_keep_one_alias_per_entry() {
        let l1 = healthy();
        put_by(&l1, "k", b"x", b"old");
        put_by(&l1, "k", b"x", b"new");
        assert_eq!(by(&l1, SITE, b"x").as_deref(), Some(&b"new"[..]));
        aliases_agree(&l1);
        // The key refilled without an ident (a manual read): the ident no longer finds it.
        put(&l1, "k", b"manual", Duration::from_secs(60));
        assert!(by(&l1, SITE, b"x").is_none());
        aliases_agree(&l1);
        // A fill that raced an invalidation leaves no alias behind.
        let t = l1.ticket("r");
        l1.invalidate_key("r");
        let ident = Ident {
            site: SITE,
            args: b"r",
        };
        l1.fill(
            "r",
            Arc::from(&b"v"[..]),
            Duration::from_secs(60),
            &t,
            Some(ident),
        );
        assert!(by(&l1, SITE, b"r").is_none());
        aliases_agree(&l1);
        // Nor does one too large to keep.
        let t = l1.ticket("big");
        let huge = vec![0u8; 64 << 20];
        l1.fill(
            "big",
            Arc::from(huge),
            Duration::from_secs(60),
            &t,
            Some(Ident {
                site: SITE,
                args: b"big",
            }),
        );
        assert!(by(&l1, SITE, b"big").is_none());
        aliases_agree(&l1);
    }

    #[test]
    fn eviction_drops_the_aliases_of_evicted_entries() {
        let config = L1Config {
            max_entries: NonZeroU64::new(64).unwrap(),
            ..L1Config::default()
        };
        let l1 = healthy_with(&config);
        for i in 0..1_000u32 {
            put_by(&l1, &format!("key:{i}"), &i.to_le_bytes(), b"v");
        }
        assert!(l1.usage().0 <= 64);
        aliases_agree(&l1);
        assert!(
            by(&l1, SITE, &999u32.to_le_bytes()).is_some(),
            "the newest is kept"
        );
    }

    #[test]
    fn serves_only_while_healthy() {
        let l1 = healthy();
        let t = l1.ticket("k");
        l1.fill("k", Arc::from(&b"v"[..]), Duration::from_secs(5), &t, None);
        assert!(l1.get("k").is_some());
        l1.healthy.store(false, Ordering::Release);
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn a_kept_copy_goes_with_its_entry_and_knows_its_logical_expiry() {
        let l1 = healthy();
        put(&l1, "k", b"v", Duration::from_secs(5));
        let hit = l1.get("k").unwrap();
        assert!(
            hit.held.decoded().is_none(),
            "nothing kept before a hit keeps it"
        );
        let fresh_until = unix_ms() + 60_000;
        l1.keep(&hit, Box::new(7u32), Some(fresh_until));
        let again = l1.get("k").unwrap();
        let kept = again.held.decoded().unwrap();
        assert_eq!(kept.value.downcast_ref::<u32>(), Some(&7));
        assert_eq!(kept.fresh_until, Some(fresh_until));
        assert!(!kept.stale_at(again.now_ms));
        assert!(kept.stale_at(again.now_ms + 61_000));
        // The first copy kept wins.
        l1.keep(&again, Box::new(8u32), None);
        let kept = l1.get("k").unwrap();
        assert_eq!(
            kept.held.decoded().unwrap().value.downcast_ref::<u32>(),
            Some(&7)
        );
        // Past its logical expiry already when kept: stale at once.
        put(&l1, "old", b"v", Duration::from_secs(5));
        let old = l1.get("old").unwrap();
        l1.keep(&old, Box::new(1u32), Some(unix_ms().saturating_sub(1)));
        let old = l1.get("old").unwrap();
        assert!(old.held.decoded().unwrap().stale_at(old.now_ms));
        // A new fill of the key starts without a copy.
        l1.invalidate_key("k");
        put(&l1, "k", b"w", Duration::from_secs(5));
        assert!(l1.get("k").unwrap().held.decoded().is_none());
    }

    #[test]
    fn a_read_that_raced_an_invalidation_does_not_fill() {
        let l1 = healthy();
        let t = l1.ticket("k");
        l1.invalidate(Invalidated::Key("k"));
        l1.fill(
            "k",
            Arc::from(&b"old"[..]),
            Duration::from_secs(5),
            &t,
            None,
        );
        assert!(l1.get("k").is_none());
    }

    /// The race of a foreign write with a fill: the read took its ticket, Redis answered
    /// with the old value, then the write's invalidation was applied before the fill. A
    /// flush (`All`) and a stream that went down and came back (invalidations may have
    /// been missed meanwhile) stop such a fill too; a read that starts afterwards fills.
    #[test]
    fn a_fill_older_than_an_invalidation_it_raced_is_dropped() {
        let l1 = healthy();
        let old = |l1: &L1, t: &Ticket| {
            l1.fill("k", Arc::from(&b"old"[..]), Duration::from_secs(5), t, None)
        };
        let t = l1.ticket("k");
        l1.invalidate(Invalidated::All);
        old(&l1, &t);
        assert!(l1.get("k").is_none(), "filled across a flush");
        let t = l1.ticket("k");
        l1.down();
        l1.up();
        old(&l1, &t);
        assert!(l1.get("k").is_none(), "filled across a reconnect");
        // A read that starts afterwards fills.
        let t = l1.ticket("k");
        old(&l1, &t);
        assert!(l1.get("k").is_some());
    }

    #[test]
    fn messages_invalidate_keys_and_prefixes() {
        let l1 = healthy();
        for k in ["p:a:1", "p:a:2", "p:b:1"] {
            let t = l1.ticket(k);
            l1.fill(k, Arc::from(&b"v"[..]), Duration::from_secs(5), &t, None);
        }
        l1.invalidate(Invalidated::Key("p:a:1"));
        assert!(l1.get("p:a:1").is_none());
        assert!(l1.get("p:a:2").is_some());
        l1.invalidate(Invalidated::Prefix("p:a:"));
        assert!(l1.get("p:a:2").is_none());
        assert!(l1.get("p:b:1").is_some());
        l1.invalidate_matching(|k| k.ends_with(":1"));
        assert!(l1.get("p:b:1").is_none());
        assert_eq!(l1.usage(), (0, 0));
    }

    #[test]
    fn never_longer_than_redis() {
        let l1 = healthy();
        let t = l1.ticket("k");
        l1.fill(
            "k",
            Arc::from(&b"v"[..]),
            Duration::from_millis(20),
            &t,
            None,
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn expiry_is_never_served_late() {
        let l1 = healthy();
        let ttl = Duration::from_millis(80);
        for round in 0..5 {
            let key = format!("k{round}");
            put(&l1, &key, b"v", ttl);
            // After the fill: its deadline is at or before `start + ttl`.
            let start = Instant::now();
            assert!(l1.get(&key).is_some(), "filled");
            loop {
                // Measured before the read: a read that serves checked the deadline at or
                // after this instant, so a late serve shows here however the thread is
                // scheduled (measuring after the read failed when preempted in between).
                let before = start.elapsed();
                if l1.get(&key).is_none() {
                    break;
                }
                assert!(before < ttl, "served {before:?} after a {ttl:?} TTL");
            }
        }
    }

    #[test]
    fn the_cap_on_ttl_applies() {
        let config = L1Config {
            max_ttl: Duration::from_millis(40),
            ..L1Config::default()
        };
        let l1 = healthy_with(&config);
        put(&l1, "k", b"v", Duration::from_secs(60));
        assert!(l1.get("k").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn evicts_the_least_recently_used_by_entries() {
        let config = L1Config {
            max_entries: NonZeroU64::new(4).unwrap(),
            ..L1Config::default()
        };
        let l1 = healthy_with(&config);
        // Distinct millisecond stamps.
        let next_ms = || {
            let t = l1.clock.coarse_ms();
            while l1.clock.coarse_ms() == t {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        for k in ["a", "b", "c", "d"] {
            put(&l1, k, b"v", Duration::from_secs(60));
            next_ms();
        }
        assert!(l1.get("a").is_some(), "a is now the most recently used");
        next_ms();
        put(&l1, "e", b"v", Duration::from_secs(60));
        assert_eq!(l1.usage().0, 4);
        assert!(l1.get("b").is_none(), "b was the least recently used");
        for k in ["a", "c", "d", "e"] {
            assert!(l1.get(k).is_some(), "{k} kept");
        }
        for i in 0..100 {
            put(&l1, &format!("x{i}"), b"v", Duration::from_secs(60));
            assert!(l1.usage().0 <= 4);
        }
    }

    #[test]
    fn evicts_by_bytes() {
        let config = L1Config {
            max_entries: NonZeroU64::new(100).unwrap(),
            max_bytes: NonZeroU64::new(100).unwrap(),
            ..L1Config::default()
        };
        let l1 = healthy_with(&config);
        // 2 bytes of key + 15 of value, counted twice (room for a decoded copy): three
        // fit in 100.
        for i in 0..10 {
            put(&l1, &format!("k{i}"), &[0u8; 15], Duration::from_secs(60));
            let (n, bytes) = l1.usage();
            assert!(bytes <= 100 && n <= 3, "{n} entries, {bytes} bytes");
        }
        assert_eq!(l1.usage(), (3, 96));
        assert!(l1.get("k9").is_some(), "the newest is kept");
        // Larger than the whole budget: not kept, and the old value of the key goes too.
        put(&l1, "k9", &[0u8; 200], Duration::from_secs(60));
        assert!(l1.get("k9").is_none());
        assert_eq!(l1.usage(), (2, 64));
    }

    #[test]
    fn budgets_hold_across_shards() {
        let config = L1Config {
            max_entries: NonZeroU64::new(10_000).unwrap(),
            max_bytes: NonZeroU64::new(64 * 1024).unwrap(),
            ..L1Config::default()
        };
        let l1 = healthy_with(&config);
        for i in 0..20_000 {
            put(
                &l1,
                &format!("key:{i}"),
                &[0u8; 10],
                Duration::from_secs(60),
            );
        }
        let (n, bytes) = l1.usage();
        assert!(
            n <= 10_000 && bytes <= 64 * 1024,
            "{n} entries, {bytes} bytes"
        );
        assert!(n > 1_000, "budget mostly used: {n}");
    }

    #[test]
    fn concurrent_gets_and_fills_stay_bounded() {
        let config = L1Config {
            max_entries: NonZeroU64::new(256).unwrap(),
            max_bytes: NonZeroU64::new(16 * 1024).unwrap(),
            ..L1Config::default()
        };
        let l1 = Arc::new(healthy_with(&config));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l1 = Arc::clone(&l1);
                std::thread::spawn(move || {
                    let mut hits = 0u32;
                    for i in 0..20_000u32 {
                        let key = format!("k{}", (i * 7 + t * 13) % 1000);
                        match i % 5 {
                            0 if i % 2 == 0 => put_by(&l1, &key, key.as_bytes(), &[t as u8; 40]),
                            0 => put(&l1, &key, &[t as u8; 40], Duration::from_secs(60)),
                            3 => hits += u32::from(by(&l1, SITE, key.as_bytes()).is_some()),
                            1 if i % 1000 == 1 => l1.invalidate_prefix("k1"),
                            2 if i % 97 == 2 => l1.invalidate_key(&key),
                            _ => hits += u32::from(l1.get(&key).is_some()),
                        }
                    }
                    hits
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        let (n, bytes) = l1.usage();
        assert!(n <= 256 && bytes <= 16 * 1024, "{n} entries, {bytes} bytes");
        // Index and slots agree.
        for shard in l1.shards.iter() {
            let t = shard.read();
            assert_eq!(t.index.len(), t.slots.len());
            for (i, s) in t.slots.iter().enumerate() {
                assert_eq!(t.index.get(&s.hash), Some(&i));
            }
            assert_eq!(t.bytes, t.slots.iter().map(Slot::weight).sum::<u64>());
        }
        aliases_agree(&l1);
    }

    #[test]
    fn the_hash_depends_on_the_seed_and_every_byte() {
        let (a, b) = (KeyedHash::new(), KeyedHash::new());
        assert_ne!(a.hash(b"user:1"), b.hash(b"user:1"));
        let keys = [
            "",
            "a",
            "a\0",
            "user:1",
            "user:2",
            "0123456789abcdef",
            "0123456789abcdefX",
        ];
        let hashes: std::collections::HashSet<u64> =
            keys.iter().map(|k| a.hash(k.as_bytes())).collect();
        assert_eq!(hashes.len(), keys.len());
    }
}
