//! LZ4 compression of large envelope payloads (`CACHE_COMPRESS_ABOVE`).
//!
//! A compressed envelope sets [`COMPRESSED`] in its codec byte and carries, in place of the
//! payload, the payload's length (u32 LE) followed by one LZ4 block. A build that predates
//! compression sees an unknown codec id there: a miss, never a wrong value. A payload that
//! LZ4 does not shrink by at least an eighth is stored as it is (random or already
//! compressed bytes would only cost CPU on every read).

use std::borrow::Cow;

/// Set in an envelope's codec byte when its payload is compressed.
pub(crate) const COMPRESSED: u8 = 0x80;

/// LZ4 cannot expand data more than about 255 times: a larger claimed length is corrupt
/// (and must not make a read allocate it).
const MAX_RATIO: usize = 255;

/// The payload compressed (size-prepended LZ4 block), when that is worth it.
pub(crate) fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    let packed = lz4_flex::block::compress_prepend_size(payload);
    (packed.len() <= payload.len() - payload.len() / 8).then_some(packed)
}

/// The payload of a compressed envelope, checked before anything is allocated.
pub(crate) fn decompress(packed: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let Some((size, block)) = packed.split_first_chunk::<4>() else {
        return Err("compressed payload without its length".to_owned());
    };
    let claimed = u32::from_le_bytes(*size) as usize;
    if claimed > block.len().saturating_mul(MAX_RATIO).saturating_add(16) {
        return Err(format!(
            "compressed payload claims {claimed} bytes from {}: corrupt",
            block.len()
        ));
    }
    let out = lz4_flex::block::decompress(block, claimed).map_err(|e| e.to_string())?;
    if out.len() != claimed {
        return Err(format!(
            "compressed payload gave {} bytes, not the {claimed} it claims",
            out.len()
        ));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_does_not_shrink() {
        let text = br#"{"symbol":"AAPL","price":189.5,"volume":1200}"#.repeat(200);
        let packed = compress(&text).expect("JSON-like text shrinks");
        assert!(
            packed.len() < text.len() / 4,
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert_eq!(&*decompress(&packed).unwrap(), &text[..]);
        // Pseudo-random bytes do not shrink: stored as they are.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&noise).is_none());
    }

    #[test]
    fn corrupt_lengths_and_blocks_are_errors() {
        assert!(decompress(&[1, 2]).is_err());
        // Claims 4 GiB from 3 bytes.
        assert!(decompress(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).is_err());
        let mut packed = compress(&b"abcabcabc".repeat(100)).unwrap();
        let last = packed.len() - 1;
        packed.truncate(last);
        assert!(decompress(&packed).is_err());
    }
}
