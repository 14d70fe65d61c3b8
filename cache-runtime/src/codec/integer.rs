//! Integers as decimal text, the form Redis `INCRBY` reads and writes.

use serde::de::value::{I64Deserializer, U64Deserializer};
use serde::de::DeserializeOwned;
use serde::ser::{self, Impossible, Serialize, Serializer};

/// The canonical decimal integer in `bytes` (`-?[1-9][0-9]*` or `0`), within `i64` or `u64`.
pub(super) fn parse(bytes: &[u8]) -> Option<i128> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = !digits.is_empty()
        && digits.len() <= 20
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1)
        && bytes != b"-0";
    if !canonical {
        return None;
    }
    let n: i128 = std::str::from_utf8(bytes).ok()?.parse().ok()?;
    (i128::from(i64::MIN)..=i128::from(u64::MAX))
        .contains(&n)
        .then_some(n)
}

/// Decodes an integer type from its decimal text.
pub(super) fn from_text<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let n = parse(bytes).ok_or_else(|| "not a decimal integer".to_owned())?;
    let result = match i64::try_from(n) {
        Ok(n) => T::deserialize(I64Deserializer::<serde::de::value::Error>::new(n)),
        Err(_) => T::deserialize(U64Deserializer::<serde::de::value::Error>::new(
            u64::try_from(n).map_err(|e| e.to_string())?,
        )),
    };
    result.map_err(|e| e.to_string())
}

/// Encodes an integer value as decimal text.
pub(super) fn to_text<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    value.serialize(IntegerText).map_err(|e: NotAnInteger| e.0)
}

#[derive(Debug)]
struct NotAnInteger(String);

impl std::fmt::Display for NotAnInteger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAnInteger {}

impl ser::Error for NotAnInteger {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Accepts exactly one integer.
struct IntegerText;

fn other<T>() -> Result<T, NotAnInteger> {
    Err(NotAnInteger(
        "an integer type serialised as something else".to_owned(),
    ))
}

macro_rules! integers {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<Vec<u8>, NotAnInteger> {
            Ok(v.to_string().into_bytes())
        }
    )*};
}

macro_rules! others {
    ($($method:ident($($arg:ty),*)),*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<Vec<u8>, NotAnInteger> {
            other()
        }
    )*};
}

impl Serializer for IntegerText {
    type Ok = Vec<u8>;
    type Error = NotAnInteger;
    type SerializeSeq = Impossible<Vec<u8>, NotAnInteger>;
    type SerializeTuple = Impossible<Vec<u8>, NotAnInteger>;
    type SerializeTupleStruct = Impossible<Vec<u8>, NotAnInteger>;
    type SerializeTupleVariant = Impossible<Vec<u8>, NotAnInteger>;
    type SerializeMap = Impossible<Vec<u8>, NotAnInteger>;
    type SerializeStruct = Impossible<Vec<u8>, NotAnInteger>;
    type SerializeStructVariant = Impossible<Vec<u8>, NotAnInteger>;

    integers!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64);
    others!(
        serialize_bool(bool),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str)
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Vec<u8>, NotAnInteger> {
        other()
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Vec<u8>, NotAnInteger> {
        other()
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Vec<u8>, NotAnInteger> {
        other()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotAnInteger> {
        other()
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotAnInteger> {
        other()
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotAnInteger> {
        other()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotAnInteger> {
        other()
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotAnInteger> {
        other()
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotAnInteger> {
        other()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotAnInteger> {
        other()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_integers_only() {
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(parse(b"-42"), Some(-42));
        assert_eq!(parse(b"18446744073709551615"), Some(i128::from(u64::MAX)));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"007",
            b"+1",
            b" 1",
            b"1.0",
            b"18446744073709551616",
            b"1e3",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(to_text(&-5i32).unwrap(), b"-5");
        assert!(to_text(&1.5f64).is_err());
        assert_eq!(from_text::<u64>(b"18446744073709551615").unwrap(), u64::MAX);
    }
}
