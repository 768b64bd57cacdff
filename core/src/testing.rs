//! The test driver: run a topology synchronously, with no threads and no backend.
//!
//! Modelled on Kafka Streams' `TopologyTestDriver`: pipe records with timestamps into input topics,
//! read what reached output topics, advance the wall clock to fire punctuations. Records written to
//! repartition topics are processed by the downstream sub-topology before `pipe` returns. Records
//! go through the real serdes, sources and sinks, so deserialization-error policies apply too.
//!
//! The DSL's crate documentation (`garam-operators`) has a complete example; in short:
//!
//! ```text
//! let driver = TopologyTestDriver::new(topology)?;
//! let input = driver.input_topic("clicks", StringSerde, JsonSerde::<Click>::new());
//! let output = driver.output_topic("views", StringSerde, JsonSerde::<View>::new());
//! input.pipe_at("user-1".into(), click, 1_700_000_000_000)?;
//! assert_eq!(output.read_values()?, vec![expected_view]);
//! driver.advance_wall_clock(Duration::from_secs(60))?;   // fires wall-clock punctuations
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{PolledRecords, TopicPartition};
use crate::error::{Result, StreamsError};
use crate::processor::{RecordCollector, TaskCounters, TaskId};
use crate::record::{ConsumedRecord, Header, StreamRecord};
use crate::runtime::{AppConfig, Task, TaskEnv};
use crate::serdes::{deserialize_opt, Serde};
use crate::topology::Topology;

struct Inner {
    topology: Arc<Topology>,
    config: AppConfig,
    dead_letter_topic: String,
    topic_to_sub: BTreeMap<String, usize>,
    internal: Vec<String>,
    tasks: BTreeMap<usize, Task>,
    /// The store caches' budget (`None`: caching disabled).
    cache: Option<Rc<crate::state::CacheBudget>>,
    /// Every record written, per topic.
    written: BTreeMap<String, Vec<ConsumedRecord>>,
    /// Read positions of output readers.
    read: BTreeMap<String, usize>,
    /// Next input offset per topic.
    next_offset: BTreeMap<String, u64>,
    pending: VecDeque<(String, ConsumedRecord)>,
    wall_clock_ms: i64,
    /// Set by `end_input`: every input is at the end of time.
    end_of_input: bool,
    /// Global tables, and the topics that feed them.
    globals: crate::topology::GlobalStores,
    global_topics: BTreeMap<String, Vec<String>>,
    /// Stores live here, removed when the driver is dropped.
    state_dir: std::path::PathBuf,
    /// What every store of this driver opens with: one memory bound for all of them.
    store_context: crate::state::StoreContext,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks.clear();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

struct Collector<'a> {
    written: &'a mut BTreeMap<String, Vec<ConsumedRecord>>,
    pending: &'a mut VecDeque<(String, ConsumedRecord)>,
    internal: &'a [String],
}

impl RecordCollector for Collector<'_> {
    fn send(
        &mut self,
        topic: &str,
        _p: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: i64,
        headers: &[Header],
    ) -> Result<()> {
        let log = self.written.entry(topic.to_string()).or_default();
        let rec = ConsumedRecord {
            offset: log.len() as u64,
            timestamp: ts,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: headers.to_vec(),
        };
        if self.internal.iter().any(|t| t == topic) {
            self.pending.push_back((topic.to_string(), rec.clone()));
        }
        log.push(rec);
        Ok(())
    }

    fn partition_count(&mut self, _topic: &str) -> Result<u32> {
        Ok(1)
    }
}

/// The driver's topics as a backend, for restoring stores from their changelogs.
struct ChangelogReader<'a> {
    written: &'a BTreeMap<String, Vec<ConsumedRecord>>,
}

impl crate::runtime::stores::ChangelogReader for ChangelogReader<'_> {
    fn fetch(&self, topic: &str, _p: u32, offset: u64, _max: usize, _rc: bool) -> Result<crate::backend::Fetched> {
        let all = self.written.get(topic).map(Vec::as_slice).unwrap_or(&[]);
        let records = all.iter().skip(offset as usize).cloned().collect::<Vec<_>>();
        Ok(crate::backend::Fetched { next_offset: all.len() as u64, records })
    }
    fn end_offset(&self, topic: &str, _p: u32, _rc: bool) -> Result<u64> {
        Ok(self.written.get(topic).map_or(0, Vec::len) as u64)
    }
}

