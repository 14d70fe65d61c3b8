//! A tracing `Deserializer`: it runs a type's real `Deserialize` against made-up values
//! and records what it asks for (fields, variants, primitives), into a [`Graph`].
//!
//! Unlike serde-reflection:
//! - containers are keyed by the exact type (`typeid::of::<V::Value>()`, works for
//!   non-`'static` types too), not by their unqualified name: `W<u32>` and `W<String>` in
//!   one type, or two `Px` from different modules, are distinct containers;
//! - nested enums are explored automatically (the root is re-traced until every reachable
//!   variant has been seen), no per-enum `trace_type` calls or samples;
//! - recursion is detected by type (on the walk stack) and cut in a "quiet" mode (options
//!   `None`, empty sequences/maps); a recursive first variant is escaped by retrying;
//! - values rejected by a validating `Deserialize` (NonZero, chrono, uuid, `try_from`...)
//!   are retried with the next "probe" value for the primitive that failed (or the last
//!   primitive before a container-level error). No samples are needed.
//! - unsupported: anything built on `deserialize_any` / `deserialize_identifier` /
//!   `deserialize_ignored_any` (untagged / internally or adjacently tagged enums,
//!   `flatten`, `serde_json::Value`): those get a clear error and the caller falls back.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{
    self, value::U32Deserializer, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};
use serde::Deserialize;

use super::graph::{self, Body, Container, Digest, Graph, Node, Prim, Variant};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TraceError {
    Unsupported(&'static str),
    Custom(String),
    Depth,
    Stuck(String),
    Encode(graph::EncodeError),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "not traceable: uses {what}"),
            Self::Custom(m) => write!(f, "Deserialize rejected every probe value: {m}"),
            Self::Depth => write!(f, "recursion without a base case"),
            Self::Stuck(m) => write!(f, "tracing made no progress: {m}"),
            Self::Encode(e) => write!(f, "incomplete shape: {e:?}"),
        }
    }
}
impl std::error::Error for TraceError {}
impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }
}

type R<T> = Result<T, TraceError>;

const MAX_DEPTH: u32 = 128;
const MAX_PASSES: u32 = 512;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Config {
    /// `serde_json` is human-readable, bincode is not: some types (uuid, IpAddr,
    /// chrono-in-some-modes) change representation with it.
    pub(crate) human_readable: bool,
}

#[derive(Default)]
struct Tracer {
    g: Graph,
    complete: HashSet<TypeId>,
    stack: Vec<TypeId>,
    quiet: u32,
    depth: u32,
    hr: bool,
    /// What `deserialize_any` feeds: 0 = unit (tracing), 1.. = verification (see `trace`).
    any_probe: u8,
    saw_any_ever: bool,
    pass: u32,
    progress: bool,
    // probe values: primitive visit number in a pass -> probe index
    prim_seq: u32,
    prim_lens: Vec<u8>,
    probes: HashMap<u32, usize>,
    failed_prim: Option<u32>,
    container_failures: u32,
    /// An enum's variant identifier rejected this index: VARIANTS had aliases.
    variant_oob: Option<(TypeId, usize)>,
    saw_any: bool,
    // recursion escape: enum -> variant to use in quiet mode
    quiet_choice: HashMap<TypeId, usize>,
    quiet_tries: HashMap<TypeId, usize>,
    last_quiet_enum: Option<(TypeId, usize, usize)>,
}

