//! Transactions: Kafka's design on one machine — producer ids and epochs, control markers, a
//! transaction log, read-committed fetches.
//!
//! A [`TransactionalProducer`] writes transactional batches as it goes. `commit_transaction`
//! appends what is buffered, fsyncs the partitions written, and writes a `prepare_commit` record —
//! the partitions and the consumer offsets — to the transaction log with an fsync: that is the
//! commit point. It then writes a COMMIT marker to every partition and applies the offsets to the
//! group. If the process dies after the commit point, opening the log finishes the job; before it,
//! opening the log aborts every transaction still open in a partition. Read-committed readers see
//! records only below a partition's last stable offset and skip aborted transactions, so a
//! transaction's records and its offsets become visible together or not at all.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use garam_core::backend::TopicPartition;
use serde::{Deserialize, Serialize};

use crate::batch::{BatchBuilder, Compression};
use crate::error::{LogError, Result};
use crate::log::Log;
use crate::partition::Partition;
use crate::producer::{Producer, ProducerConfig};
use crate::txn_state::ControlType;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TxnRecord {
    Init {
        id: String,
        pid: i64,
        epoch: i16,
    },
    PrepareCommit {
        id: String,
        pid: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
        group: Option<String>,
        offsets: Vec<(String, u32, u64)>,
        /// Each partition's end offset once the transaction's records were appended: recovery
        /// commits an open transaction only if it starts below, since the producer's next
        /// transaction may have begun before this one was recorded complete. Absent in logs
        /// written before completion became lazy.
        #[serde(default)]
        ends: Vec<(String, u32, u64)>,
        /// Tells this transaction from the producer's others (see [`TxnRecord::seq`]).
        #[serde(default)]
        seq: u64,
    },
    PrepareAbort {
        id: String,
        pid: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
        #[serde(default)]
        seq: u64,
    },
    Complete {
        id: String,
        pid: i64,
        epoch: i16,
        /// The `seq` of the prepare record it completes.
        #[serde(default)]
        seq: u64,
    },
}

impl TxnRecord {
    /// The producer id and epoch a record belongs to.
    fn producer(&self) -> (i64, i16) {
        match self {
            TxnRecord::Init { pid, epoch, .. }
            | TxnRecord::PrepareCommit { pid, epoch, .. }
            | TxnRecord::PrepareAbort { pid, epoch, .. }
            | TxnRecord::Complete { pid, epoch, .. } => (*pid, *epoch),
        }
    }

    /// Which of its producer's transactions a record belongs to. A completion record may be
    /// written late, by another thread (`delete_topic`, `delete_group` or a reset completing the
    /// id's last commit) after the same producer's next prepare record: it must not hide that one
    /// from recovery. Records written before the sequence existed read as 0 and match each other.
    fn seq(&self) -> u64 {
        match self {
            TxnRecord::Init { .. } => 0,
            TxnRecord::PrepareCommit { seq, .. }
            | TxnRecord::PrepareAbort { seq, .. }
            | TxnRecord::Complete { seq, .. } => *seq,
        }
    }

    /// True when the record belongs to transaction `seq` of producer `pid` at `epoch`.
    fn is_transaction(&self, pid: i64, epoch: i16, seq: u64) -> bool {
        self.producer() == (pid, epoch) && self.seq() == seq
    }
}

/// A new transaction sequence number. Unique within the process; together with the producer id
/// and epoch (which every producer's `init` bumps, also after a restart) it names one transaction.
fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Clone, Default)]
struct TxnMeta {
    pid: i64,
    epoch: i16,
    /// Partitions written in the open transaction.
    partitions: BTreeSet<TopicPartition>,
    /// A prepared, not yet completed transaction (found on open).
    pending: Option<TxnRecord>,
}

/// The transaction coordinator of a log: transactional ids, epochs, and the transaction log.
pub struct TransactionCoordinator {
    path: PathBuf,
    file: Mutex<TxnLog>,
    txns: Mutex<HashMap<String, TxnMeta>>,
    /// Per transactional id, its last committed transaction until it is recorded complete. Kept
    /// here, not in the producer, so that a new producer for the id (fencing the old one) or a
    /// retried commit after a failed fsync still makes it durable first.
    unfinished: Mutex<HashMap<String, Unfinished>>,
}

const VERSION: u8 = 1;

/// The transaction log's file, and what replaying it gives — kept as records are written, so
/// that it can be rewritten with that alone once it grows past `compact_at` bytes.
struct TxnLog {
    file: File,
    len: u64,
    state: Replayed,
    compact_at: u64,
    /// The size the last compaction left: the next waits until the file is twice that, so that
    /// many ids' records alone past `compact_at` do not rewrite it at every write.
    compacted_len: u64,
    /// A compaction's rename is not known durable (its directory fsync failed): nothing more is
    /// written until it is, or a commit point could land in a file a power cut undoes.
    rename_unsynced: bool,
}

impl TxnLog {
    /// Makes the file ready for a write: a pending directory fsync done, compacted if due.
    fn prepare_write(&mut self, path: &Path) -> Result<()> {
        if self.rename_unsynced {
            crate::index::sync_parent(path)?;
            self.rename_unsynced = false;
        }
        if self.len > self.compact_at.max(2 * self.compacted_len) {
            self.compact(path)?;
        }
        Ok(())
    }

    /// Rewrites the file with each id's `Init` and its prepare record still open, which replay
    /// to the same state: into a new file, fsynced, renamed over the old one, and the directory
    /// fsynced. A crash leaves either file whole.
    fn compact(&mut self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("log.compacting");
        let mut out = Vec::new();
        let mut inits: Vec<_> = self.state.inits.iter().collect();
        inits.sort();
        for (id, (pid, epoch)) in inits {
            out.extend_from_slice(&frame(&TxnRecord::Init { id: id.clone(), pid: *pid, epoch: *epoch })?);
        }
        let mut prepared: Vec<_> = self.state.prepared.iter().collect();
        prepared.sort_by(|a, b| a.0.cmp(b.0));
        for (_, rec) in prepared {
            out.extend_from_slice(&frame(rec)?);
        }
        fs::write(&tmp, &out)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .map_err(LogError::io("write compacted transaction log", &tmp))?;
        // Appending, as the log's own handle does: a failed write truncates back to its start.
        let file =
            OpenOptions::new().append(true).open(&tmp).map_err(LogError::io("open compacted transaction log", &tmp))?;
        fs::rename(&tmp, path).map_err(LogError::io("rename compacted transaction log", path))?;
        // From here the file at `path` is the new one, whatever happens next.
        let before = self.len;
        (self.file, self.len, self.compacted_len) = (file, out.len() as u64, out.len() as u64);
        tracing::info!(path = %path.display(), before, after = self.len, "compacted the transaction log");
        self.rename_unsynced = true;
        crate::index::sync_parent(path)?;
        self.rename_unsynced = false;
        Ok(())
    }
}

