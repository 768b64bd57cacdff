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
    /// Appended to (or a batch held for it) since [`Producer::take_touched`] (a transaction's
    /// partition).
    touched: bool,
    /// Reported by [`Producer::send_reporting`] since [`Producer::take_touched`].
    reported: bool,
}

impl PartitionBatch {
    /// A partition's slot, its builder's buffer not yet allocated: a producer opens a slot for
    /// every partition of a topic it sends to, and a worker thread writes only its own tasks'
    /// partitions. Buffers of 16 KiB for the others were ~4 MiB per worker thread at 128 tasks × 3
    /// changelogs, and in a restore ~19 MiB in all. A buffer grows with its first records instead.
    fn new(partition: Arc<Partition>, compression: Compression) -> Self {
        PartitionBatch {
            partition,
            builder: BatchBuilder::with_capacity(compression, 0),
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

/// Finishes `builder` as `partition`'s next batch from the producer `ids` (id, epoch,
/// transactional) at `next_sequence`, and appends it.
fn append_batch(
    builder: &mut BatchBuilder,
    partition: &Partition,
    next_sequence: &mut i32,
    (pid, epoch, transactional): (i64, i16, bool),
    compressed: &mut Vec<u8>,
) -> Result<AppendInfo> {
    let count = builder.len() as i32;
    if pid >= 0 {
        builder.producer(pid, epoch, *next_sequence);
    }
    builder.transactional(transactional);
    let info = builder.finish_and(compressed, |batch| partition.append_built(batch))??;
    if pid >= 0 {
        *next_sequence = next_sequence.wrapping_add(count) & i32::MAX;
    }
    Ok(info)
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
    /// Partitions (topic index, partition) appended to or held for since `take_touched`, and those reported
    /// by `send_reporting`; their flags in [`PartitionBatch`] say so without a search.
    touched: Vec<(usize, u32)>,
    reported: Vec<(usize, u32)>,
    /// Closed while a transactional producer's previous commit completes in the background:
    /// the next transaction's records may queue meanwhile, but none may reach a partition ahead
    /// of the previous one's markers.
    gate: Option<Arc<dyn AppendGate>>,
    /// Full batches held back by the gate, oldest first: appended in order once it opens. Up to
    /// [`HELD_MAX_BYTES`] of buffers, a batch that fills while a commit's fsyncs run is held
    /// rather than waited for, so processing does not stall on the commit.
    held: Vec<(usize, u32, BatchBuilder)>,
}

/// What a [`Producer`]'s appends wait for (a transaction's commit in flight).
pub(crate) trait AppendGate: Send + Sync {
    /// True once appends may go ahead; never waits for the commit (it may take the transaction
    /// coordinator's lock briefly, to register partitions). An error means they never may: the
    /// gate stays, and what it held is never appended.
    fn is_open(&self) -> Result<bool>;
    /// Blocks until appends may go ahead (or fails as [`Self::is_open`] does).
    fn wait(&self) -> Result<()>;
}

/// The most a producer holds back while its gate is closed: enough for what a worker produces
/// while a commit's fsyncs run (a few milliseconds), bounded so that a slow disk makes
/// processing wait rather than memory grow.
const HELD_MAX_BYTES: usize = 4 << 20;

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
            gate: None,
            held: Vec::new(),
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

    /// Closes the gate appends wait for (see the field) until `gate` opens; `None` opens it.
    /// Batches held meanwhile are appended, in order, by the next append or flush.
    pub(crate) fn set_gate(&mut self, gate: Option<Arc<dyn AppendGate>>) {
        self.gate = gate;
    }

    /// Fails when a partition appended to (or held for) since [`Self::take_touched`] was deleted
    /// with its topic.
    pub(crate) fn check_touched_live(&self) -> Result<()> {
        match self.touched.iter().map(|&(t, p)| &self.topics[t].batches[p as usize].partition).find(|p| p.is_deleted())
        {
            Some(p) => Err(p.deleted_error()),
            None => Ok(()),
        }
    }

    /// Drops every queued record (an aborted transaction's).
    pub(crate) fn discard(&mut self) {
        self.held.clear();
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
        if let Some(&(_, p, _)) = self.held.iter().find(|(held, _, _)| *held == t) {
            lost = Some(st.batches[p as usize].partition.deleted_error());
            self.held.retain(|(held, _, _)| *held != t);
        }
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
        self.send_reporting(topic, partition, key, value, timestamp, headers, |_| Ok(()))
    }

    /// [`Self::send_raw`], calling `first` with the partition before the first record sent to it
    /// since the last [`Self::take_touched`] is queued — before it could be appended: a
    /// transaction registers the partition then, which fails if its producer was fenced.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn send_reporting(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[garam_core::Header],
        first: impl FnOnce(u32) -> Result<()>,
    ) -> Result<u32> {
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
        if !self.reported(t, p) {
            first(p)?;
            self.report(t, p);
        }
        if self.push_at(t, p, key, value, timestamp, headers)? && key.is_none() && partition.is_none() {
            // The sticky partition's batch is full: move on.
            self.topics[t].sticky = (p + 1) % n;
        }
        Ok(p)
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

    /// True when partition `p` of topic slot `t` was reported since [`Self::take_touched`].
    pub(crate) fn reported(&self, t: usize, p: u32) -> bool {
        self.topics[t].batches[p as usize].reported
    }

    /// Marks partition `p` of topic slot `t` reported until the next [`Self::take_touched`] (a
    /// transaction has registered it).
    pub(crate) fn report(&mut self, t: usize, p: u32) {
        let pb = &mut self.topics[t].batches[p as usize];
        if !pb.reported {
            pb.reported = true;
            self.reported.push((t, p));
        }
    }

    /// Queues a record for partition `p` of topic slot `t` (from [`Self::partition_slot`]);
    /// true when that filled the batch, which was then appended (or held, see [`Self::held`]).
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

    /// Appends partition `p` of topic slot `t`'s batch; `None` when it was empty, or held back
    /// by the gate (see [`Self::held`]).
    fn append_partition(&mut self, t: usize, p: u32) -> Result<Option<AppendInfo>> {
        if self.topics[t].batches[p as usize].builder.is_empty() {
            return Ok(None);
        }
        if self.transactional {
            let pb = &mut self.topics[t].batches[p as usize];
            if !pb.touched {
                pb.touched = true;
                self.touched.push((t, p));
            }
        }
        if !self.open_gate(false)? {
            // A held batch costs its buffer, which may be well over what it holds.
            let size = self.topics[t].batches[p as usize].builder.capacity_bytes();
            if self.held_bytes() + size <= HELD_MAX_BYTES {
                let full = self.topics[t].batches[p as usize].builder.take_filled(IDLE_BUILDER_BYTES);
                self.held.push((t, p, full));
                return Ok(None);
            }
            self.open_gate(true)?;
        }
        let pb = &mut self.topics[t].batches[p as usize];
        let ids = (self.producer_id, self.epoch, self.transactional);
        append_batch(&mut pb.builder, &pb.partition, &mut pb.next_sequence, ids, &mut self.compressed).map(Some)
    }

    /// The bytes of the held batches' buffers.
    fn held_bytes(&self) -> usize {
        self.held.iter().map(|(_, _, b)| b.capacity_bytes()).sum()
    }

    /// True when the gate is open (after waiting for it, with `wait`); the batches it held are
    /// then appended, oldest first.
    fn open_gate(&mut self, wait: bool) -> Result<bool> {
        if let Some(gate) = &self.gate {
            if wait {
                gate.wait()?;
            } else if !gate.is_open()? {
                return Ok(false);
            }
            self.gate = None;
        }
        if !self.held.is_empty() {
            let mut held = std::mem::take(&mut self.held);
            let mut appended = Ok(());
            let mut rest = held.drain(..);
            let ids = (self.producer_id, self.epoch, self.transactional);
            for (t, p, mut builder) in rest.by_ref() {
                let pb = &mut self.topics[t].batches[p as usize];
                if let Err(e) =
                    append_batch(&mut builder, &pb.partition, &mut pb.next_sequence, ids, &mut self.compressed)
                {
                    appended = Err(e);
                    break;
                }
            }
            // A failed append drops its batch with the error, as any failed append does; the
            // batches after it stay held, in order. The error reaches the send or flush that
            // found the gate open, whatever partition it was for.
            self.held = rest.collect();
            appended?;
        }
        Ok(true)
    }

    /// Appends every queued record.
    pub fn flush(&mut self) -> Result<()> {
        self.open_gate(true)?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::batch::BatchIter;
    use crate::TopicConfig;

    /// A gate the test opens by hand; `wait` opens it too, and counts.
    #[derive(Default)]
    struct TestGate {
        open: AtomicBool,
        waits: AtomicUsize,
        /// Never opens: a transaction failed past its commit point.
        failed: AtomicBool,
    }

    impl AppendGate for TestGate {
        fn is_open(&self) -> Result<bool> {
            if self.failed.load(Ordering::SeqCst) {
                return Err(LogError::InvalidArgument("failed past its commit point".into()));
            }
            Ok(self.open.load(Ordering::SeqCst))
        }

        fn wait(&self) -> Result<()> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            if self.failed.load(Ordering::SeqCst) {
                return Err(LogError::InvalidArgument("failed past its commit point".into()));
            }
            self.open.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    fn setup(batch_size: usize) -> (tempfile::TempDir, Log, Producer, Arc<TestGate>) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("t", 1, TopicConfig::default()).unwrap();
        let mut producer = log.producer(ProducerConfig { batch_size, ..Default::default() }).unwrap();
        let gate = Arc::new(TestGate::default());
        producer.set_gate(Some(gate.clone()));
        (dir, log, producer, gate)
    }

    /// Sends records numbered `range`, each value its number and then `pad` bytes.
    fn send(p: &mut Producer, range: std::ops::Range<u32>, pad: usize) {
        for i in range {
            let mut value = i.to_be_bytes().to_vec();
            value.resize(4 + pad, 0);
            p.send_to("t", Some(0), Record::new(None::<Vec<u8>>, Some(value))).unwrap();
        }
    }

    /// The numbers of the records in the partition, in offset order.
    fn numbers(log: &Log) -> Vec<u32> {
        let p = log.partition("t", 0).unwrap();
        let mut out = Vec::new();
        let mut next = 0;
        while next < p.high_watermark() {
            for batch in BatchIter::new(p.read(next, 1 << 20).unwrap().batches) {
                for r in batch.unwrap().records().unwrap() {
                    let r = r.unwrap();
                    if r.offset >= next {
                        out.push(u32::from_be_bytes(r.value.unwrap()[..4].try_into().unwrap()));
                        next = r.offset + 1;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn batches_filled_while_the_gate_is_closed_are_held_then_appended_in_order() {
        let (_dir, log, mut p, gate) = setup(1024);
        send(&mut p, 0..500, 0);
        assert!(numbers(&log).is_empty(), "nothing reaches the partition while the gate is closed");
        assert!(p.held.len() >= 5, "{} batches held", p.held.len());
        gate.open.store(true, Ordering::SeqCst);
        send(&mut p, 500..600, 0); // the next full batch finds the gate open
        assert!(p.held.is_empty());
        p.flush().unwrap();
        assert_eq!(numbers(&log), (0..600).collect::<Vec<_>>());
        assert_eq!(gate.waits.load(Ordering::SeqCst), 0, "never blocked");
    }

    #[test]
    fn a_gate_that_fails_never_lets_what_it_held_through() {
        let (_dir, log, mut p, gate) = setup(1024);
        send(&mut p, 0..300, 0);
        let held = p.held.len();
        assert!(held > 0);
        gate.failed.store(true, Ordering::SeqCst);
        assert!(p.flush().is_err());
        let more = p.send_to("t", Some(0), Record::new(None::<Vec<u8>>, Some(vec![0u8; 2048])));
        assert!(more.is_err(), "a full batch cannot be appended either");
        assert!(numbers(&log).is_empty(), "nothing reached the partition");
        assert_eq!(p.held.len(), held, "what was held stays held");
    }

    #[test]
    fn a_flush_waits_for_the_gate() {
        let (_dir, log, mut p, gate) = setup(1024);
        send(&mut p, 0..300, 0);
        p.flush().unwrap();
        assert_eq!(gate.waits.load(Ordering::SeqCst), 1);
        assert_eq!(numbers(&log), (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn a_producer_holding_its_limit_waits_for_the_gate() {
        let (_dir, log, mut p, gate) = setup(64 * 1024);
        let n = (2 * HELD_MAX_BYTES / 1024) as u32;
        send(&mut p, 0..n, 1020);
        assert_eq!(gate.waits.load(Ordering::SeqCst), 1, "held up to the limit, then waited");
        assert!(p.held_bytes() <= HELD_MAX_BYTES);
        p.flush().unwrap();
        assert_eq!(numbers(&log), (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn a_discard_drops_what_was_held_and_later_batches_keep_their_sequence() {
        let (_dir, log, mut p, gate) = setup(1024);
        send(&mut p, 0..300, 0);
        assert!(!p.held.is_empty());
        p.discard();
        gate.open.store(true, Ordering::SeqCst);
        // Held batches took no sequence numbers: the idempotent producer's next batch is in
        // sequence, not refused as out of order.
        send(&mut p, 300..400, 0);
        p.flush().unwrap();
        assert_eq!(numbers(&log), (300..400).collect::<Vec<_>>());
    }

    #[test]
    fn only_partitions_written_to_hold_a_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("wide", 64, TopicConfig::default()).unwrap();
        let mut p = log.producer(ProducerConfig::default()).unwrap();
        for i in 0..100u32 {
            p.send_to("wide", Some(i % 2), Record::new(None::<Vec<u8>>, Some(i.to_be_bytes().to_vec()))).unwrap();
        }
        let buffers: Vec<usize> = p.topics[0].batches.iter().map(|b| b.builder.capacity_bytes()).collect();
        assert!(buffers[..2].iter().all(|&b| b > 64), "the two partitions written hold their records: {buffers:?}");
        assert!(buffers[2..].iter().all(|&b| b <= 64), "the 62 others hold no more than a header: {buffers:?}");
        p.flush().unwrap();
        assert_eq!(log.partition("wide", 1).unwrap().high_watermark(), 50);
    }

    #[test]
    fn held_batches_count_their_buffers_against_the_limit() {
        // batch_size 1: every record is a batch of its own in a 16 KiB buffer.
        let (_dir, log, mut p, gate) = setup(1);
        send(&mut p, 0..1000, 0);
        assert!(p.held.len() <= HELD_MAX_BYTES / IDLE_BUILDER_BYTES, "{} batches held", p.held.len());
        assert_eq!(gate.waits.load(Ordering::SeqCst), 1);
        p.flush().unwrap();
        assert_eq!(numbers(&log), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn batches_held_for_a_deleted_topic_are_lost_with_its_error() {
        let (_dir, log, mut p, _gate) = setup(1024);
        send(&mut p, 0..300, 0);
        assert!(!p.held.is_empty());
        log.delete_topic("t").unwrap();
        log.create_topic("t", 1, TopicConfig::default()).unwrap();
        let lost = p.send_to("t", Some(0), Record::new(None::<Vec<u8>>, Some(7u32.to_be_bytes().to_vec())));
        assert!(lost.is_err(), "the records queued for the deleted topic are reported lost");
        assert!(p.held.is_empty() && p.held_bytes() == 0);
        send(&mut p, 7..8, 0);
        p.flush().unwrap();
        assert_eq!(numbers(&log), vec![7], "only what was sent to the new topic");
    }
}
