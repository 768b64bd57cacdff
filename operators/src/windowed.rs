//! `TimeWindowedStream<K, V>`: a grouped stream cut into time windows, the input of windowed
//! `count`, `reduce` and `aggregate`.

use std::sync::Arc;

use garam_core::serdes::{SharedSerde, U64Serde};
use garam_core::state::StoreSpec;
use garam_core::topology::NodeKind;

use crate::change::Change;
use crate::ops::session_aggregate::{self, SessionAggregateSpec};
use crate::ops::sliding_aggregate::{self, SlidingAggregateSpec};
use crate::ops::window_aggregate::{self, LateTopic, WindowAggregateSpec};
use crate::stream::Stream;
use crate::table::{Materialized, Table};
use crate::window::{windowed_serde, EmitStrategy, SessionWindows, SlidingWindows, TimeWindows, Windowed};
use crate::Data;

/// A grouped stream in time windows (from [`GroupedStream::windowed_by`](crate::GroupedStream::windowed_by)).
///
/// ```
/// use std::time::Duration;
/// use garam_operators::window::{EmitStrategy, TimeWindows};
/// use garam_operators::{Consumed, Materialized, Produced, StreamBuilder};
///
/// let builder = StreamBuilder::new();
/// builder
///     .stream::<String, String>("page-views", Consumed::default())
///     .group_by_key()
///     .windowed_by(TimeWindows::of(Duration::from_secs(60)), EmitStrategy::OnWindowClose)
///     .count(Materialized::named("views-per-minute"))
///     .to_stream()
///     .map(|w, n| (w.key.clone(), format!("{} {} {n}", w.window.start, w.window.end)))
///     .to("views-per-minute", Produced::default());
/// assert!(builder.build().is_ok());
/// ```
pub struct TimeWindowedStream<K, V> {
    stream: Stream<K, V>,
    windows: TimeWindows,
    emit: EmitStrategy,
    late_topic: Option<String>,
}

impl<K: Data, V: Data> TimeWindowedStream<K, V> {
    pub(crate) fn new(stream: Stream<K, V>, windows: TimeWindows, emit: EmitStrategy) -> Self {
        TimeWindowedStream { stream, windows, emit, late_topic: None }
    }

    /// Sends late records (every window they belong to had closed) to `topic`, with the input's
    /// serdes, instead of only counting them. The topic must exist.
    pub fn late_records_to(mut self, topic: &str) -> Self {
        self.late_topic = Some(topic.to_string());
        self
    }

    /// Aggregates each key's records per window: `init()` starts a window, `agg(key, value,
    /// aggregate)` folds a record in. The store (named by `materialized`) holds open windows only.
    pub fn aggregate<VA: Data>(
        &self,
        init: impl Fn() -> VA + Send + Sync + 'static,
        agg: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<K, VA>,
    ) -> Table<Windowed<K>, VA> {
        let agg = folding(init, agg);
        self.aggregate_with(agg, materialized)
    }

    fn aggregate_with<VA: Data>(
        &self,
        agg: window_aggregate::Aggregator<K, V, VA>,
        materialized: Materialized<K, VA>,
    ) -> Table<Windowed<K>, VA> {
        let (windows, emit) = (self.windows, self.emit);
        windowed_operator(
            &self.stream,
            "window-aggregate",
            materialized,
            self.late_topic.as_deref(),
            |store, key, value, late| {
                window_aggregate::factory(WindowAggregateSpec {
                    store,
                    windows,
                    emit,
                    key,
                    value,
                    aggregator: agg,
                    late,
                })
            },
        )
    }

    /// Counts each key's records per window.
    pub fn count(&self, materialized: Materialized<K, u64>) -> Table<Windowed<K>, u64> {
        let m = counting(materialized);
        self.aggregate(|| 0u64, |_k, _v, n| n + 1, m)
    }

    /// Combines each key's values per window with `f(aggregate, value)`; a window's first value
    /// starts its aggregate.
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<K, V>,
    ) -> Table<Windowed<K>, V> {
        let value = materialized.value.clone().or_else(|| self.stream.value_serde.clone());
        let agg = reducing(f);
        self.aggregate_with(agg, Materialized { value, ..materialized })
    }
}

/// The aggregator of `aggregate(init, agg)`: a window's first record folds into `init()`.
fn folding<K: Data, V: Data, VA: Data>(
    init: impl Fn() -> VA + Send + Sync + 'static,
    agg: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
) -> window_aggregate::Aggregator<K, V, VA> {
    Arc::new(move |k: &K, v: V, current: Option<VA>| agg(k, v, current.unwrap_or_else(&init)))
}