/// What replaying the transaction log gives: each id's last `Init` (producer id and epoch), and
/// its prepare record not yet followed by a `Complete` of the same producer and sequence.
#[derive(Default)]
struct Replayed {
    inits: HashMap<String, (i64, i16)>,
    prepared: HashMap<String, TxnRecord>,
}

impl Replayed {
    fn apply(&mut self, rec: &TxnRecord) {
        match rec {
            TxnRecord::Init { id, pid, epoch } => {
                self.inits.insert(id.clone(), (*pid, *epoch));
            }
            TxnRecord::PrepareCommit { id, .. } | TxnRecord::PrepareAbort { id, .. } => {
                self.prepared.insert(id.clone(), rec.clone());
            }
            TxnRecord::Complete { id, pid, epoch, seq } => {
                // Only the transaction it names: a producer completes its last transaction
                // lazily (see `TransactionalProducer::commit_transaction`), so a record of an
                // older epoch, or of the same epoch's previous transaction, may follow a newer
                // prepare record.
                if self.prepared.get(id).is_some_and(|p| p.is_transaction(*pid, *epoch, *seq)) {
                    self.prepared.remove(id);
                }
            }
        }
    }
}

/// One record as the transaction log holds it: length, CRC-32C, then the version and JSON.
fn frame(rec: &TxnRecord) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(rec).map_err(|e| LogError::InvalidArgument(e.to_string()))?;
    let mut body = Vec::with_capacity(json.len() + 1);
    body.push(VERSION);
    body.extend_from_slice(&json);
    let mut frame = Vec::with_capacity(body.len() + 8);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

