//! Reading record batches without copying their payloads.

use bytes::Bytes;
use garam_core::Header;

use super::compression::{decompress, Compression, MAX_DECOMPRESSED_BYTES};
use super::header::*;
use super::varint::{get_varint, get_varlong};
use crate::error::{LogError, Result};

/// One record batch: a view over its bytes.
#[derive(Debug, Clone)]
pub struct Batch {
    bytes: Bytes,
    header: BatchHeader,
}

pub use garam_core::record::ConsumedRecord;

impl Batch {
    /// Wraps the bytes of exactly one batch, checking header and length (not the CRC).
    pub fn new(bytes: Bytes) -> Result<Batch> {
        let header = BatchHeader::parse(&bytes)?;
        if header.total_len() != bytes.len() {
            return Err(LogError::corrupt(format!(
                "batch length field says {} bytes but {} are present",
                header.total_len(),
                bytes.len()
            )));
        }
        Ok(Batch { bytes, header })
    }

    /// The fixed header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's raw bytes, exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Checks the CRC-32C over attributes..end.
    pub fn verify(&self) -> Result<()> {
        let crc = crc32c::crc32c(&self.bytes[ATTRIBUTES..]);
        if crc != self.header.crc {
            return Err(LogError::corrupt(format!(
                "CRC mismatch at base offset {}: stored {:#010x}, computed {crc:#010x}",
                self.header.base_offset, self.header.crc
            )));
        }
        Ok(())
    }

    /// The batch's records, decompressed if needed.
    pub fn records(&self) -> Result<RecordIter> {
        let codec = Compression::from_attributes(self.header.attributes)?;
        let body = self.bytes.slice(HEADER_LEN..);
        let body = match codec {
            Compression::None => body,
            c => Bytes::from(decompress(c, &body, MAX_DECOMPRESSED_BYTES)?),
        };
        Ok(RecordIter {
            body,
            pos: 0,
            remaining: self.header.record_count,
            base_offset: self.header.base_offset,
            base_timestamp: self.header.base_timestamp,
            append_time: self.header.is_log_append_time().then_some(self.header.max_timestamp),
            last_offset_delta: self.header.last_offset_delta,
        })
    }
}

/// Iterates over the records of one batch; each item is an error if the record is malformed.
#[derive(Debug)]
pub struct RecordIter {
    body: Bytes,
    pos: usize,
    remaining: i32,
    base_offset: i64,
    base_timestamp: i64,
    append_time: Option<i64>,
    last_offset_delta: i32,
}

impl RecordIter {
    fn read_bytes(&mut self, end: usize, what: &str) -> Result<Option<Bytes>> {
        let len = get_varint(&self.body[..end], &mut self.pos)?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        if self.pos + len > end {
            return Err(LogError::corrupt(format!("{what} length {len} runs past the end of its record")));
        }
        let b = self.body.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(Some(b))
    }

    fn next_record(&mut self) -> Result<ConsumedRecord> {
        let len = get_varint(&self.body, &mut self.pos)?;
        if len < 0 || self.pos + len as usize > self.body.len() {
            return Err(LogError::corrupt(format!("record length {len} runs past the end of its batch")));
        }
        let end = self.pos + len as usize;
        // Every field is read from the record's own bytes, so a lying length cannot reach past it.
        let record = &self.body[..end];
        self.pos += 1; // attributes
        let ts_delta = get_varlong(record, &mut self.pos)?;
        let offset_delta = get_varint(record, &mut self.pos)?;
        if offset_delta < 0 || offset_delta > self.last_offset_delta {
            return Err(LogError::corrupt(format!(
                "record offset delta {offset_delta} outside the batch (last delta {})",
                self.last_offset_delta
            )));
        }
        let key = self.read_bytes(end, "key")?;
        let value = self.read_bytes(end, "value")?;
        let header_count = get_varint(&self.body[..end], &mut self.pos)?;
        if header_count < 0 || header_count as usize > end.saturating_sub(self.pos) {
            return Err(LogError::corrupt(format!("header count {header_count} is impossible here")));
        }
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let k = self.read_bytes(end, "header key")?.ok_or_else(|| LogError::corrupt("null header key"))?;
            let key = String::from_utf8(k.to_vec()).map_err(|_| LogError::corrupt("header key is not UTF-8"))?;
            let value = self.read_bytes(end, "header value")?;
            headers.push(Header { key, value });
        }
        if self.pos != end {
            return Err(LogError::corrupt(format!(
                "record has {} unread trailing bytes",
                end as isize - self.pos as isize
            )));
        }
        Ok(ConsumedRecord {
            offset: (self.base_offset + offset_delta as i64) as u64,
            timestamp: self.append_time.unwrap_or(self.base_timestamp.wrapping_add(ts_delta)),
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<ConsumedRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            if self.pos < self.body.len() {
                self.pos = self.body.len();
                return Some(Err(LogError::corrupt("bytes left over after the batch's last record")));
            }
            return None;
        }
        if self.pos >= self.body.len() {
            self.remaining = 0;
            return Some(Err(LogError::corrupt("batch ends before its record count is reached")));
        }
        self.remaining -= 1;
        let r = self.next_record();
        if r.is_err() {
            self.remaining = 0;
            self.pos = self.body.len();
        }
        Some(r)
    }
}

/// Walks a buffer of consecutive batches, yielding each whole batch.
///
/// A trailing partial batch (a fetch cut at its byte limit) ends the iteration quietly; a batch whose
/// header is malformed is an error.
#[derive(Debug, Clone)]
pub struct BatchIter {
    buf: Bytes,
    pos: usize,
}

impl BatchIter {
    /// Iterates over `buf`.
    pub fn new(buf: Bytes) -> BatchIter {
        BatchIter { buf, pos: 0 }
    }

    /// Byte position of the next batch.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.len() < LOG_OVERHEAD {
            return None;
        }
        let len = i32_at(rest, BATCH_LENGTH);
        if (len as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            self.pos = self.buf.len();
            return Some(Err(LogError::corrupt(format!("batch length {len} is shorter than a header"))));
        }
        let total = len as usize + LOG_OVERHEAD;
        if rest.len() < total {
            return None;
        }
        let b = self.buf.slice(self.pos..self.pos + total);
        self.pos += total;
        Some(Batch::new(b))
    }
}
