//! `GroupedStream<K, V>`: a stream partitioned by its key, the input of aggregations.

use std::sync::Arc;

use garam_core::serdes::U64Serde;

use crate::ops::keyed_update::Update;
use crate::stream::Stream;
use crate::table::{stateful, Materialized, Table};
use crate::window::{EmitStrategy, SessionWindows, SlidingWindows, TimeWindows};
use crate::windowed::{SessionWindowedStream, SlidingWindowedStream, TimeWindowedStream};
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

    /// Aggregates each key's records into a value kept in a store named by `materialized`:
    /// `init()` starts a key, `agg(key, value, aggregate)` folds a record in. Every update is
    /// forwarded.
    pub fn aggregate<VA: Data>(
        &self,
        init: impl Fn() -> VA + Send + Sync + 'static,
        agg: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<K, VA>,
    ) -> Table<K, VA> {
        let update: Update<K, V, VA> = Arc::new(move |k, v, current| Some(agg(k, v, current.unwrap_or_else(&init))));
        stateful(&self.stream, "aggregate", materialized, update)
    }

    /// Cuts each key's records into time windows (tumbling or hopping) by event time; `emit` says
    /// whether results go downstream on every update or once, when a window closes.
    pub fn windowed_by(&self, windows: TimeWindows, emit: EmitStrategy) -> TimeWindowedStream<K, V> {
        TimeWindowedStream::new(self.stream.clone(), windows, emit)
    }

    /// Cuts each key's records into sessions separated by gaps of inactivity (event time).
    pub fn windowed_by_session(&self, windows: SessionWindows, emit: EmitStrategy) -> SessionWindowedStream<K, V> {
        SessionWindowedStream::new(self.stream.clone(), windows, emit)
    }

    /// Cuts each key's records into sliding windows of a fixed time difference (event time).
    pub fn windowed_by_sliding(&self, windows: SlidingWindows, emit: EmitStrategy) -> SlidingWindowedStream<K, V> {
        SlidingWindowedStream::new(self.stream.clone(), windows, emit)
    }

    /// Counts records per key.
    pub fn count(&self, materialized: Materialized<K, u64>) -> Table<K, u64> {
        let m = if materialized.value.is_none() { materialized.with_value_serde(U64Serde) } else { materialized };
        self.aggregate(|| 0u64, |_k, _v, n| n + 1, m)
    }

    /// Combines each key's values with `f(aggregate, value)`; the first value starts the aggregate.
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<K, V>,
    ) -> Table<K, V> {
        let value = materialized.value.clone().or_else(|| self.stream.value_serde.clone());
        let update: Update<K, V, V> = Arc::new(move |_, v, current| {
            Some(match current {
                Some(a) => f(a, v),
                None => v,
            })
        });
        stateful(&self.stream, "reduce", Materialized { value, ..materialized }, update)
    }
}
