//! A task: the live operators of one sub-topology for one partition.

use std::sync::Arc;

use std::collections::BTreeSet;

use crate::backend::{PolledRecords, TopicPartition};
use crate::error::{Result, StreamsError};
use crate::processor::{DeserializationPolicy, RecordCollector, TaskContext, TaskCounters, TaskId};
use crate::record::Header;
use crate::runtime::stores::TaskStores;
use crate::runtime::watermark::{self, WatermarkConfig, WatermarkMark, WatermarkTracker};
use crate::topology::{Instantiation, TaskGraph, Topology};

/// How often a task repeats an unchanged watermark to downstream tasks (so that one restarted
/// downstream learns it again even from an idle upstream).
const REPUBLISH_MS: i64 = 5_000;

/// What a task needs from its runner besides the collector.
#[derive(Debug, Clone, Copy)]
pub struct TaskEnv<'a> {
    /// Deserialization-error policy.
    pub policy: DeserializationPolicy,
    /// Dead-letter topic name.
    pub dead_letter_topic: &'a str,
    /// Wall clock, epoch ms.
    pub wall_clock_ms: i64,
    /// Input partitions the consumer has read to the end (`None`: all of them, as in the test
    /// driver). Only these can be idle or ended.
    pub caught_up: Option<&'a BTreeSet<TopicPartition>>,
    /// Input has ended: caught-up inputs move the watermark to the end of time.
    pub end_of_input: bool,
    /// `processing.guarantee` is exactly-once.
    pub exactly_once: bool,
}

/// One task's operators, stores and clocks.
pub struct Task {
    /// The task.
    pub id: TaskId,
    graph: TaskGraph,
    stores: TaskStores,
    /// Largest record timestamp seen.
    pub stream_time: i64,
    /// What it has done.
    pub counters: TaskCounters,
    /// When its stores were last checkpointed (at-least-once).
    pub last_checkpoint: std::time::Instant,
    initialized: bool,
    /// Set before the last commit of a graceful stop (see [`Lifecycle::prepare_commit`]).
    pub closing: bool,
    watermarks: WatermarkTracker,
    /// Repartition topics this task writes, and their partition counts once known.
    downstream: Vec<(String, Option<u32>)>,
    /// How many tasks this task's sub-topology has (its sources' partition count), once known.
    peers: Option<u32>,
    source_topic: Option<String>,
    /// The last watermark sent downstream, and when.
    published: Option<(i64, bool, i64)>,
    publish_interval_ms: i64,
}

impl Task {
    /// Builds the task's operators over its opened (and restored) stores.
    pub fn new(
        topology: &Arc<Topology>,
        application_id: &str,
        id: TaskId,
        stores: TaskStores,
        watermark: WatermarkConfig,
        globals: &crate::topology::GlobalStores,
    ) -> Result<Task> {
        let graph = Instantiation::build(topology, application_id, id, &stores.stores, globals)?;
        let internal: Vec<(String, usize)> =
            topology.internal_topics().iter().map(|t| (t.full_name(application_id), t.writer)).collect();
        let sources = topology.source_topics(id.subtopology, application_id);
        let (upstream, direct): (Vec<String>, Vec<String>) =
            sources.iter().cloned().partition(|t| internal.iter().any(|(name, _)| name == t));
        let downstream =
            internal.iter().filter(|(_, writer)| *writer == id.subtopology).map(|(n, _)| (n.clone(), None)).collect();
        Ok(Task {
            watermarks: WatermarkTracker::new(direct, upstream, watermark),
            downstream,
            peers: None,
            source_topic: sources.first().cloned(),
            published: None,
            publish_interval_ms: watermark.publish_interval_ms,
            id,
            graph,
            stores,
            stream_time: -1,
            counters: TaskCounters::default(),
            initialized: false,
            closing: false,
            last_checkpoint: std::time::Instant::now(),
        })
    }

