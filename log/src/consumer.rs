//! Consumers: standalone readers and consumer-group members with a long-polling `poll`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{BatchIter, ConsumedRecord};
use crate::error::{BatchLocation, LogError, Result};
use crate::group::{Assignor, TopicPartition};
use crate::log::Log;
use crate::partition::{FetchData, Partition};
use crate::signal::Signal;

pub use garam_core::backend::OffsetReset;

/// Consumer settings (Kafka's names where they exist).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `group.id`; `None` for a standalone consumer that reads every partition and commits nothing.
    pub group: Option<String>,
    /// Topics to read.
    pub topics: Vec<String>,
    /// `client.id`, a prefix of the member id.
    pub client_id: String,
    /// `partition.assignment.strategy`.
    pub assignor: Assignor,
    /// `session.timeout.ms`.
    pub session_timeout: Duration,
    /// `auto.offset.reset`.
    pub auto_offset_reset: OffsetReset,
    /// `max.partition.fetch.bytes`: bytes per partition per poll (at least one batch).
    pub max_partition_fetch_bytes: usize,
    /// `fetch.max.bytes`: bytes per poll over all partitions.
    pub fetch_max_bytes: usize,
    /// `check.crcs`: verify each batch's CRC as it is read.
    pub check_crcs: bool,
    /// `isolation.level=read_committed`: read only committed transactional records (up to the last
    /// stable offset, aborted transactions skipped). Kafka's default, and ours, is read_uncommitted.
    pub read_committed: bool,
    /// `max.poll.records`: at most this many records per poll, cut between batches (the next poll
    /// starts there). A batch is never split: one that alone holds more is a poll of its own.
    pub max_poll_records: Option<usize>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            topics: Vec::new(),
            client_id: "consumer".into(),
            assignor: Assignor::default(),
            session_timeout: Duration::from_secs(10),
            auto_offset_reset: OffsetReset::Latest,
            max_partition_fetch_bytes: 1 << 20,
            fetch_max_bytes: 8 << 20,
            check_crcs: true,
            max_poll_records: None,
            read_committed: false,
        }
    }
}