impl TransactionCoordinator {
    pub(crate) fn open(dir: &Path, compact_at: u64) -> Result<TransactionCoordinator> {
        fs::create_dir_all(dir).map_err(LogError::io("create transactions dir", dir))?;
        let path = dir.join("transactions.log");
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut raw).map_err(LogError::io("read transaction log", &path))?;
        }
        let mut replayed = Replayed::default();
        let mut pos = 0;
        while pos + 8 <= raw.len() {
            let len = u32::from_be_bytes([raw[pos], raw[pos + 1], raw[pos + 2], raw[pos + 3]]) as usize;
            let crc = u32::from_be_bytes([raw[pos + 4], raw[pos + 5], raw[pos + 6], raw[pos + 7]]);
            let Some(body) = raw.get(pos + 8..pos + 8 + len) else { break };
            if crc32c::crc32c(body) != crc || body.first() != Some(&VERSION) {
                break;
            }
            let Ok(rec) = serde_json::from_slice::<TxnRecord>(&body[1..]) else { break };
            replayed.apply(&rec);
            pos += 8 + len;
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(LogError::io("open transaction log", &path))?;
        if !existed {
            // A new file and directory: their entries must survive a power cut like the first
            // prepare record written into them.
            crate::index::sync_parent(&path)?;
            crate::index::sync_parent(dir)?;
        }
        if pos < raw.len() {
            file.set_len(pos as u64).map_err(LogError::io("truncate transaction log", &path))?;
        }
        let mut txns: HashMap<String, TxnMeta> = HashMap::new();
        for (id, (pid, epoch)) in &replayed.inits {
            let m = txns.entry(id.clone()).or_default();
            (m.pid, m.epoch) = (*pid, *epoch);
        }
        for (id, rec) in &replayed.prepared {
            txns.entry(id.clone()).or_default().pending = Some(rec.clone());
        }
        let mut log =
            TxnLog { file, len: pos as u64, state: replayed, compact_at, compacted_len: 0, rename_unsynced: false };
        log.prepare_write(&path)?;
        Ok(TransactionCoordinator {
            path,
            file: Mutex::new(log),
            txns: Mutex::new(txns),
            unfinished: Mutex::new(HashMap::new()),
        })
    }

    fn txns(&self) -> MutexGuard<'_, HashMap<String, TxnMeta>> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, rec: &TxnRecord, sync: bool) -> Result<()> {
        let frame = frame(rec)?;
        let mut log = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // Before the record, not after: a failed compaction fails this write, cleanly.
        log.prepare_write(&self.path)?;
        let len = log.len;
        let f = &mut log.file;
        let r = f.write_all(&frame).and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = r {
            let _ = f.set_len(len);
            return Err(LogError::Io { context: "write transaction log", path: self.path.clone(), source: e });
        }
        log.len += frame.len() as u64;
        log.state.apply(rec);
        Ok(())
    }

    /// Finishes prepared transactions and aborts every transaction left open in a partition.
    pub(crate) fn recover(&self, log: &Log) -> Result<()> {
        let pending: Vec<(String, TxnRecord)> =
            self.txns().iter().filter_map(|(id, m)| m.pending.clone().map(|p| (id.clone(), p))).collect();
        for (id, rec) in pending {
            tracing::info!(transactional_id = %id, "completing a transaction prepared before the last stop");
            self.complete(log, &rec, true)?;
        }
        for t in log.topics() {
            for p in t.partitions() {
                for (pid, _) in p.open_transactions() {
                    let epoch = self.txns().values().find(|m| m.pid == pid).map_or(0, |m| m.epoch);
                    tracing::warn!(partition = %format!("{}-{}", t.name(), p.id()), producer_id = pid, "aborting a transaction left open by a crash");
                    write_marker(log, &TopicPartition::new(t.name(), p.id()), pid, epoch, ControlType::Abort)?;
                }
            }
        }
        Ok(())
    }

    /// Recovery: markers, offsets, and the completion record of a prepared transaction.
    fn complete(&self, log: &Log, rec: &TxnRecord, apply_offsets: bool) -> Result<()> {
        self.write_markers(log, rec)?;
        if apply_offsets {
            self.apply_offsets(log, rec)?;
            // Durable before the completion record, whoever wrote them (a crashed commit may have
            // left them in the page cache only).
            if matches!(rec, TxnRecord::PrepareCommit { group: Some(_), .. }) {
                log.groups().sync_offsets()?;
            }
        }
        match rec {
            TxnRecord::PrepareCommit { id, pid, epoch, seq, .. }
            | TxnRecord::PrepareAbort { id, pid, epoch, seq, .. } => self.finish(id, *pid, *epoch, *seq),
            _ => Ok(()),
        }
    }

    /// Writes a prepare record (the commit point, fsynced) if the producer still holds the
    /// current epoch — checked under the same lock `init` takes, so a fenced producer cannot slip
    /// a prepare in after a newer instance aborted its transaction.
    fn write_prepare(&self, id: &str, pid: i64, epoch: i16, rec: &TxnRecord) -> Result<()> {
        let mut txns = self.txns();
        match txns.get(id) {
            Some(m) if m.pid == pid && m.epoch == epoch => {}
            Some(m) => return Err(LogError::ProducerFenced { producer_id: pid, epoch, current_epoch: m.epoch }),
            None => return Err(LogError::InvalidArgument(format!("unknown transactional id '{id}'"))),
        }
        self.write(rec, true)?;
        if let Some(m) = txns.get_mut(id) {
            m.pending = Some(rec.clone());
        }
        Ok(())
    }

    /// Writes the markers of a prepared transaction where it is still open, and fsyncs every
    /// partition it wrote (so a completion record never outlives its markers in a power failure,
    /// including markers an earlier, crashed commit left unsynced).
    fn write_markers(&self, log: &Log, rec: &TxnRecord) -> Result<()> {
        self.write_markers_unsynced(log, rec)?;
        let partitions = match rec {
            TxnRecord::PrepareCommit { partitions, .. } | TxnRecord::PrepareAbort { partitions, .. } => partitions,
            _ => return Ok(()),
        };
        let parts: Vec<Arc<Partition>> = partitions.iter().filter_map(|(t, p)| log.partition(t, *p).ok()).collect();
        log.inner.fsync.flush_all_and(&parts, None::<fn() -> Result<()>>)
    }

    /// Writes the markers of a prepared transaction where it is still open; returns the
    /// partitions written, which must be fsynced before the transaction is recorded complete.
    fn write_markers_unsynced(&self, log: &Log, rec: &TxnRecord) -> Result<Vec<Arc<Partition>>> {
        let no_ends = Vec::new();
        let (pid, epoch, partitions, kind, ends) = match rec {
            TxnRecord::PrepareCommit { pid, epoch, partitions, ends, .. } => {
                (*pid, *epoch, partitions, ControlType::Commit, ends)
            }
            TxnRecord::PrepareAbort { pid, epoch, partitions, .. } => {
                (*pid, *epoch, partitions, ControlType::Abort, &no_ends)
            }
            _ => return Ok(Vec::new()),
        };
        let mut written = Vec::new();
        for (t, p) in partitions {
            let Ok(part) = log.partition(t, *p) else { continue };
            let end = ends.iter().find(|(et, ep, _)| et == t && ep == p).map_or(u64::MAX, |e| e.2);
            // Idempotent: only where this transaction is still open (not the producer's next).
            if part.open_transactions().iter().any(|(x, first)| *x == pid && *first < end) {
                write_marker(log, &TopicPartition::new(t.clone(), *p), pid, epoch, kind)?;
                written.push(part);
            }
        }
        Ok(written)
    }

    /// Applies a committed transaction's offsets to its group.
    fn apply_offsets(&self, log: &Log, rec: &TxnRecord) -> Result<()> {
        if let TxnRecord::PrepareCommit { group: Some(group), offsets, .. } = rec {
            let offsets: Vec<_> = offsets.iter().map(|(t, p, o)| (TopicPartition::new(t.clone(), *p), *o)).collect();
            log.groups().apply_transactional(group, &offsets)?;
        }
        Ok(())
    }

    /// Records a transaction complete (markers and offsets are in place).
    fn finish(&self, id: &str, pid: i64, epoch: i16, seq: u64) -> Result<()> {
        self.write_complete(id, pid, epoch, seq)?;
        self.forget_pending(id, pid, epoch, seq);
        Ok(())
    }

    fn unfinished(&self) -> MutexGuard<'_, HashMap<String, Unfinished>> {
        self.unfinished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the last committed transaction of `id` durable (its markers and offsets) and
    /// records it complete. It stays listed until then — visible to anyone else completing it
    /// meanwhile (a new producer's `init`), and kept on failure for the next attempt.
    fn complete_unfinished(&self, log: &Log, id: &str) -> Result<()> {
        let Some(u) = self.unfinished().get(id).cloned() else { return Ok(()) };
        let groups = log.groups();
        log.inner.fsync.flush_all_and(&u.markers, u.group.is_some().then_some(|| groups.sync_offsets()))?;
        self.write_complete(id, u.pid, u.epoch, u.seq)?;
        self.forget_unfinished(id, u.seq);
        Ok(())
    }

    /// Completes the unfinished transactions that committed offsets for `group`.
    pub(crate) fn complete_unfinished_of_group(&self, log: &Log, group: &str) -> Result<()> {
        let ids: Vec<String> = self
            .unfinished()
            .iter()
            .filter(|(_, u)| u.group.as_deref() == Some(group))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().try_for_each(|id| self.complete_unfinished(log, id))
    }

    /// Completes the unfinished transactions with markers in `topic`, before it is deleted:
    /// recovery would otherwise hold their prepare records against a topic recreated under the
    /// name, whose offsets mean other records.
    pub(crate) fn complete_unfinished_of_topic(&self, log: &Log, topic: &str) -> Result<()> {
        let ids: Vec<String> = self
            .unfinished()
            .iter()
            .filter(|(_, u)| u.markers.iter().any(|p| p.topic() == topic))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().try_for_each(|id| self.complete_unfinished(log, id))
    }

    /// Drops `id`'s unfinished transaction `seq` (recorded complete), not a later one.
    fn forget_unfinished(&self, id: &str, seq: u64) {
        let mut unfinished = self.unfinished();
        if unfinished.get(id).is_some_and(|u| u.seq == seq) {
            unfinished.remove(id);
        }
    }

    /// Writes the completion record; its markers and offsets must be durable already.
    fn write_complete(&self, id: &str, pid: i64, epoch: i16, seq: u64) -> Result<()> {
        self.write(&TxnRecord::Complete { id: id.to_string(), pid, epoch, seq }, false)
    }

    /// Forgets the transaction in memory: its markers and offsets are in place (not yet
    /// necessarily durable; the log still holds its prepare record until the completion record).
    fn forget_pending(&self, id: &str, pid: i64, epoch: i16, seq: u64) {
        let mut txns = self.txns();
        let Some(m) = txns.get_mut(id) else { return };
        // Its prepare record, whoever holds the id now: a new producer's `init` completes the
        // old producer's, and completing it again later would move offsets back that a reset
        // moved since.
        if m.pending.as_ref().is_some_and(|p| p.is_transaction(pid, epoch, seq)) {
            m.pending = None;
        }
        // Its partitions only while it holds the id: a fenced producer's commit finishing late
        // must not clear what the id's new producer registered.
        if m.pid == pid && m.epoch == epoch {
            m.partitions.clear();
        }
    }

    /// Registers a transactional id: a new producer id the first time, the epoch bumped after.
    /// The previous epoch's open transaction is aborted, and its producer fenced.
    fn init(&self, log: &Log, id: &str) -> Result<(i64, i16)> {
        // Fence first, under the lock `write_prepare` checks the epoch under: the old producer can
        // prepare nothing after this, and what it prepared before is pending here.
        let (pid, epoch, aborter, open, pending) = {
            let mut txns = self.txns();
            let known = txns.get(id).map(|m| (m.pid, m.epoch));
            // The old producer id's last epoch is kept for fencing it: when its epochs run out
            // the id gets a new producer id (Kafka's KIP-360), and the old producer id's open
            // transaction is aborted at `i16::MAX` — above the old producer's epoch, so its
            // partitions refuse its later batches, as a bumped epoch's markers always do (a
            // marker closes only its own producer id's transaction).
            let (pid, epoch) = match known {
                Some((pid, e)) if e < i16::MAX - 1 => (pid, e + 1),
                _ => (log.init_producer_id()?.0, 0),
            };
            let aborter = match known {
                Some((old, _)) if old != pid => (old, i16::MAX),
                _ => (pid, epoch),
            };
            let m = txns.entry(id.to_string()).or_default();
            let open: Vec<TopicPartition> = std::mem::take(&mut m.partitions).into_iter().collect();
            (m.pid, m.epoch) = (pid, epoch);
            (pid, epoch, aborter, open, m.pending.clone())
        };
        // A transaction of the old epoch past its commit point rolls forward; one committed but
        // not yet recorded complete is made durable and recorded.
        if let Some(rec) = pending {
            self.complete(log, &rec, true)?;
        }
        self.complete_unfinished(log, id)?;
        self.write(&TxnRecord::Init { id: id.to_string(), pid, epoch }, true)?;
        // Abort what the old epoch left open (with a later epoch than the old producer's, which
        // fences it at the partitions too).
        let (abort_pid, abort_epoch) = aborter;
        let mut touched: BTreeSet<TopicPartition> = open.into_iter().collect();
        for t in log.topics() {
            for p in t.partitions() {
                if p.open_transactions().iter().any(|(x, _)| *x == abort_pid) {
                    touched.insert(TopicPartition::new(t.name(), p.id()));
                }
            }
        }
        for tp in &touched {
            write_marker(log, tp, abort_pid, abort_epoch, ControlType::Abort)?;
        }
        Ok((pid, epoch))
    }

    fn check_epoch(&self, id: &str, pid: i64, epoch: i16) -> Result<()> {
        match self.txns().get(id) {
            Some(m) if m.pid == pid && m.epoch == epoch => Ok(()),
            Some(m) => Err(LogError::ProducerFenced { producer_id: pid, epoch, current_epoch: m.epoch }),
            None => Err(LogError::InvalidArgument(format!("unknown transactional id '{id}'"))),
        }
    }

    /// Registers a partition of `id`'s open transaction, the epoch checked in the same critical
    /// section: an `init` cannot fence the producer in between and miss the partition.
    fn add_partition(&self, id: &str, pid: i64, epoch: i16, tp: &TopicPartition) -> Result<()> {
        match self.txns().get_mut(id) {
            Some(m) if m.pid == pid && m.epoch == epoch => {
                m.partitions.insert(tp.clone());
                Ok(())
            }
            Some(m) => Err(LogError::ProducerFenced { producer_id: pid, epoch, current_epoch: m.epoch }),
            None => Err(LogError::InvalidArgument(format!("unknown transactional id '{id}'"))),
        }
    }
}

