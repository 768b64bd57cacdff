//! A batching producer: partitions records, builds v2 batches, appends them.

use std::sync::Arc;

use garam_core::partitioner::partition_for_key;
use garam_core::Record;

use crate::batch::{self, BatchBuilder, Compression};
use crate::error::{LogError, Result};
use crate::log::Log;
use crate::partition::{AppendInfo, Partition};
use crate::topic::Topic;

/// Producer settings (Kafka's names where they exist).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `batch.size`: a partition's batch is appended once it reaches this many bytes.
    pub batch_size: usize,
    /// `compression.type`.
    pub compression: Compression,
    /// `enable.idempotence`: stamp batches with a producer id and sequences so retries are deduplicated.
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig { batch_size: 64 * 1024, compression: Compression::None, idempotent: true }
    }
}

struct PartitionBatch {
    partition: Arc<Partition>,
    builder: BatchBuilder,
    next_sequence: i32,
    /// Appended to since [`Producer::take_touched`] (a transaction's partition).
    touched: bool,
    /// Reported by [`Producer::send_reporting`] since [`Producer::take_touched`].
    reported: bool,
}

impl PartitionBatch {
    fn new(partition: Arc<Partition>, compression: Compression) -> Self {
        PartitionBatch {
            partition,
            builder: BatchBuilder::new(compression),
            next_sequence: 0,
            touched: false,
            reported: false,
        }
    }
}

struct TopicState {
    topic: Arc<Topic>,
    batches: Vec<PartitionBatch>,
    sticky: u32,
    /// Cached `max.message.bytes`.
    max_message_bytes: usize,
    /// Sends since the metadata (partition count, config) was last refreshed.
    since_refresh: u32,
}

/// Sends between metadata refreshes: new partitions and config changes are seen this soon.
const REFRESH_EVERY: u32 = 4096;
/// The buffer a partition's batch builder keeps between commits (its starting size).
const IDLE_BUILDER_BYTES: usize = 16 * 1024;

/// Sends records to topics. Appends happen on the calling thread when a batch fills or on `flush`.
///
/// Keyed records go to Kafka's murmur2 partition; keyless records stick to one partition until its
/// batch is full, then move to the next (Kafka's sticky partitioner).
pub struct Producer {
    log: Log,
    config: ProducerConfig,
    producer_id: i64,
    epoch: i16,
    topics: Vec<TopicState>,
    /// Topic name to its place in `topics`: one lookup per record sent (foldhash: SipHash showed
    /// in profiles).
    topic_index: foldhash::HashMap<String, usize>,
    /// A compressed batch's bytes, reused from batch to batch (an uncompressed batch is appended
    /// from its builder's buffer).
    compressed: Vec<u8>,
    /// Writes transactional batches (a transactional producer's).
    transactional: bool,
    /// Partitions (topic index, partition) appended to since `take_touched`, and those reported
    /// by `send_reporting`; their flags in [`PartitionBatch`] say so without a search.
    touched: Vec<(usize, u32)>,
    reported: Vec<(usize, u32)>,
    /// Runs before the next append, once: a transactional producer's wait for its previous
    /// transaction's commit, still completing in the background. Records of the next transaction
    /// may queue meanwhile, but none may reach a partition ahead of the previous one's markers.
    before_append: Option<Box<dyn FnOnce() + Send>>,
}

impl Producer {
    pub(crate) fn new(log: Log, config: ProducerConfig) -> Result<Producer> {
        let (producer_id, epoch) = if config.idempotent { log.init_producer_id()? } else { (-1, -1) };
        Ok(Self::with_id(log, config, producer_id, epoch, false))
    }

    fn with_id(log: Log, config: ProducerConfig, producer_id: i64, epoch: i16, transactional: bool) -> Producer {
        Producer {
            log,
            config,
            producer_id,
            epoch,
            topics: Vec::new(),
            topic_index: foldhash::HashMap::default(),
            compressed: Vec::new(),
            transactional,
            touched: Default::default(),
            reported: Default::default(),
            before_append: None,
        }
    }

    /// The producer behind a transactional producer: batches carry its id and epoch and the
    /// transactional bit.
    pub(crate) fn transactional(log: Log, config: ProducerConfig, producer_id: i64, epoch: i16) -> Producer {
        Self::with_id(log, config, producer_id, epoch, true)
    }

    /// The partitions written since the last call (a transaction's partitions).
    pub(crate) fn take_touched(&mut self) -> Vec<garam_core::backend::TopicPartition> {
        for (t, p) in std::mem::take(&mut self.reported) {
            self.topics[t].batches[p as usize].reported = false;
        }
        let touched = std::mem::take(&mut self.touched);
        touched
            .into_iter()
            .map(|(t, p)| {
                let st = &mut self.topics[t];
                st.batches[p as usize].touched = false;
                garam_core::backend::TopicPartition::new(st.topic.name(), p)
            })
            .collect()
    }

