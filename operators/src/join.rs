//! Joins of a stream with tables: a co-partitioned [`Table`] (by the record key), or a
//! [`GlobalTable`] replicated to every instance (by a key taken from the record).
//!
//! A stream record is joined with the table's value *as of when it is processed* — the table's
//! later updates do not revisit earlier stream records, as in Kafka Streams.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use garam_core::processor::{Batch, Downstream, DownstreamRef, Fanout, TaskContext};
use garam_core::serdes::SharedSerde;
use garam_core::state::{GlobalStore, GlobalTableSpec, SharedStore};
use garam_core::topology::builder::Factory;
use garam_core::topology::NodeKind;
use garam_core::{Result, StreamsError};

use crate::builder::{Consumed, StreamBuilder};
use crate::stream::Stream;
use crate::table::Table;
use crate::Data;

/// What a global table's values must be: shared by the tasks of every worker thread.
pub trait SharedData: Data + Send + Sync {}
impl<T: Data + Send + Sync> SharedData for T {}

/// A topic read in full by every instance, for joins by a key taken from the stream's records.
/// Made by [`StreamBuilder::global_table`].
pub struct GlobalTable<K, V> {
    name: String,
    key: SharedSerde<K>,
    _v: PhantomData<fn() -> V>,
}

impl<K, V> Clone for GlobalTable<K, V> {
    fn clone(&self) -> Self {
        GlobalTable { name: self.name.clone(), key: self.key.clone(), _v: PhantomData }
    }
}

impl<K, V> GlobalTable<K, V> {
    /// The table's store name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A global table's values by serialized key.
struct TypedGlobalStore<V> {
    topic: String,
    value: SharedSerde<V>,
    map: RwLock<HashMap<Bytes, V>>,
}

impl<V: SharedData> GlobalStore for TypedGlobalStore<V> {
    fn apply(&self, records: &[(Option<Bytes>, Option<Bytes>)]) -> Vec<(usize, String)> {
        let mut errors = Vec::new();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (i, (k, v)) in records.iter().enumerate() {
            let Some(k) = k else {
                errors.push((i, format!("a record of global topic '{}' has no key", self.topic)));
                continue;
            };
            match v {
                None => {
                    map.remove(k);
                }
                Some(bytes) => match self.value.deserialize(bytes) {
                    Ok(v) => {
                        map.insert(k.clone(), v);
                    }
                    Err(e) => errors.push((i, e.to_string())),
                },
            }
        }
        errors
    }

    fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl StreamBuilder {
    /// A global table over `topic`, named `name`: every instance reads all of its partitions
    /// before processing starts and follows it while running; tombstones delete.
    pub fn global_table<K: Data, V: SharedData>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        name: &str,
    ) -> GlobalTable<K, V> {
        let value = consumed.value.clone();
        let topic_name = topic.to_string();
        let spec = GlobalTableSpec {
            name: name.to_string(),
            topic: topic.to_string(),
            factory: Arc::new(move || {
                Arc::new(TypedGlobalStore { topic: topic_name.clone(), value: value.clone(), map: RwLock::default() })
                    as Arc<dyn GlobalStore>
            }),
        };
        self.graph.borrow_mut().add_global_table(spec);
        GlobalTable { name: name.to_string(), key: consumed.key, _v: PhantomData }
    }
}

/// `joiner(stream value, table value) -> output` (`None`: no output).
type Joiner<V, TV, VR> = Arc<dyn Fn(V, Option<&TV>) -> Option<VR> + Send + Sync>;

struct GlobalJoin<K, V, GK, GV, VR> {
    store: Arc<TypedGlobalStore<GV>>,
    key: SharedSerde<GK>,
    select: Arc<dyn Fn(&K, &V) -> GK + Send + Sync>,
    joiner: Joiner<V, GV, VR>,
    next: Fanout<K, VR>,
    buf: Vec<u8>,
}

impl<K: Data, V: Data, GK: Data, GV: SharedData, VR: Data> Downstream<K, V> for GlobalJoin<K, V, GK, GV, VR> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::with_capacity(batch.len());
        {
            let map = self.store.map.read().unwrap_or_else(|e| e.into_inner());
            for r in batch {
                let gk = (self.select)(&r.key, &r.value);
                self.buf.clear();
                self.key
                    .serialize(&gk, &mut self.buf)
                    .map_err(|e| StreamsError::Topology(format!("cannot serialize a global-table key: {e}")))?;
                let gv = map.get(self.buf.as_slice());
                let value = r.value;
                if let Some(v) = (self.joiner)(value, gv) {
                    out.push(garam_core::record::StreamRecord {
                        key: r.key,
                        value: v,
                        timestamp: r.timestamp,
                        headers: r.headers,
                    });
                }
            }
        }
        self.next.push(out, ctx)
    }
}

