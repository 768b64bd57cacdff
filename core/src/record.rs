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
        Header {
            key: key.into(),
            value: Some(value.into()),
        }
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
        Record {
            key: key.map(Into::into),
            value: value.map(Into::into),
            timestamp: None,
            headers: Vec::new(),
        }
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