    /// Sets what must run before the next append (see the field); replaces any earlier one.
    pub(crate) fn set_before_append(&mut self, wait: Option<Box<dyn FnOnce() + Send>>) {
        self.before_append = wait;
    }

    /// Fails when a partition appended to since [`Self::take_touched`] was deleted with its topic.
    pub(crate) fn check_touched_live(&self) -> Result<()> {
        match self.touched.iter().map(|&(t, p)| &self.topics[t].batches[p as usize].partition).find(|p| p.is_deleted())
        {
            Some(p) => Err(p.deleted_error()),
            None => Ok(()),
        }
    }

    /// Drops every queued record (an aborted transaction's).
    pub(crate) fn discard(&mut self) {
        for st in &mut self.topics {
            for b in &mut st.batches {
                b.builder.reset();
            }
        }
    }

    /// The producer id (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The place of `topic` in `topics`, opening it on first use (and again after it was deleted
    /// and recreated) and refreshing its metadata every [`REFRESH_EVERY`] sends.
    fn topic_slot(&mut self, topic: &str) -> Result<usize> {
        let cached = self.topic_index.get(topic).copied();
        let t = match cached {
            // A deleted topic's partitions are all marked; the first one stands for the topic.
            Some(t) if !self.topics[t].batches.first().is_some_and(|b| b.partition.is_deleted()) => t,
            _ => {
                if let Some(t) = cached {
                    self.retire_deleted(t)?;
                }
                let t = self.log.topic(topic)?;
                let compression = self.config.compression;
                let batches = t.partitions().into_iter().map(|p| PartitionBatch::new(p, compression)).collect();
                let sticky = (garam_core::time::now_ms() as u32) % t.partition_count().max(1);
                let max_message_bytes = t.config().max_message_bytes as usize;
                self.topics.push(TopicState { topic: t, batches, sticky, max_message_bytes, since_refresh: 0 });
                self.topic_index.insert(topic.to_string(), self.topics.len() - 1);
                self.topics.len() - 1
            }
        };
        let st = &mut self.topics[t];
        st.since_refresh += 1;
        if st.since_refresh < REFRESH_EVERY {
            return Ok(t);
        }
        st.since_refresh = 0;
        st.max_message_bytes = st.topic.config().max_message_bytes as usize;
        // Pick up partitions added since.
        let n = st.topic.partition_count() as usize;
        for p in st.batches.len()..n {
            let partition = st.topic.partition(p as u32)?;
            st.batches.push(PartitionBatch::new(partition, self.config.compression));
        }
        Ok(t)
    }

    /// Lets go of a topic deleted since it was opened here, so the next send opens the topic now
    /// under its name, if any. Records still queued for it are dropped, with an error: they are
    /// in no topic. Its slot stays, unindexed: a transaction's bookkeeping refers to slots.
    fn retire_deleted(&mut self, t: usize) -> Result<()> {
        let st = &mut self.topics[t];
        self.topic_index.remove(st.topic.name());
        let mut lost = None;
        for b in &mut st.batches {
            if !b.builder.is_empty() {
                b.builder.reset();
                lost.get_or_insert_with(|| b.partition.deleted_error());
            }
        }
        lost.map_or(Ok(()), Err)
    }

    /// Queues a record; the partition comes from its key (or the sticky partition when keyless).
    pub fn send(&mut self, topic: &str, record: Record) -> Result<()> {
        self.send_to(topic, None, record)
    }

    /// Queues a record for an explicit partition, or the partitioner's choice when `None`.
    pub fn send_to(&mut self, topic: &str, partition: Option<u32>, record: Record) -> Result<()> {
        let ts = record.timestamp.unwrap_or_else(garam_core::time::now_ms);
        self.send_raw(topic, partition, record.key.as_deref(), record.value.as_deref(), ts, &record.headers).map(|_| ())
    }

    /// Queues a record given as byte slices (copied into the batch; nothing else is allocated).
    pub fn send_raw(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[garam_core::Header],
    ) -> Result<u32> {
        self.send_reporting(topic, partition, key, value, timestamp, headers).map(|(p, _)| p)
    }