struct TableJoin<K, V, TV, VR> {
    store: SharedStore,
    key: SharedSerde<K>,
    value: SharedSerde<TV>,
    joiner: Joiner<V, TV, VR>,
    next: Fanout<K, VR>,
    buf: Vec<u8>,
}

impl<K: Data, V: Data, TV: Data, VR: Data> Downstream<K, V> for TableJoin<K, V, TV, VR> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut store = self.store.borrow_mut();
            for r in batch {
                self.buf.clear();
                self.key.serialize(&r.key, &mut self.buf).map_err(|e| {
                    StreamsError::Topology(format!("store {}: cannot serialize a key: {e}", store.name()))
                })?;
                let tv = match store.get(&self.buf)? {
                    Some(b) => Some(self.value.deserialize(&b).map_err(|e| {
                        StreamsError::Topology(format!("store {}: cannot read a value: {e}", store.name()))
                    })?),
                    None => None,
                };
                if let Some(v) = (self.joiner)(r.value, tv.as_ref()) {
                    out.push(garam_core::record::StreamRecord {
                        key: r.key,
                        value: v,
                        timestamp: r.timestamp,
                        headers: r.headers,
                    });
                }
            }
        }
        self.next.push(out, ctx)
    }
}

impl<K: Data, V: Data> Stream<K, V> {
    fn global_join<GK: Data, GV: SharedData, VR: Data>(
        &self,
        kind: &str,
        table: &GlobalTable<GK, GV>,
        select: Arc<dyn Fn(&K, &V) -> GK + Send + Sync>,
        joiner: Joiner<V, GV, VR>,
    ) -> Stream<K, VR> {
        let (name, key) = (table.name.clone(), table.key.clone());
        let f = Factory::Node(Arc::new(move |inst, id| {
            let store = inst.global_store(&name)?.as_any().downcast::<TypedGlobalStore<GV>>().map_err(|_| {
                StreamsError::Topology(format!("internal: global table '{name}' holds another value type"))
            })?;
            let node = GlobalJoin {
                store,
                key: key.clone(),
                select: select.clone(),
                joiner: joiner.clone(),
                next: inst.children::<K, VR>(id)?,
                buf: Vec::new(),
            };
            let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(node));
            Ok(Box::new(handle) as Box<dyn Any>)
        }));
        let mut g = self.graph.borrow_mut();
        let node_name = g.generated_name(kind);
        let id = g.add_node(node_name, NodeKind::Processor { stores: vec![] }, &[self.node], f);
        drop(g);
        Stream::new(self.graph.clone(), id, self.key_serde.clone(), None, self.key_changed)
    }

    /// Joins each record with the global table's value for `select(key, value)`; records without
    /// one are dropped. The stream is not repartitioned: every instance has the whole table.
    ///
    /// ```
    /// use garam_core::serdes::StringSerde;
    /// use garam_operators::{Consumed, Produced, StreamBuilder};
    /// let b = StreamBuilder::new();
    /// let campaigns = b.global_table::<String, String>("ads", Consumed::with(StringSerde, StringSerde), "ad-campaigns");
    /// b.stream::<String, String>("views", Consumed::with(StringSerde, StringSerde)) // value: the ad id
    ///     .join_global(&campaigns, |_user, ad| ad.clone(), |ad, campaign| format!("{ad} in {campaign}"))
    ///     .to("views-by-campaign", Produced::with(StringSerde, StringSerde));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join_global<GK: Data, GV: SharedData, VR: Data>(
        &self,
        table: &GlobalTable<GK, GV>,
        select: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(V, &GV) -> VR + Send + Sync + 'static,
    ) -> Stream<K, VR> {
        let joiner: Joiner<V, GV, VR> = Arc::new(move |v, gv| gv.map(|gv| joiner(v, gv)));
        self.global_join("GLOBALTABLE-JOIN", table, Arc::new(select), joiner)
    }

    /// Like [`Stream::join_global`], keeping records without a table value (`None`).
    pub fn left_join_global<GK: Data, GV: SharedData, VR: Data>(
        &self,
        table: &GlobalTable<GK, GV>,
        select: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(V, Option<&GV>) -> VR + Send + Sync + 'static,
    ) -> Stream<K, VR> {
        let joiner: Joiner<V, GV, VR> = Arc::new(move |v, gv| Some(joiner(v, gv)));
        self.global_join("GLOBALTABLE-LEFTJOIN", table, Arc::new(select), joiner)
    }

    fn table_join<TV: Data, VR: Data>(
        &self,
        kind: &str,
        table: &Table<K, TV>,
        joiner: Joiner<V, TV, VR>,
    ) -> Stream<K, VR> {
        if self.key_changed {
            // Repartitioned by the new key through `<table store>-join-repartition`.
            let mut r =
                crate::builder::Repartitioned::named(&format!("{}-join", table.store.as_deref().unwrap_or("table")));
            r.key = self.key_serde.clone().or_else(|| table.changes.key_serde.clone());
            r.value = self.value_serde.clone();
            return self.repartition(r).table_join_here(kind, table, joiner);
        }
        self.table_join_here(kind, table, joiner)
    }

    fn table_join_here<TV: Data, VR: Data>(
        &self,
        kind: &str,
        table: &Table<K, TV>,
        joiner: Joiner<V, TV, VR>,
    ) -> Stream<K, VR> {
        let mut g = self.graph.borrow_mut();
        let (Some(store), Some(key), Some(value)) = (
            table.store.clone(),
            table.changes.key_serde.clone().or_else(|| self.key_serde.clone()),
            table.value_serde.clone(),
        ) else {
            g.add_error(
                "a stream-table join needs a materialized table with serdes (from builder.table or an aggregation)"
                    .to_string(),
            );
            drop(g);
            // Never built: `build()` reports the error.
            return self.flat_map_values(|_| std::iter::empty::<VR>());
        };
        let store_name = store.clone();
        let f = Factory::Node(Arc::new(move |inst, id| {
            let node = TableJoin {
                store: inst.store(&store_name)?,
                key: key.clone(),
                value: value.clone(),
                joiner: joiner.clone(),
                next: inst.children::<K, VR>(id)?,
                buf: Vec::new(),
            };
            let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(node));
            Ok(Box::new(handle) as Box<dyn Any>)
        }));
        let node_name = g.generated_name(kind);
        let id = g.add_node(node_name, NodeKind::Processor { stores: vec![] }, &[self.node], f);
        g.connect_store(&store, id);
        drop(g);
        Stream::new(self.graph.clone(), id, self.key_serde.clone(), None, self.key_changed)
    }

    /// Joins each record with the table's current value for its key (the table must be
    /// co-partitioned with the stream); records without one are dropped.
    pub fn join_table<TV: Data, VR: Data>(
        &self,
        table: &Table<K, TV>,
        joiner: impl Fn(V, &TV) -> VR + Send + Sync + 'static,
    ) -> Stream<K, VR> {
        let joiner: Joiner<V, TV, VR> = Arc::new(move |v, tv| tv.map(|tv| joiner(v, tv)));
        self.table_join("STREAM-TABLE-JOIN", table, joiner)
    }

    /// Like [`Stream::join_table`], keeping records without a table value (`None`).
    pub fn left_join_table<TV: Data, VR: Data>(
        &self,
        table: &Table<K, TV>,
        joiner: impl Fn(V, Option<&TV>) -> VR + Send + Sync + 'static,
    ) -> Stream<K, VR> {
        let joiner: Joiner<V, TV, VR> = Arc::new(move |v, tv| Some(joiner(v, tv)));
        self.table_join("STREAM-TABLE-LEFTJOIN", table, joiner)
    }
}

