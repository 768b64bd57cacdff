//! One partition: an ordered list of segments, the append path, fetches, flushing and recovery.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::Instant;

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::config::{TimestampType, TopicConfig};
use crate::error::{LogError, Result};
use crate::index::write_atomically;
use crate::producer_state::{ProducerTable, SeqCheck};
use crate::segment::Segment;
use crate::signal::Signal;
use crate::txn_state::{AbortedTxn, ControlType, TxnState};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: u64,
    /// Offset of the last record appended.
    pub last_offset: u64,
    /// The append time stamped on the batches (LogAppendTime topics), else -1.
    pub log_append_time: i64,
    /// True when an idempotent producer's batch was already in the log and was not written again.
    pub duplicate: bool,
}

/// The result of a fetch: whole batches as stored, plus the partition's offsets at that moment.
#[derive(Debug, Clone)]
pub struct FetchData {
    /// Concatenated whole batches (possibly starting before the requested offset: skip records below it).
    pub batches: Bytes,
    /// Readers see offsets below this.
    pub high_watermark: u64,
    /// First offset held.
    pub log_start_offset: u64,
    /// The segment file the batches were read from (for error messages).
    pub segment: PathBuf,
    /// Byte position of the first batch in that file.
    pub position: u64,
    /// Read-committed readers see offsets below this.
    pub last_stable_offset: u64,
    /// Aborted transactions overlapping the batches (read-committed fetches only).
    pub aborted: Vec<AbortedTxn>,
}

/// The offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still held (retention moves it forward).
    pub log_start_offset: u64,
    /// Offsets below this are visible to readers.
    pub high_watermark: u64,
    /// Offset the next record will get.
    pub log_end_offset: u64,
}

struct State {
    segments: Vec<Arc<Segment>>,
    log_start: u64,
    log_end: u64,
    /// Rolled segments not yet fsynced.
    unsynced: Vec<Arc<Segment>>,
    producers: ProducerTable,
    txns: TxnState,
}

/// One partition of a topic.
pub struct Partition {
    topic: String,
    id: u32,
    name: String,
    dir: PathBuf,
    config: RwLock<Arc<TopicConfig>>,
    state: Mutex<State>,
    high_watermark: AtomicU64,
    /// Read-committed consumers see offsets below this.
    last_stable: AtomicU64,
    flushed: AtomicU64,
    fsyncs: AtomicU64,
    /// When the recovery point file was last written.
    recovery_written: Mutex<Instant>,
    flush_lock: Mutex<bool>,
    flush_cv: Condvar,
    last_flush: Mutex<Instant>,
    waiters: Mutex<Vec<Weak<Signal>>>,
    /// Serialises retention and compaction, which both rewrite the segment list.
    pub(crate) cleaner: Mutex<()>,
    /// Every tombstone compaction has removed lies below this offset (see
    /// [`Partition::resume_floor`]); kept in a file of its own.
    deletes_dropped_before: AtomicU64,
    /// Set when its topic is deleted: handles still held (a producer's) must not append to a
    /// partition whose files are gone.
    deleted: std::sync::atomic::AtomicBool,
    /// An fsync failed. Linux may have dropped the dirty pages it could not write and report
    /// success to the next fsync, so no later flush is believed: flushes fail until the log is
    /// reopened, whose recovery validates what is really on disk.
    fsync_failed: std::sync::atomic::AtomicBool,
    /// Faults [`Partition::inject_fault`] armed, as [`Fault`] bits.
    faults: std::sync::atomic::AtomicU8,
}

/// A failure [`Partition::inject_fault`] makes the partition report once, as the operating system
/// would: for tests of what the log does when its disk fails, which no test can make a real disk do.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next fsync fails (as `EIO` would): the next flush that has data to make durable.
    Fsync = 1,
    /// The next transaction marker's append fails.
    MarkerAppend = 2,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition").field("name", &self.name).finish()
    }
}

const PRODUCER_SNAPSHOT: &str = "producer-state.snapshot";