/// Appends a transaction marker for `pid` to a partition.
fn write_marker(log: &Log, tp: &TopicPartition, pid: i64, epoch: i16, kind: ControlType) -> Result<()> {
    let mut b = BatchBuilder::new(Compression::None);
    b.producer(pid, epoch, -1);
    b.transactional(true);
    b.control(true);
    b.push(garam_core::time::now_ms(), Some(&kind.key()), Some(&[0, 0, 0, 0, 0, 0]), &[]);
    let mut bytes = b.finish()?.to_vec();
    log.partition(&tp.topic, tp.partition)?.append_control(&mut bytes)?;
    Ok(())
}

/// The consumer group a transaction commits offsets for, and the member that owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// `group.id`.
    pub group: String,
    /// The member id, checked for ownership of every committed partition; `None` for a group
    /// with no active member.
    pub member_id: Option<String>,
}

/// A producer whose records become visible only when its transaction commits (Kafka's
/// transactional producer). One per `transactional.id`: opening a new one fences the old.
pub struct TransactionalProducer {
    log: Log,
    producer: Producer,
    id: String,
    pid: i64,
    epoch: i16,
    open: bool,
    /// Partitions written in the open transaction (kept until it completes, so an abort after a
    /// refused commit still reaches every one).
    partitions: std::collections::BTreeSet<TopicPartition>,
    /// Set once a commit's prepare record is durable: the transaction can no longer abort; it
    /// completes here or on the next open of the log.
    prepared: bool,
    /// The commit [`Self::start_commit`] handed to the committer, until its outcome is taken.
    in_flight: Option<Arc<InFlight>>,
    committer: Committer,
}

