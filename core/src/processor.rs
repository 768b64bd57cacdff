//! The Processor API, and the batch plumbing every operator is built on.
//!
//! Operators receive **batches** through [`Downstream::push`]: one virtual call per batch, never per
//! record. A user [`Processor`] sees one record at a time through `process` but the node that runs it
//! forwards its outputs downstream as one batch.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::backend::TopicPartition;
use crate::error::{Result, StreamsError};
use crate::record::{ConsumedRecord, Header, StreamRecord};
use crate::serdes::SerdeError;

/// A batch of typed records.
pub type Batch<K, V> = Vec<StreamRecord<K, V>>;

/// A task: (sub-topology, partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    /// Sub-topology number.
    pub subtopology: usize,
    /// Input partition.
    pub partition: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

/// What to do with a record whose key or value cannot be deserialized
/// (`deserialization.error.handler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeserializationPolicy {
    /// Stop the application with an error naming topic, partition and offset.
    #[default]
    Fail,
    /// Skip the record, log it and count it.
    LogAndContinue,
    /// Send the original bytes to the dead-letter topic, with the error as headers, and go on.
    DeadLetter,
}

impl DeserializationPolicy {
    /// Parses `fail`, `log-and-continue`, `dead-letter`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" => Some(Self::Fail),
            "log-and-continue" | "log_and_continue" => Some(Self::LogAndContinue),
            "dead-letter" | "dead_letter" => Some(Self::DeadLetter),
            _ => None,
        }
    }
}

/// Header names on dead-lettered records.
pub mod dead_letter_headers {
    /// The error message.
    pub const ERROR: &str = "garam.error.message";
    /// The source topic.
    pub const TOPIC: &str = "garam.error.topic";
    /// The source partition (decimal).
    pub const PARTITION: &str = "garam.error.partition";
    /// The source offset (decimal).
    pub const OFFSET: &str = "garam.error.offset";
}

/// Where a task's output records go: a backend producer, or the test driver's topics.
pub trait RecordCollector {
    /// Sends one record; `partition: None` partitions by key like Kafka.
    fn send(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[Header],
    ) -> Result<()>;

    /// Partition count of a topic (for custom partitioners).
    fn partition_count(&mut self, topic: &str) -> Result<u32>;

    /// Sends records without headers to one partition, all at `timestamp` (a store's changelog
    /// at a commit); see [`crate::backend::BackendProducer::send_to_partition`].
    fn send_to_partition(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        records: &mut crate::backend::PartitionRecords<'_>,
    ) -> Result<()> {
        records(&mut |key, value| self.send(topic, Some(partition), Some(key), value, timestamp, &[]))
    }
}

/// Counters a task updates while it runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskCounters {
    /// Records read from input partitions.
    pub records_in: u64,
    /// Records written to output topics.
    pub records_out: u64,
    /// Records skipped by `log-and-continue`.
    pub skipped: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records dropped because every window they belong to had closed (behind the watermark
    /// beyond grace).
    pub late: u64,
}

/// Everything an operator may touch while it processes a batch.
pub struct TaskContext<'a> {
    /// The task.
    pub task: TaskId,
    /// Where output records go.
    pub collector: &'a mut dyn RecordCollector,
    /// Largest record timestamp the task has seen.
    pub stream_time: i64,
    /// The task's watermark: event time its inputs have all passed (see
    /// [`crate::runtime::watermark`]). Operators that close windows keep their own copy, moved
    /// forward in [`Lifecycle::on_watermark`], so records emitted by an upstream operator as the
    /// watermark advances are not late downstream.
    pub watermark: i64,
    /// Set by a source to the largest event time of the batch it just pushed.
    pub batch_max_timestamp: i64,
    /// Wall-clock time in epoch ms (controllable in the test driver).
    pub wall_clock_ms: i64,
    /// The deserialization-error policy.
    pub policy: DeserializationPolicy,
    /// The dead-letter topic.
    pub dead_letter_topic: &'a str,
    /// Counters.
    pub counters: &'a mut TaskCounters,
    /// `processing.guarantee` is exactly-once: what the task writes (output, changelogs) becomes
    /// visible together with its input offsets, or not at all.
    pub exactly_once: bool,
}

