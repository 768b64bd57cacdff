//! What the runtime needs from a log: the backend traits.
//!
//! Shaped after Kafka's client semantics as rdkafka exposes them — topic metadata and creation,
//! a batching producer (with transactions for exactly-once), and a consumer-group member whose
//! `poll` runs rebalance callbacks — so the embedded log (`garam-log`) and a Kafka backend plug in
//! without any change to the runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use crate::record::{ConsumedRecord, Header};

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// A topic-partition.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Where to start when a partition has no committed offset (or it fell out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The log start offset.
    Earliest,
    /// The high watermark: only new records.
    #[default]
    Latest,
    /// Fail instead of guessing.
    None,
}

impl OffsetReset {
    /// Parses `earliest`, `latest` or `none`.
    pub fn parse(s: &str) -> Option<OffsetReset> {
        match s {
            "earliest" => Some(OffsetReset::Earliest),
            "latest" => Some(OffsetReset::Latest),
            "none" => Some(OffsetReset::None),
            _ => None,
        }
    }
}

/// Records fetched from one partition.
#[derive(Debug, Clone)]
pub struct PolledRecords {
    /// Where they come from.
    pub tp: TopicPartition,
    /// The records, in offset order.
    pub records: Vec<ConsumedRecord>,
}

/// Settings of a group member.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// `group.id` (the application id for a Streams app).
    pub group: String,
    /// `client.id`.
    pub client_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// `auto.offset.reset`.
    pub auto_offset_reset: OffsetReset,
    /// `max.poll.records`: at most this many records per poll (a batch that alone holds more is
    /// a poll of its own: batches are not split).
    pub max_poll_records: usize,
    /// `session.timeout.ms`.
    pub session_timeout: Duration,
    /// `isolation.level=read_committed` (exactly-once reads only committed transactions).
    pub read_committed: bool,
}

/// A live member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the coordinator gave.
    pub member_id: String,
    /// The member's client id (a worker thread's name; with `application.server`, prefixed
    /// `host:port#`).
    pub client_id: String,
    /// What it owns.
    pub partitions: Vec<TopicPartition>,
}

/// The group a transaction commits offsets for, and the member that must own them (Kafka's
/// `ConsumerGroupMetadata`): a member that lost its partitions cannot commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// `group.id`.
    pub group: String,
    /// The member id.
    pub member_id: String,
}

/// Lets a revoke callback commit before its partitions go.
pub trait OffsetCommitter {
    /// The next offset to read from a partition (what has been returned by `poll` so far).
    fn position(&self, tp: &TopicPartition) -> Option<u64>;
    /// The positions of every partition still assigned.
    fn positions(&self) -> Vec<(TopicPartition, u64)>;
    /// Commits offsets (next offset to read) for partitions this member still owns.
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()>;
}

/// Called by a consumer's `poll` around rebalances.
pub trait RebalanceListener: Send {
    /// Partitions newly assigned.
    fn on_assigned(&mut self, partitions: &[TopicPartition]);
    /// Partitions about to be revoked: finish, flush and commit them through `committer`.
    fn on_revoked(&mut self, partitions: &[TopicPartition], committer: &mut dyn OffsetCommitter);
    /// Partitions lost without a chance to commit (session expired).
    fn on_lost(&mut self, partitions: &[TopicPartition]);
}

/// A consumer-group member.
pub trait BackendConsumer: Send {
    /// Fetches what is available, waiting up to `timeout`; runs rebalance callbacks.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<PolledRecords>>;
    /// Commits offsets (next offset to read).
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()>;
    /// The next offset to read from each assigned partition.
    fn positions(&self) -> Vec<(TopicPartition, u64)>;
    /// Lag (high watermark − position) of each assigned partition.
    fn lag(&self) -> Vec<(TopicPartition, u64)>;
    /// The member id.
    fn member_id(&self) -> String;
    /// The group and member, for transactional offset commits.
    fn group_metadata(&self) -> GroupMetadata;
    /// Leaves the group (revoke callbacks run first).
    fn close(&mut self) -> Result<()>;
    /// Stops fetching `partitions` while keeping them (a task restoring its stores).
    fn pause(&mut self, partitions: &[TopicPartition]);
    /// Fetches paused partitions again.
    fn resume(&mut self, partitions: &[TopicPartition]);
    /// Moves an assigned partition's position (back to records returned but not processed).
    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()>;
}

/// What [`BackendProducer::send_to_partition`] runs: it hands each record, as `(key, value)`
/// (`None`: a tombstone), to the sink it is given.
pub type PartitionRecords<'a> = dyn FnMut(&mut crate::state::ChangeSink<'_>) -> Result<()> + 'a;

/// A producer. Records are buffered into batches and appended on `flush` or when batches fill.
pub trait BackendProducer: Send {
    /// Queues one record; `partition: None` uses Kafka's default partitioner on the key bytes.
    fn send(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[Header],
    ) -> Result<()>;
    /// Writes every queued record.
    fn flush(&mut self) -> Result<()>;