/// The time bounds of a stream-stream join: a left record at `t` joins the right records in
/// `[t - before, t + after]`; records up to `grace` behind the watermark still join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    before: i64,
    after: i64,
    grace: i64,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl JoinWindows {
    /// Records at most `d` apart join (either way), with zero grace.
    pub fn of(d: std::time::Duration) -> Self {
        JoinWindows { before: millis(d), after: millis(d), grace: 0 }
    }

    /// How far before a left record a right record may be.
    pub fn before(mut self, d: std::time::Duration) -> Self {
        self.before = millis(d);
        self
    }

    /// How far after a left record a right record may be.
    pub fn after(mut self, d: std::time::Duration) -> Self {
        self.after = millis(d);
        self
    }

    /// Accepts records this far behind the watermark.
    pub fn grace(mut self, d: std::time::Duration) -> Self {
        self.grace = millis(d);
        self
    }
}

/// Names a stream-stream join (its buffer is the store `<name>-join-store`, changelogged) and
/// optionally gives the serdes of both sides' values.
pub struct StreamJoined<V1, V2> {
    name: String,
    left: Option<SharedSerde<V1>>,
    right: Option<SharedSerde<V2>>,
    supplier: Arc<dyn garam_core::state::StoreSupplier>,
}

impl<V1: 'static, V2: 'static> StreamJoined<V1, V2> {
    /// A join named `name`, buffering in RocksDB.
    pub fn named(name: &str) -> Self {
        StreamJoined {
            name: name.to_string(),
            left: None,
            right: None,
            supplier: Arc::new(garam_state::RocksDbSupplier),
        }
    }

