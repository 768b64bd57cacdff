//! `Stream<K, V>`: an unbounded sequence of keyed records, and the operators on it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::processor::Processor;
use garam_core::serdes::SharedSerde;
use garam_core::topology::{NodeId, NodeKind, TopicRef, TopologyBuilder};

use crate::builder::{Consumed, Grouped, Produced, Repartitioned, StreamBuilder};
use crate::grouped::GroupedStream;
use crate::ops::{process, sink, split, stateless};
use crate::Data;

/// A stream of `(K, V)` records. Operators return new streams; nothing runs until the topology
/// built from them is run by an `App` or the test driver.
pub struct Stream<K, V> {
    pub(crate) graph: Rc<RefCell<TopologyBuilder>>,
    pub(crate) node: NodeId,
    pub(crate) key_serde: Option<SharedSerde<K>>,
    pub(crate) value_serde: Option<SharedSerde<V>>,
    /// The key changed since the last (re)partitioning: grouping needs a repartition.
    pub(crate) key_changed: bool,
}

impl<K, V> Clone for Stream<K, V> {
    fn clone(&self) -> Self {
        Stream {
            graph: self.graph.clone(),
            node: self.node,
            key_serde: self.key_serde.clone(),
            value_serde: self.value_serde.clone(),
            key_changed: self.key_changed,
        }
    }
}

impl<K: Data, V: Data> Stream<K, V> {
    pub(crate) fn new(
        graph: Rc<RefCell<TopologyBuilder>>,
        node: NodeId,
        key_serde: Option<SharedSerde<K>>,
        value_serde: Option<SharedSerde<V>>,
        key_changed: bool,
    ) -> Self {
        Stream { graph, node, key_serde, value_serde, key_changed }
    }

    fn derive<K2: Data, V2: Data>(
        &self,
        node: NodeId,
        key_serde: Option<SharedSerde<K2>>,
        value_serde: Option<SharedSerde<V2>>,
        key_changed: bool,
    ) -> Stream<K2, V2> {
        Stream::new(self.graph.clone(), node, key_serde, value_serde, key_changed)
    }

    fn add(&self, kind: &str, factory: garam_core::topology::builder::Factory) -> NodeId {
        let mut g = self.graph.borrow_mut();
        let name = g.generated_name(kind);
        g.add_node(name, NodeKind::Processor { stores: vec![] }, &[self.node], factory)
    }