    /// Sends the stores' changes to their changelog topics (the task's partition).
    fn flush_changelogs(&mut self, collector: &mut dyn RecordCollector) -> Result<()> {
        let ts = self.stream_time.max(0);
        for (name, store) in &self.stores.stores {
            let changes = store.borrow_mut().drain_changes();
            if changes.is_empty() {
                continue;
            }
            let topic = &self.stores.changelogs[name];
            for (k, v) in changes {
                collector.send(topic, Some(self.id.partition), Some(&k), v.as_deref(), ts, &[])?;
            }
        }
        Ok(())
    }

    /// Flushes the stores' caches and sends what reached the backends to the changelogs: the
    /// first step of every commit.
    pub fn flush_caches(&mut self, collector: &mut dyn RecordCollector) -> Result<()> {
        if self.initialized {
            for l in &self.graph.lifecycles {
                l.borrow_mut().prepare_commit(self.closing)?;
            }
        }
        let (ts, partition) = (self.stream_time.max(0), self.id.partition);
        for (name, store) in &self.stores.stores {
            let topic = &self.stores.changelogs[name];
            let mut store = store.borrow_mut();
            collector.send_to_partition(topic, partition, ts, &mut |sink| store.flush_cache_to(sink))?;
        }
        Ok(())
    }

    /// Tells the operators their last commit succeeded.
    pub fn committed(&mut self) -> Result<()> {
        if self.initialized {
            for l in &self.graph.lifecycles {
                l.borrow_mut().committed()?;
            }
        }
        Ok(())
    }

    /// Records the changelog offsets the stores hold, after a commit succeeded (see
    /// [`TaskStores::note_committed`](crate::runtime::stores::TaskStores::note_committed)).
    pub fn note_committed(&mut self, backend: &dyn crate::runtime::stores::ChangelogReader) -> Result<()> {
        self.stores.note_committed(backend)
    }

    /// Flushes the stores and checkpoints the changelog offsets they hold.
    pub fn checkpoint(&self) -> Result<()> {
        self.stores.checkpoint()
    }

    /// The task's stores.
    pub fn stores(&self) -> &TaskStores {
        &self.stores
    }

    /// True while the task's stores are catching up with their changelogs; it processes nothing
    /// until they have.
    pub fn is_restoring(&self) -> bool {
        self.stores.is_restoring()
    }

    /// Restores the task's stores until `deadline`; true once they have caught up.
    pub fn restore_step(
        &mut self,
        backend: &dyn crate::runtime::stores::ChangelogReader,
        deadline: std::time::Instant,
        listener: Option<&crate::runtime::stores::RestoreListener>,
    ) -> Result<bool> {
        self.stores.restore_step(backend, deadline, listener)
    }

