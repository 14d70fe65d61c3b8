//! How values are stored: the envelope, the codecs, and two plain forms.
//!
//! - An enveloped value is `[FORMAT_V2, codec id, shape tag (8 bytes), payload...]`: the
//!   shape tag is the first 8 bytes of the value type's shape digest (`shape/`), so a value
//!   written for another shape of the type (another build) is a miss, never decoded into
//!   the new type.
//! - An integer (a type whose shape is an integer) is stored as its decimal text, what
//!   Redis `INCRBY` reads and writes: `set` then `increment` works, and so does reading a
//!   counter back as an integer.
//! - With [`CodecKind::JsonPlain`] a value is bare JSON as Python's `json.dumps` writes it,
//!   no envelope: what another service reads with `json.loads` (the shape check then lives
//!   in the key of decorated functions only).
//!
//! - An envelope's payload larger than `CACHE_COMPRESS_ABOVE` is LZ4-compressed when that
//!   shrinks it (`compress.rs`), flagged in the codec byte.
//!
//! A value that does not decode (another codec, another shape, corrupt, foreign) is a miss:
//! the caller logs it and the next store overwrites it.

mod compress;
mod integer;
mod json_fidelity;
mod python_json;

use std::borrow::Cow;
use std::fmt;

pub(crate) use self::compress::COMPRESSED;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::CacheError;
use crate::shape::Shape;

/// First byte of every envelope. A new layout gets a new byte; old values become misses.
/// `0xC1` (version 1, without the shape tag) is no longer read.
pub const FORMAT_V2: u8 = 0xC2;

/// Bytes before the payload of an envelope.
const HEADER: usize = 10;

/// First byte of an envelope that also records when the value stops being fresh: entries
/// of functions with `fail_safe` or `refresh_ahead`, kept in the store past their TTL.
/// `[FORMAT_TIMED, codec id, shape tag (8 bytes), fresh until (u64 LE, Unix ms), payload]`.
pub const FORMAT_TIMED: u8 = 0xC3;

/// Bytes before the payload of a timed envelope.
const TIMED_HEADER: usize = 18;

/// A value manual and service operations can store: serialisable, with the owned type it
/// is read back as (whose shape is recorded with it). Every `Serialize + DeserializeOwned`
/// type is one, and so are `str` and `[T]` (stored as `String` and `Vec<T>` are).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in the cache",
    label = "a value the cache stores must be `Serialize + DeserializeOwned` (or `str`, `[T]`)",
    note = "pass a string as `\"text\"` or `&string`, not `&\"text\"` (a reference to a reference)"
)]
pub trait Storable: Serialize {
    /// What the value is read back as.
    type Owned: DeserializeOwned;
}

impl<T: Serialize + DeserializeOwned> Storable for T {
    type Owned = T;
}

impl Storable for str {
    type Owned = String;
}

impl<T: Serialize + DeserializeOwned> Storable for [T] {
    type Owned = Vec<T>;
}

/// The codec of stored values (`CACHE_CODEC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum CodecKind {
    /// bincode 1.3 (compact, fast; Rust-only). The default.
    #[default]
    Bincode,
    /// JSON in an envelope (readable in redis-cli; the shape is checked on read).
    Json,
    /// Bare JSON exactly as Python's `json.dumps` writes it, for sharing entries with other
    /// services (the seed's Python backend reads them with `json.loads`). No envelope: the
    /// shape of manual and service entries is not checked (decorated functions keep it in
    /// their keys), and user keys use the seed's `user:<id>` layout without a hash tag.
    JsonPlain,
}

impl CodecKind {
    /// The byte recorded in the envelope. Stable: never reuse a number.
    pub const fn id(self) -> u8 {
        match self {
            Self::Bincode => 1,
            Self::Json => 2,
            Self::JsonPlain => 3,
        }
    }