    /// The serdes of the left and right values (default: the streams').
    pub fn with(mut self, left: impl garam_core::serdes::Serde<V1>, right: impl garam_core::serdes::Serde<V2>) -> Self {
        self.left = Some(Arc::new(left));
        self.right = Some(Arc::new(right));
        self
    }

    /// Buffers in memory (rebuilt from the changelog on every start).
    pub fn in_memory(mut self) -> Self {
        self.supplier = Arc::new(garam_state::InMemorySupplier);
        self
    }
}

impl<K: Data, V: Data> Stream<K, V> {
    fn stream_join<V2: Data, VR: Data>(
        &self,
        other: &Stream<K, V2>,
        joiner: crate::ops::stream_join::PairJoiner<V, V2, VR>,
        emit_unmatched: [bool; 2],
        windows: JoinWindows,
        joined: StreamJoined<V, V2>,
    ) -> Stream<K, VR> {
        use crate::ops::stream_join::{factories, StreamJoinSpec};
        let store = format!("{}-join-store", joined.name);
        let key = self.key_serde.clone().or_else(|| other.key_serde.clone());
        let left = joined.left.or_else(|| self.value_serde.clone());
        let right = joined.right.or_else(|| other.value_serde.clone());
        // A side whose key changed is repartitioned by it, through `<name>-left` / `<name>-right`.
        let this = if self.key_changed {
            repartition_by_key(self, &format!("{}-left", joined.name), &key, &left)
        } else {
            self.clone()
        };
        let other = &if other.key_changed {
            repartition_by_key(other, &format!("{}-right", joined.name), &key, &right)
        } else {
            other.clone()
        };
        let mut g = self.graph.borrow_mut();
        let (Some(key), Some(left), Some(right)) = (key, left, right) else {
            g.add_error(format!(
                "join '{}' needs the serdes of the key and both values: give them with StreamJoined::with or \
                 Stream::with_serdes",
                joined.name
            ));
            drop(g);
            return self.flat_map_values(|_| std::iter::empty::<VR>());
        };
        let spec = StreamJoinSpec {
            store: store.clone(),
            before: windows.before,
            after: windows.after,
            grace: windows.grace,
            emit_unmatched,
            key: key.clone(),
            left,
            right,
            joiner,
        };
        let (lf, rf) = factories(spec);
        let name = &joined.name;
        let l = g.add_node(format!("{name}-join-this"), NodeKind::Processor { stores: vec![] }, &[this.node], lf);
        let r = g.add_node(format!("{name}-join-other"), NodeKind::Processor { stores: vec![] }, &[other.node], rf);
        let m = g.add_node(
            format!("{name}-join-merge"),
            NodeKind::Processor { stores: vec![] },
            &[l, r],
            crate::ops::stateless::pass::<K, VR>(),
        );
        g.add_store(garam_core::state::StoreSpec { name: store.clone(), supplier: joined.supplier, serdes: None }, l);
        g.connect_store(&store, r);
        drop(g);
        Stream::new(self.graph.clone(), m, Some(key), None, false)
    }