impl Inner {
    fn task(&mut self, sub: usize) -> Result<&mut Task> {
        if !self.tasks.contains_key(&sub) {
            let id = TaskId { subtopology: sub, partition: 0 };
            let mut stores = crate::runtime::stores::TaskStores::open(
                &self.topology,
                &self.config.application_id,
                &self.state_dir,
                id,
                &ChangelogReader { written: &self.written },
                false,
                &self.store_context,
                self.cache.as_ref(),
            )?
            .ok_or_else(|| {
                crate::error::StreamsError::backend(format!("test driver: the state of task {id} is locked"), false)
            })?;
            stores.restore_all(&ChangelogReader { written: &self.written }, None)?;
            let t = Task::new(
                &self.topology,
                &self.config.application_id,
                id,
                stores,
                self.config.watermark,
                &self.globals,
            )?;
            self.tasks.insert(sub, t);
        }
        Ok(self.tasks.get_mut(&sub).expect("inserted above"))
    }

    fn deliver(&mut self, topic: &str, record: ConsumedRecord) -> Result<()> {
        if let Some(names) = self.global_topics.get(topic) {
            for name in names {
                let store = &self.globals[name];
                if let Some((_, reason)) = store.apply(&[(record.key.clone(), record.value.clone())]).pop() {
                    return Err(StreamsError::Deserialization {
                        what: "value",
                        topic: topic.to_string(),
                        partition: 0,
                        offset: record.offset,
                        reason,
                    });
                }
            }
            return Ok(());
        }
        self.pending.push_back((topic.to_string(), record));
        while let Some((topic, rec)) = self.pending.pop_front() {
            let sub = *self
                .topic_to_sub
                .get(&topic)
                .ok_or_else(|| StreamsError::Topology(format!("topic '{topic}' is not an input of this topology")))?;
            let dlq = self.dead_letter_topic.clone();
            let env = TaskEnv {
                policy: self.config.deserialization_policy,
                dead_letter_topic: &dlq,
                wall_clock_ms: self.wall_clock_ms,
                caught_up: None,
                end_of_input: self.end_of_input,
                exactly_once: self.config.processing_guarantee == crate::runtime::ProcessingGuarantee::ExactlyOnce,
            };
            let internal = self.internal.clone();
            self.task(sub)?;
            let Inner { tasks, written, pending, .. } = self;
            let task = tasks.get_mut(&sub).expect("created above");
            let mut c = Collector { written, pending, internal: &internal };
            task.process(PolledRecords { tp: TopicPartition::new(topic, 0), records: vec![rec] }, &mut c, &env)?;
            // Like Kafka Streams' driver, commit after every record: caches reach the changelogs.
            task.flush_caches(&mut c)?;
            task.committed()?;
        }
        Ok(())
    }
}

/// Runs a topology synchronously for tests.
pub struct TopologyTestDriver {
    inner: Rc<RefCell<Inner>>,
}

impl TopologyTestDriver {
    /// A driver with application id `test-driver`.
    pub fn new(topology: Topology) -> Result<Self> {
        Self::with_config(topology, AppConfig::new("test-driver"))
    }

    /// A driver with a config (application id, deserialization policy, dead-letter topic).
    pub fn with_config(topology: Topology, mut config: AppConfig) -> Result<Self> {
        // The driver's clock stands still unless advanced: send every watermark change at once.
        config.watermark.publish_interval_ms = 0;
        let app = config.application_id.clone();
        let store_context = config.new_store_context();
        let topic_to_sub = topology.topic_to_subtopology(&app);
        let internal = topology.internal_topics().iter().map(|t| t.full_name(&app)).collect();
        let globals = crate::runtime::global_stores(&topology);
        let mut global_topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for g in topology.global_tables() {
            global_topics.entry(g.topic.clone()).or_default().push(g.name.clone());
        }
        Ok(TopologyTestDriver {
            inner: Rc::new(RefCell::new(Inner {
                topology: Arc::new(topology),
                dead_letter_topic: config.dead_letter_topic(),
                cache: config.thread_cache(),
                config,
                topic_to_sub,
                internal,
                tasks: BTreeMap::new(),
                written: BTreeMap::new(),
                read: BTreeMap::new(),
                next_offset: BTreeMap::new(),
                pending: VecDeque::new(),
                wall_clock_ms: 0,
                end_of_input: false,
                globals,
                global_topics,
                state_dir: {
                    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::env::temp_dir().join(format!("garam-test-driver-{}-{n}", std::process::id()))
                },
                store_context,
            })),
        })
    }

    /// An input topic that serializes with the given serdes.
    pub fn input_topic<K, V>(&self, name: &str, key: impl Serde<K>, value: impl Serde<V>) -> TestInputTopic<K, V> {
        TestInputTopic {
            inner: self.inner.clone(),
            topic: name.to_string(),
            key: Box::new(key),
            value: Box::new(value),
        }
    }

    /// An output topic that deserializes with the given serdes.
    pub fn output_topic<K, V>(&self, name: &str, key: impl Serde<K>, value: impl Serde<V>) -> TestOutputTopic<K, V> {
        TestOutputTopic {
            inner: self.inner.clone(),
            topic: name.to_string(),
            key: Box::new(key),
            value: Box::new(value),
            _p: PhantomData,
        }
    }

