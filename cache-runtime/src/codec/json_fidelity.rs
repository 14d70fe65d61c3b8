//! Whether bare JSON (`json-plain`) is what a type writes: the check a typed read makes
//! when neither the bytes nor the key record the value's shape.

use serde::Serialize;
use serde_json::Value;

/// `stored` decoded as a `T` gave `decoded`; whether `decoded` encodes back to the same
/// JSON, up to object key order (another service may order keys its own way). Numbers
/// compare with their kind: `15025` is not `15025.0`. Extra fields another shape wrote,
/// fields filled by `#[serde(default)]`, and integers read as floats all fail it.
pub(super) fn faithful<T: Serialize>(decoded: &T, stored: &[u8]) -> bool {
    let Ok(stored) = serde_json::from_slice::<Value>(stored) else {
        return false;
    };
    match serde_json::to_value(decoded) {
        // `Value`'s equality ignores object key order and tells integers from floats.
        Ok(ours) => ours == stored,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Px {
        bid: f64,
        ask: f64,
    }

    fn check<T: Serialize + for<'de> Deserialize<'de>>(json: &str) -> bool {
        let v: T = serde_json::from_str(json).expect("decodes");
        faithful(&v, json.as_bytes())
    }

    #[test]
    fn same_json_in_any_key_order_is_faithful() {
        assert!(check::<Px>(r#"{"bid":1.5,"ask":2.5}"#));
        assert!(check::<Px>(r#"{"ask": 2.5, "bid": 1.5}"#));
        assert!(check::<Value>(r#"{"z":1,"a":[1,2.5,null,"x"]}"#));
        assert!(check::<Option<u32>>("null"));
    }

    #[test]
    fn another_shapes_json_is_not() {
        // An integer read as a float (cents as dollars).
        assert!(!check::<Px>(r#"{"bid":1,"ask":2.5}"#));
        // An extra field (another shape's) would be dropped.
        assert!(!check::<Px>(r#"{"bid":1.5,"ask":2.5,"mid":2.0}"#));
        #[derive(Serialize, Deserialize)]
        struct WithDefault {
            a: u32,
            #[serde(default)]
            b: u32,
        }
        // A missing field filled by a default.
        assert!(!check::<WithDefault>(r#"{"a":1}"#));
        assert!(check::<WithDefault>(r#"{"a":1,"b":0}"#));
    }
}