/// A committed transaction whose markers and offsets are written but not yet fsynced.
#[derive(Clone)]
struct Unfinished {
    /// Tells this transaction from a later one of the same id.
    seq: u64,
    /// Partitions its markers went to.
    markers: Vec<Arc<Partition>>,
    /// The group its offsets went to (their store needs an fsync too).
    group: Option<String>,
    /// The producer that committed it.
    pid: i64,
    epoch: i16,
}

impl TransactionalProducer {
    pub(crate) fn new(log: Log, id: &str, mut config: ProducerConfig) -> Result<TransactionalProducer> {
        let (pid, epoch) = log.inner.txns.init(&log, id)?;
        config.idempotent = false;
        let producer = Producer::transactional(log.clone(), config, pid, epoch);
        Ok(TransactionalProducer {
            log,
            producer,
            id: id.to_string(),
            pid,
            epoch,
            open: false,
            partitions: Default::default(),
            prepared: false,
            in_flight: None,
            committer: Committer::default(),
        })
    }

    /// The producer id and epoch.
    pub fn producer_id_and_epoch(&self) -> (i64, i16) {
        (self.pid, self.epoch)
    }

    /// Starts a transaction.
    pub fn begin_transaction(&mut self) -> Result<()> {
        if self.open {
            return Err(LogError::InvalidArgument(format!("transaction of '{}' is already open", self.id)));
        }
        self.log.inner.txns.check_epoch(&self.id, self.pid, self.epoch)?;
        self.open = true;
        Ok(())
    }

    /// True while a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open
    }

    /// Sends a record inside the open transaction.
    #[inline]
    pub fn send_raw(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: &[garam_core::Header],
    ) -> Result<()> {
        if !self.open || self.prepared {
            return Err(LogError::InvalidArgument("send outside a transaction: call begin_transaction first".into()));
        }
        // The partition joins before its first record is queued (and so before any append): a
        // fenced producer must not leave records in a partition its fencer knows nothing of.
        let (log, id, pid, epoch, in_flight) = (&self.log, &self.id, self.pid, self.epoch, self.in_flight.as_deref());
        self.producer.send_reporting(topic, partition, key, value, timestamp, headers, |p| {
            join_partition(log, id, pid, epoch, in_flight, TopicPartition::new(topic, p))
        })?;
        Ok(())
    }

    /// See [`join_partition`].
    fn join_partition(&mut self, tp: TopicPartition) -> Result<()> {
        join_partition(&self.log, &self.id, self.pid, self.epoch, self.in_flight.as_deref(), tp)
    }

    /// Queues records without headers for one partition, all at `timestamp`: `records` hands
    /// each to the sink it is given (a commit's changelog records, without a topic lookup each).
    pub(crate) fn send_to_partition(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        records: &mut garam_core::backend::PartitionRecords<'_>,
    ) -> Result<std::result::Result<(), garam_core::StreamsError>> {
        if !self.open || self.prepared {
            return Err(LogError::InvalidArgument("send outside a transaction: call begin_transaction first".into()));
        }
        let t = self.producer.partition_slot(topic, partition)?;
        if !self.producer.reported(t, partition) {
            self.join_partition(TopicPartition::new(topic, partition))?;
            self.producer.report(t, partition);
        }
        let producer = &mut self.producer;
        Ok(records(&mut |key, value| {
            producer
                .push_at(t, partition, Some(key), value, timestamp, &[])
                .map(|_| ())
                .map_err(crate::backend::to_streams)
        }))
    }

    /// Commits the transaction's records together with `offsets` for `group`.
    ///
    /// Fails without committing when the producer was fenced or the member no longer owns the
    /// partitions (abort then). Once the prepare record is durable, a failure leaves the
    /// transaction to complete on the next open of the log; aborting it is refused.
    pub fn commit_transaction(
        &mut self,
        group: Option<&GroupMetadata>,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<()> {
        self.start_commit(group, offsets)?;
        self.await_commit()
    }

    /// Starts committing the transaction: appends its queued records, then hands the rest of
    /// [`Self::commit_transaction`] — the fsyncs, the commit point, the markers and offsets — to
    /// this producer's committer thread, and returns. A new transaction may begin at once; its
    /// records queue in the producer and reach the partitions only after the markers, so the
    /// caller's processing overlaps the commit's fsyncs (a quarter of its time, off the CPU).
    /// [`Self::await_commit`] gives the outcome; every other call on the producer that needs it
    /// waits for it first.
    pub fn start_commit(&mut self, group: Option<&GroupMetadata>, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.settle()?;
        if !self.open {
            return Err(LogError::InvalidArgument("no open transaction to commit".into()));
        }
        if self.prepared {
            return Err(LogError::InvalidArgument(format!(
                "transaction of '{}' is past its commit point; it completes when the log is next opened",
                self.id
            )));
        }
        self.log.inner.txns.check_epoch(&self.id, self.pid, self.epoch)?;
        self.producer.flush()?;
        // Records appended to a topic deleted since are gone: the transaction cannot commit.
        self.producer.check_touched_live()?;
        self.partitions.extend(self.producer.take_touched());
        // Kept until the job is handed over: a failure before then leaves them for an abort.
        let partitions: Vec<TopicPartition> = self.partitions.iter().cloned().collect();
        let parts =
            partitions.iter().map(|tp| self.log.partition(&tp.topic, tp.partition)).collect::<Result<Vec<_>>>()?;
        let ends: Vec<(String, u32, u64)> =
            partitions.iter().zip(&parts).map(|(tp, p)| (tp.topic.clone(), tp.partition, p.high_watermark())).collect();
        let rec = TxnRecord::PrepareCommit {
            id: self.id.clone(),
            pid: self.pid,
            epoch: self.epoch,
            partitions: partitions.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect(),
            group: group.map(|g| g.group.clone()),
            offsets: offsets.iter().map(|(tp, o)| (tp.topic.clone(), tp.partition, *o)).collect(),
            ends,
            seq: next_seq(),
        };
        let (done, outcome) = mpsc::channel();
        let job = CommitJob {
            log: self.log.clone(),
            id: self.id.clone(),
            pid: self.pid,
            epoch: self.epoch,
            parts,
            rec,
            group: group.cloned(),
            offsets: offsets.to_vec(),
            partitions,
            done,
        };
        self.open = false;
        self.partitions.clear();
        let flight = Arc::new(InFlight::new(outcome, &self.log, &self.id, self.pid, self.epoch));
        self.committer.submit(job);
        self.producer.set_gate(Some(flight.clone()));
        self.in_flight = Some(flight);
        Ok(())
    }

    /// Waits for the commit [`Self::start_commit`] started and returns its outcome (`Ok` when
    /// none is in flight). On failure the producer stands as after a failed
    /// [`Self::commit_transaction`]: abort, or retry the commit, which then covers both
    /// transactions' records.
    pub fn await_commit(&mut self) -> Result<()> {
        self.settle()
    }

    /// True while a commit started by [`Self::start_commit`] has not been awaited.
    pub fn commit_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Takes the outcome of the commit in flight, if any.
    fn settle(&mut self) -> Result<()> {
        let Some(flight) = self.in_flight.take() else { return Ok(()) };
        let outcome = flight.take();
        // Past its commit point, the transaction can only complete, at recovery; a fenced
        // producer's next records reached partitions its fencer knows nothing of. Either way
        // nothing more is appended.
        let shut = Shut::after(&self.id, &outcome).map(|s| Arc::new(s) as Arc<dyn crate::producer::AppendGate>);
        let shut_for_good = shut.is_some();
        self.producer.set_gate(shut);
        // Partitions first written while the commit was in flight join the transaction now, if
        // the gate's opening has not registered them already: the coordinator forgets the
        // committed transaction's partitions when it completes.
        let unregistered = if shut_for_good { None } else { flight.register_joins().err() };
        if let Some(e) = &unregistered {
            // Fenced since: what is held for unregistered partitions must never go.
            self.producer.set_gate(Some(Arc::new(Shut::Unregistered(e.to_string()))));
        }
        let deferred = flight.take_joins();
        match outcome.result {
            Ok(()) => unregistered.map_or(Ok(()), Err),
            Err(e) => {
                // An abort (or a retried commit) must reach the failed transaction's partitions.
                self.partitions.extend(outcome.partitions);
                self.partitions.extend(deferred);
                self.prepared |= outcome.prepared;
                self.open = true;
                Err(e)
            }
        }
    }

    /// Aborts the transaction: its records are never visible to read-committed readers.
    pub fn abort_transaction(&mut self) -> Result<()> {
        // A commit in flight first: if it failed, its records are aborted with these.
        if let Err(e) = self.settle() {
            tracing::debug!(transactional_id = %self.id, error = %e, "the commit in flight failed; aborting it too");
        }
        if !self.open {
            return Ok(());
        }
        if self.prepared {
            return Err(LogError::InvalidArgument(format!(
                "transaction of '{}' is past its commit point; it completes when the log is next opened",
                self.id
            )));
        }
        // What it holds never goes, whatever follows: a fenced producer's held batches would
        // reach partitions its fencer did not abort.
        self.producer.discard();
        self.log.inner.txns.check_epoch(&self.id, self.pid, self.epoch)?;
        // The previous transaction first: this abort's prepare record would hide its prepare
        // record from recovery.
        self.log.inner.txns.complete_unfinished(&self.log, &self.id)?;
        let coordinator = &self.log.inner.txns;
        self.partitions.extend(self.producer.take_touched());
        let rec = TxnRecord::PrepareAbort {
            id: self.id.clone(),
            pid: self.pid,
            epoch: self.epoch,
            partitions: self.partitions.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect(),
            seq: next_seq(),
        };
        coordinator.write_prepare(&self.id, self.pid, self.epoch, &rec)?;
        coordinator.write_markers(&self.log, &rec)?;
        coordinator.finish(&self.id, self.pid, self.epoch, rec.seq())?;
        self.open = false;
        self.partitions.clear();
        Ok(())
    }
}