impl ConsumerConfig {
    /// A group member reading `topics`.
    pub fn group(group: &str, topics: &[&str]) -> Self {
        ConsumerConfig {
            group: Some(group.to_string()),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// Records fetched from one partition in one poll.
#[derive(Debug, Clone)]
pub struct PartitionRecords {
    /// Where they come from.
    pub tp: TopicPartition,
    /// The first offset the consumer asked for; earlier records in the first batch are skipped.
    pub from_offset: u64,
    /// The raw batches.
    pub data: FetchData,
    /// Records from here on are left for the next poll (`max.poll.records`): the offset of the
    /// first batch a poll's record limit left out.
    until: Option<u64>,
    check_crcs: bool,
    read_committed: bool,
}

impl PartitionRecords {
    pub(crate) fn new(tp: TopicPartition, from_offset: u64, data: FetchData, read_committed: bool) -> Self {
        PartitionRecords { tp, from_offset, data, until: None, check_crcs: true, read_committed }
    }

    /// The records at or after `from_offset`, skipping control batches.
    /// A corrupt batch is an error naming the segment file, the partition, the offset and the byte.
    pub fn records(&self) -> impl Iterator<Item = Result<ConsumedRecord>> + '_ {
        let from = self.from_offset;
        let until = self.until.unwrap_or(u64::MAX);
        let check = self.check_crcs;
        let mut iter = BatchIter::new(self.data.batches.clone());
        std::iter::from_fn(move || {
            let at = iter.position() as u64;
            iter.next().map(|b| (at, b))
        })
        .flat_map(move |(at, b)| -> Box<dyn Iterator<Item = Result<ConsumedRecord>>> {
            let locate = move |e: LogError, offset: Option<u64>| {
                e.at(BatchLocation {
                    file: self.data.segment.clone(),
                    partition: self.tp.to_string(),
                    position: self.data.position + at,
                    offset,
                })
            };
            match b.and_then(|b| {
                if check {
                    b.verify()?;
                }
                Ok(b)
            }) {
                Err(e) => Box::new(std::iter::once(Err(locate(e, None)))),
                Ok(b) if b.header().is_control() => Box::new(std::iter::empty()),
                // Read-committed: batches of aborted transactions are skipped.
                Ok(b)
                    if b.header().is_transactional()
                        && self
                            .data
                            .aborted
                            .iter()
                            .any(|a| a.covers(b.header().producer_id, b.header().base_offset as u64)) =>
                {
                    Box::new(std::iter::empty())
                }
                Ok(b) => {
                    let base = Some(b.header().base_offset as u64);
                    match b.records() {
                        Err(e) => Box::new(std::iter::once(Err(locate(e, base)))),
                        Ok(it) => Box::new(it.map(move |r| r.map_err(|e| locate(e, base)))),
                    }
                }
            }
        })
        .filter(move |r| r.as_ref().map_or(true, |r| r.offset >= from))
        // Offsets rise: the records past a cut are not decoded at all.
        .take_while(move |r| r.as_ref().map_or(true, |r| r.offset < until))
    }

    /// The records of [`records`](Self::records), collected into one vector allocated once.
    ///
    /// Collecting the iterator grew the vector by doubling — a 10 000-record poll reallocated
    /// and copied 1 MB a dozen times over — and those freed blocks of every size are what an
    /// allocator holds on to: this was half of the page faults of a count. The vector comes from
    /// the thread's [`batch_pool`](garam_core::batch_pool), where the source that empties it puts
    /// it back.
    pub fn collect_records(&self) -> Result<Vec<ConsumedRecord>> {
        let mut out = garam_core::batch_pool::with_capacity(self.record_count_hint());
        for r in self.records() {
            out.push(r?);
        }
        Ok(out)
    }

    /// At most how many records [`records`](Self::records) yields, from the batch headers,
    /// capped by what the bytes could hold (a record takes at least 7 bytes) so that a corrupt
    /// header cannot ask for a huge allocation.
    fn record_count_hint(&self) -> usize {
        const MIN_RECORD_BYTES: usize = 7;
        let mut n = 0usize;
        for b in BatchIter::new(self.data.batches.clone()).flatten() {
            let h = b.header();
            if !h.is_control() {
                n = n.saturating_add(usize::try_from(h.record_count).unwrap_or(0));
            }
        }
        let cut = self
            .until
            .map_or(usize::MAX, |u| usize::try_from(u.saturating_sub(self.from_offset)).unwrap_or(usize::MAX));
        n.min(self.data.batches.len() / MIN_RECORD_BYTES).min(cut)
    }

    /// The offset after the last batch returned: the consumer's next position.
    pub fn next_offset(&self) -> u64 {
        let mut next = self.from_offset;
        for b in BatchIter::new(self.data.batches.clone()).flatten() {
            next = next.max(b.header().next_offset());
        }
        let end = if self.read_committed { self.data.last_stable_offset } else { self.data.high_watermark };
        next.min(end).min(self.until.unwrap_or(u64::MAX)).max(self.from_offset)
    }

    /// Cuts these records to at most `max`, counted from the batch headers (never fewer than are
    /// there, so never more than `max`), between batches: a batch is never split, so none is
    /// decoded twice and nothing fetched is held back between polls. A first batch that alone
    /// holds more is taken whole when `whole_first` (the poll has no records yet), else left out.
    /// Returns how many records are taken (at most, as above) and how many the batch after them
    /// holds: the one left out, else the last taken (a guess at the next one's size).
    fn limit(&mut self, max: usize, whole_first: bool) -> (usize, usize) {
        let from = self.from_offset;
        let (mut count, mut kept, mut last) = (0usize, 0usize, 0usize);
        for b in BatchIter::new(self.data.batches.clone()) {
            let Ok(b) = b else { break };
            let h = b.header();
            let skipped = h.is_control()
                || (h.is_transactional()
                    && self.data.aborted.iter().any(|a| a.covers(h.producer_id, h.base_offset as u64)));
            let start = (h.base_offset as u64).max(from);
            // The offsets at or after `from`, or the batch's record count where a compaction left
            // fewer records than offsets.
            let in_batch = usize::try_from(h.record_count.max(0)).unwrap_or(usize::MAX);
            let here = if skipped {
                0
            } else {
                usize::try_from(h.next_offset().saturating_sub(start)).unwrap_or(usize::MAX).min(in_batch)
            };
            if count.saturating_add(here) > max && !(count == 0 && whole_first) {
                // Before this batch.
                self.data.batches = self.data.batches.slice(..kept);
                self.until = Some(start);
                return (count, here);
            }
            count += here;
            kept += b.bytes().len();
            if here > 0 {
                last = here;
            }
        }
        (count, last)
    }
}

/// What a fetch sized from the records a poll may still take reads beyond them: about one batch
/// (the producer's default `batch.size`), so that the cut rarely falls short of the limit.
const FETCH_SLACK_BYTES: usize = 16 * 1024;

/// Called around rebalances.
pub trait RebalanceListener: Send {
    /// Partitions just assigned (positions are set).
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions about to be taken away: commit what was processed via `commits`.
    fn on_revoked(&mut self, _partitions: &[TopicPartition], _commits: &mut RevokeCommits<'_>) {}
    /// Partitions lost without a chance to commit (the session expired).
    fn on_lost(&mut self, _partitions: &[TopicPartition]) {}
}

/// Lets a revoke callback commit positions of the partitions being revoked.
pub struct RevokeCommits<'a> {
    consumer: &'a Consumer,
}

impl RevokeCommits<'_> {
    /// The positions of every partition this consumer still has.
    pub fn positions(&self) -> Vec<(TopicPartition, u64)> {
        self.consumer.positions.iter().map(|(tp, s)| (tp.clone(), s.position)).collect()
    }

    /// The consumer's position (next offset to read) in a partition.
    pub fn position(&self, tp: &TopicPartition) -> Option<u64> {
        self.consumer.positions.get(tp).map(|s| s.position)
    }

    /// Commits offsets for partitions this member still owns.
    pub fn commit(&self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.consumer.commit(offsets)
    }
}

struct PartState {
    partition: Arc<Partition>,
    position: u64,
    /// Bytes per record of the last fetch (0: none yet), to size the next one to the records a
    /// poll may still take rather than read a megabyte to return a few records of it.
    bytes_per_record: usize,
    /// Records in the batch after the last poll's (the one a cut left out, or a guess from the
    /// last one taken; 0: unknown): a poll with fewer places left skips the partition rather than
    /// read a batch it would leave out.
    batch_records: usize,
}

impl PartState {
    /// Where reading ends now: the last stable offset for read-committed, else the high watermark.
    fn end(&self, read_committed: bool) -> u64 {
        if read_committed {
            self.partition.last_stable_offset()
        } else {
            self.partition.high_watermark()
        }
    }
}

/// A consumer. Not shared between threads; create one per thread.
pub struct Consumer {
    log: Log,
    config: ConsumerConfig,
    member: Option<String>,
    signal: Arc<Signal>,
    positions: BTreeMap<TopicPartition, PartState>,
    listener: Option<Box<dyn RebalanceListener>>,
    rr: usize,
    closed: bool,
    /// Partitions whose position was reset backwards: the next commit may go below the old one.
    rewound: std::collections::BTreeSet<TopicPartition>,
    /// Partitions not fetched until resumed (their task is restoring its state, say).
    paused: std::collections::BTreeSet<TopicPartition>,
}

impl Consumer {
    pub(crate) fn new(log: Log, config: ConsumerConfig) -> Result<Consumer> {
        if config.topics.is_empty() {
            return Err(LogError::InvalidArgument("a consumer needs at least one topic".into()));
        }
        let mut counts = BTreeMap::new();
        for t in &config.topics {
            counts.insert(t.clone(), log.topic(t)?.partition_count());
        }
        let signal = Arc::new(Signal::default());
        let mut c = Consumer {
            log,
            config,
            member: None,
            signal,
            positions: BTreeMap::new(),
            listener: None,
            rr: 0,
            closed: false,
            rewound: Default::default(),
            paused: Default::default(),
        };
        match c.config.group.clone() {
            Some(g) => c.join(&g, counts),
            None => {
                for (t, n) in counts {
                    for p in 0..n {
                        let tp = TopicPartition::new(t.clone(), p);
                        c.init_position(tp)?;
                    }
                }
            }
        }
        Ok(c)
    }

