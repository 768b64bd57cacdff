//! `GroupedStream<K, V>`: a stream partitioned by its key, the input of aggregations.

use crate::stream::Stream;
use crate::Data;

/// A stream whose records with equal keys are in the same partition, so per-key state can live in
/// one task. Aggregations (`count`, `reduce`, `aggregate`) arrive with state stores.
pub struct GroupedStream<K, V> {
    stream: Stream<K, V>,
    name: Option<String>,
}

impl<K: Data, V: Data> GroupedStream<K, V> {
    pub(crate) fn new(stream: Stream<K, V>, name: Option<String>) -> Self {
        GroupedStream { stream, name }
    }

    /// The name given to the grouping (the repartition topic's), if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The co-partitioned stream behind the grouping.
    pub fn stream(&self) -> &Stream<K, V> {
        &self.stream
    }
}
