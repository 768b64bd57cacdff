//! Records as producers hand them over: key, value, timestamp and headers.

use bytes::Bytes;

/// One header of a record: a UTF-8 key and an optional byte value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value; `None` is Kafka's null header value.
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Header { key: key.into(), value: Some(value.into()) }
    }
}

/// A record to be produced.
///
/// A `None` value is a tombstone: on a compacted topic it deletes the key.
/// A `None` timestamp means "now" (the producer's wall clock at send time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Partitioning and compaction key.
    pub key: Option<Bytes>,
    /// Payload; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Event time in epoch milliseconds, or `None` for the send time.
    pub timestamp: Option<i64>,
    /// Headers, in order.
    pub headers: Vec<Header>,
}

impl Record {
    /// A record from anything that converts into bytes (`&'static str`, `String`, `Vec<u8>`, `Bytes`).
    pub fn new<K: Into<Bytes>, V: Into<Bytes>>(key: Option<K>, value: Option<V>) -> Self {
        Record { key: key.map(Into::into), value: value.map(Into::into), timestamp: None, headers: Vec::new() }
    }

    /// Sets the timestamp (epoch milliseconds).
    pub fn with_timestamp(mut self, ts: i64) -> Self {
        self.timestamp = Some(ts);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, header: Header) -> Self {
        self.headers.push(header);
        self
    }
}

/// A record as a consumer reads it from a partition: offset, timestamp, and byte slices.
///
/// Keys, values and header values are `Bytes` slices of the fetched buffer: reading does not copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Timestamp in epoch milliseconds (CreateTime, or the append time under LogAppendTime).
    pub timestamp: i64,
    /// Key, or `None`.
    pub key: Option<Bytes>,
    /// Value, or `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<Header>,
}

/// A typed record flowing through a topology: what every operator sees.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Event time in epoch milliseconds.
    pub timestamp: i64,
    /// Headers, carried from input to output unless an operator changes them.
    pub headers: Vec<Header>,
}

impl<K, V> StreamRecord<K, V> {
    /// A record without headers.
    pub fn new(key: K, value: V, timestamp: i64) -> Self {
        StreamRecord { key, value, timestamp, headers: Vec::new() }
    }

    /// The same record with another key and value (timestamp and headers kept).
    pub fn with<K2, V2>(self, key: K2, value: V2) -> StreamRecord<K2, V2> {
        StreamRecord { key, value, timestamp: self.timestamp, headers: self.headers }
    }
}