/// The aggregator of `reduce(f)`: a window's first value starts its aggregate.
fn reducing<K: Data, V: Data>(f: impl Fn(V, V) -> V + Send + Sync + 'static) -> window_aggregate::Aggregator<K, V, V> {
    Arc::new(move |_k, v, current| match current {
        Some(a) => f(a, v),
        None => v,
    })
}

/// `count`'s store: counts are `u64` unless the caller gave a value serde.
fn counting<K: Data>(materialized: Materialized<K, u64>) -> Materialized<K, u64> {
    if materialized.value.is_none() {
        materialized.with_value_serde(U64Serde)
    } else {
        materialized
    }
}

/// Adds a windowed operator `<store>-<kind>` over `input` with its window store, checking the
/// store's name and serdes and the late topic's serdes (problems are reported by `build()`).
/// `make(store name, key serde, value serde, late topic)` builds the operator's factory.
pub(crate) fn windowed_operator<K: Data, V: Data, VA: Data>(
    input: &Stream<K, V>,
    kind: &str,
    materialized: Materialized<K, VA>,
    late_topic: Option<&str>,
    make: impl FnOnce(
        String,
        SharedSerde<K>,
        SharedSerde<VA>,
        Option<LateTopic<K, V>>,
    ) -> garam_core::topology::builder::Factory,
) -> Table<Windowed<K>, VA> {
    let name = materialized.name.clone();
    let unbuilt = || {
        let s = input.map(|k, _| (Windowed { key: k, window: crate::window::Window { start: 0, end: 0 } }, ()));
        Table::from_changes(s.map_values(|_| Change { old: None, new: None }), None, None)
    };
    let mut g = input.graph.borrow_mut();
    if g.stores().iter().any(|(s, _)| s.name == name) {
        g.add_error(format!("two stores are named '{name}'; every stateful operator needs its own name"));
        drop(g);
        return unbuilt();
    }
    let key = materialized.key.clone().or_else(|| input.key_serde.clone());
    let (Some(key), Some(value)) = (key, materialized.value.clone()) else {
        g.add_error(format!(
            "store '{name}' needs serdes: give them with Materialized::named(\"{name}\").with(key_serde, value_serde)"
        ));
        drop(g);
        return unbuilt();
    };
    let late = match late_topic {
        None => None,
        Some(topic) => match (input.key_serde.clone(), input.value_serde.clone()) {
            (Some(k), Some(v)) => Some(LateTopic { topic: topic.to_string(), key: k, value: v }),
            _ => {
                g.add_error(format!(
                    "late records of '{name}' go to '{topic}', which needs the input's serdes: set them with \
                     Stream::with_serdes before grouping"
                ));
                drop(g);
                return unbuilt();
            }
        },
    };
    let f = make(name.clone(), key.clone(), value.clone(), late);
    let id = g.add_node(format!("{name}-{kind}"), NodeKind::Processor { stores: vec![] }, &[input.node], f);
    g.add_store(StoreSpec { name: name.clone(), supplier: materialized.supplier.clone(), serdes: None }, id);
    drop(g);
    let key: SharedSerde<Windowed<K>> = windowed_serde(key);
    let changes = Stream::new(input.graph.clone(), id, Some(key), None, false);
    Table::from_changes(changes, Some(value), Some(name))
}

/// A grouped stream in session windows (from
/// [`GroupedStream::windowed_by_session`](crate::GroupedStream::windowed_by_session)). Results are
/// keyed by `Windowed<K>` whose window is `[first, last]` event time of the session.
pub struct SessionWindowedStream<K, V> {
    stream: Stream<K, V>,
    windows: SessionWindows,
    emit: EmitStrategy,
    late_topic: Option<String>,
}

impl<K: Data, V: Data> SessionWindowedStream<K, V> {
    pub(crate) fn new(stream: Stream<K, V>, windows: SessionWindows, emit: EmitStrategy) -> Self {
        SessionWindowedStream { stream, windows, emit, late_topic: None }
    }

    /// Sends late records to `topic` (which must exist) instead of only counting them.
    pub fn late_records_to(mut self, topic: &str) -> Self {
        self.late_topic = Some(topic.to_string());
        self
    }

