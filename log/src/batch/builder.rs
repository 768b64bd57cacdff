//! Writing record batches.

use bytes::Bytes;
use garam_core::Header;

use super::compression::{compress, Compression};
use super::header::*;
use super::varint::{put_varint, put_varlong, varint_len, varlong_len};
use crate::error::Result;

/// Builds one v2 record batch, record by record, into a reusable buffer.
///
/// Offsets in the built batch start at 0; the log assigns the real base offset on append.
///
/// ```
/// use garam_log::batch::{Batch, BatchBuilder, Compression};
/// let mut b = BatchBuilder::new(Compression::None);
/// b.push(1_700_000_000_000, Some(b"user-1"), Some(b"view"), &[]);
/// b.push(1_700_000_000_005, None, None, &[]);
/// let bytes = b.finish().unwrap();
/// let batch = Batch::new(bytes).unwrap();
/// batch.verify().unwrap();
/// let recs: Vec<_> = batch.records().unwrap().collect::<Result<_, _>>().unwrap();
/// assert_eq!(recs[0].key.as_deref(), Some(&b"user-1"[..]));
/// assert!(recs[1].value.is_none());
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    compression: Compression,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    control: bool,
    delete_horizon: Option<i64>,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 16 * 1024)
    }

    /// An empty builder whose buffer starts with `capacity` bytes.
    pub fn with_capacity(compression: Compression, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            compression,
            count: 0,
            base_timestamp: 0,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
            delete_horizon: None,
        }
    }

    /// Stamps the batch with an idempotent producer's id, epoch and first sequence.
    pub fn producer(&mut self, producer_id: i64, epoch: i16, base_sequence: i32) -> &mut Self {
        self.producer_id = producer_id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as part of a transaction.
    pub fn transactional(&mut self, yes: bool) -> &mut Self {
        self.transactional = yes;
        self
    }

    /// Marks the batch as a control batch (transaction markers).
    pub fn control(&mut self, yes: bool) -> &mut Self {
        self.control = yes;
        self
    }

    /// Stamps the batch with a delete horizon (compaction): the base timestamp holds it and
    /// record timestamps are deltas from it. Set before the first push.
    pub(crate) fn delete_horizon(&mut self, horizon: Option<i64>) -> &mut Self {
        self.delete_horizon = horizon;
        self
    }

    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed size so far, header included.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Makes room for `n` more bytes, doubling as a vector does but not past `limit` unless `n`
    /// needs it: a producer's batch is appended once it reaches the batch size, so doubling
    /// past that would only hold memory no record uses — over hundreds of partitions, megabytes.
    pub fn reserve_within(&mut self, n: usize, limit: usize) {
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            let target = need.max(self.buf.capacity().saturating_mul(2).min(limit));
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// Gives back buffer capacity above `keep` bytes (an idle partition's builder need not
    /// keep the size of its busiest batch).
    pub fn shrink_to(&mut self, keep: usize) {
        self.buf.shrink_to(keep.max(HEADER_LEN));
    }

    /// Appends a record with the next offset delta.
    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) {
        self.push_with_offset_delta(self.count, timestamp, key, value, headers)
    }

    /// Appends a record with an explicit offset delta (compaction keeps original offsets).
    pub(crate) fn push_with_offset_delta(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) {
        if self.count == 0 {
            self.base_timestamp = self.delete_horizon.unwrap_or(timestamp);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let ts_delta = timestamp.wrapping_sub(self.base_timestamp);
        let key_len = key.map_or(-1, |k| k.len() as i32);
        let value_len = value.map_or(-1, |v| v.len() as i32);
        let mut body = 1 + varlong_len(ts_delta) + varint_len(offset_delta);
        body += varint_len(key_len) + key.map_or(0, <[u8]>::len);
        body += varint_len(value_len) + value.map_or(0, <[u8]>::len);
        body += varint_len(headers.len() as i32);
        for h in headers {
            body += varint_len(h.key.len() as i32) + h.key.len();
            let vl = h.value.as_ref().map_or(-1, |v| v.len() as i32);
            body += varint_len(vl) + h.value.as_ref().map_or(0, Bytes::len);
        }
        let buf = &mut self.buf;
        buf.reserve(body + 5);
        put_varint(buf, body as i32);
        buf.push(0); // record attributes: unused
        put_varlong(buf, ts_delta);
        put_varint(buf, offset_delta);
        put_varint(buf, key_len);
        if let Some(k) = key {
            buf.extend_from_slice(k);
        }
        put_varint(buf, value_len);
        if let Some(v) = value {
            buf.extend_from_slice(v);
        }
        put_varint(buf, headers.len() as i32);
        for h in headers {
            put_varint(buf, h.key.len() as i32);
            buf.extend_from_slice(h.key.as_bytes());
            match &h.value {
                Some(v) => {
                    put_varint(buf, v.len() as i32);
                    buf.extend_from_slice(v);
                }
                None => put_varint(buf, -1),
            }
        }
        self.count += 1;
    }

    /// Finishes the batch and returns its bytes, leaving the builder empty for reuse.
    pub fn finish(&mut self) -> Result<Bytes> {
        let mut out = Vec::new();
        self.finish_into(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// Finishes the batch, appending its bytes to `out`, and empties the builder for reuse.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let last_delta = (self.count - 1).max(0);
        self.finish_with_last_delta(out, last_delta)
    }

    pub(crate) fn finish_with_last_delta(&mut self, out: &mut Vec<u8>, last_offset_delta: i32) -> Result<()> {
        let start = out.len();
        if self.compression == Compression::None {
            out.extend_from_slice(&self.buf);
        } else {
            out.extend_from_slice(&self.buf[..HEADER_LEN]);
            compress(self.compression, &self.buf[HEADER_LEN..], out)?;
        }
        let header = self.header(out.len() - start, last_offset_delta);
        let b = &mut out[start..];
        b[..HEADER_LEN].copy_from_slice(&header);
        store_crc(b);
        self.reset();
        Ok(())
    }

    /// Finishes the batch in the builder's own buffer when it is not compressed — no copy of its
    /// records — and hands its bytes to `append` (a producer appending it); then empties the
    /// builder for reuse. A compressed batch is built into `scratch` (cleared first) instead.
    pub(crate) fn finish_and<R>(&mut self, scratch: &mut Vec<u8>, append: impl FnOnce(&mut [u8]) -> R) -> Result<R> {
        if self.compression != Compression::None {
            scratch.clear();
            self.finish_into(scratch)?;
            return Ok(append(scratch));
        }
        let header = self.header(self.buf.len(), (self.count - 1).max(0));
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        store_crc(&mut self.buf);
        let appended = append(&mut self.buf);
        self.reset();
        Ok(appended)
    }

    /// The batch header for a batch of `total` bytes, its CRC not yet stored.
    fn header(&self, total: usize, last_offset_delta: i32) -> [u8; HEADER_LEN] {
        let mut attrs = self.compression.id() as i16;
        if self.transactional {
            attrs |= attributes::TRANSACTIONAL;
        }
        if self.control {
            attrs |= attributes::CONTROL;
        }
        if self.delete_horizon.is_some() {
            attrs |= attributes::DELETE_HORIZON;
        }
        let max_ts = if self.count == 0 { -1 } else { self.max_timestamp };
        let mut b = [0u8; HEADER_LEN];
        b[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&0i64.to_be_bytes());
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&((total - LOG_OVERHEAD) as i32).to_be_bytes());
        b[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&0i32.to_be_bytes());
        b[MAGIC_POS] = MAGIC as u8;
        b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&last_offset_delta.to_be_bytes());
        b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&max_ts.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&self.producer_id.to_be_bytes());
        b[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&self.producer_epoch.to_be_bytes());
        b[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&self.base_sequence.to_be_bytes());
        b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&self.count.to_be_bytes());
        b
    }

    /// Takes the records pushed so far as a builder of their own, leaving this one empty with a
    /// new buffer of `capacity` bytes (a producer holding a full batch back while it fills the
    /// next).
    pub(crate) fn take_filled(&mut self, capacity: usize) -> BatchBuilder {
        let empty = BatchBuilder::with_capacity(self.compression, capacity);
        std::mem::replace(self, empty)
    }

    /// Bytes the builder's buffer holds room for.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Empties the builder, keeping its buffer, codec and producer id/epoch.
    pub fn reset(&mut self) {
        self.buf.truncate(HEADER_LEN);
        self.count = 0;
        self.base_timestamp = 0;
        self.max_timestamp = -1;
        self.base_sequence = -1;
        self.delete_horizon = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_finished_in_place_is_the_batch_finished_into_a_buffer() {
        for compression in [Compression::None, Compression::Lz4] {
            let fill = |b: &mut BatchBuilder| {
                b.producer(7, 1, 40).transactional(true);
                for i in 0..50u8 {
                    b.push(1_700_000_000_000 + i64::from(i), Some(&[i]), Some(&[i; 20]), &[]);
                }
            };
            let (mut a, mut b) = (BatchBuilder::new(compression), BatchBuilder::new(compression));
            fill(&mut a);
            fill(&mut b);
            let mut expected = Vec::new();
            a.finish_into(&mut expected).unwrap();
            let in_place = b.finish_and(&mut Vec::new(), |bytes| bytes.to_vec()).unwrap();
            assert_eq!(in_place, expected, "{compression:?}");
            crate::batch::Batch::new(Bytes::from(in_place)).unwrap().verify().unwrap();
            assert!(b.is_empty() && b.size_bytes() == HEADER_LEN, "the builder is empty again");
        }
    }

    #[test]
    fn a_producer_batch_grows_to_its_limit_not_past_it_and_gives_memory_back() {
        let mut b = BatchBuilder::new(Compression::None);
        let value = [7u8; 100];
        let limit = 64 * 1024 + 200;
        while b.size_bytes() < 64 * 1024 {
            b.reserve_within(200, limit);
            b.push(0, Some(b"k"), Some(&value), &[]);
        }
        assert!(b.buf.capacity() <= limit, "capacity {} past {limit}", b.buf.capacity());
        let mut out = Vec::new();
        b.finish_into(&mut out).unwrap();
        b.shrink_to(16 * 1024);
        assert!(b.buf.capacity() <= 16 * 1024);
        b.push(0, Some(b"k"), Some(&value), &[]);
        assert_eq!(b.len(), 1, "the builder is reusable after shrinking");
    }
}
