//! Zig-zag varints, as Kafka's record format v2 encodes lengths, deltas and counts.
//!
//! Decoding is bounded: a varint longer than 5 (or 10) bytes is rejected instead of read forever.

use crate::error::{LogError, Result};

/// Appends a zig-zag varint (Kafka's `ByteUtils.writeVarint`).
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_unsigned(buf, ((v << 1) ^ (v >> 31)) as u32 as u64)
}

/// Appends a zig-zag varlong (Kafka's `ByteUtils.writeVarlong`).
#[inline]
pub fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    put_unsigned(buf, ((v << 1) ^ (v >> 63)) as u64)
}

#[inline]
fn put_unsigned(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Encoded length of a zig-zag varint.
#[inline]
pub fn varint_len(v: i32) -> usize {
    unsigned_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

/// Encoded length of a zig-zag varlong.
#[inline]
pub fn varlong_len(v: i64) -> usize {
    unsigned_len(((v << 1) ^ (v >> 63)) as u64)
}

#[inline]
fn unsigned_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
fn get_unsigned(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64> {
    let mut result: u64 = 0;
    let mut shift = 0;
    for i in 0..max_bytes {
        let Some(&b) = buf.get(*pos + i) else {
            return Err(LogError::corrupt("varint runs past the end of the record"));
        };
        result |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Ok(result);
        }
        shift += 7;
    }
    Err(LogError::corrupt("varint is longer than allowed"))
}

/// Reads a zig-zag varint at `*pos`, advancing it.
#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32> {
    let u = get_unsigned(buf, pos, 5)?;
    if u > u32::MAX as u64 {
        return Err(LogError::corrupt("varint overflows 32 bits"));
    }
    let u = u as u32;
    Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
}

/// Reads a zig-zag varlong at `*pos`, advancing it.
#[inline]
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64> {
    let u = get_unsigned(buf, pos, 10)?;
    Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // Kafka: 0 -> 00, -1 -> 01, 1 -> 02, 63 -> 7e, -64 -> 7f, 64 -> 80 01
        let cases: &[(i32, &[u8])] =
            &[(0, &[0]), (-1, &[1]), (1, &[2]), (63, &[0x7e]), (-64, &[0x7f]), (64, &[0x80, 1])];
        for (v, bytes) in cases {
            let mut b = Vec::new();
            put_varint(&mut b, *v);
            assert_eq!(&b[..], *bytes, "{v}");
            assert_eq!(varint_len(*v), bytes.len());
        }
    }

    proptest! {
        #[test]
        fn varint_roundtrip(v in any::<i32>()) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            prop_assert_eq!(b.len(), varint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varint(&b, &mut pos).unwrap(), v);
            prop_assert_eq!(pos, b.len());
        }

        #[test]
        fn varlong_roundtrip(v in any::<i64>()) {
            let mut b = Vec::new();
            put_varlong(&mut b, v);
            prop_assert_eq!(b.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&b, &mut pos).unwrap(), v);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut pos = 0;
            let _ = get_varint(&bytes, &mut pos);
            let mut pos = 0;
            let _ = get_varlong(&bytes, &mut pos);
        }
    }
}