/// Registers a partition of the open transaction with the coordinator (which aborts it if a
/// new producer fences this one) — after the commit in flight, which forgets its own. Until
/// then the epoch is only checked, so that a producer fenced already fails here, and the
/// partition waits in the flight's joins: the gate registers them when it opens, before any
/// batch held for them is appended.
fn join_partition(
    log: &Log,
    id: &str,
    pid: i64,
    epoch: i16,
    in_flight: Option<&InFlight>,
    tp: TopicPartition,
) -> Result<()> {
    match in_flight {
        Some(flight) if !flight.joins_registered() => {
            log.inner.txns.check_epoch(id, pid, epoch)?;
            flight.joins().partitions.push(tp);
            Ok(())
        }
        _ => log.inner.txns.add_partition(id, pid, epoch, &tp),
    }
}

/// What a commit hands its committer thread: the rest of the commit, once the records are appended.
struct CommitJob {
    log: Log,
    id: String,
    pid: i64,
    epoch: i16,
    /// The partitions written, opened.
    parts: Vec<Arc<Partition>>,
    rec: TxnRecord,
    group: Option<GroupMetadata>,
    offsets: Vec<(TopicPartition, u64)>,
    /// The partitions written: on failure, handed back so that an abort reaches them.
    partitions: Vec<TopicPartition>,
    done: mpsc::Sender<CommitOutcome>,
}

struct CommitOutcome {
    result: Result<()>,
    /// The prepare record was durable: the transaction can no longer abort.
    prepared: bool,
    partitions: Vec<TopicPartition>,
}

impl CommitJob {
    /// Durable before the commit point: the records, then the prepare record. The same fsync
    /// round makes the previous transaction's markers and offsets durable, so its completion
    /// record can go in ahead of this prepare record.
    fn run(self) {
        let mut prepared = false;
        let result = self.complete(&mut prepared);
        // The producer may be gone (dropped after a panic); nobody is left to tell then.
        let _ = self.done.send(CommitOutcome { result, prepared, partitions: self.partitions });
    }