    /// Queues records without headers for one partition of `topic`, all at `timestamp`: `records`
    /// hands each to the sink it is given. A commit sends each store's changelog records this way,
    /// most of a cache at once, so a backend that can append to one partition without a lookup
    /// per record overrides it; the default sends them one by one.
    fn send_to_partition(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        records: &mut PartitionRecords<'_>,
    ) -> Result<()> {
        records(&mut |key, value| self.send(topic, Some(partition), Some(key), value, timestamp, &[]))
    }

    /// Exactly-once, as Kafka's transactional producer: starts a transaction covering the records
    /// sent until `commit_transaction`.
    fn begin_transaction(&mut self) -> Result<()> {
        Err(crate::StreamsError::backend(
            "this backend has no transactions yet (exactly-once arrives with the state issue)",
            false,
        ))
    }

    /// Commits the transaction's records together with the consumed `offsets` of the group: both
    /// become visible, or neither (Kafka's `sendOffsetsToTransaction` + `commitTransaction`).
    fn commit_transaction(&mut self, _group: &GroupMetadata, _offsets: &[(TopicPartition, u64)]) -> Result<()> {
        Err(crate::StreamsError::backend(
            "this backend has no transactions yet (exactly-once arrives with the state issue)",
            false,
        ))
    }

    /// Starts [`Self::commit_transaction`] and may return before it has finished: a backend
    /// that can finishes it in the background while the caller begins the next transaction and
    /// goes on processing. [`Self::await_commit_transaction`] gives the outcome; until then
    /// nothing of the next transaction becomes visible. The default commits before returning.
    fn start_commit_transaction(&mut self, group: &GroupMetadata, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.commit_transaction(group, offsets)
    }

    /// Waits for the commit [`Self::start_commit_transaction`] started; fails as
    /// [`Self::commit_transaction`] would have. `Ok` when none is in flight.
    fn await_commit_transaction(&mut self) -> Result<()> {
        Ok(())
    }

    /// Aborts the transaction: its records are never visible to read-committed consumers.
    fn abort_transaction(&mut self) -> Result<()> {
        Err(crate::StreamsError::backend(
            "this backend has no transactions yet (exactly-once arrives with the state issue)",
            false,
        ))
    }
}

/// Records read from one partition by offset (restores).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The records (read-committed reads skip aborted transactions).
    pub records: Vec<ConsumedRecord>,
    /// Where to read next.
    pub next_offset: u64,
}

/// A log the runtime can run on: the embedded log or Kafka.
pub trait Backend: Send + Sync + 'static {
    /// "embedded" or "kafka".
    fn name(&self) -> &'static str;
    /// Partition count of a topic, `None` when it does not exist.
    fn partition_count(&self, topic: &str) -> Result<Option<u32>>;
    /// Creates the topic unless it exists (internal topics are created by the runtime).
    fn ensure_topic(&self, topic: &str, partitions: u32, config: &BTreeMap<String, String>) -> Result<()>;
    /// A new producer.
    fn producer(&self) -> Result<Box<dyn BackendProducer>>;
    /// A transactional producer (exactly-once); a new one with the same id fences the old one.
    fn transactional_producer(&self, _transactional_id: &str) -> Result<Box<dyn BackendProducer>> {
        Err(crate::StreamsError::backend("this backend has no transactions", false))
    }
    /// A new group member.
    fn consumer(
        &self,
        settings: ConsumerSettings,
        listener: Box<dyn RebalanceListener>,
    ) -> Result<Box<dyn BackendConsumer>>;
    /// Reads a partition from `offset` (a restore's changelog read).
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        read_committed: bool,
    ) -> Result<Fetched>;
    /// The end of a partition: the high watermark, or the last stable offset for read-committed.
    fn end_offset(&self, topic: &str, partition: u32, read_committed: bool) -> Result<u64>;
    /// The lowest offset a reader can resume a partition from and still see every record and
    /// every delete after its position: past what retention deleted, and past every tombstone
    /// compaction removed. A store checkpointed below it may hold keys deleted since, so it is
    /// rebuilt from the start. 0 when the backend cannot tell (Kafka Streams' behaviour: a store
    /// stopped for longer than `delete.retention.ms` can keep deleted keys).
    fn resume_floor(&self, _topic: &str, _partition: u32) -> Result<u64> {
        Ok(0)
    }
    /// Committed offsets and log end offsets of a group on a topic: `(partition, committed, end)`.
    fn group_offsets(&self, group: &str, topic: &str) -> Result<Vec<(u32, Option<u64>, u64)>>;
    /// The live members of a group and the partitions each owns (interactive-query metadata).
    fn group_members(&self, _group: &str) -> Result<Vec<GroupMember>> {
        Ok(Vec::new())
    }
    /// Where the runtime may write status files (the embedded log's data directory).
    fn status_dir(&self) -> Option<PathBuf> {
        None
    }
}
