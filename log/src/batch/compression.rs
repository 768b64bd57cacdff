//! Per-batch compression codecs, as Kafka encodes them in the batch attributes.
//!
//! Decompression is bounded by [`MAX_DECOMPRESSED_BYTES`] so a hostile batch cannot make us
//! allocate without limit.

use std::io::{Read, Write};

use crate::error::{LogError, Result};

/// Upper bound on the decompressed size of one batch's records.
pub const MAX_DECOMPRESSED_BYTES: usize = 128 * 1024 * 1024;

/// The compression codec of a batch (attribute bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy (written with the xerial framing Kafka's Java client uses; raw blocks are read too).
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The codec id stored in attribute bits 0–2.
    pub fn id(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec for an attribute value.
    pub fn from_attributes(attributes: i16) -> Result<Compression> {
        Ok(match attributes & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(LogError::corrupt(format!("unknown compression codec {other}"))),
        })
    }

    /// Parses `none`, `gzip`, `snappy`, `lz4`, `zstd`.
    pub fn parse(s: &str) -> Option<Compression> {
        Some(match s {
            "none" | "uncompressed" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// The codec's name as Kafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_BLOCK: usize = 32 * 1024;

/// Compresses `input`, appending to `out`.
pub fn compress(codec: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let io = |e: std::io::Error| LogError::corrupt(format!("{} compression failed: {e}", codec.name()));
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(io)?;
        }
        Compression::Snappy => {
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            for chunk in input.chunks(XERIAL_BLOCK) {
                let block = enc.compress_vec(chunk).map_err(|e| LogError::corrupt(format!("snappy: {e}")))?;
                out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                out.extend_from_slice(&block);
            }
        }
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(out);
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(|e| LogError::corrupt(format!("lz4: {e}")))?;
        }
        Compression::Zstd => {
            let c = zstd::bulk::compress(input, 1).map_err(io)?;
            out.extend_from_slice(&c);
        }
    }
    Ok(())
}

/// Decompresses a batch's records section, refusing to produce more than `limit` bytes.
pub fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| LogError::corrupt(format!("{} decompression failed: {e}", codec.name()));
    let mut out = Vec::with_capacity(input.len().saturating_mul(2).min(limit));
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(input), limit, &mut out).map_err(err)?,
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(input), limit, &mut out).map_err(err)?,
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(input).map_err(err)?;
            read_bounded(dec, limit, &mut out).map_err(err)?
        }
        Compression::Snappy => {
            if input.len() >= 16 && input[..8] == XERIAL_MAGIC {
                let mut pos = 16;
                let mut dec = snap::raw::Decoder::new();
                while pos < input.len() {
                    let len_bytes: [u8; 4] = input
                        .get(pos..pos + 4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| LogError::corrupt("snappy: truncated xerial block length"))?;
                    let len = i32::from_be_bytes(len_bytes);
                    pos += 4;
                    let block = usize::try_from(len)
                        .ok()
                        .and_then(|l| input.get(pos..pos + l))
                        .ok_or_else(|| LogError::corrupt("snappy: xerial block runs past the batch"))?;
                    pos += block.len();
                    append_snappy_block(&mut dec, block, limit, &mut out)?;
                }
            } else {
                append_snappy_block(&mut snap::raw::Decoder::new(), input, limit, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn append_snappy_block(dec: &mut snap::raw::Decoder, block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
    let n = snap::raw::decompress_len(block).map_err(|e| LogError::corrupt(format!("snappy: {e}")))?;
    if out.len() + n > limit {
        return Err(LogError::corrupt(format!("decompressed batch exceeds the {limit}-byte limit")));
    }
    let start = out.len();
    out.resize(start + n, 0);
    let written = dec.decompress(block, &mut out[start..]).map_err(|e| LogError::corrupt(format!("snappy: {e}")))?;
    out.truncate(start + written);
    Ok(())
}

fn read_bounded<R: Read>(reader: R, limit: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut limited = reader.take(limit as u64 + 1);
    limited.read_to_end(out)?;
    if out.len() > limit {
        return Err(std::io::Error::other(format!("decompressed batch exceeds the {limit}-byte limit")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_roundtrips() {
        let input: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut c = Vec::new();
            compress(codec, &input, &mut c).unwrap();
            let d = decompress(codec, &c, MAX_DECOMPRESSED_BYTES).unwrap();
            assert_eq!(d, input, "{codec:?}");
        }
    }

    #[test]
    fn raw_snappy_is_read_too() {
        let input = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw, 1 << 20).unwrap(), input);
    }

    #[test]
    fn bombs_are_refused() {
        let input = vec![0u8; 1 << 20];
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut c = Vec::new();
            compress(codec, &input, &mut c).unwrap();
            assert!(decompress(codec, &c, 1000).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            assert!(decompress(codec, b"\x82SNAPPY\0garbage-garbage", 1 << 20).is_err(), "{codec:?}");
        }
    }
}
