//! Value envelope and codecs.
//!
//! Every stored value is `[FORMAT_V1, codec id, payload...]`. A value whose envelope or
//! codec does not match, or whose payload does not decode as the requested type, is a
//! miss: the caller logs it and the next store overwrites it.

use std::fmt;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::CacheError;

/// First byte of every envelope. A new layout gets a new byte; old values become misses.
pub const FORMAT_V1: u8 = 0xC1;

/// The codec of stored values (`CACHE_CODEC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum CodecKind {
    /// bincode 1.3 (compact, fast; Rust-only). The default.
    #[default]
    Bincode,
    /// JSON (readable in redis-cli, shareable with services in other languages).
    Json,
}

impl CodecKind {
    /// The byte recorded in the envelope. Stable: never reuse a number.
    pub const fn id(self) -> u8 {
        match self {
            Self::Bincode => 1,
            Self::Json => 2,
        }
    }

    /// The name used in configuration and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bincode => "bincode",
            Self::Json => "json",
        }
    }

    /// The codec named `name` (`bincode`, `json`; any case), as `CACHE_CODEC` takes it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "bincode" => Some(Self::Bincode),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// Encodes `value` into a fresh envelope, refusing results above `limit` bytes.
    pub fn encode<T: Serialize + ?Sized>(
        self,
        value: &T,
        limit: usize,
    ) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_V1);
        out.push(self.id());
        let result = match self {
            Self::Bincode => bincode::serialize_into(&mut out, value).map_err(|e| e.to_string()),
            Self::Json => serde_json::to_writer(&mut out, value).map_err(|e| e.to_string()),
        };
        result.map_err(|detail| CacheError::Encode {
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

    /// Decodes an envelope written by [`encode`](Self::encode) with the same codec.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CacheError> {
        let decode_err = |detail: String| CacheError::Decode {
            codec: self.name(),
            detail,
        };
        match bytes {
            [FORMAT_V1, codec, payload @ ..] if *codec == self.id() => match self {
                Self::Bincode => {
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
                }
                Self::Json => {
                    serde_json::from_slice(payload).map_err(|e| decode_err(e.to_string()))
                }
            },
            [FORMAT_V1, codec, ..] => Err(decode_err(format!(
                "envelope codec {codec} is not {} ({})",
                self.id(),
                self.name()
            ))),
            _ => Err(decode_err("not an envelope of this library".to_owned())),
        }
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Metrics {
        total: f64,
        name: String,
    }

    #[test]
    fn round_trips_with_both_codecs() {
        let m = Metrics {
            total: 1.5,
            name: "x".into(),
        };
        for codec in [CodecKind::Bincode, CodecKind::Json] {
            let bytes = codec.encode(&m, 1024).unwrap();
            assert_eq!(&bytes[..2], &[FORMAT_V1, codec.id()]);
            assert_eq!(codec.decode::<Metrics>(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn foreign_values_are_errors_not_panics() {
        let json = CodecKind::Json.encode(&1u32, 64).unwrap();
        assert!(CodecKind::Bincode.decode::<u32>(&json).is_err());
        assert!(CodecKind::Bincode.decode::<u32>(b"hello").is_err());
        assert!(CodecKind::Bincode.decode::<u32>(&[]).is_err());
        let as_u64 = CodecKind::Bincode.encode(&7u64, 64).unwrap();
        assert!(
            CodecKind::Bincode.decode::<u32>(&as_u64).is_err(),
            "trailing bytes"
        );
        assert!(CodecKind::Bincode.decode::<Metrics>(&as_u64).is_err());
    }

    #[test]
    fn size_limit_applies_to_the_envelope() {
        let err = CodecKind::Bincode.encode(&vec![0u8; 100], 50).unwrap_err();
        assert!(matches!(err, CacheError::TooLarge { limit: 50, .. }));
    }
}