impl Partition {
    /// Opens (or creates) the partition in `dir`. `clean` says the log was closed cleanly, so intact
    /// indexes are trusted; otherwise the active segment is validated batch by batch.
    pub(crate) fn open(topic: &str, id: u32, dir: PathBuf, config: Arc<TopicConfig>, clean: bool) -> Result<Partition> {
        fs::create_dir_all(&dir).map_err(LogError::io("create partition dir", &dir))?;
        let name = format!("{topic}-{id}");
        crate::compaction::recover_swaps(&dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(LogError::io("list partition dir", &dir))? {
            let entry = entry.map_err(LogError::io("list partition dir", &dir))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if let Some(stem) = fname.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<u64>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        let now = garam_core::time::now_ms();
        let interval = config.index_interval_bytes;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let snapshot = read_snapshot(&dir.join(PRODUCER_SNAPSHOT));
        // After an unclean stop, every segment that may hold offsets at or past the last recovery
        // point (the last offset known to be fsynced) is validated batch by batch.
        let recovery = if clean { u64::MAX } else { read_offset_file(&dir, RECOVERY_POINT).unwrap_or(0) };
        let mut unsynced = Vec::new();
        let mut i = 0;
        while i < bases.len() {
            let base = bases[i];
            let validate = bases.get(i + 1).is_none_or(|next| *next > recovery);
            let (seg, scan) = Segment::open(&dir, base, &name, validate, interval)?;
            let seg = Arc::new(seg);
            if validate && !clean {
                unsynced.push(seg.clone());
            }
            segments.push(seg);
            if scan.truncated && i + 1 < bases.len() {
                // A torn segment followed by later ones: everything after the tear is past a hole.
                tracing::warn!(partition = %name, segment = base, "torn segment before the last; deleting the segments after it");
                for later in &bases[i + 1..] {
                    for ext in ["log", "index", "timeindex"] {
                        let _ = fs::remove_file(dir.join(crate::segment::file_name(*later, ext)));
                    }
                }
                break;
            }
            i += 1;
        }
        unsynced.pop(); // the active segment is always synced by a flush
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(&dir, 0, &name, now)?));
        }
        // Producer and transaction state: the snapshot, then every batch after it.
        let end = segments.last().map_or(0, |s| s.next_offset.load(Ordering::Acquire));
        let (mut producers, mut txns, from) = match snapshot {
            Some(s) if s.as_of <= end => (s.producers, s.txns, s.as_of),
            Some(s) => {
                // Written at a roll that fsynced it but not the segment it closed, which a power
                // cut then tore: the log now ends before it. Left in place it would be taken up
                // again once new batches reached its offset, with transactions that no longer
                // exist; deleted, as Kafka deletes snapshots past the log's end.
                tracing::warn!(partition = %name, snapshot = s.as_of, end, "producer snapshot past the log's end; replaying the log instead");
                let path = dir.join(PRODUCER_SNAPSHOT);
                fs::remove_file(&path).map_err(LogError::io("delete stale producer snapshot", &path))?;
                crate::index::sync_parent(&path)?;
                (ProducerTable::default(), TxnState::default(), 0)
            }
            None => (ProducerTable::default(), TxnState::default(), 0),
        };
        if from < end {
            replay(&segments, from, &mut producers, &mut txns)?;
        }
        let log_start = read_offset_file(&dir, LOG_START).unwrap_or(0).max(segments[0].base_offset);
        let log_end = segments.last().map_or(0, |s| s.next_offset.load(Ordering::Acquire));
        let log_start = log_start.min(log_end);
        let deletes_dropped_before = match read_offset_file(&dir, DELETES_DROPPED) {
            Some(o) => o,
            None if !dir.join(DELETES_DROPPED).exists() => 0,
            None => {
                // Unreadable: taken as high as it can be, which costs a reader a rebuild, never a
                // delete, and written so (once: the next open reads it back).
                tracing::warn!(partition = %name, "unreadable {DELETES_DROPPED} file; taking the log's end as the resume floor");
                write_offset_file(&dir, DELETES_DROPPED, log_end)?;
                log_end
            }
        };
        // What survived a crash may only be in the page cache: not flushed until fsynced again.
        let flushed = if clean { log_end } else { recovery.min(log_end) };
        Ok(Partition {
            topic: topic.to_string(),
            id,
            name,
            dir,
            config: RwLock::new(config),
            last_stable: AtomicU64::new(txns.first_unstable().unwrap_or(log_end).min(log_end)),
            state: Mutex::new(State { segments, log_start, log_end, unsynced, producers, txns }),
            high_watermark: AtomicU64::new(log_end),
            flushed: AtomicU64::new(flushed),
            recovery_written: Mutex::new(Instant::now()),
            fsyncs: AtomicU64::new(0),
            flush_lock: Mutex::new(false),
            flush_cv: Condvar::new(),
            last_flush: Mutex::new(Instant::now()),
            waiters: Mutex::new(Vec::new()),
            cleaner: Mutex::new(()),
            deletes_dropped_before: AtomicU64::new(deletes_dropped_before),
            deleted: std::sync::atomic::AtomicBool::new(false),
            fsync_failed: std::sync::atomic::AtomicBool::new(false),
            faults: std::sync::atomic::AtomicU8::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic this partition belongs to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// True once its topic was deleted: appends are refused.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The error for a write to this partition after its topic was deleted.
    pub(crate) fn deleted_error(&self) -> LogError {
        LogError::TopicDeleted { topic: self.topic.clone(), partition: self.id }
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn config(&self) -> Arc<TopicConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_config(&self, c: Arc<TopicConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// Log start, high watermark and log end offsets.
    pub fn offsets(&self) -> PartitionOffsets {
        let s = self.state();
        PartitionOffsets {
            log_start_offset: s.log_start,
            high_watermark: self.high_watermark(),
            log_end_offset: s.log_end,
        }
    }

    /// The lowest offset a reader can resume from and still see every record and every delete
    /// that came after its position: the log start offset, or just past the last tombstone
    /// compaction removed (after `delete.retention.ms`), whichever is later. A copy of the
    /// partition's data built up to an offset below it (a state store checkpointed there, then
    /// stopped for longer than `delete.retention.ms`) may hold keys deleted since: reading on from
    /// its offset would never delete them, so such a copy is rebuilt from the start instead.
    pub fn resume_floor(&self) -> u64 {
        let log_start = self.state().log_start;
        log_start.max(self.deletes_dropped_before.load(Ordering::Acquire))
    }

    /// Records, durably and before the tombstones below `before` become unreadable, that a
    /// cleaning removes them. A crash after this and before the cleaning commits leaves the floor
    /// higher than it need be, which costs a reader a rebuild and never a delete.
    pub(crate) fn dropping_deletes_before(&self, before: u64) -> Result<()> {
        if before <= self.deletes_dropped_before.load(Ordering::Acquire) {
            return Ok(());
        }
        write_offset_file(&self.dir, DELETES_DROPPED, before)?;
        self.deletes_dropped_before.fetch_max(before, Ordering::AcqRel);
        Ok(())
    }

    /// True once an fsync of this partition failed: it flushes no more until the log is reopened.
    pub fn fsync_failed(&self) -> bool {
        self.fsync_failed.load(Ordering::Acquire)
    }

    /// Arms `fault`: the partition's next fsync or marker append fails, once. For tests only.
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        self.faults.fetch_or(fault as u8, Ordering::AcqRel);
    }

    /// Disarms `fault` and says whether it was armed: the operation must fail.
    fn take_fault(&self, fault: Fault) -> Result<()> {
        if self.faults.load(Ordering::Acquire) & fault as u8 == 0 {
            return Ok(());
        }
        if self.faults.fetch_and(!(fault as u8), Ordering::AcqRel) & fault as u8 == 0 {
            return Ok(());
        }
        Err(LogError::Io {
            context: "injected fault",
            path: self.dir.clone(),
            source: std::io::Error::other(format!("{fault:?} failed, as injected")),
        })
    }

    /// Offsets below this are visible to readers.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Offsets below this are stable: no open transaction holds any of them (Kafka's LSO).
    pub fn last_stable_offset(&self) -> u64 {
        self.last_stable.load(Ordering::Acquire)
    }

    /// The aborted transactions still in the log.
    pub fn aborted_transactions(&self) -> Vec<AbortedTxn> {
        self.state().txns.aborted.clone()
    }

    /// Producers with an open transaction here, with the first offset of it.
    pub fn open_transactions(&self) -> Vec<(i64, u64)> {
        self.state().txns.ongoing.iter().map(|(p, o)| (*p, *o)).collect()
    }

    /// Bytes held on disk by the partition's segments.
    pub fn size_bytes(&self) -> u64 {
        self.state().segments.iter().map(|s| s.len()).sum()
    }

    /// Base offsets of the segments, oldest first; the last is the active segment.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.state().segments.iter().map(|s| s.base_offset).collect()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.state().segments.len()
    }

    /// Appends one or more whole batches (as a producer built them; base offsets are assigned here).
    ///
    /// Each batch is checked (header, length, CRC, size limit) before anything is written. With
    /// `flush.messages` set, returns once the data is fsynced, sharing the fsync with concurrent
    /// appenders (group commit).
    pub fn append(&self, data: &mut [u8]) -> Result<AppendInfo> {
        self.append_checked(data, false, true)
    }

    /// Appends a batch this process's producer built and checksummed just now: its CRC is not
    /// computed a second time (a third of the append's cost for small records).
    pub(crate) fn append_built(&self, data: &mut [u8]) -> Result<AppendInfo> {
        self.append_checked(data, false, false)
    }

    /// Appends a transaction marker (control batch): only the transaction coordinator does.
    pub(crate) fn append_control(&self, data: &mut [u8]) -> Result<AppendInfo> {
        self.take_fault(Fault::MarkerAppend)?;
        self.append_checked(data, true, true)
    }

    fn append_checked(&self, data: &mut [u8], control_allowed: bool, verify_crc: bool) -> Result<AppendInfo> {
        if self.is_deleted() {
            return Err(self.deleted_error());
        }
        let config = self.config();
        // Validate outside the lock.
        let mut headers: Vec<(usize, BatchHeader)> = Vec::with_capacity(1);
        let mut pos = 0;
        while pos < data.len() {
            let h = BatchHeader::parse(&data[pos..]).map_err(|e| self.rejected(e))?;
            let len = h.total_len();
            if pos + len > data.len() {
                return Err(
                    self.rejected(LogError::corrupt(format!("batch claims {len} bytes, {} present", data.len() - pos)))
                );
            }
            if len as u64 > config.max_message_bytes {
                return Err(LogError::InvalidArgument(format!(
                    "batch of {len} bytes exceeds max.message.bytes={} for {}",
                    config.max_message_bytes, self.name
                )));
            }
            if verify_crc && crc32c::crc32c(&data[pos + 21..pos + len]) != h.crc {
                return Err(self.rejected(LogError::corrupt(format!("CRC mismatch in produced batch at byte {pos}"))));
            }
            if h.is_control() && !control_allowed {
                return Err(LogError::InvalidArgument(format!(
                    "control batches (transaction markers) are written by the transaction coordinator, not appended to {}",
                    self.name
                )));
            }
            headers.push((pos, h));
            pos += len;
        }
        if headers.is_empty() {
            return Err(LogError::InvalidArgument("append of zero batches".into()));
        }
        let now = garam_core::time::now_ms();
        let append_time = (config.timestamp_type == TimestampType::LogAppendTime).then_some(now);

        // Several batches in one append must come from one producer in sequence (as a produce
        // request's batches for one partition do); only the first is looked up for duplicates.
        for w in headers.windows(2) {
            let (a, b) = (&w[0].1, &w[1].1);
            let chained = a.producer_id == b.producer_id
                && a.producer_epoch == b.producer_epoch
                && (a.producer_id < 0 || b.base_sequence == a.last_sequence().wrapping_add(1) & i32::MAX);
            if !chained {
                return Err(LogError::InvalidArgument(format!(
                    "batches appended together to {} must come from one producer in sequence",
                    self.name
                )));
            }
        }
        let mut st = self.state();
        // Idempotence: a retried batch is answered with its original offsets.
        match st.producers.check(&headers[0].1) {
            SeqCheck::Append => {}
            SeqCheck::Duplicate(b) => {
                return Ok(AppendInfo {
                    base_offset: b.base_offset,
                    last_offset: b.last_offset,
                    log_append_time: -1,
                    duplicate: true,
                })
            }
            SeqCheck::Fenced { current } => {
                let h = &headers[0].1;
                return Err(LogError::ProducerFenced {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    current_epoch: current,
                });
            }
            SeqCheck::OutOfOrder { expected } => {
                let h = &headers[0].1;
                return Err(LogError::OutOfOrderSequence {
                    topic: self.topic.clone(),
                    partition: self.id,
                    producer_id: h.producer_id,
                    expected,
                    got: h.base_sequence,
                });
            }
        }
        let base_offset = st.log_end;
        let mut next = base_offset;
        for (p, h) in headers.iter_mut() {
            let b = &mut data[*p..*p + h.total_len()];
            batch::header_ops::set_base_offset(b, next as i64);
            h.base_offset = next as i64;
            if let Some(t) = append_time {
                batch::header_ops::set_log_append_time(b, t);
                h.max_timestamp = t;
            }
            next = h.next_offset();
        }
        self.maybe_roll(&mut st, &config, data.len() as u64, now)?;
        let active = st.segments.last().cloned().ok_or_else(|| LogError::corrupt("partition has no segment"))?;
        if active.len() + data.len() as u64 > u32::MAX as u64 {
            return Err(LogError::InvalidArgument("segment would exceed 4 GiB".into()));
        }
        let start = active.append(data)?;
        for (p, h) in &headers {
            active.index_batch(h, start + *p as u64, config.index_interval_bytes);
            st.producers.record(h);
            if h.is_transactional() {
                let marker = if h.is_control() { ControlType::of(&data[*p..*p + h.total_len()]) } else { None };
                st.txns.apply(h, marker);
            }
        }
        active.next_offset.store(next, Ordering::Release);
        st.log_end = next;
        self.last_stable.store(st.txns.first_unstable().unwrap_or(next).min(next), Ordering::Release);
        self.high_watermark.store(next, Ordering::Release);
        drop(st);
        self.wake_waiters();
        if let Some(n) = config.flush_messages {
            if next.saturating_sub(self.flushed.load(Ordering::Acquire)) >= n {
                self.flush_to(next)?;
            }
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time: append_time.unwrap_or(-1),
            duplicate: false,
        })
    }

    fn rejected(&self, e: LogError) -> LogError {
        match e {
            LogError::CorruptBatch { reason, .. } => {
                LogError::InvalidArgument(format!("rejected batch for {}: {reason}", self.name))
            }
            other => other,
        }
    }

    fn maybe_roll(&self, st: &mut State, config: &TopicConfig, incoming: u64, now: i64) -> Result<()> {
        let active = st.segments.last().cloned().ok_or_else(|| LogError::corrupt("partition has no segment"))?;
        let size = active.len();
        let too_big = size > 0 && size + incoming > config.segment_bytes;
        let too_old = size > 0 && now - active.created_ms.load(Ordering::Acquire) >= config.segment_ms as i64;
        if too_big || too_old {
            self.roll_locked(st, now)?;
        }
        Ok(())
    }

    fn roll_locked(&self, st: &mut State, now: i64) -> Result<()> {
        let Some(active) = st.segments.last().cloned() else {
            return Ok(());
        };
        if active.len() == 0 {
            return Ok(());
        }
        active.write_indexes()?;
        write_snapshot(&self.dir.join(PRODUCER_SNAPSHOT), st.log_end, &st.producers, &st.txns)?;
        st.unsynced.push(active);
        let seg = Segment::create(&self.dir, st.log_end, &self.name, now)?;
        st.segments.push(Arc::new(seg));
        tracing::debug!(partition = %self.name, base = st.log_end, "rolled segment");
        Ok(())
    }

    /// Closes the active segment and starts a new one (no-op when the active segment is empty).
    pub fn roll(&self) -> Result<()> {
        let mut st = self.state();
        self.roll_locked(&mut st, garam_core::time::now_ms())
    }

    /// fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        let target = self.state().log_end;
        self.flush_to(target)
    }