    fn complete(&self, prepared: &mut bool) -> Result<()> {
        let coordinator = &self.log.inner.txns;
        let mut parts = self.parts.clone();
        let previous = coordinator.unfinished().get(&self.id).cloned();
        if let Some(u) = &previous {
            for m in &u.markers {
                if !parts.iter().any(|p| Arc::ptr_eq(p, m)) {
                    parts.push(m.clone());
                }
            }
        }
        let sync_offsets = previous.as_ref().is_some_and(|u| u.group.is_some());
        let groups = self.log.groups();
        // On failure the previous transaction stays listed unfinished: a retry, an abort, a drop
        // or a new producer for the id completes it.
        self.log.inner.fsync.flush_all_and(&parts, sync_offsets.then_some(|| groups.sync_offsets()))?;
        if let Some(u) = &previous {
            coordinator.write_complete(&self.id, u.pid, u.epoch, u.seq)?;
            coordinator.forget_unfinished(&self.id, u.seq);
        }
        let mut markers = Vec::new();
        let mut commit_point = || -> Result<()> {
            coordinator.write_prepare(&self.id, self.pid, self.epoch, &self.rec)?;
            *prepared = true;
            markers = coordinator.write_markers_unsynced(&self.log, &self.rec)?;
            Ok(())
        };
        match &self.group {
            // The group checks that the member still owns every partition, then (under its locks,
            // so a rebalance cannot slip in) runs the commit point and stores the offsets.
            Some(g) => groups.commit_owned(&g.group, g.member_id.as_deref(), &self.offsets, commit_point)?,
            None => {
                commit_point()?;
                coordinator.apply_offsets(&self.log, &self.rec)?;
            }
        }
        // Markers and offsets are in place: read-committed readers see the records, and the
        // transaction is complete in memory. Its completion record waits until the markers and
        // offsets are durable — the next commit's first fsync round, an abort, or the drop of
        // this producer — so a commit costs two fsync rounds, not four. Until then the log holds
        // its prepare record, and opening the log after a crash completes it again: markers
        // only below the offsets the prepare record names (the next transaction's records may
        // follow them), offsets only where no later commit moved them on.
        coordinator.forget_pending(&self.id, self.pid, self.epoch, self.rec.seq());
        let done = Unfinished {
            seq: self.rec.seq(),
            markers,
            group: self.group.as_ref().map(|g| g.group.clone()),
            pid: self.pid,
            epoch: self.epoch,
        };
        coordinator.unfinished().insert(self.id.clone(), done);
        Ok(())
    }
}

/// A commit in flight: its outcome, received once and kept until the producer takes it.
struct InFlight {
    state: Mutex<Flight>,
    /// The transactional id, for errors.
    id: String,
    /// The coordinator and the producer's id and epoch, to register the joins.
    log: Log,
    pid: i64,
    epoch: i16,
    joins: Mutex<Joins>,
}

/// Partitions the next transaction first wrote while the commit was in flight.
#[derive(Default)]
struct Joins {
    partitions: Vec<TopicPartition>,
    /// How many of them are registered with the coordinator.
    registered: usize,
    /// The gate has opened: every join since registers at once.
    open: bool,
}

enum Flight {
    Running(mpsc::Receiver<CommitOutcome>),
    Done(CommitOutcome),
    Taken,
}

impl crate::producer::AppendGate for InFlight {
    fn is_open(&self) -> Result<bool> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Flight::Running(outcome) = &*state else { return self.open_after(&state) };
        match outcome.try_recv() {
            Ok(outcome) => {
                *state = Flight::Done(outcome);
                self.open_after(&state)
            }
            Err(mpsc::TryRecvError::Empty) => Ok(false),
            // The committer thread is gone: `wait` records the failure.
            Err(mpsc::TryRecvError::Disconnected) => {
                drop(state);
                crate::producer::AppendGate::wait(self).map(|()| true)
            }
        }
    }

    fn wait(&self) -> Result<()> {
        InFlight::wait(self);
        self.open_after(&self.state.lock().unwrap_or_else(|e| e.into_inner())).map(|_| ())
    }
}

/// The gate of a producer that may append nothing more: nothing it holds or sends is appended.
enum Shut {
    /// Its transaction failed past its commit point. Its markers may be in some partitions and
    /// not others; recovery completes it (markers only below the prepare record's end offsets),
    /// and a later record in a partition still missing its marker would be taken into it.
    PastCommitPoint(String),
    /// It was fenced while a commit was in flight: the partitions its next transaction began in
    /// were never registered, so the fencer's abort did not reach them.
    Fenced { producer_id: i64, epoch: i16, current_epoch: i16 },
    /// Partitions its next transaction began in could not be registered (the error's text).
    Unregistered(String),
}

impl Shut {
    /// After a commit's outcome: the gate it leaves, if any.
    fn after(id: &str, outcome: &CommitOutcome) -> Option<Shut> {
        match &outcome.result {
            Err(_) if outcome.prepared => Some(Shut::PastCommitPoint(id.to_string())),
            Err(LogError::ProducerFenced { producer_id, epoch, current_epoch }) => {
                Some(Shut::Fenced { producer_id: *producer_id, epoch: *epoch, current_epoch: *current_epoch })
            }
            _ => None,
        }
    }

    fn error(&self) -> LogError {
        match self {
            Shut::PastCommitPoint(id) => past_commit_point(id),
            Shut::Fenced { producer_id, epoch, current_epoch } => {
                LogError::ProducerFenced { producer_id: *producer_id, epoch: *epoch, current_epoch: *current_epoch }
            }
            Shut::Unregistered(why) => LogError::InvalidArgument(format!(
                "partitions of this producer's transaction could not join it ({why}); it appends nothing more"
            )),
        }
    }
}

impl crate::producer::AppendGate for Shut {
    fn is_open(&self) -> Result<bool> {
        Err(self.error())
    }

    fn wait(&self) -> Result<()> {
        Err(self.error())
    }
}

fn past_commit_point(id: &str) -> LogError {
    LogError::InvalidArgument(format!(
        "the transaction of '{id}' failed past its commit point; it completes when the log is next opened, \
         and this producer appends nothing more"
    ))
}

impl InFlight {
    fn new(outcome: mpsc::Receiver<CommitOutcome>, log: &Log, id: &str, pid: i64, epoch: i16) -> InFlight {
        InFlight {
            state: Mutex::new(Flight::Running(outcome)),
            id: id.to_string(),
            log: log.clone(),
            pid,
            epoch,
            joins: Mutex::new(Joins::default()),
        }
    }

    fn joins(&self) -> MutexGuard<'_, Joins> {
        self.joins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the gate has opened and registered the joins.
    fn joins_registered(&self) -> bool {
        self.joins().open
    }