    /// The name used in configuration and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bincode => "bincode",
            Self::Json => "json",
            Self::JsonPlain => "json-plain",
        }
    }

    /// The codec named `name` (`bincode`, `json`, `json-plain`; any case), as `CACHE_CODEC`
    /// takes it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "bincode" => Some(Self::Bincode),
            "json" => Some(Self::Json),
            "json-plain" | "json_plain" => Some(Self::JsonPlain),
            _ => None,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        [Self::Bincode, Self::Json, Self::JsonPlain]
            .into_iter()
            .find(|c| c.id() == id)
    }

    /// Encodes `value` as the cache stores it, refusing results above `limit` bytes (the
    /// bytes a manual `set` of `value` writes, e.g. to prepare a value for another tool).
    pub fn encode<T: Storable + ?Sized>(
        self,
        value: &T,
        limit: usize,
    ) -> Result<Vec<u8>, CacheError> {
        self.encode_shaped(value, &crate::shape::shape_of::<T::Owned>(), limit)
    }

    /// Decodes what [`encode`](Self::encode) wrote: a miss-worthy error for another codec,
    /// another shape of `T`, or foreign bytes.
    pub fn decode<T: Serialize + DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CacheError> {
        self.decode_shaped(bytes, &crate::shape::shape_of::<T>())
    }

    /// Encodes `value` (whose type has `shape`), refusing results above `limit` bytes.
    pub(crate) fn encode_shaped<T: Serialize + ?Sized>(
        self,
        value: &T,
        shape: &Shape,
        limit: usize,
    ) -> Result<Vec<u8>, CacheError> {
        let encode_err = |detail: String| CacheError::Encode {
            codec: self.name(),
            detail,
        };
        let out = if shape.integer {
            integer::to_text(value).map_err(encode_err)?
        } else {
            match self {
                Self::JsonPlain => {
                    python_json::to_vec(value).map_err(|e| encode_err(e.to_string()))?
                }
                Self::Bincode | Self::Json => {
                    let mut out = Vec::with_capacity(64);
                    out.push(FORMAT_V2);
                    out.push(self.id());
                    out.extend_from_slice(&shape.tag());
                    self.write_payload(&mut out, value).map_err(encode_err)?;
                    out
                }
            }
        };
        if out.len() > limit {
            return Err(CacheError::TooLarge {
                size: out.len(),
                limit,
            });
        }
        Ok(out)
    }

    fn write_payload<T: Serialize + ?Sized>(
        self,
        out: &mut Vec<u8>,
        value: &T,
    ) -> Result<(), String> {
        if self == Self::Bincode {
            bincode::serialize_into(out, value).map_err(|e| e.to_string())
        } else {
            serde_json::to_writer(out, value).map_err(|e| e.to_string())
        }
    }

    /// Encodes `value` in a timed envelope: fresh until `fresh_until_ms` (Unix ms), then
    /// stale (served only by fail-safe). Always an envelope, integers included; `json-plain`
    /// has none, so callers do not ask for it there.
    pub(crate) fn encode_timed<T: Serialize + ?Sized>(
        self,
        value: &T,
        shape: &Shape,
        fresh_until_ms: u64,
        limit: usize,
    ) -> Result<Vec<u8>, CacheError> {
        if self == Self::JsonPlain {
            return self.encode_shaped(value, shape, limit);
        }
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_TIMED);
        out.push(self.id());
        out.extend_from_slice(&shape.tag());
        out.extend_from_slice(&fresh_until_ms.to_le_bytes());
        self.write_payload(&mut out, value)
            .map_err(|detail| CacheError::Encode {
                codec: self.name(),
                detail,
            })?;
        if out.len() > limit {
            return Err(CacheError::TooLarge {
                size: out.len(),
                limit,
            });
        }
        Ok(out)
    }

    /// Decodes any value of this library for a type of `shape`, with the time it stops
    /// being fresh when it was written in a timed envelope (`None`: fresh while stored).
    pub(crate) fn decode_timed<T: Serialize + DeserializeOwned>(
        self,
        bytes: &[u8],
        shape: &Shape,
    ) -> Result<(T, Option<u64>), CacheError> {
        match bytes {
            [FORMAT_TIMED, codec, rest @ ..]
                if bytes.len() >= TIMED_HEADER && *codec & !COMPRESSED == self.id() =>
            {
                if rest[..8] != shape.tag() {
                    return Err(CacheError::ShapeMismatch);
                }
                let mut when = [0u8; 8];
                when.copy_from_slice(&rest[8..16]);
                let value = self.decode_envelope_payload(*codec, &bytes[TIMED_HEADER..])?;
                Ok((value, Some(u64::from_le_bytes(when))))
            }
            [FORMAT_TIMED, codec, ..] if bytes.len() >= TIMED_HEADER => Err(CacheError::Decode {
                codec: self.name(),
                detail: format!(
                    "envelope codec {codec} is not {} ({})",
                    self.id(),
                    self.name()
                ),
            }),
            _ => self.decode_shaped(bytes, shape).map(|v| (v, None)),
        }
    }

    /// Decodes an envelope's payload, decompressing it first when `codec_byte` says so.
    fn decode_envelope_payload<T: DeserializeOwned>(
        self,
        codec_byte: u8,
        payload: &[u8],
    ) -> Result<T, CacheError> {
        let payload = if codec_byte & COMPRESSED != 0 {
            compress::decompress(payload).map_err(|detail| CacheError::Decode {
                codec: self.name(),
                detail,
            })?
        } else {
            Cow::Borrowed(payload)
        };
        self.decode_payload(&payload)
    }

    fn decode_payload<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T, CacheError> {
        let decode_err = |detail: String| CacheError::Decode {
            codec: self.name(),
            detail,
        };
        if self == Self::Bincode {
            // Same wire format as `bincode::serialize_into` (fixint, little endian), but
            // trailing bytes are rejected (a prefix of another type is not a hit) and
            // claimed lengths cannot exceed the payload (corrupt data cannot make us
            // allocate gigabytes).
            use bincode::Options as _;
            bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .reject_trailing_bytes()
                .with_limit(payload.len() as u64)
                .deserialize(payload)
                .map_err(|e| decode_err(e.to_string()))
        } else {
            serde_json::from_slice(payload).map_err(|e| decode_err(e.to_string()))
        }
    }

    /// Decodes what [`encode_shaped`](Self::encode_shaped) wrote for a type of `shape`
    /// (a timed envelope is read by [`decode_timed`](Self::decode_timed)).
    pub(crate) fn decode_shaped<T: Serialize + DeserializeOwned>(
        self,
        bytes: &[u8],
        shape: &Shape,
    ) -> Result<T, CacheError> {
        let decode_err = |detail: String| CacheError::Decode {
            codec: self.name(),
            detail,
        };
        if shape.integer {
            return integer::from_text(bytes).map_err(decode_err);
        }
        if self == Self::JsonPlain {
            let value: T = serde_json::from_slice(bytes).map_err(|e| decode_err(e.to_string()))?;
            // Bare JSON records no shape. Where the key does not either (manual and service
            // operations), a value only hits when it is what `T` writes, up to key order:
            // else `{"value": 15025}` (cents, another build's `u64`) would read as 15025.0
            // dollars, or a struct would silently drop another shape's fields.
            if !shape.in_key && !json_fidelity::faithful(&value, bytes) {
                return Err(CacheError::ShapeMismatch);
            }
            return Ok(value);
        }
        match bytes {
            [FORMAT_V2, codec, tag @ ..]
                if bytes.len() >= HEADER && *codec & !COMPRESSED == self.id() =>
            {
                if tag[..8] != shape.tag() {
                    return Err(CacheError::ShapeMismatch);
                }
                self.decode_envelope_payload(*codec, &bytes[HEADER..])
            }
            [FORMAT_V2, codec, ..] if bytes.len() >= HEADER => Err(decode_err(format!(
                "envelope codec {codec} is not {} ({})",
                self.id(),
                self.name()
            ))),
            _ => Err(decode_err("not an envelope of this library".to_owned())),
        }
    }
}

