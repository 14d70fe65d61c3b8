//! The digest changes when the decoded meaning of old bytes would change, and only then.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};

use super::{shape_of, ShapeSource, SiteShapes};

fn digest<T: serde::de::DeserializeOwned>() -> [u8; 32] {
    let shape = shape_of::<T>();
    assert_eq!(
        shape.source,
        ShapeSource::Traced,
        "{}",
        std::any::type_name::<T>()
    );
    shape.digest
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize)]
    pub struct Px {
        pub bid: f64,
        pub ask: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct Quote {
        pub sym: String,
        pub px: Px,
    }
    #[derive(Serialize, Deserialize)]
    pub enum Side {
        Buy,
        Sell,
    }
    #[derive(Serialize, Deserialize)]
    pub enum Ev {
        Trade(u32),
        Cancel { id: u64 },
    }
    #[derive(Serialize, Deserialize)]
    pub struct Blob {
        pub data: Vec<u8>,
    }
    #[derive(Serialize, Deserialize)]
    pub struct Opt {
        pub v: u32,
    }
    #[derive(Serialize, Deserialize)]
    pub struct Pt(pub f64, pub f64);
}

mod v2 {
    use super::*;
    #[derive(Serialize, Deserialize)]
    pub struct PxSwapped {
        pub ask: f64,
        pub bid: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct PxU64 {
        pub bid: u64,
        pub ask: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct PxRenamed {
        pub bid_px: f64,
        pub ask: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct PxWireSame {
        #[serde(rename = "bid")]
        pub best_bid: f64,
        pub ask: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct PxAdded {
        pub bid: f64,
        pub ask: f64,
        pub mid: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct PxRemoved {
        pub bid: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct QuoteNestedChanged {
        pub sym: String,
        pub px: PxU64,
    }
    #[derive(Serialize, Deserialize)]
    pub enum SideAdded {
        Buy,
        Sell,
        Short,
    }
    #[derive(Serialize, Deserialize)]
    pub enum SideReordered {
        Sell,
        Buy,
    }
    #[derive(Serialize, Deserialize)]
    pub enum EvPayload {
        Trade(u64),
        Cancel { id: u64 },
    }
    #[derive(Serialize, Deserialize)]
    pub struct BlobStr {
        pub data: String,
    }
    #[derive(Serialize, Deserialize)]
    pub struct OptSome {
        pub v: Option<u32>,
    }
    #[derive(Serialize, Deserialize)]
    pub struct PtNamed {
        pub x: f64,
        pub y: f64,
    }
}

mod elsewhere {
    use super::*;
    /// Same name and shape as `v1::Px`, other module.
    #[derive(Serialize, Deserialize)]
    pub struct Px {
        pub bid: f64,
        pub ask: f64,
    }
    /// Same shape, other name.
    #[derive(Serialize, Deserialize)]
    pub struct Price {
        pub bid: f64,
        pub ask: f64,
    }
}

#[test]
fn a_changed_shape_changes_the_digest() {
    use std::collections::HashMap;
    let pairs: [(&str, [u8; 32], [u8; 32]); 14] = [
        ("field order", digest::<v1::Px>(), digest::<v2::PxSwapped>()),
        ("f64 to u64", digest::<v1::Px>(), digest::<v2::PxU64>()),
        (
            "field renamed",
            digest::<v1::Px>(),
            digest::<v2::PxRenamed>(),
        ),
        ("field added", digest::<v1::Px>(), digest::<v2::PxAdded>()),
        (
            "field removed",
            digest::<v1::Px>(),
            digest::<v2::PxRemoved>(),
        ),
        (
            "nested struct",
            digest::<v1::Quote>(),
            digest::<v2::QuoteNestedChanged>(),
        ),
        (
            "variant added",
            digest::<v1::Side>(),
            digest::<v2::SideAdded>(),
        ),
        (
            "variant reordered",
            digest::<v1::Side>(),
            digest::<v2::SideReordered>(),
        ),
        (
            "variant payload",
            digest::<v1::Ev>(),
            digest::<v2::EvPayload>(),
        ),
        (
            "Vec<u8> to String",
            digest::<v1::Blob>(),
            digest::<v2::BlobStr>(),
        ),
        (
            "T to Option<T>",
            digest::<v1::Opt>(),
            digest::<v2::OptSome>(),
        ),
        (
            "tuple to struct",
            digest::<v1::Pt>(),
            digest::<v2::PtNamed>(),
        ),
        (
            "Vec<u32> to Vec<u64>",
            digest::<Vec<u32>>(),
            digest::<Vec<u64>>(),
        ),
        (
            "map value",
            digest::<HashMap<String, u32>>(),
            digest::<HashMap<String, i32>>(),
        ),
    ];
    for (what, a, b) in pairs {
        assert_ne!(a, b, "{what}");
    }
}

#[test]
fn the_same_shape_keeps_its_digest() {
    assert_eq!(
        digest::<v1::Px>(),
        digest::<elsewhere::Px>(),
        "other module"
    );
    assert_eq!(
        digest::<v1::Px>(),
        digest::<elsewhere::Price>(),
        "other name"
    );
    assert_eq!(
        digest::<v1::Px>(),
        digest::<v2::PxWireSame>(),
        "serde rename"
    );
    assert_eq!(
        digest::<std::collections::HashMap<String, u32>>(),
        digest::<std::collections::BTreeMap<String, u32>>()
    );
}

/// The digest is a pure function of the shape (no TypeId, type name or address), so it is
/// the same in every build and on every compiler. If this fails the encoding changed: that
/// must be deliberate (new domain string), as every cached entry becomes a miss.
#[test]
fn golden_px() {
    assert_eq!(
        hex(&digest::<v1::Px>()),
        "24654e29389e3b2a186dd855bbad9e2377c7f0d5e3cb285f7a20e337145ec559"
    );
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    A(u32),
    B(String),
}

#[derive(Serialize, Deserialize)]
struct Inner {
    x: u32,
}

#[derive(Serialize, Deserialize)]
struct Flat {
    a: u32,
    #[serde(flatten)]
    inner: Inner,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum Internal {
    A { x: u32 },
    B { y: String },
}

#[derive(Serialize, Deserialize)]
struct Node {
    v: u32,
    children: Vec<Node>,
}

#[derive(Serialize, Deserialize)]
enum List {
    Cons(i32, Box<List>),
    Nil,
}

#[derive(Serialize, Deserialize)]
struct Validated {
    id: std::num::NonZeroU32,
    when: std::time::Duration,
}

#[test]
fn data_dependent_shapes_fall_back_to_the_type_name() {
    for source in [
        shape_of::<Untagged>().source,
        shape_of::<Flat>().source,
        shape_of::<Internal>().source,
    ] {
        assert_eq!(source, ShapeSource::TypeName);
    }
}

#[test]
fn recursive_validating_and_dynamic_types_trace() {
    digest::<Node>();
    digest::<List>();
    digest::<Validated>();
    digest::<serde_json::Value>();
    digest::<(u8, String, Option<Vec<bool>>)>();
}

#[test]
fn integers_are_recognised() {
    for integer in [
        shape_of::<i64>().integer,
        shape_of::<u32>().integer,
        shape_of::<u8>().integer,
    ] {
        assert!(integer);
    }
    for other in [
        shape_of::<f64>().integer,
        shape_of::<String>().integer,
        shape_of::<Option<i64>>().integer,
        shape_of::<v1::Opt>().integer,
    ] {
        assert!(!other);
    }
}

#[test]
fn a_generic_site_keeps_one_key_per_type() {
    static SITE: SiteShapes = SiteShapes::new();
    let site_key = [7u8; 32];
    let a = *SITE.keyed::<v1::Px>(&site_key);
    let b = *SITE.keyed::<v2::PxSwapped>(&site_key);
    let c = *SITE.keyed::<u64>(&site_key);
    assert_ne!(a.key, b.key);
    assert_ne!(a.key, c.key);
    // More types than slots still work, and each keeps its key.
    let more = [
        SITE.keyed::<String>(&site_key).key,
        SITE.keyed::<Vec<u8>>(&site_key).key,
        SITE.keyed::<bool>(&site_key).key,
    ];
    assert_eq!(SITE.keyed::<v1::Px>(&site_key).key, a.key);
    assert_eq!(SITE.keyed::<Vec<u8>>(&site_key).key, more[1]);
    assert_ne!(more[0], more[2]);
}