fn refs(n: &Node, out: &mut Vec<TypeId>) {
    match n {
        Node::Unknown | Node::Prim(_) => {}
        Node::Option(i) | Node::Seq(i) => refs(i, out),
        Node::Map(k, v) => {
            refs(k, out);
            refs(v, out)
        }
        Node::Tuple(ns) => ns.iter().for_each(|n| refs(n, out)),
        Node::Container(t) => out.push(*t),
    }
}
fn has_unknown(n: &Node) -> bool {
    match n {
        Node::Unknown => true,
        Node::Prim(_) | Node::Container(_) => false,
        Node::Option(i) | Node::Seq(i) => has_unknown(i),
        Node::Map(k, v) => has_unknown(k) || has_unknown(v),
        Node::Tuple(ns) => ns.iter().any(has_unknown),
    }
}
fn variant_nodes(v: &Variant) -> Vec<&Node> {
    match v {
        Variant::Unit => vec![],
        Variant::Newtype(n) => vec![n],
        Variant::Tuple(ns) => ns.iter().collect(),
        Variant::Struct(fs) => fs.iter().map(|(_, n)| n).collect(),
        Variant::AliasedStruct(_, ns) => ns.iter().collect(),
    }
}
/// (fully traced itself, referenced containers)
fn body_info(b: &Body) -> (bool, Vec<TypeId>) {
    let mut r = Vec::new();
    let nodes: Vec<&Node> = match b {
        Body::UnitStruct => vec![],
        Body::Newtype(n) => vec![n],
        Body::TupleStruct(ns) => ns.iter().collect(),
        Body::Struct(fs) => fs.iter().map(|(_, n)| n).collect(),
        Body::Enum(vs) => {
            let mut all = Vec::new();
            for (_, v) in vs {
                match v {
                    None => return (false, r),
                    Some(v) => all.extend(variant_nodes(v)),
                }
            }
            all
        }
    };
    let traced = !nodes.iter().any(|n| has_unknown(n));
    nodes.iter().for_each(|n| refs(n, &mut r));
    (traced, r)
}

impl Tracer {
    /// Greatest fixpoint: traced containers all of whose references are complete.
    fn compute_complete(&mut self) {
        let info: HashMap<TypeId, (bool, Vec<TypeId>)> = self
            .g
            .containers
            .iter()
            .map(|(k, c)| (*k, body_info(&c.body)))
            .collect();
        let mut set: HashSet<TypeId> = info
            .iter()
            .filter(|(_, (ok, _))| *ok)
            .map(|(t, _)| *t)
            .collect();
        loop {
            let before = set.len();
            set = set
                .iter()
                .copied()
                .filter(|t| info[t].1.iter().all(|r| set.contains(r)))
                .collect();
            if set.len() == before {
                break;
            }
        }
        self.complete = set;
    }

    fn next_prim(&mut self, len: usize) -> (u32, usize) {
        let n = self.prim_seq;
        self.prim_seq += 1;
        self.prim_lens.push(len as u8);
        (n, self.probes.get(&n).copied().unwrap_or(0).min(len - 1))
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(TraceError::Depth);
        }
        Ok(())
    }

    /// Which variant to take when we only need *a* value (recursion, complete enum).
    fn quiet_pick(&self, id: TypeId, vs: Option<&Vec<(String, Option<Variant>)>>) -> usize {
        if let Some(&i) = self.quiet_choice.get(&id) {
            return i;
        }
        let Some(vs) = vs else { return 0 };
        let explored = || {
            vs.iter()
                .enumerate()
                .filter_map(|(i, (_, v))| v.as_ref().map(|v| (i, v)))
        };
        explored()
            .find(|(_, v)| matches!(v, Variant::Unit))
            .or_else(|| {
                explored().find(|(_, v)| {
                    let mut r = Vec::new();
                    variant_nodes(v).iter().for_each(|n| refs(n, &mut r));
                    r.is_empty()
                })
            })
            .or_else(|| explored().next())
            .map_or(0, |(i, _)| i)
    }
}

struct Tr<'a> {
    t: &'a mut Tracer,
    out: &'a mut Node,
}

struct Seq<'a, I> {
    t: &'a mut Tracer,
    slots: I,
}