    /// Raw records written to a topic so far (including internal and dead-letter topics).
    pub fn written(&self, topic: &str) -> Vec<ConsumedRecord> {
        self.inner.borrow().written.get(topic).cloned().unwrap_or_default()
    }

    /// The entries of a store (raw bytes, in key order), across the driver's tasks.
    pub fn store_entries(&self, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut inner = self.inner.borrow_mut();
        let subs: Vec<usize> =
            inner.topology.all_stores().into_iter().filter(|(s, _)| s.name == name).map(|(_, sub)| sub).collect();
        let Some(sub) = subs.first().copied() else {
            return Err(StreamsError::Topology(format!("no store named '{name}'")));
        };
        let task = inner.task(sub)?;
        let store = task
            .stores()
            .stores
            .get(name)
            .cloned()
            .ok_or_else(|| StreamsError::Topology(format!("no store named '{name}'")))?;
        let entries = store.borrow().all()?;
        Ok(entries)
    }

    /// The entries of a store, deserialized.
    pub fn store<K: 'static, V: 'static>(
        &self,
        name: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> Result<Vec<(K, V)>> {
        let de = |e: crate::serdes::SerdeError| StreamsError::Topology(format!("store '{name}': {e}"));
        self.store_entries(name)?
            .into_iter()
            .map(|(k, v)| Ok((key.deserialize(&k).map_err(de)?, value.deserialize(&v).map_err(de)?)))
            .collect()
    }

    /// Removes the tombstones written to `topic` so far, as compaction does once
    /// `delete.retention.ms` has passed, but leaves what they deleted: what a store that resumed
    /// from an old checkpoint would hold if nothing noticed. For tests of how operators treat
    /// state whose deletes were lost (then [`TopologyTestDriver::restart`]).
    #[doc(hidden)]
    pub fn lose_tombstones(&self, topic: &str) {
        if let Some(records) = self.inner.borrow_mut().written.get_mut(topic) {
            records.retain(|r| r.value.is_some());
            // The driver's offsets are positions in its list.
            for (i, r) in records.iter_mut().enumerate() {
                r.offset = i as u64;
            }
        }
    }

    /// Simulates losing every local store: closes the tasks, deletes their state, and rebuilds the
    /// stores from the changelog records written so far.
    pub fn restart(&self) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        for (_, mut t) in std::mem::take(&mut inner.tasks) {
            t.close()?;
        }
        let _ = std::fs::remove_dir_all(&inner.state_dir);
        let subs: std::collections::BTreeSet<usize> = inner.topology.all_stores().into_iter().map(|(_, s)| s).collect();
        for s in subs {
            inner.task(s)?;
        }
        Ok(())
    }

    /// Moves the wall clock forward and fires due wall-clock punctuations (inputs quiet for
    /// `watermark.idle.timeout.ms` go idle).
    pub fn advance_wall_clock(&self, by: Duration) -> Result<()> {
        self.inner.borrow_mut().wall_clock_ms += by.as_millis() as i64;
        self.punctuate_all()
    }

    /// Ends the input, as a bounded source does in Flink: the watermark moves to the end of time,
    /// every open window closes and emits.
    pub fn end_input(&self) -> Result<()> {
        self.inner.borrow_mut().end_of_input = true;
        // Sub-topologies in order: writers before readers, so what closing windows send through a
        // repartition topic arrives before the readers' watermarks move.
        let subs = self.inner.borrow().topology.subtopologies().len();
        for s in 0..subs {
            self.inner.borrow_mut().task(s)?;
        }
        self.punctuate_all()
    }

    fn punctuate_all(&self) -> Result<()> {
        let subs: Vec<usize> = self.inner.borrow().tasks.keys().copied().collect();
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let dlq = inner.dead_letter_topic.clone();
        let env = TaskEnv {
            policy: inner.config.deserialization_policy,
            dead_letter_topic: &dlq,
            wall_clock_ms: inner.wall_clock_ms,
            caught_up: None,
            end_of_input: inner.end_of_input,
            exactly_once: inner.config.processing_guarantee == crate::runtime::ProcessingGuarantee::ExactlyOnce,
        };
        let internal = inner.internal.clone();
        for s in subs {
            let Inner { tasks, written, pending, .. } = &mut *inner;
            if let Some(t) = tasks.get_mut(&s) {
                let mut c = Collector { written, pending, internal: &internal };
                t.punctuate(&mut c, &env)?;
                // A commit after every step, as after every piped record.
                t.flush_caches(&mut c)?;
                t.committed()?;
            }
        }
        // Route what punctuations wrote to repartition topics.
        let queued: Vec<_> = inner.pending.drain(..).collect();
        drop(guard);
        for (topic, rec) in queued {
            self.inner.borrow_mut().deliver(&topic, rec)?;
        }
        Ok(())
    }