    fn join(&mut self, group: &str, counts: BTreeMap<String, u32>) {
        let id = self.log.groups().join(
            group,
            &self.config.client_id,
            self.config.topics.clone(),
            self.config.assignor,
            self.config.session_timeout,
            self.signal.clone(),
            counts,
        );
        self.member = Some(id);
    }

    /// Installs a rebalance listener.
    pub fn set_listener(&mut self, l: Box<dyn RebalanceListener>) {
        self.listener = Some(l);
    }

    /// The group, for group consumers.
    pub fn group(&self) -> Option<&str> {
        self.config.group.as_deref()
    }

    /// This member's id, for group consumers.
    pub fn member_id(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// Partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// The next offset to read from a partition.
    pub fn position(&self, tp: &TopicPartition) -> Option<u64> {
        self.positions.get(tp).map(|s| s.position)
    }

    /// Moves the position of an assigned partition.
    pub fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()> {
        let s = self
            .positions
            .get_mut(tp)
            .ok_or_else(|| LogError::InvalidArgument(format!("{tp} is not assigned to this consumer")))?;
        s.position = offset;
        s.batch_records = 0;
        Ok(())
    }

    /// Stops fetching partitions (they stay assigned; the group still sees this member alive).
    pub fn pause(&mut self, tps: &[TopicPartition]) {
        self.paused.extend(tps.iter().cloned());
    }

    /// Fetches paused partitions again.
    pub fn resume(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.paused.remove(tp);
        }
    }