    /// Keeps the records for which `pred` is true.
    pub fn filter(&self, pred: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Stream<K, V> {
        let id = self.add("FILTER", stateless::filter(pred, false));
        self.derive(id, self.key_serde.clone(), self.value_serde.clone(), self.key_changed)
    }

    /// Drops the records for which `pred` is true.
    pub fn filter_not(&self, pred: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Stream<K, V> {
        let id = self.add("FILTER", stateless::filter(pred, true));
        self.derive(id, self.key_serde.clone(), self.value_serde.clone(), self.key_changed)
    }

    /// Replaces key and value. The key changes, so a later grouping repartitions.
    pub fn map<K2: Data, V2: Data>(&self, f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static) -> Stream<K2, V2> {
        let id = self.add("MAP", stateless::map(f));
        self.derive(id, None, None, true)
    }

    /// Replaces the value; the key (and partitioning) stays.
    pub fn map_values<V2: Data>(&self, f: impl Fn(V) -> V2 + Send + Sync + 'static) -> Stream<K, V2> {
        let id = self.add("MAPVALUES", stateless::map_values(move |_k: &K, v| f(v)));
        self.derive(id, self.key_serde.clone(), None, self.key_changed)
    }

    /// Replaces the value, seeing the key.
    pub fn map_values_with_key<V2: Data>(&self, f: impl Fn(&K, V) -> V2 + Send + Sync + 'static) -> Stream<K, V2> {
        let id = self.add("MAPVALUES", stateless::map_values(f));
        self.derive(id, self.key_serde.clone(), None, self.key_changed)
    }

    /// Zero or more records per record. The key changes.
    pub fn flat_map<K2: Data, V2: Data, I>(&self, f: impl Fn(K, V) -> I + Send + Sync + 'static) -> Stream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)>,
    {
        let id = self.add("FLATMAP", stateless::flat_map(f));
        self.derive(id, None, None, true)
    }

    /// Zero or more values per record, each with the record's key.
    pub fn flat_map_values<V2: Data, I>(&self, f: impl Fn(V) -> I + Send + Sync + 'static) -> Stream<K, V2>
    where
        I: IntoIterator<Item = V2>,
    {
        let id = self.add("FLATMAPVALUES", stateless::flat_map_values::<K, V, V2, I>(f));
        self.derive(id, self.key_serde.clone(), None, self.key_changed)
    }

    /// Sets a new key computed from key and value (the value stays).
    pub fn select_key<K2: Data>(&self, f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> Stream<K2, V> {
        let id = self.add("KEY-SELECT", stateless::map(move |k, v| (f(&k, &v), v)));
        self.derive(id, None, self.value_serde.clone(), true)
    }

    /// Calls `f` for every record and passes it on unchanged.
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> Stream<K, V> {
        let id = self.add("PEEK", stateless::peek(f));
        self.derive(id, self.key_serde.clone(), self.value_serde.clone(), self.key_changed)
    }

    /// Calls `f` for every record; ends the stream.
    pub fn for_each(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        self.add("FOREACH", stateless::peek(f));
    }

    /// Routes each record to the first branch whose predicate holds (see [`Splitter`]).
    /// Branch streams are named `<prefix><branch name>`.
    pub fn split(&self, prefix: &str) -> Splitter<K, V> {
        Splitter { stream: self.clone(), prefix: prefix.to_string(), branches: Vec::new() }
    }

    /// Both streams' records in one stream.
    pub fn merge(&self, other: &Stream<K, V>) -> Stream<K, V> {
        let mut g = self.graph.borrow_mut();
        let name = g.generated_name("MERGE");
        let id = g.add_node(
            name,
            NodeKind::Processor { stores: vec![] },
            &[self.node, other.node],
            stateless::pass::<K, V>(),
        );
        drop(g);
        let key_serde = self.key_serde.clone().or_else(|| other.key_serde.clone());
        let value_serde = self.value_serde.clone().or_else(|| other.value_serde.clone());
        self.derive(id, key_serde, value_serde, self.key_changed || other.key_changed)
    }

    /// Writes the stream to `topic`.
    pub fn to(&self, topic: &str, produced: Produced<K, V>) {
        let mut g = self.graph.borrow_mut();
        let name = produced.name.clone().unwrap_or_else(|| g.generated_name("SINK"));
        let topic_ref = TopicRef::External(topic.to_string());
        let f = sink::factory(
            sink::Destination::Fixed(topic_ref.clone()),
            produced.key,
            produced.value,
            produced.partitioner,
        );
        g.add_node(name, NodeKind::Sink { topic: topic_ref }, &[self.node], f);
    }

    /// Writes each record to the topic `choose(key, value)` names (the topic must exist).
    pub fn to_dynamic(&self, choose: impl Fn(&K, &V) -> String + Send + Sync + 'static, produced: Produced<K, V>) {
        let mut g = self.graph.borrow_mut();
        let name = produced.name.clone().unwrap_or_else(|| g.generated_name("SINK"));
        let f = sink::factory(
            sink::Destination::PerRecord(Arc::new(choose)),
            produced.key,
            produced.value,
            produced.partitioner,
        );
        g.add_node(name, NodeKind::Sink { topic: TopicRef::Dynamic }, &[self.node], f);
    }

    /// Writes the stream through an internal topic `<application.id>-<name>-repartition` and reads
    /// it back, partitioned by the current key. Downstream operators run in a new sub-topology.
    pub fn repartition(&self, repartitioned: Repartitioned<K, V>) -> Stream<K, V> {
        let key = repartitioned.key.or_else(|| self.key_serde.clone());
        let value = repartitioned.value.or_else(|| self.value_serde.clone());
        let name = repartitioned.name;
        let (Some(key), Some(value)) = (key, value) else {
            self.graph.borrow_mut().add_error(format!(
                "repartition '{name}' needs serdes: the key or value type changed upstream, so give them with \
                 Repartitioned::named(\"{name}\").with(key_serde, value_serde)"
            ));
            return self.clone();
        };
        let topic = TopicRef::Internal(name.clone());
        let mut g = self.graph.borrow_mut();
        let sink_name = format!("{name}-repartition-sink");
        let f = sink::factory(sink::Destination::Fixed(topic.clone()), key.clone(), value.clone(), None);
        let sink_id = g.add_node(sink_name, NodeKind::Sink { topic: topic.clone() }, &[self.node], f);
        g.add_internal_topic(&name, repartitioned.partitions, sink_id);
        drop(g);
        let consumed = Consumed { key, value, timestamp: None, name: Some(format!("{name}-repartition-source")) };
        let b = StreamBuilder { graph: self.graph.clone() };
        b.stream_from(vec![topic], consumed)
    }

    /// Groups by the current key. If the key changed upstream, the stream is repartitioned, which
    /// needs a name: use [`Stream::group_by_key_with`].
    pub fn group_by_key(&self) -> GroupedStream<K, V> {
        if self.key_changed {
            self.graph.borrow_mut().add_error(
                "group_by_key() after the key changed needs a repartition topic name: use \
                 group_by_key_with(Grouped::named(\"...\"))"
                    .to_string(),
            );
        }
        GroupedStream::new(self.clone(), None)
    }

    /// Groups by the current key, repartitioning through `<application.id>-<name>-repartition` if the
    /// key changed upstream.
    pub fn group_by_key_with(&self, grouped: Grouped<K, V>) -> GroupedStream<K, V> {
        let name = grouped.name.clone();
        if !self.key_changed {
            return GroupedStream::new(self.clone(), Some(name));
        }
        let mut r = Repartitioned::named(&name);
        r.key = grouped.key;
        r.value = grouped.value;
        GroupedStream::new(self.repartition(r), Some(name))
    }

    /// Groups by a new key computed from each record; always repartitions through
    /// `<application.id>-<name>-repartition`.
    pub fn group_by<K2: Data>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> GroupedStream<K2, V> {
        let keyed = self.select_key(f);
        let name = grouped.name.clone();
        let mut r = Repartitioned::named(&name);
        r.key = grouped.key;
        r.value = grouped.value.or_else(|| self.value_serde.clone());
        GroupedStream::new(keyed.repartition(r), Some(name))
    }

    /// Runs a user [`Processor`]; `supplier` makes one instance per task.
    pub fn process<K2: Data, V2: Data, P>(
        &self,
        name: &str,
        supplier: impl Fn() -> P + Send + Sync + 'static,
    ) -> Stream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        let mut g = self.graph.borrow_mut();
        let id = g.add_node(
            name.to_string(),
            NodeKind::Processor { stores: vec![] },
            &[self.node],
            process::factory(supplier),
        );
        drop(g);
        self.derive(id, None, None, true)
    }

    /// Folds each batch's records per (new key, tumbling window of `size`) into one partial
    /// aggregate, timestamped with the latest record folded in: `split(k, v)` gives a record's
    /// new key and the part of it that `fold(aggregate, part)` adds to `init()`. Flink's
    /// local aggregation, which shrinks what a repartition carries to one record per key and
    /// window per batch. Merge the partials after the repartition with a windowed aggregate of the
    /// same tumbling window, or a tumbling window whose size is a multiple of `size` (partials
    /// are placed by their latest timestamp, so hopping, sliding and session windows downstream
    /// would be wrong). Keeps nothing between batches.
    ///
    /// ```
    /// use std::time::Duration;
    /// use garam_operators::window::{EmitStrategy, TimeWindows};
    /// use garam_operators::{Consumed, Grouped, Materialized, StreamBuilder};
    /// use garam_core::serdes::{StringSerde, U64Serde};
    ///
    /// let b = StreamBuilder::new();
    /// b.stream::<String, String>("views", Consumed::default()) // user → page
    ///     .pre_aggregate(Duration::from_secs(60), |_user, page| (page, ()), || 0u64, |n, ()| n + 1)
    ///     .group_by_key_with(Grouped::named("by-page").with(StringSerde, U64Serde))
    ///     .windowed_by(TimeWindows::of(Duration::from_secs(60)), EmitStrategy::OnWindowClose)
    ///     .aggregate(|| 0u64, |_page, partial, n| n + partial, Materialized::named("views").with(StringSerde, U64Serde));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn pre_aggregate<K2: Data + std::hash::Hash + Eq, V2: 'static, VA: Data>(
        &self,
        size: std::time::Duration,
        split: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
        init: impl Fn() -> VA + Send + Sync + 'static,
        fold: impl Fn(VA, V2) -> VA + Send + Sync + 'static,
    ) -> Stream<K2, VA> {
        let spec = crate::ops::pre_aggregate::PreAggregateSpec {
            size_ms: i64::try_from(size.as_millis()).unwrap_or(i64::MAX).max(1),
            split: Arc::new(split),
            init: Arc::new(init),
            fold: Arc::new(fold),
        };
        let id = self.add("PRE-AGGREGATE", crate::ops::pre_aggregate::factory(spec));
        self.derive(id, None, None, true)
    }

    /// Runs a user [`Processor`] that owns a key-value store over bytes: `supplier(store)` makes
    /// one instance per task with the task's store, which is named by `materialized` and backed by
    /// the changelog `<application.id>-<store>-changelog`. Sinks that write outside the log keep
    /// what they have staged there (see [`Processor::prepare_commit`]).
    pub fn process_with_store<K2: Data, V2: Data, P>(
        &self,
        name: &str,
        materialized: crate::Materialized<Vec<u8>, Vec<u8>>,
        supplier: impl Fn(garam_core::state::SharedStore) -> P + Send + Sync + 'static,
    ) -> Stream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        let mut g = self.graph.borrow_mut();
        let store = materialized.name.clone();
        if g.stores().iter().any(|(s, _)| s.name == store) {
            g.add_error(format!("two stores are named '{store}'; every stateful operator needs its own name"));
        }
        let name_of_store = store.clone();
        let factory = process::factory_with(move |inst| Ok(supplier(inst.store(&name_of_store)?)));
        let id = g.add_node(name.to_string(), NodeKind::Processor { stores: vec![] }, &[self.node], factory);
        g.add_store(
            garam_core::state::StoreSpec { name: store, supplier: materialized.supplier.clone(), serdes: None },
            id,
        );
        drop(g);
        self.derive(id, None, None, true)
    }

    /// Sets serdes for the current key and value types (after a `map`, before `repartition`).
    pub fn with_serdes(
        mut self,
        key: impl garam_core::serdes::Serde<K>,
        value: impl garam_core::serdes::Serde<V>,
    ) -> Self {
        self.key_serde = Some(Arc::new(key));
        self.value_serde = Some(Arc::new(value));
        self
    }
}

/// Builds the branches of [`Stream::split`].
pub struct Splitter<K, V> {
    stream: Stream<K, V>,
    prefix: String,
    branches: Vec<(String, Option<split::Predicate<K, V>>)>,
}

impl<K: Data, V: Data> Splitter<K, V> {
    /// A branch taking the records for which `pred` holds (and no earlier branch's did).
    pub fn branch(mut self, name: &str, pred: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.branches.push((name.to_string(), Some(Arc::new(pred))));
        self
    }

    /// A branch taking every record no other branch took; finishes the split.
    pub fn default_branch(mut self, name: &str) -> BTreeMap<String, Stream<K, V>> {
        self.branches.push((name.to_string(), None));
        self.finish()
    }

    /// Finishes the split; records no branch takes are dropped.
    pub fn no_default_branch(self) -> BTreeMap<String, Stream<K, V>> {
        self.finish()
    }

    fn finish(self) -> BTreeMap<String, Stream<K, V>> {
        let preds: Vec<Option<split::Predicate<K, V>>> = self.branches.iter().map(|(_, p)| p.clone()).collect();
        let mut g = self.stream.graph.borrow_mut();
        let split_name = format!("{}split", self.prefix);
        let split_id =
            g.add_node(split_name, NodeKind::Processor { stores: vec![] }, &[self.stream.node], split::factory(preds));
        let mut out = BTreeMap::new();
        for (name, _) in &self.branches {
            let full = format!("{}{}", self.prefix, name);
            let id = g.add_node(
                full.clone(),
                NodeKind::Processor { stores: vec![] },
                &[split_id],
                stateless::pass::<K, V>(),
            );
            out.insert(
                full,
                Stream::new(
                    self.stream.graph.clone(),
                    id,
                    self.stream.key_serde.clone(),
                    self.stream.value_serde.clone(),
                    self.stream.key_changed,
                ),
            );
        }
        out
    }
}
