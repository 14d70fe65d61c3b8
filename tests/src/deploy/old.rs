//! The types of the "old" build of the deploy probe. `new.rs` is the next release: each
//! scenario's type changed in one way (the control did not). Both builds compute the same
//! data for a scenario (`value`), so a hit must return exactly what the body would have.

use serde::{Deserialize, Serialize};

/// Field order: bincode reads fields by position.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Reorder {
    pub bid: f64,
    pub ask: f64,
}

/// Dollars as `f64`; the new build counts cents as `u64`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct F64ToU64 {
    pub value: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FieldAdded {
    pub id: u32,
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FieldRemoved {
    pub id: u32,
    pub name: String,
    pub email: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FieldRenamed {
    pub id: u32,
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum VariantAdded {
    Buy,
    Sell,
}

/// bincode stores the variant's index.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum VariantReordered {
    Buy,
    Sell,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ToOption {
    pub limit: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Inner {
    pub qty: u32,
}

/// A nested struct changed: `u32` became two `u16` (the same four bytes in bincode).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Nested {
    pub inner: Inner,
}

/// `Vec<u8>` became `String` (the same bytes in bincode).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BytesToString {
    pub data: Vec<u8>,
}

/// Unchanged between the builds: must keep hitting.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Control {
    pub id: u32,
    pub tags: Vec<String>,
    pub side: Option<VariantAdded>,
}

pub mod value {
    use super::*;

    pub fn reorder() -> Reorder {
        Reorder { bid: 1.5, ask: 2.5 }
    }
    pub fn f64_to_u64() -> F64ToU64 {
        F64ToU64 { value: 150.25 }
    }
    pub fn field_added() -> FieldAdded {
        FieldAdded {
            id: 7,
            name: "ada".into(),
        }
    }
    pub fn field_removed() -> FieldRemoved {
        FieldRemoved {
            id: 7,
            name: "ada".into(),
            email: "ada@example.com".into(),
        }
    }
    pub fn field_renamed() -> FieldRenamed {
        FieldRenamed {
            id: 7,
            name: "ada".into(),
        }
    }
    pub fn variant_added() -> VariantAdded {
        VariantAdded::Sell
    }
    pub fn variant_reordered() -> VariantReordered {
        VariantReordered::Sell
    }
    pub fn to_option() -> ToOption {
        ToOption { limit: 5 }
    }
    pub fn nested() -> Nested {
        // 0x0002_0001: the new build's two u16 would read as qty 1, lots 2.
        Nested {
            inner: Inner { qty: 0x0002_0001 },
        }
    }
    pub fn bytes_to_string() -> BytesToString {
        BytesToString {
            data: b"hi".to_vec(),
        }
    }
    pub fn control() -> Control {
        Control {
            id: 1,
            tags: vec!["a".into(), "b".into()],
            side: Some(VariantAdded::Buy),
        }
    }
}
