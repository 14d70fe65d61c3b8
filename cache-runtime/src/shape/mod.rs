//! Shape-aware identity: the structure of a cached value's type (field names and order,
//! field types, enum variants, recursively) is part of what identifies an entry, so a value
//! written by a build whose type had another shape is a miss, never decoded into the new
//! type (where bincode would read bid as ask, or the bits of an f64 as a u64).
//!
//! How: `tracer.rs` runs the type's own `Deserialize` against a deserializer that records
//! what it asks for, once per type and process (a few µs); `graph.rs` encodes that graph
//! canonically, without type names, `TypeId`s or addresses, so the digest is the same in
//! every build of the same shape (compiler, build directory, crate order, module moves
//! change nothing) and changes exactly when the decoded layout changes. It is folded into a
//! decorated function's key (`SiteShapes`, one atomic load per call) and recorded in every
//! value's envelope (checked on every read, manual operations included).
//!
//! Types whose shape depends on the data cannot be traced: untagged, internally or
//! adjacently tagged enums, `#[serde(flatten)]`, a `Deserialize` that rejects every probe
//! value. They fall back to their type name (`std::any::type_name`), with a warning logged
//! once: a shape change of such a type is not detected (bump the function's `version`).

mod graph;
mod tracer;

use std::any::TypeId;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{OnceLock, RwLock};

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;

/// A 32-byte digest.
pub(crate) type Digest = [u8; 32];

/// How a type's shape was determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeSource {
    /// Traced from its `Deserialize`: changes exactly when the decoded layout changes.
    Traced,
    /// Its type name: the type could not be traced, so shape changes are not detected.
    TypeName,
}

/// The shape of one type, as recorded in keys and envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) digest: Digest,
    pub(crate) source: ShapeSource,
    /// The type is an integer (it is stored as a plain Redis integer, which `INCRBY` takes).
    pub(crate) integer: bool,
    /// The shape is part of the key too (decorated calls), so bytes without a shape tag
    /// (`json-plain`) need no further check.
    pub(crate) in_key: bool,
}

impl Shape {
    /// The 8 bytes recorded in a value's envelope.
    pub(crate) fn tag(&self) -> [u8; 8] {
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&self.digest[..8]);
        tag
    }

    /// `site_key` and this shape as one key for the argument hash of a decorated call.
    pub(crate) fn combine(&self, site_key: &Digest) -> Digest {
        let mut h = blake3::Hasher::new_keyed(site_key);
        h.update(&[self.source as u8]);
        h.update(&self.digest);
        *h.finalize().as_bytes()
    }
}

/// Every type traced so far. Read-mostly: copy-on-write.
static SHAPES: OnceLock<ArcSwap<HashMap<TypeId, Shape>>> = OnceLock::new();

/// The shape of `T`, traced once per process.
pub(crate) fn shape_of<T: DeserializeOwned>() -> Shape {
    let map = SHAPES.get_or_init(ArcSwap::default);
    let id = typeid::of::<T>();
    if let Some(shape) = map.load().get(&id) {
        return *shape;
    }
    let (shape, why) = compute::<T>();
    let mut inserted = false;
    map.rcu(|m| {
        let mut next = HashMap::clone(m);
        inserted = !next.contains_key(&id);
        next.entry(id).or_insert(shape);
        next
    });
    if let (true, Some(why)) = (inserted, why) {
        tracing::warn!(
            target: "cache_runtime::store",
            r#type = std::any::type_name::<T>(),
            reason = %why,
            "the shape of this cached type cannot be traced: its entries are identified by its type name, so a change of its fields is NOT detected; bump the function's `version` when you change it"
        );
    }
    map.load().get(&id).copied().unwrap_or(shape)
}

fn compute<T: DeserializeOwned>() -> (Shape, Option<String>) {
    // Inline on the caller's thread (a few µs); the tracer bounds its depth, and a
    // Deserialize that panics on made-up values is caught.
    let config = tracer::Config {
        human_readable: false,
    };
    let traced = catch_unwind(AssertUnwindSafe(|| tracer::trace_shape::<T>(config)));
    match traced {
        Ok(Ok((digest, integer))) => (
            Shape {
                digest,
                source: ShapeSource::Traced,
                integer,
                in_key: false,
            },
            None,
        ),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "its Deserialize panicked on a made-up value".to_owned(),
            };
            let mut h = blake3::Hasher::new_derive_key("cache-runtime shape v1 type_name");
            h.update(std::any::type_name::<T>().as_bytes());
            let shape = Shape {
                digest: *h.finalize().as_bytes(),
                source: ShapeSource::TypeName,
                integer: false,
                in_key: false,
            };
            (shape, Some(why))
        }
    }
}

/// Logs, once per type, that a value was written for another shape of it.
pub(crate) fn warn_mismatch_once<T: DeserializeOwned>(key: &str) {
    static WARNED: OnceLock<RwLock<std::collections::HashSet<TypeId>>> = OnceLock::new();
    let warned = WARNED.get_or_init(RwLock::default);
    let id = typeid::of::<T>();
    if warned
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&id)
    {
        return;
    }
    if warned
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id)
    {
        tracing::warn!(
            target: "cache_runtime::store",
            key,
            r#type = std::any::type_name::<T>(),
            "a cached value was written for another shape of this type (another build, or another type at the same key): treated as a miss and overwritten (logged once per type; see the shape_mismatches counter)"
        );
    }
}

/// The key of a decorated call's argument hash and the envelope tag, per stored type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Keyed {
    pub(crate) key: Digest,
    pub(crate) shape: Shape,
}

/// Lives in a decorated function's `Site` (a static). A static in a generic function is
/// shared by all its instantiations, so each slot remembers which type it holds: a
/// non-generic site uses slot 0 forever (one acquire load per call), a generic one up to
/// [`SLOTS`] instantiations without a lock, then a global map.
pub(crate) struct SiteShapes {
    slots: [OnceLock<(TypeId, Keyed)>; SLOTS],
}

const SLOTS: usize = 4;

impl SiteShapes {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [const { OnceLock::new() }; SLOTS],
        }
    }

    /// The key and shape for a call storing a `T`.
    #[inline]
    pub(crate) fn keyed<T: DeserializeOwned>(&self, site_key: &Digest) -> &Keyed {
        let id = typeid::of::<T>();
        for slot in &self.slots {
            match slot.get() {
                Some((held, keyed)) if *held == id => return keyed,
                Some(_) => continue,
                None => break,
            }
        }
        self.slow::<T>(id, site_key)
    }

    #[cold]
    #[inline(never)]
    fn slow<T: DeserializeOwned>(&self, id: TypeId, site_key: &Digest) -> &Keyed {
        let make = || {
            let shape = Shape {
                in_key: true,
                ..shape_of::<T>()
            };
            Keyed {
                key: shape.combine(site_key),
                shape,
            }
        };
        for slot in &self.slots {
            let (held, keyed) = slot.get_or_init(|| (id, make()));
            if *held == id {
                return keyed;
            }
        }
        // More instantiations of one generic site than slots: one leaked entry per
        // (site, type), at most once each (bounded by the program's instantiations).
        type More = RwLock<HashMap<(usize, TypeId), &'static Keyed>>;
        static MORE: OnceLock<More> = OnceLock::new();
        let more = MORE.get_or_init(More::default);
        let k = (std::ptr::from_ref(self) as usize, id);
        if let Some(keyed) = more
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&k)
        {
            return keyed;
        }
        let keyed = make();
        more.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(k)
            .or_insert_with(|| Box::leak(Box::new(keyed)))
    }
}

#[cfg(test)]
mod tests;