    fn ctx<'a>(&'a mut self, collector: &'a mut dyn RecordCollector, env: &TaskEnv<'a>) -> TaskContext<'a> {
        TaskContext {
            task: self.id,
            collector,
            stream_time: self.stream_time,
            watermark: self.watermarks.current(),
            batch_max_timestamp: watermark::NO_WATERMARK,
            wall_clock_ms: env.wall_clock_ms,
            policy: env.policy,
            dead_letter_topic: env.dead_letter_topic,
            counters: &mut self.counters,
            exactly_once: env.exactly_once,
        }
    }

    fn ensure_init(&mut self, collector: &mut dyn RecordCollector, env: &TaskEnv<'_>) -> Result<()> {
        if self.initialized {
            return Ok(());
        }
        self.initialized = true;
        let lifecycles = self.graph.lifecycles.clone();
        let mut ctx = self.ctx(collector, env);
        for l in &lifecycles {
            l.borrow_mut().init(&mut ctx)?;
        }
        Ok(())
    }

    /// Runs a batch of fetched records through the task.
    pub fn process(
        &mut self,
        polled: PolledRecords,
        collector: &mut dyn RecordCollector,
        env: &TaskEnv<'_>,
    ) -> Result<()> {
        self.ensure_init(collector, env)?;
        let source = self.graph.sources.get(&polled.tp.topic).cloned().ok_or_else(|| {
            StreamsError::Topology(format!("task {} has no source for topic {}", self.id, polled.tp.topic))
        })?;
        let tp = polled.tp;
        let mut records = polled.records;
        if self.watermarks.is_upstream(&tp.topic) && records.iter().any(watermark::is_control) {
            let watermarks = &mut self.watermarks;
            records.retain(|r| {
                if !watermark::is_control(r) {
                    return true;
                }
                match r.value.as_deref().and_then(WatermarkMark::decode) {
                    Some(mark) => watermarks.mark(&tp.topic, mark),
                    None => tracing::warn!(topic = %tp.topic, partition = tp.partition, offset = r.offset,
                        "ignoring a malformed watermark control record"),
                }
                false
            });
        }
        self.counters.records_in += records.len() as u64;
        let mut ctx = self.ctx(collector, env);
        // The source advances stream time with the extracted timestamps, after its batch.
        source.borrow_mut().push_raw(&tp, records, &mut ctx)?;
        let (stream_time, batch_max) = (ctx.stream_time, ctx.batch_max_timestamp);
        self.stream_time = stream_time;
        if batch_max != watermark::NO_WATERMARK {
            self.watermarks.observe(&tp.topic, batch_max, env.wall_clock_ms);
        }
        self.punctuate(collector, env)?;
        self.flush_changelogs(collector)
    }

    /// Fires due punctuations, moves the watermark and tells downstream tasks.
    pub fn punctuate(&mut self, collector: &mut dyn RecordCollector, env: &TaskEnv<'_>) -> Result<()> {
        self.ensure_init(collector, env)?;
        let partition = self.id.partition;
        let caught_up = |topic: &str| {
            env.caught_up.is_none_or(|set| set.contains(&TopicPartition::new(topic.to_string(), partition)))
        };
        let advanced = self.watermarks.advance(env.wall_clock_ms, &caught_up, env.end_of_input);
        if self.graph.lifecycles.is_empty() {
            return self.publish_watermark(collector, env);
        }
        let lifecycles = self.graph.lifecycles.clone();
        let mut ctx = self.ctx(collector, env);
        for l in &lifecycles {
            l.borrow_mut().punctuate(&mut ctx)?;
        }
        if advanced.is_some() {
            // Operators register after their children: in reverse, upstream operators come first,
            // so what a closing window emits reaches the next window before it closes too.
            for l in lifecycles.iter().rev() {
                l.borrow_mut().on_watermark(&mut ctx)?;
            }
        }
        self.flush_changelogs(collector)?;
        self.publish_watermark(collector, env)
    }

    /// The task's watermark.
    pub fn watermark(&self) -> i64 {
        self.watermarks.current()
    }

    /// Sends the task's watermark to every partition of the repartition topics it writes, after
    /// the records it produced, when it changed (or every few seconds unchanged).
    fn publish_watermark(&mut self, collector: &mut dyn RecordCollector, env: &TaskEnv<'_>) -> Result<()> {
        if self.downstream.is_empty() {
            return Ok(());
        }
        let (watermark, idle) = (self.watermarks.current(), self.watermarks.idle());
        let due = match self.published {
            None => true,
            Some((w, i, at)) => {
                let since = env.wall_clock_ms - at;
                i != idle
                    || (w != watermark && (since >= self.publish_interval_ms || watermark == watermark::END_OF_TIME))
                    || since >= REPUBLISH_MS
            }
        };
        if !due {
            return Ok(());
        }
        let peers = match (self.peers, &self.source_topic) {
            (Some(n), _) => n,
            (None, Some(t)) => *self.peers.insert(collector.partition_count(t)?),
            (None, None) => return Ok(()),
        };
        let mark = WatermarkMark { tasks: peers, task: self.id.partition, watermark, idle }.encode();
        let headers = [Header::new(watermark::WATERMARK_HEADER, bytes::Bytes::new())];
        for (topic, partitions) in &mut self.downstream {
            let n = match partitions {
                Some(n) => *n,
                None => *partitions.insert(collector.partition_count(topic)?),
            };
            for p in 0..n {
                collector.send(topic, Some(p), None, Some(&mark), env.wall_clock_ms.max(0), &headers)?;
            }
        }
        self.published = Some((watermark, idle, env.wall_clock_ms));
        Ok(())
    }

    /// Closes the task's operators.
    pub fn close(&mut self) -> Result<()> {
        for l in &self.graph.lifecycles {
            l.borrow_mut().close()?;
        }
        Ok(())
    }
}