impl<'de, 'a, I: Iterator<Item = &'a mut Node>> SeqAccess<'de> for Seq<'a, I> {
    type Error = TraceError;
    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> R<Option<S::Value>> {
        match self.slots.next() {
            None => Ok(None),
            Some(out) => seed.deserialize(Tr { t: self.t, out }).map(Some),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        self.slots.size_hint().1
    }
}

impl<'de, 'a, I: Iterator<Item = &'a mut Node>> MapAccess<'de> for Seq<'a, I> {
    type Error = TraceError;
    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> R<Option<S::Value>> {
        self.next_element_seed(seed)
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> R<S::Value> {
        let out = self
            .slots
            .next()
            .ok_or(TraceError::Custom("map value without key".into()))?;
        seed.deserialize(Tr { t: self.t, out })
    }
}

struct Enum<'a> {
    t: &'a mut Tracer,
    id: TypeId,
    idx: usize,
    slot: &'a mut Option<Variant>,
}

impl<'de, 'a> EnumAccess<'de> for Enum<'a> {
    type Error = TraceError;
    type Variant = Self;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> R<(S::Value, Self)> {
        match seed.deserialize(U32Deserializer::<TraceError>::new(self.idx as u32)) {
            Ok(v) => Ok((v, self)),
            Err(e) => {
                self.t.variant_oob = Some((self.id, self.idx));
                Err(e)
            }
        }
    }
}

fn named(fields: &[&str], slots: Vec<Node>) -> Vec<(String, Node)> {
    fields.iter().map(|f| f.to_string()).zip(slots).collect()
}

/// How many leading slots the visitor consumed (the rest are still `Unknown`).
fn consumed(slots: &[Node]) -> usize {
    slots
        .iter()
        .rposition(|n| *n != Node::Unknown)
        .map_or(0, |i| i + 1)
}

impl<'de, 'a> VariantAccess<'de> for Enum<'a> {
    type Error = TraceError;
    fn unit_variant(self) -> R<()> {
        *self.slot = Some(Variant::Unit);
        Ok(())
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> R<S::Value> {
        let mut n = Node::Unknown;
        let v = seed.deserialize(Tr {
            t: self.t,
            out: &mut n,
        })?;
        *self.slot = Some(Variant::Newtype(n));
        Ok(v)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> R<V::Value> {
        let mut slots = vec![Node::Unknown; len];
        let v = visitor.visit_seq(Seq {
            t: self.t,
            slots: slots.iter_mut(),
        })?;
        *self.slot = Some(Variant::Tuple(slots));
        Ok(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        let mut slots = vec![Node::Unknown; fields.len()];
        let v = visitor.visit_seq(Seq {
            t: self.t,
            slots: slots.iter_mut(),
        })?;
        let used = consumed(&slots);
        *self.slot = Some(if used < fields.len() {
            slots.truncate(used);
            Variant::AliasedStruct(fields.iter().map(|f| f.to_string()).collect(), slots)
        } else {
            Variant::Struct(named(fields, slots))
        });
        Ok(v)
    }
}

macro_rules! prim {
    ($($method:ident $visit:ident $prim:ident [$($probe:expr),+];)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            *self.out = Node::Prim(Prim::$prim);
            let probes = [$($probe),+];
            let (n, i) = self.t.next_prim(probes.len());
            let r = visitor.$visit(probes[i].clone());
            if r.is_err() {
                self.t.failed_prim.get_or_insert(n);
            }
            r
        }
    )*};
}

const STR_PROBES: [&str; 8] = [
    "",
    "1970-01-01T00:00:00Z",
    "00000000-0000-0000-0000-000000000000",
    "0.0.0.0",
    "1970-01-01",
    "00:00:00",
    "a",
    "1",
];

impl<'de, 'a> de::Deserializer<'de> for Tr<'a> {
    type Error = TraceError;