    /// Registers the joins not registered yet (the epoch checked under the coordinator's lock):
    /// a producer fenced meanwhile fails here, before its held batches could reach partitions
    /// its fencer's abort did not.
    fn register_joins(&self) -> Result<()> {
        let mut joins = self.joins();
        while joins.registered < joins.partitions.len() {
            let tp = &joins.partitions[joins.registered];
            self.log.inner.txns.add_partition(&self.id, self.pid, self.epoch, tp)?;
            joins.registered += 1;
        }
        joins.open = true;
        Ok(())
    }

    /// The joins, registered or not.
    fn take_joins(&self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.joins().partitions)
    }

    /// Whether appends may follow a finished commit: not after one that leaves the gate shut
    /// (see [`Shut`]), nor before the joins are registered.
    fn open_after(&self, state: &Flight) -> Result<bool> {
        match state {
            Flight::Done(outcome) => match Shut::after(&self.id, outcome) {
                Some(shut) => Err(shut.error()),
                None => self.register_joins().map(|()| true),
            },
            _ => Ok(true),
        }
    }

    /// Blocks until the commit has finished.
    fn wait(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Flight::Running(outcome) = &*state {
            // An unknown outcome may be past its commit point: it counts as prepared, so that
            // nothing aborts it (recovery completes it, or aborts it if it never prepared).
            let outcome = outcome.recv().unwrap_or_else(|_| CommitOutcome {
                result: Err(LogError::InvalidArgument("the committer thread ended without an answer".into())),
                prepared: true,
                partitions: Vec::new(),
            });
            *state = Flight::Done(outcome);
        }
    }

    /// The outcome, once the commit has finished.
    fn take(&self) -> CommitOutcome {
        self.wait();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, Flight::Taken) {
            Flight::Done(outcome) => outcome,
            Flight::Running(_) | Flight::Taken => CommitOutcome {
                result: Err(LogError::InvalidArgument("a commit's outcome was taken twice".into())),
                prepared: false,
                partitions: Vec::new(),
            },
        }
    }
}

/// A producer's committer thread, started on its first commit; commits run on the calling
/// thread if it cannot start.
#[derive(Default)]
struct Committer {
    jobs: Option<mpsc::Sender<CommitJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn submit(&mut self, job: CommitJob) {
        if self.jobs.is_none() {
            let (tx, rx) = mpsc::channel::<CommitJob>();
            let spawned = std::thread::Builder::new().name("garam-txn-commit".into()).spawn(move || {
                for job in rx {
                    job.run();
                }
            });
            match spawned {
                Ok(handle) => {
                    self.jobs = Some(tx);
                    self.thread = Some(handle);
                }
                Err(e) => tracing::warn!(error = %e, "no committer thread; committing on the caller's thread"),
            }
        }
        let job = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        job.run();
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TransactionalProducer {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::warn!(transactional_id = %self.id, error = %e, "the last commit failed; the next open of the log finishes or aborts it");
        }
        if self.open && !self.prepared {
            // Kafka's coordinator aborts a transaction its producer left open once it times out.
            // Here nothing would until the log is next opened (or the id's next producer starts),
            // and its records would hold every read-committed reader of their partitions.
            if let Err(e) = self.abort_transaction() {
                tracing::warn!(transactional_id = %self.id, error = %e, "could not abort the open transaction; the next open of the log aborts it");
            }
        }
        // A fenced producer's last transaction was completed by the producer that fenced it.
        if self.log.inner.txns.check_epoch(&self.id, self.pid, self.epoch).is_err() {
            return;
        }
        if let Err(e) = self.log.inner.txns.complete_unfinished(&self.log, &self.id) {
            tracing::warn!(transactional_id = %self.id, error = %e, "could not record the last transaction complete; the next open of the log completes it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(seq: u64) -> TxnRecord {
        TxnRecord::PrepareCommit {
            id: "t".into(),
            pid: 7,
            epoch: 3,
            partitions: vec![("out".into(), 0)],
            group: None,
            offsets: Vec::new(),
            ends: Vec::new(),
            seq,
        }
    }

    fn complete(seq: u64) -> TxnRecord {
        TxnRecord::Complete { id: "t".into(), pid: 7, epoch: 3, seq }
    }

    /// The race this guards: the id's last commit is completed by another thread (a topic's
    /// deletion, say) while the producer's committer completes it too and writes its next
    /// prepare record; the other thread's completion record lands after that prepare record.
    /// Replayed after a power cut, it must not hide the prepared transaction from recovery.
    #[test]
    fn a_late_completion_of_the_previous_transaction_does_not_hide_the_next_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let init = TxnRecord::Init { id: "t".into(), pid: 7, epoch: 3 };
        let mut raw = Vec::new();
        for rec in [init, prepare(1), complete(1), prepare(2), complete(1)] {
            raw.extend(frame(&rec).unwrap());
        }
        fs::write(dir.path().join("transactions.log"), raw).unwrap();
        let coordinator = TransactionCoordinator::open(dir.path(), u64::MAX).unwrap();
        let pending = coordinator.txns().get("t").and_then(|m| m.pending.clone());
        assert_eq!(pending.map(|p| p.seq()), Some(2), "the second transaction is still prepared");
        // Compacted, the log keeps it so.
        coordinator.file.lock().unwrap().compact(&coordinator.path).unwrap();
        drop(coordinator);
        let reopened = TransactionCoordinator::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(reopened.txns().get("t").and_then(|m| m.pending.as_ref().map(TxnRecord::seq)), Some(2));
    }

    /// Logs written before transactions had sequence numbers replay as before: their records read
    /// as sequence 0, and a completion completes its producer's prepare record.
    #[test]
    fn records_without_a_sequence_complete_their_producers_prepare() {
        let read = |json: &str| serde_json::from_str::<TxnRecord>(json).unwrap();
        let mut replayed = Replayed::default();
        replayed.apply(&read(
            r#"{"kind":"prepare_commit","id":"t","pid":7,"epoch":3,"partitions":[["out",0]],"group":null,"offsets":[]}"#,
        ));
        assert_eq!(replayed.prepared.get("t").map(TxnRecord::seq), Some(0));
        replayed.apply(&read(r#"{"kind":"complete","id":"t","pid":7,"epoch":2}"#));
        assert!(replayed.prepared.contains_key("t"), "another epoch's completion leaves it");
        replayed.apply(&read(r#"{"kind":"complete","id":"t","pid":7,"epoch":3}"#));
        assert!(replayed.prepared.is_empty());
    }
}
