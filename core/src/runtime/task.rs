//! A task: the live operators of one sub-topology for one partition.

use std::sync::Arc;

use crate::backend::PolledRecords;
use crate::error::{Result, StreamsError};
use crate::processor::{DeserializationPolicy, RecordCollector, TaskContext, TaskCounters, TaskId};
use crate::runtime::stores::TaskStores;
use crate::topology::{Instantiation, TaskGraph, Topology};

/// What a task needs from its runner besides the collector.
#[derive(Debug, Clone, Copy)]
pub struct TaskEnv<'a> {
    /// Deserialization-error policy.
    pub policy: DeserializationPolicy,
    /// Dead-letter topic name.
    pub dead_letter_topic: &'a str,
    /// Wall clock, epoch ms.
    pub wall_clock_ms: i64,
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
}

impl Task {
    /// Builds the task's operators over its opened (and restored) stores.
    pub fn new(topology: &Arc<Topology>, application_id: &str, id: TaskId, stores: TaskStores) -> Result<Task> {
        let graph = Instantiation::build(topology, application_id, id, &stores.stores)?;
        Ok(Task {
            id,
            graph,
            stores,
            stream_time: -1,
            counters: TaskCounters::default(),
            initialized: false,
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
        for store in self.stores.stores.values() {
            store.borrow_mut().flush_cache()?;
        }
        self.flush_changelogs(collector)
    }

    /// Flushes the stores and checkpoints their changelog offsets (after a commit).
    pub fn checkpoint(&self, backend: &dyn crate::runtime::stores::ChangelogReader, exactly_once: bool) -> Result<()> {
        self.stores.checkpoint(backend, self.id.partition, exactly_once)
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
            wall_clock_ms: env.wall_clock_ms,
            policy: env.policy,
            dead_letter_topic: env.dead_letter_topic,
            counters: &mut self.counters,
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
        self.counters.records_in += polled.records.len() as u64;
        let tp = polled.tp;
        let mut ctx = self.ctx(collector, env);
        // The source advances stream time with the extracted timestamps, after its batch.
        source.borrow_mut().push_raw(&tp, polled.records, &mut ctx)?;
        let stream_time = ctx.stream_time;
        self.stream_time = stream_time;
        self.punctuate(collector, env)?;
        self.flush_changelogs(collector)
    }

    /// Fires due punctuations.
    pub fn punctuate(&mut self, collector: &mut dyn RecordCollector, env: &TaskEnv<'_>) -> Result<()> {
        self.ensure_init(collector, env)?;
        if self.graph.lifecycles.is_empty() {
            return Ok(());
        }
        let lifecycles = self.graph.lifecycles.clone();
        let mut ctx = self.ctx(collector, env);
        for l in &lifecycles {
            l.borrow_mut().punctuate(&mut ctx)?;
        }
        self.flush_changelogs(collector)
    }

    /// Closes the task's operators.
    pub fn close(&mut self) -> Result<()> {
        for l in &self.graph.lifecycles {
            l.borrow_mut().close()?;
        }
        Ok(())
    }
}