    /// [`Self::send_raw`], also saying whether this is the first record sent to the partition
    /// since the last [`Self::take_touched`] (a transaction registers it then).
    pub(crate) fn send_reporting(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[garam_core::Header],
    ) -> Result<(u32, bool)> {
        let t = self.topic_slot(topic)?;
        let st = &self.topics[t];
        let n = st.batches.len() as u32;
        let p = match (partition, key) {
            (Some(p), _) if p < n => p,
            (Some(p), _) => {
                return Err(LogError::UnknownPartition { topic: topic.to_string(), partition: p, partitions: n });
            }
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => st.sticky,
        };
        let first = self.report(t, p);
        if self.push_at(t, p, key, value, timestamp, headers)? && key.is_none() && partition.is_none() {
            // The sticky partition's batch is full: move on.
            self.topics[t].sticky = (p + 1) % n;
        }
        Ok((p, first))
    }

    /// The place of `topic` in the producer, checking that it has `partition`: what
    /// [`Self::push_at`] takes.
    pub(crate) fn partition_slot(&mut self, topic: &str, partition: u32) -> Result<usize> {
        let t = self.topic_slot(topic)?;
        let n = self.topics[t].batches.len() as u32;
        if partition >= n {
            return Err(LogError::UnknownPartition { topic: topic.to_string(), partition, partitions: n });
        }
        Ok(t)
    }

    /// True the first time partition `p` of topic slot `t` is reported since the last
    /// [`Self::take_touched`] (a transaction registers the partition then).
    pub(crate) fn report(&mut self, t: usize, p: u32) -> bool {
        let pb = &mut self.topics[t].batches[p as usize];
        let first = !pb.reported;
        if first {
            pb.reported = true;
            self.reported.push((t, p));
        }
        first
    }

    /// Queues a record for partition `p` of topic slot `t` (from [`Self::partition_slot`]);
    /// true when that filled the batch, which was then appended.
    pub(crate) fn push_at(
        &mut self,
        t: usize,
        p: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[garam_core::Header],
    ) -> Result<bool> {
        let batch_size = self.config.batch_size;
        let st = &self.topics[t];
        // Keep every batch under the topic's max.message.bytes: a record that would push the open
        // batch over it goes into a new batch, and one too large on its own is refused before it
        // is queued (so a failing append never takes accepted records down with it).
        let max = st.max_message_bytes;
        let record_size = 64
            + key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + headers.iter().map(|h| 16 + h.key.len() + h.value.as_ref().map_or(0, |v| v.len())).sum::<usize>();
        if record_size + batch::HEADER_LEN > max {
            return Err(LogError::InvalidArgument(format!(
                "a record of about {record_size} bytes exceeds max.message.bytes={max} of topic '{}'",
                st.topic.name()
            )));
        }
        let open = &st.batches[p as usize].builder;
        if !open.is_empty() && open.size_bytes() + record_size > max {
            self.append_partition(t, p)?;
        }
        let pb = &mut self.topics[t].batches[p as usize];
        pb.builder.reserve_within(record_size, batch_size + record_size);
        pb.builder.push(timestamp, key, value, headers);
        if pb.builder.size_bytes() >= batch_size {
            self.append_partition(t, p)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn append_partition(&mut self, t: usize, p: u32) -> Result<Option<AppendInfo>> {
        let (pid, epoch) = (self.producer_id, self.epoch);
        if self.topics[t].batches[p as usize].builder.is_empty() {
            return Ok(None);
        }
        if let Some(wait) = self.before_append.take() {
            wait();
        }
        let pb = &mut self.topics[t].batches[p as usize];
        let count = pb.builder.len() as i32;
        if pid >= 0 {
            pb.builder.producer(pid, epoch, pb.next_sequence);
        }
        pb.builder.transactional(self.transactional);
        if self.transactional && !pb.touched {
            pb.touched = true;
            self.touched.push((t, p));
        }
        let partition = &pb.partition;
        let info = pb.builder.finish_and(&mut self.compressed, |batch| partition.append_built(batch))??;
        if pid >= 0 {
            pb.next_sequence = pb.next_sequence.wrapping_add(count) & i32::MAX;
        }
        Ok(Some(info))
    }

    /// Appends every queued record.
    pub fn flush(&mut self) -> Result<()> {
        for t in 0..self.topics.len() {
            for p in 0..self.topics[t].batches.len() as u32 {
                if self.topics[t].batches[p as usize].builder.is_empty() {
                    continue;
                }
                self.append_partition(t, p)?;
                // A flush ends a commit interval: each partition's builder starts the next one
                // small again, so hundreds of partitions do not each keep a full batch's buffer.
                self.topics[t].batches[p as usize].builder.shrink_to(IDLE_BUILDER_BYTES);
            }
        }
        Ok(())
    }

    /// Appends every queued record and fsyncs the partitions written to.
    pub fn flush_durable(&mut self) -> Result<()> {
        self.flush()?;
        for st in &self.topics {
            for b in &st.batches {
                b.partition.flush()?;
            }
        }
        Ok(())
    }
}
