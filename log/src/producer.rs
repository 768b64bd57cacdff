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

/// Sends records to topics. Appends happen on the calling thread when a batch fills or on `flush`.
///
/// Keyed records go to Kafka's murmur2 partition; keyless records stick to one partition until its
/// batch is full, then move to the next (Kafka's sticky partitioner).
pub struct Producer {
    log: Log,
    config: ProducerConfig,
    producer_id: i64,
    epoch: i16,
    /// foldhash: a lookup per record sent, and SipHash showed in profiles.
    topics: foldhash::HashMap<String, TopicState>,
    buf: Vec<u8>,
    /// Writes transactional batches (a transactional producer's).
    transactional: bool,
    /// Partitions written since `take_touched`, and those not yet reported by `take_new_partition`.
    touched: std::collections::BTreeSet<(String, u32)>,
    reported: std::collections::BTreeSet<(String, u32)>,
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
            topics: foldhash::HashMap::default(),
            buf: Vec::new(),
            transactional,
            touched: Default::default(),
            reported: Default::default(),
        }
    }

    /// The producer behind a transactional producer: batches carry its id and epoch and the
    /// transactional bit.
    pub(crate) fn transactional(log: Log, config: ProducerConfig, producer_id: i64, epoch: i16) -> Producer {
        Self::with_id(log, config, producer_id, epoch, true)
    }

    /// True the first time `partition` of `topic` is written since the last `take_touched`.
    pub(crate) fn take_new_partition(&mut self, topic: &str, partition: u32) -> bool {
        if self.reported.iter().any(|(t, p)| *p == partition && t == topic) {
            return false;
        }
        self.reported.insert((topic.to_string(), partition));
        true
    }

    /// The partitions written since the last call (a transaction's partitions).
    pub(crate) fn take_touched(&mut self) -> Vec<garam_core::backend::TopicPartition> {
        self.reported.clear();
        std::mem::take(&mut self.touched)
            .into_iter()
            .map(|(t, p)| garam_core::backend::TopicPartition::new(t, p))
            .collect()
    }

    /// Drops every queued record (an aborted transaction's).
    pub(crate) fn discard(&mut self) {
        for st in self.topics.values_mut() {
            for b in &mut st.batches {
                b.builder.reset();
            }
        }
    }

    /// The producer id (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    fn topic_state(&mut self, topic: &str) -> Result<&mut TopicState> {
        if !self.topics.contains_key(topic) {
            let t = self.log.topic(topic)?;
            let batches = t
                .partitions()
                .into_iter()
                .map(|p| PartitionBatch {
                    partition: p,
                    builder: BatchBuilder::new(self.config.compression),
                    next_sequence: 0,
                })
                .collect();
            let sticky = (garam_core::time::now_ms() as u32) % t.partition_count().max(1);
            let max_message_bytes = t.config().max_message_bytes as usize;
            self.topics.insert(
                topic.to_string(),
                TopicState { topic: t, batches, sticky, max_message_bytes, since_refresh: 0 },
            );
        }
        let st = self.topics.get_mut(topic).ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?;
        st.since_refresh += 1;
        if st.since_refresh < REFRESH_EVERY {
            return Ok(st);
        }
        st.since_refresh = 0;
        st.max_message_bytes = st.topic.config().max_message_bytes as usize;
        // Pick up partitions added since.
        let n = st.topic.partition_count() as usize;
        if st.batches.len() < n {
            for p in st.batches.len()..n {
                let partition = st.topic.partition(p as u32)?;
                st.batches.push(PartitionBatch {
                    partition,
                    builder: BatchBuilder::new(self.config.compression),
                    next_sequence: 0,
                });
            }
        }
        Ok(st)
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
        let batch_size = self.config.batch_size;
        let st = self.topic_state(topic)?;
        let n = st.batches.len() as u32;
        let p = match (partition, key) {
            (Some(p), _) if p < n => p,
            (Some(p), _) => {
                return Err(LogError::UnknownPartition { topic: topic.to_string(), partition: p, partitions: n });
            }
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => st.sticky,
        };
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
                "a record of about {record_size} bytes exceeds max.message.bytes={max} of topic '{topic}'"
            )));
        }
        if !st.batches[p as usize].builder.is_empty() && st.batches[p as usize].builder.size_bytes() + record_size > max
        {
            self.append_partition(topic, p)?;
        }
        let st = self.topics.get_mut(topic).ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?;
        let pb = &mut st.batches[p as usize];
        pb.builder.push(timestamp, key, value, headers);
        if pb.builder.size_bytes() >= batch_size {
            if key.is_none() && partition.is_none() {
                st.sticky = (st.sticky + 1) % n;
            }
            self.append_partition(topic, p)?;
        }
        Ok(p)
    }

    fn append_partition(&mut self, topic: &str, p: u32) -> Result<Option<AppendInfo>> {
        let (pid, epoch) = (self.producer_id, self.epoch);
        let st = self.topics.get_mut(topic).ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?;
        let pb = &mut st.batches[p as usize];
        if pb.builder.is_empty() {
            return Ok(None);
        }
        let count = pb.builder.len() as i32;
        if pid >= 0 {
            pb.builder.producer(pid, epoch, pb.next_sequence);
        }
        pb.builder.transactional(self.transactional);
        if self.transactional && !self.touched.iter().any(|(t, x)| *x == p && t == topic) {
            self.touched.insert((topic.to_string(), p));
        }
        self.buf.clear();
        pb.builder.finish_into(&mut self.buf)?;
        let info = pb.partition.append(&mut self.buf)?;
        if pid >= 0 {
            pb.next_sequence = pb.next_sequence.wrapping_add(count) & i32::MAX;
        }
        Ok(Some(info))
    }

    /// Appends every queued record.
    pub fn flush(&mut self) -> Result<()> {
        let work: Vec<(String, u32)> = self
            .topics
            .iter()
            .flat_map(|(t, st)| {
                st.batches
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| !b.builder.is_empty())
                    .map(move |(p, _)| (t.clone(), p as u32))
            })
            .collect();
        for (t, p) in work {
            self.append_partition(&t, p)?;
        }
        Ok(())
    }

    /// Appends every queued record and fsyncs the partitions written to.
    pub fn flush_durable(&mut self) -> Result<()> {
        self.flush()?;
        for st in self.topics.values() {
            for b in &st.batches {
                b.partition.flush()?;
            }
        }
        Ok(())
    }
}