/// Compresses the payload of an envelope longer than `above` bytes (`0`: never), when
/// that shrinks it; anything else (integers, `json-plain`, small values) is returned as
/// it is.
pub(crate) fn compress_envelope(bytes: Vec<u8>, above: usize) -> Vec<u8> {
    let header = match bytes.first() {
        Some(&FORMAT_V2) if bytes.len() >= HEADER => HEADER,
        Some(&FORMAT_TIMED) if bytes.len() >= TIMED_HEADER => TIMED_HEADER,
        _ => return bytes,
    };
    if above == 0 || bytes.len() - header <= above || bytes[1] & COMPRESSED != 0 {
        return bytes;
    }
    let Some(packed) = compress::compress(&bytes[header..]) else {
        return bytes;
    };
    let mut out = Vec::with_capacity(header + packed.len());
    out.extend_from_slice(&bytes[..header]);
    out[1] |= COMPRESSED;
    out.extend_from_slice(&packed);
    out
}

impl Serialize for CodecKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a stored value's bytes say about themselves (for `cachectl inspect`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum StoredForm {
    /// An envelope of this library.
    Envelope {
        /// The codec it records (`None`: an id this build does not know).
        codec: Option<CodecKind>,
        /// The shape tag, hexadecimal.
        shape_tag: String,
        /// Bytes after the header.
        payload_bytes: usize,
        /// When a timed envelope (`fail_safe`, `refresh_ahead`) stops being fresh, Unix ms.
        fresh_until_ms: Option<u64>,
        /// Whether the payload is LZ4-compressed (`CACHE_COMPRESS_ABOVE`).
        compressed: bool,
    },
    /// A decimal integer (a counter, or an integer value).
    Integer(i128),
    /// Bare JSON (`json-plain`, or another service's value).
    Json,
    /// Anything else.
    Foreign,
}