    /// The paused partitions.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.paused.iter().cloned().collect()
    }

    fn init_position(&mut self, tp: TopicPartition) -> Result<()> {
        let partition = self.log.partition(&tp.topic, tp.partition)?;
        let committed = self.config.group.as_ref().and_then(|g| self.log.groups().committed(g, &tp)).map(|c| c.offset);
        let position = match committed {
            Some(o) => o,
            None => self.reset_position(&tp, &partition)?,
        };
        self.positions.insert(tp, PartState { partition, position, bytes_per_record: 0, batch_records: 0 });
        Ok(())
    }

    fn reset_position(&self, tp: &TopicPartition, p: &Partition) -> Result<u64> {
        let o = p.offsets();
        match self.config.auto_offset_reset {
            OffsetReset::Earliest => Ok(o.log_start_offset),
            // Kafka's read-committed reset: the last stable offset, so that a transaction still
            // open now is read once it commits rather than skipped.
            OffsetReset::Latest if self.config.read_committed => Ok(p.last_stable_offset()),
            OffsetReset::Latest => Ok(o.high_watermark),
            OffsetReset::None => {
                Err(LogError::InvalidArgument(format!("no committed offset for {tp} and auto.offset.reset=none")))
            }
        }
    }

    /// Runs the group protocol: revoke what moves away (listener, then release), take what is free.
    fn sync_group(&mut self) -> Result<()> {
        let (Some(group), Some(member)) = (self.config.group.clone(), self.member.clone()) else {
            return Ok(());
        };
        let mut counts = BTreeMap::new();
        for t in &self.config.topics {
            if let Some(n) = self.log.partition_count(t) {
                counts.insert(t.clone(), n);
            }
        }
        let plan = match self.log.groups().sync(&group, &member, &counts) {
            Ok(p) => p,
            Err(LogError::Group { retriable: true, .. }) => {
                // Expired: our partitions are gone already.
                let lost: Vec<_> = std::mem::take(&mut self.positions).into_keys().collect();
                self.paused.clear();
                if !lost.is_empty() {
                    tracing::warn!(group, member, partitions = lost.len(), "session expired; partitions lost");
                    if let Some(l) = self.listener.as_mut() {
                        l.on_lost(&lost);
                    }
                }
                self.join(&group, counts);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !plan.revoke.is_empty() {
            tracing::info!(
                group,
                member,
                generation = plan.generation,
                partitions = plan.revoke.len(),
                "revoking partitions"
            );
            if let Some(mut l) = self.listener.take() {
                l.on_revoked(&plan.revoke, &mut RevokeCommits { consumer: self });
                self.listener = Some(l);
            }
            self.log.groups().release(&group, &member, &plan.revoke);
            for tp in &plan.revoke {
                self.paused.remove(tp);
                self.positions.remove(tp);
            }
        }
        let got = self.log.groups().acquire(&group, &member)?;
        if !got.is_empty() {
            for tp in &got {
                self.init_position(tp.clone())?;
            }
            tracing::info!(group, member, generation = plan.generation, partitions = got.len(), "assigned partitions");
            if let Some(l) = self.listener.as_mut() {
                l.on_assigned(&got);
            }
        }
        Ok(())
    }

    /// Fetches whatever is available, waiting up to `timeout` when nothing is (long poll).
    /// Positions advance past what is returned.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<PartitionRecords>> {
        if self.closed {
            return Err(LogError::Closed);
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.sync_group()?;
            let out = self.fetch_available()?;
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Park until an append to one of our partitions, a rebalance, or a heartbeat is due.
            for s in self.positions.values() {
                s.partition.register_waiter(&self.signal);
            }
            let rc = self.config.read_committed;
            if self.positions.iter().any(|(tp, s)| !self.paused.contains(tp) && s.end(rc) > s.position) {
                continue;
            }
            let heartbeat = now + (self.config.session_timeout / 3).max(Duration::from_millis(10));
            self.signal.wait_until(deadline.min(heartbeat));
        }
    }

    fn fetch_available(&mut self) -> Result<Vec<PartitionRecords>> {
        let mut out = Vec::new();
        let mut budget = self.config.fetch_max_bytes;
        // Kafka refuses a max.poll.records below 1; a poll of none would never move.
        let max_records = self.config.max_poll_records.unwrap_or(usize::MAX).max(1);
        let mut records_left = max_records;
        let n = self.positions.len();
        if n == 0 {
            return Ok(out);
        }
        let keys: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let start = self.rr % n;
        self.rr = self.rr.wrapping_add(1);
        for i in 0..n {
            if budget == 0 || records_left == 0 {
                break;
            }
            let tp = &keys[(start + i) % n];
            if self.paused.contains(tp) {
                continue;
            }
            let reset = self.config.auto_offset_reset;
            let s = self.positions.get_mut(tp).ok_or_else(|| LogError::InvalidArgument("position vanished".into()))?;
            let read_committed = self.config.read_committed;
            let hw = s.partition.high_watermark();
            let end = if read_committed { s.partition.last_stable_offset() } else { hw };
            if s.position > hw && reset != OffsetReset::None {
                // Past the end (the log lost an unflushed tail in a power failure, say): reset, as
                // Kafka consumers do, and let this member commit the lower offset.
                let o = s.partition.offsets();
                let to = if reset == OffsetReset::Earliest { o.log_start_offset } else { hw };
                tracing::warn!(partition = %tp, from = s.position, to, "position is past the log end; resetting");
                s.position = to;
                self.rewound.insert(tp.clone());
            }
            if end <= s.position {
                continue;
            }
            let taken = records_left < max_records;
            if taken && s.batch_records > records_left {
                // Its next batch would not fit: left whole for the next poll.
                continue;
            }
            let mut max = self.config.max_partition_fetch_bytes.min(budget);
            if records_left < usize::MAX && s.bytes_per_record > 0 {
                // Enough for the records the poll may still take, an eighth more, and a batch.
                let want = records_left.saturating_mul(s.bytes_per_record);
                max = max.min(want.saturating_add(want / 8).saturating_add(FETCH_SLACK_BYTES));
            }
            let data = match s.partition.read_isolated(s.position, max, read_committed) {
                Ok(d) => d,
                Err(LogError::OffsetOutOfRange { log_start, log_end, .. }) if reset != OffsetReset::None => {
                    let to = match reset {
                        OffsetReset::Earliest => log_start,
                        _ if read_committed => s.partition.last_stable_offset().max(log_start),
                        _ => log_end,
                    };
                    tracing::warn!(partition = %tp, from = s.position, to, "offset out of range; resetting");
                    s.position = to;
                    self.rewound.insert(tp.clone());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if data.batches.is_empty() {
                continue;
            }
            let mut recs = PartitionRecords {
                tp: tp.clone(),
                from_offset: s.position,
                data,
                until: None,
                check_crcs: self.config.check_crcs,
                read_committed,
            };
            if records_left < usize::MAX {
                // What sizes this partition's next fetch: only a poll with a limit needs it.
                let (bytes, records) = BatchIter::new(recs.data.batches.clone())
                    .flatten()
                    .map(|b| (b.bytes().len(), usize::try_from(b.header().record_count.max(0)).unwrap_or(0)))
                    .fold((0usize, 0usize), |(b, r), (bb, rr)| (b.saturating_add(bb), r.saturating_add(rr)));
                if records > 0 {
                    s.bytes_per_record = (bytes / records).max(1);
                }
                let (taken_here, next_batch) = recs.limit(records_left, !taken);
                records_left = records_left.saturating_sub(taken_here);
                s.batch_records = next_batch;
                if recs.data.batches.is_empty() {
                    // Its first batch does not fit what is left of this poll.
                    continue;
                }
            }
            budget = budget.saturating_sub(recs.data.batches.len());
            s.position = recs.next_offset();
            out.push(recs);
        }
        Ok(out)
    }

    /// Commits offsets (next offset to read) for partitions this member owns.
    pub fn commit(&self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        let group = self
            .config
            .group
            .as_deref()
            .ok_or_else(|| LogError::InvalidArgument("a consumer without a group cannot commit".into()))?;
        let rewound: Vec<TopicPartition> = self.rewound.iter().cloned().collect();
        self.log.groups().commit_inner(group, self.member.as_deref(), offsets, "", &rewound)
    }

    /// Commits the current positions of every assigned partition.
    pub fn commit_positions(&self) -> Result<()> {
        let offsets: Vec<_> = self.positions.iter().map(|(tp, s)| (tp.clone(), s.position)).collect();
        self.commit(&offsets)
    }

    /// Lag per assigned partition: high watermark minus position.
    pub fn lag(&self) -> HashMap<TopicPartition, u64> {
        self.positions
            .iter()
            .map(|(tp, s)| (tp.clone(), s.end(self.config.read_committed).saturating_sub(s.position)))
            .collect()
    }

    /// Leaves the group: revoke callback for everything owned, release, leave. Idempotent.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if let (Some(group), Some(member)) = (self.config.group.clone(), self.member.clone()) {
            let owned = self.log.groups().owned(&group, &member);
            if !owned.is_empty() {
                if let Some(mut l) = self.listener.take() {
                    l.on_revoked(&owned, &mut RevokeCommits { consumer: self });
                    self.listener = Some(l);
                }
                self.log.groups().release(&group, &member, &owned);
            }
            self.log.groups().leave(&group, &member);
        }
        self.positions.clear();
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Lag of every partition of `group` on `topics`: (partition, committed, log end, lag).
pub fn group_lag(log: &Log, group: &str, topic: &str) -> Result<Vec<(u32, Option<u64>, u64, u64)>> {
    let t = log.topic(topic)?;
    Ok(t.partitions()
        .iter()
        .map(|p| {
            let hw = p.high_watermark();
            let c = log.groups().committed(group, &TopicPartition::new(topic, p.id())).map(|c| c.offset);
            (p.id(), c, hw, hw.saturating_sub(c.unwrap_or(p.offsets().log_start_offset)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::batch::{BatchBuilder, Compression};

    fn fetched(batches: Bytes) -> FetchData {
        FetchData {
            batches,
            high_watermark: u64::MAX,
            log_start_offset: 0,
            segment: "00000000000000000000.log".into(),
            position: 0,
            last_stable_offset: u64::MAX,
            aborted: Vec::new(),
        }
    }

    fn batch(n: usize) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..n {
            b.push(i as i64, Some(format!("k{i}").as_bytes()), Some(&b"v"[..]), &[]);
        }
        b.finish().expect("a valid batch")
    }

    #[test]
    fn collected_records_are_the_iterated_ones_from_the_requested_offset() {
        let recs = PartitionRecords::new(TopicPartition::new("t", 0), 3, fetched(batch(10)), false);
        let collected = recs.collect_records().expect("valid records");
        let iterated = recs.records().collect::<Result<Vec<_>>>().expect("valid records");
        assert_eq!(collected.iter().map(|r| r.offset).collect::<Vec<_>>(), (3..10).collect::<Vec<_>>());
        assert_eq!(collected.len(), iterated.len());
        for (c, i) in collected.iter().zip(&iterated) {
            assert_eq!((c.offset, &c.key, &c.value), (i.offset, &i.key, &i.value));
        }
    }

    /// Batches that fit are returned whole, and the cut falls before the first that does not; a
    /// first batch larger than the limit is taken whole, or left out of a poll that has records.
    #[test]
    fn a_limit_cuts_between_batches() {
        let mut bytes = BytesMut::new();
        for base in [0i64, 100, 200] {
            let mut b = BytesMut::from(&batch(100)[..]);
            b[0..8].copy_from_slice(&base.to_be_bytes());
            bytes.extend_from_slice(&b);
        }
        let bytes = bytes.freeze();
        let third = bytes.len() / 3;
        let cut = |from: u64, max: usize, whole_first: bool| {
            let mut recs = PartitionRecords::new(TopicPartition::new("t", 0), from, fetched(bytes.clone()), false);
            let (n, _) = recs.limit(max, whole_first);
            let got: Vec<u64> = recs.collect_records().expect("valid").iter().map(|r| r.offset).collect();
            (n, recs.next_offset(), recs.data.batches.len() / third, got)
        };
        // 70 of the first batch, and the second does not fit.
        assert_eq!(cut(30, 150, true), (70, 100, 1, (30..100).collect()));
        // A first batch larger than the limit: whole, or not at all.
        assert_eq!(cut(30, 50, true), (70, 100, 1, (30..100).collect()));
        assert_eq!(cut(30, 50, false), (0, 30, 0, vec![]));
        // Everything fits.
        assert_eq!(cut(30, 270, true), (270, 300, 3, (30..300).collect()));
    }

    /// A compacted batch (10 records left over 1000 offsets) counts as its 10 records, not as
    /// 1000 offsets: it does not fill a poll on its own.
    #[test]
    fn a_compacted_batch_counts_its_records_not_its_offsets() {
        let mut sparse = BatchBuilder::new(Compression::None);
        for i in 0..10 {
            sparse.push_with_offset_delta(i * 111, 0, Some(&b"k"[..]), Some(&b"v"[..]), &[]);
        }
        let mut out = Vec::new();
        sparse.finish_with_last_delta(&mut out, 999).expect("a valid batch");
        let mut bytes = BytesMut::from(&out[..]);
        let mut dense = BytesMut::from(&batch(100)[..]);
        dense[0..8].copy_from_slice(&1000i64.to_be_bytes());
        bytes.extend_from_slice(&dense);
        let mut recs = PartitionRecords::new(TopicPartition::new("t", 0), 0, fetched(bytes.freeze()), false);
        assert_eq!(recs.limit(50, true), (10, 100), "the sparse batch's 10, and the dense one left out");
        assert_eq!(recs.collect_records().expect("valid").len(), 10);
        assert_eq!(recs.next_offset(), 1000);
    }

    /// A header claiming two billion records sizes nothing by its claim: the allocation is capped
    /// by the bytes fetched, and the batch is then rejected by its checksum.
    #[test]
    fn a_corrupt_record_count_does_not_size_the_allocation() {
        let mut bytes = BytesMut::from(&batch(2)[..]);
        // The batch header's record count: 4 bytes at byte 57.
        bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let bytes = bytes.freeze();
        let len = bytes.len();
        let recs = PartitionRecords::new(TopicPartition::new("t", 0), 0, fetched(bytes), false);
        assert!(recs.record_count_hint() <= len / 7, "hint {} for {len} bytes", recs.record_count_hint());
        let err = recs.collect_records().expect_err("a corrupt batch is an error");
        assert!(err.to_string().contains("t-0"), "names the partition: {err}");
    }
}