    /// How many group-commit fsync rounds ran (each covers every append waiting at the time).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Offsets below this are known to be on stable storage.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// Group commit: the first waiter fsyncs for everyone; the others wait for it.
    fn flush_to(&self, target: u64) -> Result<()> {
        let mut busy = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.flushed.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if self.fsync_failed() {
                return Err(LogError::Io {
                    context: "fsync partition (an earlier fsync failed: reopen the log)",
                    path: self.dir.clone(),
                    source: std::io::Error::other("an earlier fsync of this partition failed"),
                });
            }
            if !*busy {
                *busy = true;
                drop(busy);
                let (segs, upto) = {
                    let mut st = self.state();
                    let mut segs = std::mem::take(&mut st.unsynced);
                    segs.extend(st.segments.last().cloned());
                    (segs, st.log_end)
                };
                // A panic must not leave `busy` set: every later flush would wait for ever.
                let r = crate::fsync_pool::guarded(|| {
                    self.take_fault(Fault::Fsync)?;
                    segs.iter().try_for_each(|s| s.sync())
                });
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                busy = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
                *busy = false;
                if r.is_ok() {
                    self.flushed.fetch_max(upto, Ordering::AcqRel);
                    *self.last_flush.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    self.maybe_write_recovery_point(upto);
                } else {
                    tracing::error!(partition = %self.name, "fsync failed; this partition flushes no more until the log is reopened");
                    self.fsync_failed.store(true, Ordering::Release);
                }
                self.flush_cv.notify_all();
                r?;
            } else {
                busy = self.flush_cv.wait(busy).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Checkpoints the recovery point (at most every few seconds): after a crash, validation starts
    /// at the segment holding it instead of at the start of the log.
    fn maybe_write_recovery_point(&self, flushed: u64) {
        let mut last = self.recovery_written.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < std::time::Duration::from_secs(5) {
            return;
        }
        *last = Instant::now();
        if let Err(e) = write_offset_file(&self.dir, RECOVERY_POINT, flushed) {
            tracing::warn!(partition = %self.name, error = %e, "cannot write the recovery point");
        }
    }

    /// Background flush for `flush.ms`: fsyncs when unflushed data is older than the setting.
    pub(crate) fn flush_if_due(&self) -> Result<()> {
        let Some(ms) = self.config().flush_ms else {
            return Ok(());
        };
        let hw = self.high_watermark();
        if hw <= self.flushed_offset() {
            return Ok(());
        }
        let due = self.last_flush.lock().unwrap_or_else(|e| e.into_inner()).elapsed().as_millis() as u64 >= ms;
        if due {
            self.flush_to(hw)?;
        }
        Ok(())
    }

    /// Reads whole batches starting at the batch that holds `offset`, up to about `max_bytes` (at least
    /// one batch), never past the high watermark.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<FetchData> {
        self.read_isolated(offset, max_bytes, false)
    }

    /// Like [`Partition::read`]; with `read_committed`, only up to the last stable offset (no
    /// record of an open transaction), with the aborted transactions in range listed so the
    /// reader can skip their batches.
    pub fn read_isolated(&self, offset: u64, max_bytes: usize, read_committed: bool) -> Result<FetchData> {
        let (segs, log_start, hw, lso, aborted) = {
            let st = self.state();
            let hw = self.high_watermark();
            let lso = self.last_stable_offset();
            if offset < st.log_start || offset > hw {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            let i = st.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
            let aborted = if read_committed { st.txns.aborted_between(offset, lso) } else { Vec::new() };
            (st.segments[i..].to_vec(), st.log_start, hw, lso, aborted)
        };
        let limit_offset = if read_committed { lso } else { hw };
        let empty = |segment: PathBuf| FetchData {
            batches: Bytes::new(),
            high_watermark: hw,
            last_stable_offset: lso,
            log_start_offset: log_start,
            segment,
            position: 0,
            aborted: Vec::new(),
        };
        if offset >= limit_offset {
            return Ok(empty(self.dir.clone()));
        }
        for seg in segs {
            let limit = seg.len();
            if let Some(pos) = seg.position_of(offset, limit)? {
                let batches = seg.read(pos, max_bytes, limit)?;
                // Never hand out a batch beyond the high watermark (last stable offset).
                let batches = trim_to_offset(batches, limit_offset);
                return Ok(FetchData {
                    batches,
                    high_watermark: hw,
                    last_stable_offset: lso,
                    log_start_offset: log_start,
                    segment: seg.path.clone(),
                    position: pos,
                    aborted,
                });
            }
        }
        Ok(empty(self.dir.clone()))
    }

    /// First offset whose timestamp is ≥ `ts`, or `None` when every record is older.
    pub fn offset_for_time(&self, ts: i64) -> Result<Option<u64>> {
        let (segs, start) = {
            let st = self.state();
            (st.segments.clone(), st.log_start)
        };
        for seg in segs.iter().filter(|s| s.max_timestamp.load(Ordering::Acquire) >= ts) {
            let limit = seg.len();
            let Some(mut pos) = seg.position_of_time(ts, limit)? else {
                continue;
            };
            // Keep reading the segment: the first qualifying batch may hold only records below
            // the log start.
            while pos < limit {
                let data = seg.read(pos, 1 << 20, limit)?;
                if data.is_empty() {
                    break;
                }
                pos += data.len() as u64;
                for b in batch::BatchIter::new(data) {
                    let b = b?;
                    if b.header().max_timestamp < ts || b.header().is_control() {
                        continue;
                    }
                    for r in b.records()? {
                        let r = r?;
                        if r.timestamp >= ts && r.offset >= start {
                            return Ok(Some(r.offset));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Registers a signal to be notified at the next append.
    pub fn register_waiter(&self, s: &Arc<Signal>) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|x| x.strong_count() > 0);
        if !w.iter().any(|x| x.as_ptr() == Arc::as_ptr(s)) {
            w.push(Arc::downgrade(s));
        }
    }

    fn wake_waiters(&self) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_empty() {
            return;
        }
        for s in w.drain(..) {
            if let Some(s) = s.upgrade() {
                s.notify();
            }
        }
    }

    /// Deletes whole segments past `retention.ms` / `retention.bytes`. Returns how many were deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        let config = self.config();
        let _cleaning = self.cleaner.lock().unwrap_or_else(|e| e.into_inner());
        let doomed = {
            let mut st = self.state();
            let mut total: u64 = st.segments.iter().map(|s| s.len()).sum();
            let mut n = 0;
            // Never the active segment.
            while n + 1 < st.segments.len() {
                let seg = &st.segments[n];
                let by_time = config.cleanup_policy.delete
                    && config.retention_ms.is_some_and(|ms| {
                        let max = seg.max_timestamp.load(Ordering::Acquire);
                        max >= 0 && now_ms - max > ms as i64 || max < 0 && seg.len() == 0
                    });
                let by_size = config.cleanup_policy.delete
                    && config.retention_bytes.is_some_and(|limit| total - seg.len() >= limit);
                // Wholly below the log start (moved by `delete_records_before`).
                let by_start = st.segments[n + 1].base_offset <= st.log_start;
                if !(by_time || by_size || by_start) {
                    break;
                }
                total -= seg.len();
                n += 1;
            }
            if n == 0 {
                return Ok(0);
            }
            let doomed: Vec<_> = st.segments.drain(..n).collect();
            st.log_start = st.log_start.max(st.segments[0].base_offset);
            let start = st.log_start;
            st.txns.prune(start);
            st.unsynced.retain(|u| !doomed.iter().any(|d| Arc::ptr_eq(u, d)));
            write_offset_file(&self.dir, LOG_START, st.log_start)?;
            doomed
        };
        for seg in &doomed {
            seg.delete_files()?;
        }
        tracing::info!(partition = %self.name, segments = doomed.len(), "retention deleted segments");
        Ok(doomed.len())
    }

    /// Moves the log start offset forward (like Kafka's DeleteRecords): readers no longer see the
    /// records below it, and the next retention pass deletes the segments wholly below it.
    pub fn delete_records_before(&self, offset: u64) -> Result<()> {
        let mut st = self.state();
        if offset > st.log_end {
            return Err(LogError::InvalidArgument(format!("offset {offset} is past the log end {}", st.log_end)));
        }
        st.log_start = st.log_start.max(offset);
        write_offset_file(&self.dir, LOG_START, st.log_start)
    }

    pub(crate) fn segments_snapshot(&self) -> (Vec<Arc<Segment>>, u64) {
        let st = self.state();
        (st.segments.clone(), self.high_watermark())
    }

    /// Swaps compacted segment `new` in for the segments with base offsets in `[from, to)`.
    pub(crate) fn swap_segments(&self, from: u64, to: u64, new: Segment) -> Result<Vec<Arc<Segment>>> {
        let mut st = self.state();
        let first = st.segments.partition_point(|s| s.base_offset < from);
        let end = st.segments.partition_point(|s| s.base_offset < to);
        if end >= st.segments.len() {
            return Err(LogError::InvalidArgument("compaction may not replace the active segment".into()));
        }
        let old: Vec<_> = st.segments.splice(first..end, std::iter::once(Arc::new(new))).collect();
        st.unsynced.retain(|u| !old.iter().any(|d| Arc::ptr_eq(u, d)));
        Ok(old)
    }

    /// Writes indexes and the producer snapshot and fsyncs: called on clean close.
    pub(crate) fn close(&self) -> Result<()> {
        self.flush()?;
        let st = self.state();
        if let Some(a) = st.segments.last() {
            a.write_indexes()?;
        }
        write_offset_file(&self.dir, RECOVERY_POINT, st.log_end)?;
        write_snapshot(&self.dir.join(PRODUCER_SNAPSHOT), st.log_end, &st.producers, &st.txns)
    }
}

/// Drops whole batches whose first offset is at or past `hw`.
fn trim_to_offset(batches: Bytes, hw: u64) -> Bytes {
    let mut end = 0;
    for b in batch::BatchIter::new(batches.clone()) {
        match b {
            Ok(b) if (b.header().base_offset as u64) < hw => end += b.bytes().len(),
            _ => break,
        }
    }
    batches.slice(..end)
}

const LOG_START: &str = "log-start-offset";
const RECOVERY_POINT: &str = "recovery-point";
/// The partition's [`Partition::resume_floor`] as far as compaction moved it.
const DELETES_DROPPED: &str = "deletes-dropped-before";

fn read_offset_file(dir: &Path, name: &str) -> Option<u64> {
    let s = fs::read_to_string(dir.join(name)).ok()?;
    let (v, o) = s.trim().split_once(' ')?;
    (v == "v1").then(|| o.parse().ok()).flatten()
}

fn write_offset_file(dir: &Path, name: &str, offset: u64) -> Result<()> {
    write_atomically(&dir.join(name), format!("v1 {offset}\n").as_bytes())
}

/// The producer and transaction state of a partition as of an offset: written at every segment
/// roll and on clean close, so recovery replays at most the batches after it.
struct Snapshot {
    as_of: u64,
    producers: ProducerTable,
    txns: TxnState,
}

fn write_snapshot(path: &Path, as_of: u64, producers: &ProducerTable, txns: &TxnState) -> Result<()> {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GPS2");
    buf.extend_from_slice(&as_of.to_be_bytes());
    let entries: Vec<_> = producers.entries().collect();
    buf.extend_from_slice(&(entries.iter().map(|(_, e)| e.batches.len()).sum::<usize>() as u32).to_be_bytes());
    for (pid, e) in entries {
        for b in &e.batches {
            buf.extend_from_slice(&pid.to_be_bytes());
            buf.extend_from_slice(&e.epoch.to_be_bytes());
            buf.extend_from_slice(&b.first_seq.to_be_bytes());
            buf.extend_from_slice(&b.last_seq.to_be_bytes());
            buf.extend_from_slice(&b.base_offset.to_be_bytes());
            buf.extend_from_slice(&b.last_offset.to_be_bytes());
        }
    }
    buf.extend_from_slice(&(txns.ongoing.len() as u32).to_be_bytes());
    for (pid, first) in &txns.ongoing {
        buf.extend_from_slice(&pid.to_be_bytes());
        buf.extend_from_slice(&first.to_be_bytes());
    }
    buf.extend_from_slice(&(txns.aborted.len() as u32).to_be_bytes());
    for a in &txns.aborted {
        buf.extend_from_slice(&a.producer_id.to_be_bytes());
        buf.extend_from_slice(&a.first_offset.to_be_bytes());
        buf.extend_from_slice(&a.last_offset.to_be_bytes());
    }
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    write_atomically(path, &buf)
}

fn read_snapshot(path: &Path) -> Option<Snapshot> {
    let raw = fs::read(path).ok()?;
    if raw.len() < 8 || &raw[..4] != b"GPS2" {
        return None;
    }
    let (body, crc) = raw.split_at(raw.len() - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return None;
    }
    let mut pos = 4;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = body.get(pos..pos + n)?;
        pos += n;
        Some(s)
    };
    let u64_ = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let as_of = u64_(take(8)?);
    let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut producers = ProducerTable::default();
    for _ in 0..n {
        let c = take(34)?;
        let base = u64_(&c[18..26]);
        let last = u64_(&c[26..34]);
        producers.record(&BatchHeader {
            base_offset: base as i64,
            batch_length: HEADER_LEN as i32,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: last.checked_sub(base)? as i32,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: i64::from_be_bytes(c[0..8].try_into().ok()?),
            producer_epoch: i16::from_be_bytes(c[8..10].try_into().ok()?),
            base_sequence: i32::from_be_bytes(c[10..14].try_into().ok()?),
            record_count: 1,
        });
    }
    let mut txns = TxnState::default();
    let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    for _ in 0..n {
        let c = take(16)?;
        txns.ongoing.insert(i64::from_be_bytes(c[..8].try_into().ok()?), u64_(&c[8..]));
    }
    let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    for _ in 0..n {
        let c = take(24)?;
        txns.aborted.push(AbortedTxn {
            producer_id: i64::from_be_bytes(c[..8].try_into().ok()?),
            first_offset: u64_(&c[8..16]),
            last_offset: u64_(&c[16..24]),
        });
    }
    Some(Snapshot { as_of, producers, txns })
}

/// Replays the batches from `from` on into producer and transaction state.
fn replay(segments: &[Arc<Segment>], from: u64, producers: &mut ProducerTable, txns: &mut TxnState) -> Result<()> {
    for seg in segments.iter().filter(|s| s.next_offset.load(Ordering::Acquire) > from) {
        let limit = seg.len();
        let Some(mut pos) = seg.position_of(from, limit)? else { continue };
        while pos < limit {
            let data = seg.read(pos, 1 << 20, limit)?;
            if data.is_empty() {
                break;
            }
            pos += data.len() as u64;
            for b in batch::BatchIter::new(data) {
                let b = b?;
                let h = *b.header();
                if (h.base_offset as u64) < from {
                    continue;
                }
                producers.record(&h);
                let marker = if h.is_control() { ControlType::of(b.bytes()) } else { None };
                txns.apply(&h, marker);
            }
        }
    }
    Ok(())
}