    prim! {
        deserialize_bool visit_bool Bool [false, true];
        deserialize_i8 visit_i8 I8 [0, 1];
        deserialize_i16 visit_i16 I16 [0, 1];
        deserialize_i32 visit_i32 I32 [0, 1];
        deserialize_i64 visit_i64 I64 [0, 1];
        deserialize_i128 visit_i128 I128 [0, 1];
        deserialize_u8 visit_u8 U8 [0, 1];
        deserialize_u16 visit_u16 U16 [0, 1];
        deserialize_u32 visit_u32 U32 [0, 1];
        deserialize_u64 visit_u64 U64 [0, 1];
        deserialize_u128 visit_u128 U128 [0, 1];
        deserialize_f32 visit_f32 F32 [0.0, 1.0];
        deserialize_f64 visit_f64 F64 [0.0, 1.0];
        deserialize_char visit_char Char ['a', '0'];
        deserialize_str visit_borrowed_str Str [STR_PROBES[0], STR_PROBES[1], STR_PROBES[2], STR_PROBES[3], STR_PROBES[4], STR_PROBES[5], STR_PROBES[6], STR_PROBES[7]];
        deserialize_bytes visit_borrowed_bytes Bytes [&[][..], &[0u8; 16][..], &[0u8; 32][..]];
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_str(visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_bytes(visitor)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        *self.out = Node::Prim(Prim::Unit);
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.t.enter()?;
        if self.t.quiet > 0 {
            *self.out = Node::Option(Box::new(Node::Unknown));
            self.t.depth -= 1;
            return visitor.visit_none();
        }
        let mut inner = Node::Unknown;
        let v = visitor.visit_some(Tr {
            t: &mut *self.t,
            out: &mut inner,
        })?;
        *self.out = Node::Option(Box::new(inner));
        self.t.depth -= 1;
        Ok(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.t.enter()?;
        let mut inner = Node::Unknown;
        let v = if self.t.quiet > 0 {
            visitor.visit_seq(Seq {
                t: &mut *self.t,
                slots: std::iter::empty(),
            })?
        } else {
            visitor.visit_seq(Seq {
                t: &mut *self.t,
                slots: std::iter::once(&mut inner),
            })?
        };
        *self.out = Node::Seq(Box::new(inner));
        self.t.depth -= 1;
        Ok(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.t.enter()?;
        let (mut k, mut val) = (Node::Unknown, Node::Unknown);
        let v = if self.t.quiet > 0 {
            visitor.visit_map(Seq {
                t: &mut *self.t,
                slots: std::iter::empty(),
            })?
        } else {
            visitor.visit_map(Seq {
                t: &mut *self.t,
                slots: [&mut k, &mut val].into_iter(),
            })?
        };
        *self.out = Node::Map(Box::new(k), Box::new(val));
        self.t.depth -= 1;
        Ok(v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> R<V::Value> {
        self.t.enter()?;
        let mut slots = vec![Node::Unknown; len];
        let v = visitor.visit_seq(Seq {
            t: &mut *self.t,
            slots: slots.iter_mut(),
        })?;
        *self.out = Node::Tuple(slots);
        self.t.depth -= 1;
        Ok(v)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> R<V::Value> {
        let id = typeid::of::<V::Value>();
        *self.out = Node::Container(id);
        if self.t.quiet == 0 {
            self.t.g.containers.insert(
                id,
                Container {
                    name: name.into(),
                    body: Body::UnitStruct,
                    aliases: None,
                },
            );
        }
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> R<V::Value> {
        let id = typeid::of::<V::Value>();
        self.container(
            id,
            name,
            1,
            visitor,
            |t, slots, visitor| {
                let (first, _) = slots.split_first_mut().expect("one slot");
                visitor.visit_newtype_struct(Tr { t, out: first })
            },
            |mut slots| (Body::Newtype(slots.remove(0)), None),
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> R<V::Value> {
        let id = typeid::of::<V::Value>();
        self.container(
            id,
            name,
            len,
            visitor,
            |t, slots, visitor| {
                visitor.visit_seq(Seq {
                    t,
                    slots: slots.iter_mut(),
                })
            },
            |slots| (Body::TupleStruct(slots), None),
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        let id = typeid::of::<V::Value>();
        self.container(
            id,
            name,
            fields.len(),
            visitor,
            |t, slots, visitor| {
                visitor.visit_seq(Seq {
                    t,
                    slots: slots.iter_mut(),
                })
            },
            |mut slots| {
                let used = consumed(&slots);
                if used < fields.len() {
                    slots.truncate(used);
                    let names = fields.iter().map(|f| f.to_string()).collect();
                    (
                        Body::Struct(slots.into_iter().map(|n| (String::new(), n)).collect()),
                        Some(names),
                    )
                } else {
                    (Body::Struct(named(fields, slots)), None)
                }
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        if variants.is_empty() {
            return Err(TraceError::Unsupported("an enum without variants"));
        }
        let id = typeid::of::<V::Value>();
        let key = id;
        *self.out = Node::Container(key);
        let t = self.t;
        t.enter()?;
        if t.quiet == 0 && !t.stack.contains(&id) && !t.complete.contains(&id) {
            let entry = t.g.containers.entry(key).or_insert_with(|| Container {
                name: name.into(),
                body: Body::Enum(variants.iter().map(|v| (v.to_string(), None)).collect()),
                aliases: None,
            });
            let Body::Enum(vs) = &entry.body else {
                return Err(TraceError::Stuck(format!(
                    "{name} is both an enum and a struct"
                )));
            };
            let pick = vs.iter().position(|(_, v)| v.is_none()).or_else(|| {
                // All seen: descend into a variant that still leads to unexplored enums
                // (rotating by pass so every such path is eventually taken).
                let incomplete: Vec<usize> = vs
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, v))| {
                        let mut r = Vec::new();
                        variant_nodes(v.as_ref().unwrap())
                            .iter()
                            .for_each(|n| refs(n, &mut r));
                        r.iter().any(|r| *r != id && !t.complete.contains(r))
                    })
                    .map(|(i, _)| i)
                    .collect();
                (!incomplete.is_empty()).then(|| incomplete[t.pass as usize % incomplete.len()])
            });
            if let Some(idx) = pick {
                t.stack.push(id);
                let mut slot = None;
                let v = visitor.visit_enum(Enum {
                    t: &mut *t,
                    id,
                    idx,
                    slot: &mut slot,
                })?;
                t.stack.pop();
                if let Some(Container {
                    body: Body::Enum(vs),
                    ..
                }) = t.g.containers.get_mut(&key)
                {
                    if vs[idx].1.is_none() && slot.is_some() {
                        t.progress = true;
                    }
                    if slot.is_some() {
                        vs[idx].1 = slot;
                    }
                }
                t.depth -= 1;
                return Ok(v);
            }
        }
        // Only a value is needed.
        let vs = match t.g.containers.get(&key) {
            Some(Container {
                body: Body::Enum(vs),
                ..
            }) => Some(vs),
            _ => None,
        };
        let n = vs.map_or(variants.len(), |vs| vs.len());
        let idx = t.quiet_pick(id, vs) % n;
        t.last_quiet_enum = Some((id, idx, n));
        t.quiet += 1;
        let mut slot = None;
        let v = visitor.visit_enum(Enum {
            t: &mut *t,
            id,
            idx,
            slot: &mut slot,
        })?;
        t.quiet -= 1;
        t.depth -= 1;
        Ok(v)
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        // A visitor that accepts unit takes any self-describing value (serde_json::Value,
        // serde_json::Map's values...): record an opaque "any" leaf. Untagged/internally
        // tagged enums reject it (their shape depends on the data): not traceable.
        *self.out = Node::Prim(Prim::Any);
        self.t.saw_any = true;
        self.t.saw_any_ever = true;
        let r = match self.t.any_probe {
            0 => visitor.visit_unit::<TraceError>(),
            1 => visitor.visit_borrowed_str(""),
            2 => visitor.visit_u64(0),
            3 => visitor.visit_f64(0.5),
            4 => visitor.visit_bool(false),
            5 => visitor.visit_seq(Seq {
                t: &mut *self.t,
                slots: std::iter::empty(),
            }),
            _ => visitor.visit_map(Seq {
                t: &mut *self.t,
                slots: std::iter::empty(),
            }),
        };
        r.map_err(|_| {
            TraceError::Unsupported("deserialize_any (untagged/internally tagged enum, ...)")
        })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> R<V::Value> {
        Err(TraceError::Unsupported(
            "deserialize_identifier (flatten, adjacently tagged enum, map keyed by field names)",
        ))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> R<V::Value> {
        Err(TraceError::Unsupported("deserialize_ignored_any"))
    }
    fn is_human_readable(&self) -> bool {
        self.t.hr
    }
}

impl<'a> Tr<'a> {
    /// Struct-like containers: record (first non-recursive visit) or just produce a value.
    fn container<'de, V: Visitor<'de>>(
        self,
        id: TypeId,
        name: &'static str,
        len: usize,
        visitor: V,
        visit: impl FnOnce(&mut Tracer, &mut [Node], V) -> R<V::Value>,
        body: impl FnOnce(Vec<Node>) -> (Body, Option<Vec<String>>),
    ) -> R<V::Value> {
        *self.out = Node::Container(id);
        let t = self.t;
        t.enter()?;
        let mut slots = vec![Node::Unknown; len];
        let quiet = t.quiet > 0 || t.stack.contains(&id) || t.complete.contains(&id);
        let v = if quiet {
            t.quiet += 1;
            let v = visit(t, &mut slots, visitor)?;
            t.quiet -= 1;
            v
        } else {
            t.stack.push(id);
            let v = visit(t, &mut slots, visitor)?;
            t.stack.pop();
            let (body, aliases) = body(slots);
            let c = Container {
                name: name.into(),
                body,
                aliases,
            };
            if t.g.containers.insert(id, c.clone()).as_ref() != Some(&c) {
                t.progress = true;
            }
            v
        };
        t.depth -= 1;
        Ok(v)
    }
}

/// Statistics of one trace (for the report).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) passes: u32,
    pub(crate) retries: u32,
}

/// Traces `T`'s `Deserialize` into a shape graph.
pub(crate) fn trace<T: for<'de> Deserialize<'de>>(cfg: Config) -> R<(Graph, Stats)> {
    let (g, stats, saw_any) = trace_with::<T>(cfg, 0)?;
    if saw_any {
        // An `any` leaf is only exact if it takes *every* kind of value (serde_json::Value
        // does; an untagged enum with a unit variant takes unit only and would otherwise
        // hide its other variants): re-trace feeding each other kind.
        for k in 1..=6 {
            trace_with::<T>(cfg, k).map_err(|_| {
                TraceError::Unsupported(
                    "deserialize_any, and not every kind of value is accepted (untagged enum?)",
                )
            })?;
        }
    }
    Ok((g, stats))
}

fn trace_with<T: for<'de> Deserialize<'de>>(cfg: Config, any_probe: u8) -> R<(Graph, Stats, bool)> {
    let mut t = Tracer {
        hr: cfg.human_readable,
        any_probe,
        ..Tracer::default()
    };
    let mut stats = Stats::default();
    let mut stalled = 0;
    while stats.passes + stats.retries < MAX_PASSES {
        t.pass = stats.passes + stats.retries;
        t.stack.clear();
        t.quiet = 0;
        t.depth = 0;
        t.progress = false;
        t.prim_seq = 0;
        t.prim_lens.clear();
        t.failed_prim = None;
        t.last_quiet_enum = None;
        t.variant_oob = None;
        t.saw_any = false;
        let mut root = Node::Unknown;
        match T::deserialize(Tr {
            t: &mut t,
            out: &mut root,
        }) {
            Ok(_) => {
                stats.passes += 1;
                t.compute_complete();
                let mut r = Vec::new();
                refs(&root, &mut r);
                t.g.root = Some(root);
                if r.iter().all(|r| t.complete.contains(r)) {
                    return Ok((t.g, stats, t.saw_any_ever));
                }
                if t.progress {
                    stalled = 0;
                } else {
                    stalled += 1;
                    if stalled > 64 {
                        let why = if t.g.containers.values().any(|c| !body_info(&c.body).0) {
                            "a field or variant was never deserialized"
                        } else {
                            "enum variants unreachable"
                        };
                        return Err(TraceError::Stuck(why.into()));
                    }
                }
            }
            Err(TraceError::Depth) => {
                stats.retries += 1;
                let Some((id, idx, n)) = t.last_quiet_enum else {
                    return Err(TraceError::Depth);
                };
                let tries = t.quiet_tries.entry(id).or_default();
                *tries += 1;
                if *tries >= n {
                    return Err(TraceError::Depth);
                }
                t.quiet_choice.insert(id, (idx + 1) % n);
            }
            Err(TraceError::Custom(_)) if t.saw_any => {
                return Err(TraceError::Unsupported(
                    "deserialize_any, and the value is then interpreted (untagged enum?)",
                ));
            }
            Err(TraceError::Custom(msg)) => {
                stats.retries += 1;
                // VARIANTS listed aliases: the first rejected index is the real count.
                if let Some((id, idx)) = t.variant_oob.take() {
                    if let Some(c) = t.g.containers.get_mut(&id) {
                        if let Body::Enum(vs) = &mut c.body {
                            if idx > 0 && idx < vs.len() {
                                if c.aliases.is_none() {
                                    c.aliases = Some(vs.iter().map(|(n, _)| n.clone()).collect());
                                    vs.iter_mut().for_each(|v| v.0.clear());
                                }
                                vs.truncate(idx);
                                continue;
                            }
                        }
                    }
                }
                if t.failed_prim.is_none() {
                    // A container rejected the values (try_from, time's ordinal, ...): first
                    // bump the last primitive (`lo < hi`), then once every primitive of the
                    // pass to its second probe (0 -> 1: dates, ranges, non-zero ids).
                    t.container_failures += 1;
                    if t.container_failures == 2 {
                        let mut changed = false;
                        for n in 0..t.prim_seq {
                            let cur = t.probes.entry(n).or_insert(0);
                            if *cur == 0 && t.prim_lens[n as usize] > 1 {
                                *cur = 1;
                                changed = true;
                            }
                        }
                        if changed {
                            continue;
                        }
                    }
                }
                let target = t.failed_prim.or(t.prim_seq.checked_sub(1));
                let Some(n) = target else {
                    return Err(TraceError::Custom(msg));
                };
                let cur = t.probes.get(&n).copied().unwrap_or(0);
                if cur + 1 >= t.prim_lens[n as usize] as usize {
                    return Err(TraceError::Custom(msg));
                }
                t.probes.insert(n, cur + 1);
            }
            Err(e) => return Err(e),
        }
    }
    Err(TraceError::Stuck("too many passes".into()))
}

/// The digest of `T`'s shape (name-free canonical encoding), and whether `T` is an
/// integer.
pub(crate) fn trace_shape<T: for<'de> Deserialize<'de>>(cfg: Config) -> R<(Digest, bool)> {
    let (g, _) = trace::<T>(cfg)?;
    let integer = matches!(
        g.root,
        Some(Node::Prim(
            Prim::I8
                | Prim::I16
                | Prim::I32
                | Prim::I64
                | Prim::U8
                | Prim::U16
                | Prim::U32
                | Prim::U64
        ))
    );
    let bytes = graph::encode(&g).map_err(TraceError::Encode)?;
    Ok((graph::digest_bytes(&bytes), integer))
}