impl TaskContext<'_> {
    /// Applies the deserialization-error policy to a record that failed to decode.
    pub fn deserialization_failed(
        &mut self,
        tp: &TopicPartition,
        record: &ConsumedRecord,
        what: &'static str,
        err: SerdeError,
    ) -> Result<()> {
        match self.policy {
            DeserializationPolicy::Fail => Err(StreamsError::Deserialization {
                what,
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: record.offset,
                reason: err.to_string(),
            }),
            DeserializationPolicy::LogAndContinue => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, offset = record.offset, what, error = %err, "skipping a record that cannot be deserialized");
                self.counters.skipped += 1;
                Ok(())
            }
            DeserializationPolicy::DeadLetter => {
                let mut headers = record.headers.clone();
                headers.push(Header::new(dead_letter_headers::ERROR, format!("cannot deserialize the {what}: {err}")));
                headers.push(Header::new(dead_letter_headers::TOPIC, tp.topic.clone()));
                headers.push(Header::new(dead_letter_headers::PARTITION, tp.partition.to_string()));
                headers.push(Header::new(dead_letter_headers::OFFSET, record.offset.to_string()));
                self.collector.send(
                    self.dead_letter_topic,
                    None,
                    record.key.as_deref(),
                    record.value.as_deref(),
                    record.timestamp,
                    &headers,
                )?;
                self.counters.dead_lettered += 1;
                Ok(())
            }
        }
    }
}

/// Receives batches of `(K, V)` records: the edge between two operators.
pub trait Downstream<K, V> {
    /// Processes a batch.
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()>;
}

/// A shared handle to an operator's input.
pub type DownstreamRef<K, V> = Rc<RefCell<dyn Downstream<K, V>>>;

/// The children of an operator. One child takes the batch as is; several get clones.
pub struct Fanout<K, V> {
    children: Vec<DownstreamRef<K, V>>,
}

impl<K: Clone + 'static, V: Clone + 'static> Fanout<K, V> {
    /// Fans out to `children`.
    pub fn new(children: Vec<DownstreamRef<K, V>>) -> Self {
        Fanout { children }
    }

    /// Pushes a batch to every child.
    pub fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.children.len() {
            0 => Ok(()),
            1 => self.children[0].borrow_mut().push(batch, ctx),
            n => {
                for c in &self.children[..n - 1] {
                    let mut copy = crate::batch_pool::with_capacity(batch.len());
                    copy.extend_from_slice(&batch);
                    c.borrow_mut().push(copy, ctx)?;
                }
                self.children[n - 1].borrow_mut().push(batch, ctx)
            }
        }
    }

    /// True when there is no child.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

/// The first operator of a sub-topology: deserializes raw records and pushes them on.
pub trait RawSource {
    /// Processes records fetched from `tp`.
    fn push_raw(&mut self, tp: &TopicPartition, records: Vec<ConsumedRecord>, ctx: &mut TaskContext<'_>) -> Result<()>;
}

/// When a punctuator fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunctuationType {
    /// When the task's stream time (largest record timestamp) passes the next multiple.
    StreamTime,
    /// When the wall clock passes the next multiple.
    WallClockTime,
}

/// A scheduled punctuation.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How often.
    pub interval_ms: i64,
    /// By which clock.
    pub kind: PunctuationType,
    /// The next time it fires (-1: on the first check).
    pub next_ms: i64,
}

/// The context a user [`Processor`] gets: forward records, schedule punctuations, see the clocks.
pub struct ProcessorContext<'a, K, V> {
    pub(crate) out: &'a mut Vec<StreamRecord<K, V>>,
    pub(crate) schedules: &'a mut Vec<Schedule>,
    /// The task running the processor.
    pub task: TaskId,
    /// The task's stream time.
    pub stream_time: i64,
    /// Wall-clock time (epoch ms).
    pub wall_clock_ms: i64,
    /// The task's watermark when the batch started.
    pub watermark: i64,
}

