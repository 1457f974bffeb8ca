//! Value encoding for byte stores (Redis): serde_json, optionally zlib-compressed.
//!
//! Plain values are JSON text, readable with `redis-cli GET`. A compressed
//! value is a zlib stream, recognised by its header: zlib streams start with
//! `0x78` (`x`), which no JSON text can start with, so values written with
//! compression on or off are both read correctly, whatever the current setting.

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
#[cfg(test)]
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};

/// Serializes `value` as JSON and compresses it when it is at least
/// `compress_min` bytes long.
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    compress_min: Option<usize>,
) -> Result<Vec<u8>, serde_json::Error> {
    Ok(compress(serde_json::to_vec(value)?, compress_min))
}

/// Compresses JSON text when it is at least `compress_min` bytes long and
/// compression saves space.
pub(crate) fn compress(json: Vec<u8>, compress_min: Option<usize>) -> Vec<u8> {
    match compress_min {
        Some(min) if json.len() >= min => {
            let mut enc = ZlibEncoder::new(Vec::with_capacity(json.len() / 2), Compression::fast());
            // Writing into a Vec cannot fail.
            if enc.write_all(&json).is_err() {
                return json;
            }
            match enc.finish() {
                Ok(compressed) if compressed.len() < json.len() => compressed,
                _ => json,
            }
        }
        _ => json,
    }
}

/// Why stored bytes could not be turned back into a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("corrupt zlib data: {0}")]
    Zlib(std::io::Error),
    #[error("not the expected JSON shape: {0}")]
    Json(#[from] serde_json::Error),
}

/// Whether `bytes` start with a zlib header (CMF 0x78, FCHECK valid).
fn is_zlib(bytes: &[u8]) -> bool {
    bytes.len() >= 2
        && bytes[0] == 0x78
        && (u16::from(bytes[0]) << 8 | u16::from(bytes[1])) % 31 == 0
}

/// Decodes bytes written by [`encode`], compressed or not.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if is_zlib(bytes) {
        let mut json = Vec::with_capacity(bytes.len() * 3);
        ZlibDecoder::new(bytes)
            .read_to_end(&mut json)
            .map_err(DecodeError::Zlib)?;
        Ok(serde_json::from_slice(&json)?)
    } else {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_plain_and_compressed() {
        let v: Vec<String> = (0..100).map(|i| format!("scene {i}")).collect();
        let plain = encode(&v, None).unwrap();
        assert_eq!(plain[0], b'[');
        let packed = encode(&v, Some(16)).unwrap();
        assert!(is_zlib(&packed) && packed.len() < plain.len());
        assert_eq!(decode::<Vec<String>>(&plain).unwrap(), v);
        assert_eq!(decode::<Vec<String>>(&packed).unwrap(), v);
        // small values stay readable even with compression on
        assert_eq!(encode(&5, Some(16)).unwrap(), b"5");
    }

    #[test]
    fn corrupt_is_an_error_not_a_panic() {
        assert!(decode::<i32>(b"\x78\x9cgarbage").is_err());
        assert!(decode::<i32>(b"{").is_err());
        assert!(decode::<i32>(b"\"str\"").is_err());
        assert!(decode::<i32>(b"").is_err());
    }
}