    /// Aggregates each key's records per session: `init()` starts a session, `agg(key, value,
    /// aggregate)` folds a record in, `merge(key, a, b)` combines two sessions a record bridges.
    pub fn aggregate<VA: Data>(
        &self,
        init: impl Fn() -> VA + Send + Sync + 'static,
        agg: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        merge: impl Fn(&K, VA, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<K, VA>,
    ) -> Table<Windowed<K>, VA> {
        let agg = folding(init, agg);
        self.aggregate_with(agg, Arc::new(merge), materialized)
    }

    fn aggregate_with<VA: Data>(
        &self,
        agg: window_aggregate::Aggregator<K, V, VA>,
        merger: session_aggregate::Merger<K, VA>,
        materialized: Materialized<K, VA>,
    ) -> Table<Windowed<K>, VA> {
        let (windows, emit) = (self.windows, self.emit);
        windowed_operator(
            &self.stream,
            "session-aggregate",
            materialized,
            self.late_topic.as_deref(),
            |store, key, value, late| {
                session_aggregate::factory(SessionAggregateSpec {
                    store,
                    windows,
                    emit,
                    key,
                    value,
                    aggregator: agg,
                    merger,
                    late,
                })
            },
        )
    }

    /// Counts each key's records per session.
    pub fn count(&self, materialized: Materialized<K, u64>) -> Table<Windowed<K>, u64> {
        let m = counting(materialized);
        self.aggregate(|| 0u64, |_k, _v, n| n + 1, |_k, a, b| a + b, m)
    }

    /// Combines each key's values per session with `f(aggregate, value)` (also to merge sessions).
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<K, V>,
    ) -> Table<Windowed<K>, V> {
        let value = materialized.value.clone().or_else(|| self.stream.value_serde.clone());
        let f = Arc::new(f);
        let g = f.clone();
        let agg = reducing(move |a, v| f(a, v));
        self.aggregate_with(agg, Arc::new(move |_k, a, b| g(a, b)), Materialized { value, ..materialized })
    }
}

/// A grouped stream in sliding windows (from
/// [`GroupedStream::windowed_by_sliding`](crate::GroupedStream::windowed_by_sliding)). Results are
/// keyed by `Windowed<K>` with the window `[end - d, end + 1)`: the records at most `d` apart that
/// end at a record, or start just after one.
pub struct SlidingWindowedStream<K, V> {
    stream: Stream<K, V>,
    windows: SlidingWindows,
    emit: EmitStrategy,
    late_topic: Option<String>,
}

impl<K: Data, V: Data> SlidingWindowedStream<K, V> {
    pub(crate) fn new(stream: Stream<K, V>, windows: SlidingWindows, emit: EmitStrategy) -> Self {
        SlidingWindowedStream { stream, windows, emit, late_topic: None }
    }

    /// Sends late records to `topic` (which must exist) instead of only counting them.
    pub fn late_records_to(mut self, topic: &str) -> Self {
        self.late_topic = Some(topic.to_string());
        self
    }

    /// Aggregates each key's records per sliding window: `init()` starts a window, `agg(key,
    /// value, aggregate)` folds a record in. The input's value serde buffers records.
    pub fn aggregate<VA: Data>(
        &self,
        init: impl Fn() -> VA + Send + Sync + 'static,
        agg: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<K, VA>,
    ) -> Table<Windowed<K>, VA> {
        let agg = folding(init, agg);
        self.aggregate_with(agg, materialized)
    }

    fn aggregate_with<VA: Data>(
        &self,
        agg: window_aggregate::Aggregator<K, V, VA>,
        materialized: Materialized<K, VA>,
    ) -> Table<Windowed<K>, VA> {
        let Some(input) = self.stream.value_serde.clone() else {
            self.stream.graph.borrow_mut().add_error(format!(
                "sliding windows of '{}' buffer the input records, which needs the input's value serde: set it \
                 with Stream::with_serdes before grouping",
                materialized.name
            ));
            return windowed_operator(&self.stream, "sliding-aggregate", materialized, None, |_, _, _, _| {
                garam_core::topology::builder::Factory::Node(Arc::new(|_, _| {
                    Err(garam_core::StreamsError::Topology("unbuilt".into()))
                }))
            });
        };
        let (windows, emit) = (self.windows, self.emit);
        windowed_operator(
            &self.stream,
            "sliding-aggregate",
            materialized,
            self.late_topic.as_deref(),
            |store, key, _value, late| {
                sliding_aggregate::factory(SlidingAggregateSpec {
                    store,
                    difference: windows.difference,
                    grace: windows.grace,
                    emit,
                    key,
                    input,
                    aggregator: agg,
                    late,
                })
            },
        )
    }

    /// Counts each key's records per sliding window.
    pub fn count(&self, materialized: Materialized<K, u64>) -> Table<Windowed<K>, u64> {
        let m = counting(materialized);
        self.aggregate(|| 0u64, |_k, _v, n| n + 1, m)
    }

    /// Combines each key's values per sliding window with `f(aggregate, value)`.
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<K, V>,
    ) -> Table<Windowed<K>, V> {
        let value = materialized.value.clone().or_else(|| self.stream.value_serde.clone());
        let agg = reducing(f);
        self.aggregate_with(agg, Materialized { value, ..materialized })
    }
}
