//! The shape graph of a type and its canonical encoding.
//!
//! The encoding is a pre-order walk from the root that *inlines* every container and
//! cuts recursion with a back-reference to the ancestor (distance on the walk stack), so
//! it depends only on what a decoder sees: field names and order, variant names and
//! indices, primitive kinds, Option/seq/map/tuple structure. It contains no Rust type
//! names, no TypeIds, no addresses, so it is stable across compilers, build directories,
//! crate ordering and module moves.

use std::any::TypeId;
use std::collections::HashMap;

/// Primitive kinds of the serde data model. The numbers are part of the digest: never
/// renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Prim {
    Unit = 1,
    Bool = 2,
    I8 = 3,
    I16 = 4,
    I32 = 5,
    I64 = 6,
    I128 = 7,
    U8 = 8,
    U16 = 9,
    U32 = 10,
    U64 = 11,
    U128 = 12,
    F32 = 13,
    F64 = 14,
    Char = 15,
    Str = 16,
    Bytes = 17,
    /// Self-describing value (`deserialize_any` whose visitor accepts unit, e.g.
    /// `serde_json::Value`): any JSON is accepted, so "any" is its exact shape.
    Any = 18,
}

/// Identity of a container inside one graph (never part of the digest): the exact Rust
/// type (generic instantiations are distinct).
pub(crate) type Key = TypeId;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    /// Not traced (a cut branch). An encoding that meets one fails.
    Unknown,
    Prim(Prim),
    Option(Box<Node>),
    Seq(Box<Node>),
    Map(Box<Node>, Box<Node>),
    Tuple(Vec<Node>),
    Container(Key),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Variant {
    Unit,
    Newtype(Node),
    Tuple(Vec<Node>),
    Struct(Vec<(String, Node)>),
    /// A struct variant whose `fields` list had `#[serde(alias)]`es: serde (>= 1.0.2xx)
    /// flattens every field's sorted alias set into it, so names cannot be paired with
    /// fields; both lists are encoded.
    AliasedStruct(Vec<String>, Vec<Node>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Body {
    UnitStruct,
    Newtype(Node),
    TupleStruct(Vec<Node>),
    Struct(Vec<(String, Node)>),
    /// Indexed by variant index; `None` = variant not traced.
    Enum(Vec<(String, Option<Variant>)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Container {
    /// The serde name (`#[serde(rename)]` applies): shown by [`render`], never encoded.
    pub(crate) name: String,
    pub(crate) body: Body,
    /// Set when serde's FIELDS/VARIANTS list contained aliases (more names than fields or
    /// variants): the whole list, in order; the per-field/variant names are then "".
    pub(crate) aliases: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Graph {
    pub(crate) root: Option<Node>,
    pub(crate) containers: HashMap<Key, Container>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EncodeError {
    Untraced(String),
    TooLarge,
}

/// Budget for the inlined encoding (pathological DAGs grow exponentially when inlined).
const MAX_ENCODED: usize = 1 << 20;

struct Enc<'g> {
    g: &'g Graph,
    out: Vec<u8>,
    stack: Vec<&'g Key>,
}

impl<'g> Enc<'g> {
    fn u32(&mut self, n: usize) {
        self.out.extend_from_slice(&(n as u32).to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn nodes(&mut self, ns: &'g [Node]) -> Result<(), EncodeError> {
        self.u32(ns.len());
        ns.iter().try_for_each(|n| self.node(n))
    }
    fn fields(&mut self, fs: &'g [(String, Node)]) -> Result<(), EncodeError> {
        self.u32(fs.len());
        for (name, n) in fs {
            self.str(name);
            self.node(n)?;
        }
        Ok(())
    }
    fn node(&mut self, n: &'g Node) -> Result<(), EncodeError> {
        if self.out.len() > MAX_ENCODED {
            return Err(EncodeError::TooLarge);
        }
        match n {
            Node::Unknown => return Err(EncodeError::Untraced("cut branch".into())),
            Node::Prim(p) => self.out.push(*p as u8),
            Node::Option(i) => {
                self.out.push(0x20);
                self.node(i)?;
            }
            Node::Seq(i) => {
                self.out.push(0x21);
                self.node(i)?;
            }
            Node::Map(k, v) => {
                self.out.push(0x22);
                self.node(k)?;
                self.node(v)?;
            }
            Node::Tuple(ns) => {
                self.out.push(0x23);
                self.nodes(ns)?;
            }
            Node::Container(key) => {
                if let Some(pos) = self.stack.iter().rposition(|k| *k == key) {
                    self.out.push(0x30); // back-reference: distance to the ancestor
                    self.u32(self.stack.len() - 1 - pos);
                    return Ok(());
                }
                let c = self
                    .g
                    .containers
                    .get(key)
                    .ok_or_else(|| EncodeError::Untraced(format!("{key:?}")))?;
                self.stack.push(key);
                if let Some(all) = &c.aliases {
                    self.out.push(0x32);
                    self.u32(all.len());
                    all.iter().for_each(|a| self.str(a));
                }
                match &c.body {
                    Body::UnitStruct => self.out.push(0x40),
                    Body::Newtype(i) => {
                        self.out.push(0x41);
                        self.node(i)?;
                    }
                    Body::TupleStruct(ns) => {
                        self.out.push(0x42);
                        self.nodes(ns)?;
                    }
                    Body::Struct(fs) => {
                        self.out.push(0x43);
                        self.fields(fs)?;
                    }
                    Body::Enum(vs) => {
                        self.out.push(0x44);
                        self.u32(vs.len());
                        for (name, v) in vs {
                            self.str(name);
                            match v {
                                None => {
                                    return Err(EncodeError::Untraced(format!(
                                        "variant {}::{name}",
                                        c.name
                                    )))
                                }
                                Some(Variant::Unit) => self.out.push(0x50),
                                Some(Variant::Newtype(i)) => {
                                    self.out.push(0x51);
                                    self.node(i)?;
                                }
                                Some(Variant::Tuple(ns)) => {
                                    self.out.push(0x52);
                                    self.nodes(ns)?;
                                }
                                Some(Variant::Struct(fs)) => {
                                    self.out.push(0x53);
                                    self.fields(fs)?;
                                }
                                Some(Variant::AliasedStruct(names, ns)) => {
                                    self.out.push(0x54);
                                    self.u32(names.len());
                                    names.iter().for_each(|a| self.str(a));
                                    self.nodes(ns)?;
                                }
                            }
                        }
                    }
                }
                self.stack.pop();
            }
        }
        Ok(())
    }
}

/// Canonical bytes of the graph (version byte first).
pub(crate) fn encode(g: &Graph) -> Result<Vec<u8>, EncodeError> {
    let root = g
        .root
        .as_ref()
        .ok_or_else(|| EncodeError::Untraced("no root".into()))?;
    let mut e = Enc {
        g,
        out: vec![1],
        stack: Vec::new(),
    };
    e.node(root)?;
    Ok(e.out)
}

pub(crate) type Digest = [u8; 32];

/// BLAKE3 of the canonical encoding, domain-separated.
pub(crate) fn digest_bytes(bytes: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new_derive_key("cache-runtime shape v1");
    h.update(bytes);
    *h.finalize().as_bytes()
}