    /// Joins records of the two streams with equal keys whose times are within `windows`;
    /// `joiner(left, right)` makes each output, timestamped with the later of the two.
    ///
    /// ```
    /// use std::time::Duration;
    /// use garam_core::serdes::StringSerde;
    /// use garam_operators::join::{JoinWindows, StreamJoined};
    /// use garam_operators::{Consumed, Produced, StreamBuilder};
    /// let b = StreamBuilder::new();
    /// let views = b.stream::<String, String>("views", Consumed::with(StringSerde, StringSerde));
    /// let clicks = b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde));
    /// views
    ///     .join(&clicks, |v, c| format!("{v} then {c}"), JoinWindows::of(Duration::from_secs(60)), StreamJoined::named("view-click"))
    ///     .to("view-clicks", Produced::with(StringSerde, StringSerde));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join<V2: Data, VR: Data>(
        &self,
        other: &Stream<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<V, V2>,
    ) -> Stream<K, VR> {
        let j = Arc::new(move |a: Option<&V>, b: Option<&V2>| match (a, b) {
            (Some(a), Some(b)) => Some(joiner(a, b)),
            _ => None,
        });
        self.stream_join(other, j, [false, false], windows, joined)
    }

    /// Like [`Stream::join`], and each left record that joined nothing is emitted once, with
    /// `None`, after its window closes.
    pub fn left_join<V2: Data, VR: Data>(
        &self,
        other: &Stream<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<V, V2>,
    ) -> Stream<K, VR> {
        let j = Arc::new(move |a: Option<&V>, b: Option<&V2>| a.map(|a| joiner(a, b)));
        self.stream_join(other, j, [true, false], windows, joined)
    }

    /// Like [`Stream::join`], and records of either side that joined nothing are emitted once,
    /// with `None` for the other side, after their windows close.
    pub fn outer_join<V2: Data, VR: Data>(
        &self,
        other: &Stream<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<V, V2>,
    ) -> Stream<K, VR> {
        let j = Arc::new(move |a: Option<&V>, b: Option<&V2>| Some(joiner(a, b)));
        self.stream_join(other, j, [true, true], windows, joined)
    }
}

fn repartition_by_key<K: Data, X: Data>(
    s: &Stream<K, X>,
    name: &str,
    key: &Option<SharedSerde<K>>,
    value: &Option<SharedSerde<X>>,
) -> Stream<K, X> {
    let mut r = crate::builder::Repartitioned::named(name);
    r.key = key.clone();
    r.value = value.clone();
    s.repartition(r)
}
