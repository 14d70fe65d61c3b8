//! The types of the "new" build of the deploy probe: each scenario of `old.rs` changed in
//! one way, except `Control`. Values are the same data as the old build's, in the new type.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Reorder {
    pub ask: f64,
    pub bid: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct F64ToU64 {
    pub value: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FieldAdded {
    pub id: u32,
    pub name: String,
    pub email: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FieldRemoved {
    pub id: u32,
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FieldRenamed {
    pub id: u32,
    pub full_name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum VariantAdded {
    Buy,
    Sell,
    Short,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum VariantReordered {
    Sell,
    Buy,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ToOption {
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Inner {
    pub qty: u16,
    pub lots: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Nested {
    pub inner: Inner,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BytesToString {
    pub data: String,
}

/// Declared in another order and another module than the old build's, with the same shape.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Control {
    pub id: u32,
    pub tags: Vec<String>,
    pub side: Option<control::Side>,
}

pub mod control {
    use serde::{Deserialize, Serialize};

    /// The old build's `VariantAdded` before the variant was added, under another name.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub enum Side {
        Buy,
        Sell,
    }
}

pub mod value {
    use super::*;

    pub fn reorder() -> Reorder {
        Reorder { ask: 2.5, bid: 1.5 }
    }
    pub fn f64_to_u64() -> F64ToU64 {
        F64ToU64 { value: 15025 }
    }
    pub fn field_added() -> FieldAdded {
        FieldAdded {
            id: 7,
            name: "ada".into(),
            email: "ada@example.com".into(),
        }
    }
    pub fn field_removed() -> FieldRemoved {
        FieldRemoved {
            id: 7,
            name: "ada".into(),
        }
    }
    pub fn field_renamed() -> FieldRenamed {
        FieldRenamed {
            id: 7,
            full_name: "ada".into(),
        }
    }
    pub fn variant_added() -> VariantAdded {
        VariantAdded::Sell
    }
    pub fn variant_reordered() -> VariantReordered {
        VariantReordered::Sell
    }
    pub fn to_option() -> ToOption {
        ToOption { limit: Some(5) }
    }
    pub fn nested() -> Nested {
        // Not what the old bytes would decode to (qty 1, lots 2): a misread shows.
        Nested {
            inner: Inner { qty: 9, lots: 3 },
        }
    }
    pub fn bytes_to_string() -> BytesToString {
        BytesToString { data: "hi".into() }
    }
    pub fn control() -> Control {
        Control {
            id: 1,
            tags: vec!["a".into(), "b".into()],
            side: Some(control::Side::Buy),
        }
    }
}
