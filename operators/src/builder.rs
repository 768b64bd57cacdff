//! The entry point of the DSL and its option objects.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::serdes::{DefaultSerde, Serde, SharedSerde};
use garam_core::topology::{NodeKind, TopicRef, Topology, TopologyBuilder};
use garam_core::Result;

use crate::ops::source;
use crate::stream::Stream;
use crate::Data;

impl<K: DefaultSerde, V: DefaultSerde> Default for Consumed<K, V> {
    /// The default serdes of the types (string, bytes, integers, unit, option).
    fn default() -> Self {
        Consumed { key: K::default_serde(), value: V::default_serde(), timestamp: None, name: None }
    }
}

impl<K: DefaultSerde, V: DefaultSerde> Default for Produced<K, V> {
    /// The default serdes of the types (string, bytes, integers, unit, option).
    fn default() -> Self {
        Produced { key: K::default_serde(), value: V::default_serde(), partitioner: None, name: None }
    }
}

/// Extracts an event time (epoch ms) from a record; gets the record's own timestamp too.
pub type TimestampExtractor<K, V> = Arc<dyn Fn(&K, &V, i64) -> i64 + Send + Sync>;

/// How a source topic is read: serdes, and where event time comes from.
pub struct Consumed<K, V> {
    pub(crate) key: SharedSerde<K>,
    pub(crate) value: SharedSerde<V>,
    pub(crate) timestamp: Option<TimestampExtractor<K, V>>,
    pub(crate) name: Option<String>,
}

impl<K: 'static, V: 'static> Consumed<K, V> {
    /// Reads keys and values with these serdes; event time is the record's timestamp.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Consumed { key: Arc::new(key), value: Arc::new(value), timestamp: None, name: None }
    }

    /// Takes event time from the record instead (a field of the value, say).
    pub fn with_timestamp_extractor(mut self, f: impl Fn(&K, &V, i64) -> i64 + Send + Sync + 'static) -> Self {
        self.timestamp = Some(Arc::new(f));
        self
    }

    /// Names the source node.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

/// Picks a partition for a record among `n`.
pub type StreamPartitioner<K, V> = Arc<dyn Fn(&K, &V, u32) -> u32 + Send + Sync>;

/// How records are written to a topic: serdes and, optionally, a partitioner.
pub struct Produced<K, V> {
    pub(crate) key: SharedSerde<K>,
    pub(crate) value: SharedSerde<V>,
    pub(crate) partitioner: Option<StreamPartitioner<K, V>>,
    pub(crate) name: Option<String>,
}

impl<K: 'static, V: 'static> Produced<K, V> {
    /// Writes keys and values with these serdes, partitioned like Kafka's default partitioner.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Produced { key: Arc::new(key), value: Arc::new(value), partitioner: None, name: None }
    }

    /// Chooses partitions with `f(key, value, partition_count)`.
    pub fn with_partitioner(mut self, f: impl Fn(&K, &V, u32) -> u32 + Send + Sync + 'static) -> Self {
        self.partitioner = Some(Arc::new(f));
        self
    }

    /// Names the sink node.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

/// How a stream is regrouped: the name of the repartition topic, and serdes when they changed.
pub struct Grouped<K, V> {
    pub(crate) name: String,
    pub(crate) key: Option<SharedSerde<K>>,
    pub(crate) value: Option<SharedSerde<V>>,
}

impl<K: 'static, V: 'static> Grouped<K, V> {
    /// Names the grouping; the repartition topic is `<application.id>-<name>-repartition`.
    pub fn named(name: &str) -> Self {
        Grouped { name: name.to_string(), key: None, value: None }
    }

    /// Sets the serdes used in the repartition topic.
    pub fn with(mut self, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        self.key = Some(Arc::new(key));
        self.value = Some(Arc::new(value));
        self
    }
}

/// An explicit repartition: name, serdes and partition count.
pub struct Repartitioned<K, V> {
    pub(crate) name: String,
    pub(crate) key: Option<SharedSerde<K>>,
    pub(crate) value: Option<SharedSerde<V>>,
    pub(crate) partitions: Option<u32>,
}

impl<K: 'static, V: 'static> Repartitioned<K, V> {
    /// Names the repartition topic `<application.id>-<name>-repartition`.
    pub fn named(name: &str) -> Self {
        Repartitioned { name: name.to_string(), key: None, value: None, partitions: None }
    }

    /// Sets the serdes.
    pub fn with(mut self, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        self.key = Some(Arc::new(key));
        self.value = Some(Arc::new(value));
        self
    }

    /// Sets the partition count (default: the largest of the upstream sources').
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = Some(n);
        self
    }
}

/// Builds a topology with the DSL.
#[derive(Clone, Default)]
pub struct StreamBuilder {
    pub(crate) graph: Rc<RefCell<TopologyBuilder>>,
}

impl StreamBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream of the records of `topic`.
    pub fn stream<K: Data, V: Data>(&self, topic: &str, consumed: Consumed<K, V>) -> Stream<K, V> {
        self.stream_from(vec![TopicRef::External(topic.to_string())], consumed)
    }

    /// A stream of the records of several topics (read by one source, so co-partitioned).
    pub fn stream_from_topics<K: Data, V: Data>(&self, topics: &[&str], consumed: Consumed<K, V>) -> Stream<K, V> {
        self.stream_from(topics.iter().map(|t| TopicRef::External(t.to_string())).collect(), consumed)
    }

    /// A table over `topic`: each record is the latest value of its key, a null value (tombstone)
    /// deletes it. The table is materialized in the store `materialized` names (serdes default to
    /// the consumed ones), and its changes flow downstream.
    pub fn table<K: Data, V: Data>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        materialized: crate::table::Materialized<K, V>,
    ) -> crate::table::Table<K, V> {
        let value = consumed.value.clone();
        let key = consumed.key.clone();
        let timestamp = consumed.timestamp.clone();
        let nullable = Consumed::<K, Option<V>> {
            key: consumed.key,
            value: Arc::new(garam_core::serdes::OptionSerde(garam_core::serdes::ArcSerde(consumed.value))),
            timestamp: timestamp.map(|f| {
                let f: TimestampExtractor<K, Option<V>> = Arc::new(move |k: &K, v: &Option<V>, ts: i64| match v {
                    Some(v) => f(k, v, ts),
                    None => ts,
                });
                f
            }),
            name: consumed.name,
        };
        let source = self.stream_from(vec![TopicRef::External(topic.to_string())], nullable);
        let m = crate::table::Materialized {
            key: materialized.key.or(Some(key)),
            value: materialized.value.or(Some(value)),
            ..materialized
        };
        let update: crate::ops::keyed_update::Update<K, Option<V>, V> = Arc::new(|_, v, _| v);
        crate::table::stateful(&source, "table-source", m, update)
    }

    pub(crate) fn stream_from<K: Data, V: Data>(
        &self,
        topics: Vec<TopicRef>,
        consumed: Consumed<K, V>,
    ) -> Stream<K, V> {
        let mut g = self.graph.borrow_mut();
        let name = consumed.name.clone().unwrap_or_else(|| g.generated_name("SOURCE"));
        let (key, value) = (consumed.key.clone(), consumed.value.clone());
        let factory = source::factory(consumed.key, consumed.value, consumed.timestamp);
        let id = g.add_node(name, NodeKind::Source { topics }, &[], factory);
        drop(g);
        Stream::new(self.graph.clone(), id, Some(key), Some(value), false)
    }

    /// Validates the graph (unique names, serdes, named repartitions) and returns the topology.
    pub fn build(&self) -> Result<Topology> {
        Topology::new(self.graph.borrow().clone())
    }
}
