//! The fixed 61-byte batch header.

use crate::error::{LogError, Result};

/// Batch format version this log writes and reads.
pub const MAGIC: i8 = 2;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 61;
/// `baseOffset` + `batchLength`: the bytes not counted in `batchLength`.
pub const LOG_OVERHEAD: usize = 12;

pub(crate) const BASE_OFFSET: usize = 0;
pub(crate) const BATCH_LENGTH: usize = 8;
pub(crate) const LEADER_EPOCH: usize = 12;
pub(crate) const MAGIC_POS: usize = 16;
pub(crate) const CRC: usize = 17;
pub(crate) const ATTRIBUTES: usize = 21;
pub(crate) const LAST_OFFSET_DELTA: usize = 23;
pub(crate) const BASE_TIMESTAMP: usize = 27;
pub(crate) const MAX_TIMESTAMP: usize = 35;
pub(crate) const PRODUCER_ID: usize = 43;
pub(crate) const PRODUCER_EPOCH: usize = 51;
pub(crate) const BASE_SEQUENCE: usize = 53;
pub(crate) const RECORD_COUNT: usize = 57;

/// Attribute bits of a batch.
pub mod attributes {
    /// Bits 0–2: compression codec.
    pub const COMPRESSION_MASK: i16 = 0x07;
    /// Bit 3: timestamps are LogAppendTime.
    pub const LOG_APPEND_TIME: i16 = 0x08;
    /// Bit 4: part of a transaction.
    pub const TRANSACTIONAL: i16 = 0x10;
    /// Bit 5: a control batch (transaction markers).
    pub const CONTROL: i16 = 0x20;
    /// Bit 6: baseTimestamp holds the delete horizon (compaction).
    pub const DELETE_HORIZON: i16 = 0x40;
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Partition leader epoch (always 0 on the embedded log).
    pub partition_leader_epoch: i32,
    /// Format version; 2.
    pub magic: i8,
    /// Stored CRC-32C.
    pub crc: u32,
    /// Attribute bits.
    pub attributes: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp the record deltas are relative to.
    pub base_timestamp: i64,
    /// Largest record timestamp (or the append time under LogAppendTime).
    pub max_timestamp: i64,
    /// Producer id, -1 when not idempotent.
    pub producer_id: i64,
    /// Producer epoch, -1 when not idempotent.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 when not idempotent.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

#[inline]
pub(crate) fn i16_at(b: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes([b[pos], b[pos + 1]])
}
#[inline]
pub(crate) fn i32_at(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}
#[inline]
pub(crate) fn i64_at(b: &[u8], pos: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses the header at the start of `b`, checking the magic byte and the length field's sanity.
    ///
    /// It does not verify the CRC; [`super::Batch::verify`] does.
    pub fn parse(b: &[u8]) -> Result<BatchHeader> {
        if b.len() < HEADER_LEN {
            return Err(LogError::corrupt(format!("batch header needs {HEADER_LEN} bytes, found {}", b.len())));
        }
        let h = BatchHeader {
            base_offset: i64_at(b, BASE_OFFSET),
            batch_length: i32_at(b, BATCH_LENGTH),
            partition_leader_epoch: i32_at(b, LEADER_EPOCH),
            magic: b[MAGIC_POS] as i8,
            crc: i32_at(b, CRC) as u32,
            attributes: i16_at(b, ATTRIBUTES),
            last_offset_delta: i32_at(b, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(b, BASE_TIMESTAMP),
            max_timestamp: i64_at(b, MAX_TIMESTAMP),
            producer_id: i64_at(b, PRODUCER_ID),
            producer_epoch: i16_at(b, PRODUCER_EPOCH),
            base_sequence: i32_at(b, BASE_SEQUENCE),
            record_count: i32_at(b, RECORD_COUNT),
        };
        if h.magic != MAGIC {
            return Err(LogError::corrupt(format!("unsupported batch magic {} (expected {MAGIC})", h.magic)));
        }
        if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(LogError::corrupt(format!("batch length {} is shorter than a header", h.batch_length)));
        }
        if h.base_offset < 0 {
            return Err(LogError::corrupt(format!("negative base offset {}", h.base_offset)));
        }
        if h.last_offset_delta < 0 || h.record_count < 0 {
            return Err(LogError::corrupt(format!(
                "negative last offset delta {} or record count {}",
                h.last_offset_delta, h.record_count
            )));
        }
        Ok(h)
    }

    /// Total bytes of the batch including the 12-byte log overhead.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> u64 {
        (self.last_offset() + 1) as u64
    }

    /// True for transaction-marker batches.
    pub fn is_control(&self) -> bool {
        self.attributes & attributes::CONTROL != 0
    }

    /// True for batches written inside a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & attributes::TRANSACTIONAL != 0
    }

    /// True when timestamps are LogAppendTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & attributes::LOG_APPEND_TIME != 0
    }

    /// Sequence of the last record (wrapping like Kafka's).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }
}

/// Rewrites the base offset of the batch at the start of `b` (not covered by the CRC).
pub(crate) fn set_base_offset(b: &mut [u8], offset: i64) {
    b[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
}

/// Recomputes and stores the CRC of the batch occupying all of `b`.
pub(crate) fn store_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[ATTRIBUTES..]);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Marks the batch as LogAppendTime with the given append time, and re-CRCs it.
pub(crate) fn set_log_append_time(b: &mut [u8], now: i64) {
    let attrs = i16_at(b, ATTRIBUTES) | attributes::LOG_APPEND_TIME;
    b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now.to_be_bytes());
    store_crc(b);
}