/// Tells what `bytes` are.
pub fn stored_form(bytes: &[u8]) -> StoredForm {
    match bytes {
        [FORMAT_V2, codec, ..] if bytes.len() >= HEADER => StoredForm::Envelope {
            codec: CodecKind::from_id(*codec & !COMPRESSED),
            shape_tag: bytes[2..HEADER]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            payload_bytes: bytes.len() - HEADER,
            fresh_until_ms: None,
            compressed: *codec & COMPRESSED != 0,
        },
        [FORMAT_TIMED, codec, ..] if bytes.len() >= TIMED_HEADER => StoredForm::Envelope {
            codec: CodecKind::from_id(*codec & !COMPRESSED),
            compressed: *codec & COMPRESSED != 0,
            shape_tag: bytes[2..HEADER]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            payload_bytes: bytes.len() - TIMED_HEADER,
            fresh_until_ms: {
                let mut when = [0u8; 8];
                when.copy_from_slice(&bytes[HEADER..TIMED_HEADER]);
                Some(u64::from_le_bytes(when))
            },
        },
        _ => match integer::parse(bytes) {
            Some(n) => StoredForm::Integer(n),
            None if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
                StoredForm::Json
            }
            None => StoredForm::Foreign,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::shape_of;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Metrics {
        total: f64,
        name: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Swapped {
        name: String,
        total: f64,
    }

    #[test]
    fn round_trips_with_every_codec() {
        let m = Metrics {
            total: 1.5,
            name: "x".into(),
        };
        let shape = shape_of::<Metrics>();
        for codec in [CodecKind::Bincode, CodecKind::Json, CodecKind::JsonPlain] {
            let bytes = codec.encode_shaped(&m, &shape, 1024).unwrap();
            assert_eq!(
                codec.decode_shaped::<Metrics>(&bytes, &shape).unwrap(),
                m,
                "{codec}"
            );
        }
        let bytes = CodecKind::Bincode.encode_shaped(&m, &shape, 1024).unwrap();
        assert_eq!(bytes[..2], [FORMAT_V2, CodecKind::Bincode.id()]);
        assert_eq!(bytes[2..10], shape.tag());
        assert_eq!(
            CodecKind::JsonPlain
                .encode_shaped(&m, &shape, 1024)
                .unwrap(),
            br#"{"total": 1.5, "name": "x"}"#
        );
    }

    #[test]
    fn another_shape_is_a_mismatch_not_a_value() {
        let m = Metrics {
            total: 1.5,
            name: "x".into(),
        };
        for codec in [CodecKind::Bincode, CodecKind::Json] {
            let bytes = codec
                .encode_shaped(&m, &shape_of::<Metrics>(), 1024)
                .unwrap();
            let err = codec
                .decode_shaped::<Swapped>(&bytes, &shape_of::<Swapped>())
                .unwrap_err();
            assert!(matches!(err, CacheError::ShapeMismatch), "{codec}: {err:?}");
        }
    }

    #[test]
    fn integers_are_plain_decimal_text() {
        let shape = shape_of::<i64>();
        for codec in [CodecKind::Bincode, CodecKind::Json, CodecKind::JsonPlain] {
            assert_eq!(codec.encode_shaped(&-42i64, &shape, 64).unwrap(), b"-42");
            assert_eq!(codec.decode_shaped::<i64>(b"-42", &shape).unwrap(), -42);
            assert_eq!(
                codec.decode_shaped::<u8>(b"7", &shape_of::<u8>()).unwrap(),
                7
            );
            assert!(codec
                .decode_shaped::<u8>(b"300", &shape_of::<u8>())
                .is_err());
            assert!(codec
                .decode_shaped::<u64>(b"-1", &shape_of::<u64>())
                .is_err());
            assert!(codec.decode_shaped::<i64>(b"12x", &shape).is_err());
            assert!(codec.decode_shaped::<i64>(b"", &shape).is_err());
        }
        assert_eq!(stored_form(b"-42"), StoredForm::Integer(-42));
    }

    #[test]
    fn foreign_values_are_errors_not_panics() {
        let u32_shape = shape_of::<u32>();
        let string_shape = shape_of::<String>();
        let json = CodecKind::Json.encode("x", 64).unwrap();
        assert!(CodecKind::Bincode
            .decode_shaped::<String>(&json, &string_shape)
            .is_err());
        assert!(CodecKind::Bincode
            .decode_shaped::<String>(b"hello", &string_shape)
            .is_err());
        assert!(CodecKind::Bincode
            .decode_shaped::<String>(&[], &string_shape)
            .is_err());
        assert!(CodecKind::Bincode
            .decode_shaped::<u32>(b"hello", &u32_shape)
            .is_err());
        let long = CodecKind::Bincode.encode("ab", 64).unwrap();
        let mut trailing = long.clone();
        trailing.push(0);
        assert!(CodecKind::Bincode
            .decode_shaped::<String>(&trailing, &string_shape)
            .is_err());
        assert!(CodecKind::JsonPlain
            .decode_shaped::<String>(&long, &string_shape)
            .is_err());
    }

    #[test]
    fn large_payloads_are_compressed_and_read_back_by_every_decoder() {
        let rows: Vec<Metrics> = (0..500)
            .map(|i| Metrics {
                total: f64::from(i) * 1.5,
                name: format!("row-{}", i % 7),
            })
            .collect();
        let shape = shape_of::<Vec<Metrics>>();
        for codec in [CodecKind::Bincode, CodecKind::Json] {
            let plain = codec.encode_shaped(&rows, &shape, 1 << 20).unwrap();
            let packed = compress_envelope(plain.clone(), 1024);
            assert!(
                packed.len() < plain.len() / 2,
                "{codec}: {} of {}",
                packed.len(),
                plain.len()
            );
            assert!(
                matches!(stored_form(&packed), StoredForm::Envelope { compressed: true, codec: Some(c), .. } if c == codec)
            );
            assert_eq!(
                codec
                    .decode_shaped::<Vec<Metrics>>(&packed, &shape)
                    .unwrap(),
                rows
            );
            // Below the threshold, or off: untouched.
            assert_eq!(compress_envelope(plain.clone(), plain.len()), plain);
            assert_eq!(compress_envelope(plain.clone(), 0), plain);
            let timed = codec.encode_timed(&rows, &shape, 42, 1 << 20).unwrap();
            let packed = compress_envelope(timed, 1024);
            let (back, until) = codec.decode_timed::<Vec<Metrics>>(&packed, &shape).unwrap();
            assert_eq!(until, Some(42));
            assert_eq!(back, rows);
            // A corrupted compressed payload is an error (a miss), not a panic.
            let mut broken = packed.clone();
            broken.truncate(broken.len() - 3);
            assert!(codec.decode_timed::<Vec<Metrics>>(&broken, &shape).is_err());
        }
        // Integers and bare JSON have no envelope: never compressed.
        let n = CodecKind::Bincode
            .encode_shaped(&7u64, &shape_of::<u64>(), 64)
            .unwrap();
        assert_eq!(compress_envelope(n.clone(), 0), n);
    }

    #[test]
    fn size_limit_applies_to_the_stored_bytes() {
        let err = CodecKind::Bincode.encode(&vec![0u8; 100], 50).unwrap_err();
        assert!(matches!(err, CacheError::TooLarge { limit: 50, .. }));
    }
}
