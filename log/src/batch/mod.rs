//! Kafka's record batch format v2 (magic 2): the bytes our segments hold.
//!
//! Layout of one batch (big-endian), [`HEADER_LEN`] = 61 bytes of header, then the records:
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (=2) | crc u32 (CRC-32C of
//! everything after it) | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records…
//! ```
//!
//! Each record is `length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//! key (varint length, -1 = null) | value (varint length, -1 = null = tombstone) | header count varint |
//! headers`. The records section may be compressed as a whole ([`Compression`]).
//!
//! [`BatchBuilder`] writes batches; [`Batch`] reads one (zero-copy: keys and values are slices of the
//! fetched buffer); [`BatchIter`] walks a buffer of consecutive batches.

mod builder;
mod compression;
mod header;
mod reader;
mod varint;

pub use builder::BatchBuilder;
pub use compression::{compress, decompress, Compression, MAX_DECOMPRESSED_BYTES};
pub use header::{attributes, BatchHeader, HEADER_LEN, LOG_OVERHEAD, MAGIC};
pub use reader::{Batch, BatchIter, ConsumedRecord, RecordIter};
pub use varint::{get_varint, get_varlong, put_varint, put_varlong, varint_len, varlong_len};

/// Header rewrites the log performs on append (base offset, append time, CRC).
pub(crate) mod header_ops {
    pub(crate) use super::header::{set_base_offset, set_log_append_time};
}

#[cfg(test)]
mod tests;
