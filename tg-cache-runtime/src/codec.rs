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
    #[error("{0} bytes, over the configured cap")]
    TooLarge(usize),
    #[error("this compressed value failed to decode a moment ago (not inflated again)")]
    KnownBad,
    #[error("not the expected JSON shape: {0}")]
    Json(#[from] serde_json::Error),
}

/// Whether `bytes` start with a zlib header (CMF 0x78, FCHECK valid).
fn is_zlib(bytes: &[u8]) -> bool {
    bytes.len() >= 2
        && bytes[0] == 0x78
        && (u16::from(bytes[0]) << 8 | u16::from(bytes[1])) % 31 == 0
}

/// Reads one JSON value and checks that nothing follows, keeping nothing.
fn check_json(r: impl Read) -> Result<(), serde_json::Error> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_reader(r);
    serde::de::IgnoredAny::deserialize(&mut de)?;
    de.end()
}

/// Compressed payloads (with the type asked) that failed to decode lately:
/// a bomb read by many callers at once is inflated once, not once each.
/// The lock is also held while inflating, so that at most one compressed
/// value is inflated at a time in the process.
static INFLATE: std::sync::Mutex<std::collections::VecDeque<u64>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const KNOWN_BAD: usize = 16;

/// Decodes bytes written by [`compress`], compressed or not, reading at
/// most `max_bytes` of JSON: a compressed value is inflated as it is
/// parsed (never into one buffer first), and parsing stops with an error at
/// the cap, so a decompression bomb costs at most the cap in time and in
/// memory, once per process (compressed values are inflated one at a time,
/// and a payload that failed is remembered).
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, DecodeError> {
    if is_zlib(bytes) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (bytes, std::any::type_name::<T>()).hash(&mut h);
        let digest = h.finish();
        let mut bad = INFLATE.lock().unwrap_or_else(|p| p.into_inner());
        if bad.contains(&digest) {
            return Err(DecodeError::KnownBad);
        }
        // First a pass that only checks the JSON (it keeps no string or
        // value, so a bomb of valid-looking JSON costs no memory to
        // reject), then the real decode.
        let reader =
            |bytes| std::io::BufReader::new(ZlibDecoder::new(bytes).take(max_bytes as u64));
        let r = check_json(reader(bytes)).and_then(|()| serde_json::from_reader(reader(bytes)));
        if r.is_err() {
            if bad.len() == KNOWN_BAD {
                bad.pop_front();
            }
            bad.push_back(digest);
        }
        Ok(r?)
    } else if bytes.len() > max_bytes {
        Err(DecodeError::TooLarge(bytes.len()))
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
        assert_eq!(decode::<Vec<String>>(&plain, 1 << 20).unwrap(), v);
        assert_eq!(decode::<Vec<String>>(&packed, 1 << 20).unwrap(), v);
        // small values stay readable even with compression on
        assert_eq!(encode(&5, Some(16)).unwrap(), b"5");
    }

    #[test]
    fn corrupt_is_an_error_not_a_panic() {
        for bad in [&b"\x78\x9cgarbage"[..], b"{", b"\"str\"", b""] {
            assert!(decode::<i32>(bad, 1 << 20).is_err());
        }
    }
}

#[cfg(test)]
mod bomb {
    use super::*;

    #[test]
    fn a_bomb_is_cut_at_the_cap() {
        // 64 MiB of `[0,0,0,...` compresses to a few hundred KiB.
        let mut json = Vec::with_capacity(64 << 20);
        json.push(b'[');
        while json.len() < 64 << 20 {
            json.extend_from_slice(b"0,");
        }
        let packed = compress(json, Some(1));
        assert!(packed.len() < 1 << 20, "{}", packed.len());
        let start = std::time::Instant::now();
        assert!(decode::<Vec<u8>>(&packed, 1 << 20).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // Plain bytes over the cap are refused without parsing.
        assert!(matches!(
            decode::<Vec<u8>>(&vec![b' '; 2 << 20], 1 << 20),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