    /// The current wall-clock time of the driver (epoch ms; starts at 0).
    pub fn wall_clock_ms(&self) -> i64 {
        self.inner.borrow().wall_clock_ms
    }

    /// Counters summed over every task.
    pub fn counters(&self) -> TaskCounters {
        let i = self.inner.borrow();
        let mut c = TaskCounters::default();
        for t in i.tasks.values() {
            c.records_in += t.counters.records_in;
            c.records_out += t.counters.records_out;
            c.skipped += t.counters.skipped;
            c.dead_lettered += t.counters.dead_lettered;
            c.late += t.counters.late;
        }
        c
    }
}

/// Pipes records into one input topic.
pub struct TestInputTopic<K, V> {
    inner: Rc<RefCell<Inner>>,
    topic: String,
    key: Box<dyn Serde<K>>,
    value: Box<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> TestInputTopic<K, V> {
    /// Pipes a record stamped with the driver's wall clock.
    pub fn pipe(&self, key: K, value: V) -> Result<()> {
        let ts = self.inner.borrow().wall_clock_ms;
        self.pipe_at(key, value, ts)
    }

    /// Pipes a record with a timestamp.
    pub fn pipe_at(&self, key: K, value: V, timestamp: i64) -> Result<()> {
        self.pipe_record(StreamRecord::new(key, value, timestamp))
    }

    /// Pipes a record with headers.
    pub fn pipe_record(&self, r: StreamRecord<K, V>) -> Result<()> {
        let ser = |what: &'static str, e: crate::serdes::SerdeError| StreamsError::Serialization {
            what,
            topic: self.topic.clone(),
            reason: e.to_string(),
        };
        let mut k = Vec::new();
        self.key.serialize(&r.key, &mut k).map_err(|e| ser("key", e))?;
        let mut v = Vec::new();
        self.value.serialize(&r.value, &mut v).map_err(|e| ser("value", e))?;
        let key = (!self.key.is_null(&r.key)).then_some(k);
        let value = (!self.value.is_null(&r.value)).then_some(v);
        self.pipe_raw(key.as_deref(), value.as_deref(), r.timestamp, r.headers)
    }

    /// Pipes raw bytes (to test deserialization errors).
    pub fn pipe_raw(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: Vec<Header>,
    ) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let off = inner.next_offset.entry(self.topic.clone()).or_insert(0);
        let rec = ConsumedRecord {
            offset: *off,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers,
        };
        *off += 1;
        inner.deliver(&self.topic, rec)
    }
}

/// Reads records that reached one output topic.
pub struct TestOutputTopic<K, V> {
    inner: Rc<RefCell<Inner>>,
    topic: String,
    key: Box<dyn Serde<K>>,
    value: Box<dyn Serde<V>>,
    _p: PhantomData<fn() -> (K, V)>,
}

impl<K: 'static, V: 'static> TestOutputTopic<K, V> {
    /// Reads every record not read yet.
    pub fn read_records(&self) -> Result<Vec<StreamRecord<K, V>>> {
        let mut inner = self.inner.borrow_mut();
        let all = inner.written.get(&self.topic).cloned().unwrap_or_default();
        let pos = inner.read.entry(self.topic.clone()).or_insert(0);
        let new = &all[*pos..];
        *pos = all.len();
        new.iter()
            .map(|r| {
                let de = |what, e: crate::serdes::SerdeError| StreamsError::Deserialization {
                    what,
                    topic: self.topic.clone(),
                    partition: 0,
                    offset: r.offset,
                    reason: e.to_string(),
                };
                let key = deserialize_opt(&*self.key, r.key.as_deref()).map_err(|e| de("key", e))?;
                let value = deserialize_opt(&*self.value, r.value.as_deref()).map_err(|e| de("value", e))?;
                Ok(StreamRecord { key, value, timestamp: r.timestamp, headers: r.headers.clone() })
            })
            .collect()
    }

    /// Reads every new record as (key, value).
    pub fn read_key_values(&self) -> Result<Vec<(K, V)>> {
        Ok(self.read_records()?.into_iter().map(|r| (r.key, r.value)).collect())
    }

    /// Reads every new value.
    pub fn read_values(&self) -> Result<Vec<V>> {
        Ok(self.read_records()?.into_iter().map(|r| r.value).collect())
    }

    /// True when nothing new arrived.
    pub fn is_empty(&self) -> bool {
        let inner = self.inner.borrow();
        let n = inner.written.get(&self.topic).map_or(0, Vec::len);
        inner.read.get(&self.topic).copied().unwrap_or(0) >= n
    }
}