impl<'a, K, V> ProcessorContext<'a, K, V> {
    /// A context writing into `out` (used by operator nodes).
    pub fn new(
        out: &'a mut Vec<StreamRecord<K, V>>,
        schedules: &'a mut Vec<Schedule>,
        task: TaskId,
        stream_time: i64,
        wall_clock_ms: i64,
    ) -> Self {
        ProcessorContext { out, schedules, task, stream_time, wall_clock_ms, watermark: i64::MIN }
    }

    /// Sets the watermark the processor sees.
    pub fn with_watermark(mut self, watermark: i64) -> Self {
        self.watermark = watermark;
        self
    }

    /// Sends a record to the processor's children.
    pub fn forward(&mut self, record: StreamRecord<K, V>) {
        self.out.push(record);
    }

    /// Calls the processor's `punctuate` every `interval` of the given clock.
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) {
        self.schedules.push(Schedule { interval_ms: interval.as_millis().max(1) as i64, kind, next_ms: -1 });
    }
}

/// A user processor: the low-level API under the DSL.
///
/// ```
/// use garam_core::processor::{Processor, ProcessorContext};
/// use garam_core::record::StreamRecord;
/// /// Emits every record twice.
/// struct Twice;
/// impl Processor<String, u64, String, u64> for Twice {
///     fn process(&mut self, r: StreamRecord<String, u64>, ctx: &mut ProcessorContext<'_, String, u64>) -> garam_core::Result<()> {
///         ctx.forward(r.clone());
///         ctx.forward(r);
///         Ok(())
///     }
/// }
/// ```
pub trait Processor<KIn, VIn, KOut, VOut>: 'static {
    /// Called once when the task starts; schedule punctuations here.
    fn init(&mut self, _ctx: &mut ProcessorContext<'_, KOut, VOut>) -> Result<()> {
        Ok(())
    }
    /// Called for every record.
    fn process(&mut self, record: StreamRecord<KIn, VIn>, ctx: &mut ProcessorContext<'_, KOut, VOut>) -> Result<()>;
    /// Called when a scheduled punctuation fires, with the time it fired at.
    fn punctuate(
        &mut self,
        _kind: PunctuationType,
        _timestamp: i64,
        _ctx: &mut ProcessorContext<'_, KOut, VOut>,
    ) -> Result<()> {
        Ok(())
    }
    /// Called at the start of every commit, before the stores' caches are flushed: what the
    /// operator writes to its stores now commits with this commit. `closing` is true for the last
    /// commit before the task closes (a graceful stop). Sinks that write outside the log (files)
    /// stage their output here and name it in a store, so it commits with the transaction.
    fn prepare_commit(&mut self, _closing: bool) -> Result<()> {
        Ok(())
    }
    /// Called after a commit succeeded: staged output may be made visible now (a file renamed
    /// into place). A crash before this call is finished on restore, from the stores.
    fn committed(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called when the task closes.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Lifecycle hooks of an instantiated operator (init, punctuation, close).
pub trait Lifecycle {
    /// Called once before the first batch.
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<()>;
    /// Called after each batch and on every runtime tick; fires due punctuations.
    fn punctuate(&mut self, _ctx: &mut TaskContext<'_>) -> Result<()> {
        Ok(())
    }
    /// Called when the task's watermark (`ctx.watermark`) moved forward, upstream operators
    /// first; closes windows and emits their results.
    fn on_watermark(&mut self, _ctx: &mut TaskContext<'_>) -> Result<()> {
        Ok(())
    }
    /// Called at the start of every commit, before the stores' caches are flushed: what the
    /// operator writes to its stores now commits with this commit. `closing` is true for the last
    /// commit before the task closes (a graceful stop). Sinks that write outside the log (files)
    /// stage their output here and name it in a store, so it commits with the transaction.
    fn prepare_commit(&mut self, _closing: bool) -> Result<()> {
        Ok(())
    }
    /// Called after a commit succeeded: staged output may be made visible now (a file renamed
    /// into place). A crash before this call is finished on restore, from the stores.
    fn committed(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called when the task closes.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
