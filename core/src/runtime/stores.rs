//! Opening, restoring and checkpointing a task's state stores.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Result, StreamsError};
use crate::processor::TaskId;
use crate::state::{CacheBudget, SharedStore, StoreContext, StoreHandle};
use crate::topology::Topology;

/// Restore progress, reported to `tracing` and to the app's restore listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProgress {
    /// The store.
    pub store: String,
    /// The task.
    pub task: TaskId,
    /// Changelog records applied so far.
    pub restored: u64,
    /// Changelog offset reached.
    pub offset: u64,
    /// Changelog end offset to reach.
    pub end: u64,
    /// True on the last report of this restore.
    pub done: bool,
}

/// Where restores read changelogs: a backend, or the test driver's topics.
pub trait ChangelogReader {
    /// Reads a partition from `offset`.
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        read_committed: bool,
    ) -> Result<crate::backend::Fetched>;
    /// The end of a partition (the last stable offset for read-committed).
    fn end_offset(&self, topic: &str, partition: u32, read_committed: bool) -> Result<u64>;
    /// The lowest offset a store may resume its restore from ([`Backend::resume_floor`]).
    fn resume_floor(&self, _topic: &str, _partition: u32) -> Result<u64> {
        Ok(0)
    }
}

/// A backend as a changelog reader.
pub struct BackendReader<'a>(pub &'a dyn Backend);

impl ChangelogReader for BackendReader<'_> {
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        read_committed: bool,
    ) -> Result<crate::backend::Fetched> {
        self.0.fetch(topic, partition, offset, max_bytes, read_committed)
    }
    fn end_offset(&self, topic: &str, partition: u32, read_committed: bool) -> Result<u64> {
        self.0.end_offset(topic, partition, read_committed)
    }
    fn resume_floor(&self, topic: &str, partition: u32) -> Result<u64> {
        self.0.resume_floor(topic, partition)
    }
}

/// Called with restore progress.
pub type RestoreListener = std::sync::Arc<dyn Fn(&RestoreProgress) + Send + Sync>;

/// A task's open stores and the lock on its state directory.
pub struct TaskStores {
    /// Store name → handle.
    pub stores: BTreeMap<String, SharedStore>,
    /// Store name → changelog topic.
    pub changelogs: BTreeMap<String, String>,
    dir: PathBuf,
    _lock: Option<File>,
    task: TaskId,
    /// Stores still catching up with their changelogs.
    restoring: Vec<Restore>,
    read_committed: bool,
    /// Changelog records applied so far.
    restored: u64,
    /// Store → changelog offset it holds everything before: where its restore got, then where
    /// the changelog ended after this task's last commit ([`Self::note_committed`]).
    applied: BTreeMap<String, u64>,
    /// Store → its changelog's resume floor when the store was opened from a checkpoint, or when
    /// it first caught up after a rebuild from the start (`u64::MAX` until then)
    /// ([`Self::below_resume_floor`]).
    floors: BTreeMap<String, u64>,
    /// A standby copy (checkpoints what it applied, never deletes its checkpoint).
    standby: bool,
}

/// One store's restore in progress: changelog records `[offset, end)` are still to apply.
struct Restore {
    store: String,
    topic: String,
    from: u64,
    offset: u64,
    end: u64,
    restored: u64,
    started: Instant,
}

const CHECKPOINT: &str = ".checkpoint";

fn read_checkpoint(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(s) = fs::read_to_string(dir.join(CHECKPOINT)) else { return BTreeMap::new() };
    let mut lines = s.lines();
    if lines.next() != Some("v1") {
        return BTreeMap::new();
    }
    lines.filter_map(|l| l.rsplit_once(' ').and_then(|(n, o)| o.parse().ok().map(|o| (n.to_string(), o)))).collect()
}

impl TaskStores {
    /// Opens the task's stores and plans their restores: from the checkpointed offset when the
    /// store is on disk and was checkpointed, otherwise wiped and rebuilt from the start (always
    /// under exactly-once after an unclean stop, when no checkpoint survives). The restores run in
    /// steps ([`TaskStores::restore_step`]) so that a worker keeps polling, and so stays in its
    /// group, while a large store catches up. `None` when the task's state directory stays locked
    /// for a moment: its previous owner (another thread here, or a standby) has not closed it yet,
    /// and the caller tries again after its next poll rather than wait and drop out of its group.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        topology: &Topology,
        application_id: &str,
        state_dir: &Path,
        task: TaskId,
        backend: &dyn ChangelogReader,
        exactly_once: bool,
        ctx: &StoreContext,
        cache: Option<&Rc<CacheBudget>>,
    ) -> Result<Option<TaskStores>> {
        Self::open_inner(topology, application_id, state_dir, task, backend, exactly_once, ctx, cache, false)
    }

    /// Opens a standby copy of a task's stores: it only ever applies committed changelog records,
    /// so its checkpoint stays valid under exactly-once too, and a later active owner on this
    /// instance restores only what the standby has not applied. `None` when the task's state
    /// directory is locked (its active owner here has it).
    pub fn open_standby(
        topology: &Topology,
        application_id: &str,
        state_dir: &Path,
        task: TaskId,
        backend: &dyn ChangelogReader,
        exactly_once: bool,
        ctx: &StoreContext,
    ) -> Result<Option<TaskStores>> {
        Self::open_inner(topology, application_id, state_dir, task, backend, exactly_once, ctx, None, true)
    }

    /// Changelog records not applied yet, over every store (a standby's lag).
    pub fn lag(&self, backend: &dyn ChangelogReader) -> Result<u64> {
        let mut lag = 0;
        for (name, topic) in &self.changelogs {
            let end = backend.end_offset(topic, self.task.partition, self.read_committed)?;
            lag += end.saturating_sub(self.applied.get(name).copied().unwrap_or(0));
        }
        Ok(lag)
    }

    /// Standby: the first store whose changelog can no longer bring it up to date, because
    /// compaction removed a tombstone (or retention a record) past what it applied since it was
    /// opened from a checkpoint, or since it first caught up after a rebuild from the start: a
    /// standby that lagged for longer than `delete.retention.ms`. It must be rebuilt from the
    /// start. (A floor passing a store rebuilt from the start before it first caught up is no
    /// loss: compaction removed what a tombstone deleted at the tombstone's first cleaning,
    /// `delete.retention.ms` before it removed the tombstone.)
    pub fn below_resume_floor(&self, backend: &dyn ChangelogReader) -> Result<Option<&str>> {
        for (name, topic) in &self.changelogs {
            let applied = self.applied.get(name).copied().unwrap_or(0);
            let opened_at = self.floors.get(name).copied().unwrap_or(0);
            if applied.max(opened_at) < backend.resume_floor(topic, self.task.partition)? {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Standby: plans a restore of whatever the changelogs gained since the last one.
    pub fn catch_up(&mut self, backend: &dyn ChangelogReader) -> Result<()> {
        for (name, topic) in &self.changelogs {
            if self.restoring.iter().any(|r| &r.store == name) {
                continue;
            }
            let applied = self.applied.get(name).copied().unwrap_or(0);
            let end = backend.end_offset(topic, self.task.partition, self.read_committed)?;
            if end > applied {
                let (store, topic, started) = (name.clone(), topic.clone(), Instant::now());
                self.restoring.push(Restore {
                    store,
                    topic,
                    from: applied,
                    offset: applied,
                    end,
                    restored: 0,
                    started,
                });
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn open_inner(
        topology: &Topology,
        application_id: &str,
        state_dir: &Path,
        task: TaskId,
        backend: &dyn ChangelogReader,
        exactly_once: bool,
        ctx: &StoreContext,
        cache: Option<&Rc<CacheBudget>>,
        standby: bool,
    ) -> Result<Option<TaskStores>> {
        let specs = topology.stores_of(task.subtopology);
        let dir = state_dir.join(application_id).join(task.to_string());
        // A task without stores has no directory and takes no lock.
        let lock = if specs.is_empty() {
            None
        } else {
            let Some(lock) = lock_task_dir(&dir, standby)? else { return Ok(None) };
            Some(lock)
        };
        let io = |e: std::io::Error| StreamsError::backend(format!("state dir {}: {e}", dir.display()), true);
        let checkpoint = read_checkpoint(&dir);
        let mut stores = BTreeMap::new();
        let mut changelogs = BTreeMap::new();
        let mut restoring = Vec::new();
        let mut applied = BTreeMap::new();
        let mut floors = BTreeMap::new();
        for spec in specs {
            let store_dir = dir.join(&spec.name);
            let topic = spec.changelog_topic(application_id);
            let end = backend.end_offset(&topic, task.partition, exactly_once)?;
            let checkpointed = checkpoint.get(&spec.name).copied().filter(|_| spec.supplier.persistent());
            let floor = backend.resume_floor(&topic, task.partition)?;
            let from = match checkpointed {
                Some(o) if o <= end && o >= floor => o,
                found => {
                    if let Some(o) = found.filter(|o| *o > end) {
                        // The changelog lost what the store holds (a power cut before its
                        // records reached the disk, or the topic deleted and made again): the
                        // store is ahead of it, and new records would reuse its offsets. Rebuild.
                        tracing::warn!(store = %spec.name, task = %task, checkpoint = o, end, topic = %topic,
                            "checkpoint past the changelog's end; wiping the store and restoring it");
                    } else if let Some(o) = found {
                        // Compaction removed a tombstone past the checkpoint (the store was
                        // stopped for longer than `delete.retention.ms`), or retention deleted
                        // records after it: resuming would keep what was deleted. Rebuild.
                        tracing::warn!(store = %spec.name, task = %task, checkpoint = o, floor, topic = %topic,
                            "checkpoint below the changelog's resume floor (deletes it holds are gone); wiping the store and restoring it");
                    }
                    match fs::remove_dir_all(&store_dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                        _ => 0,
                    }
                }
            };
            fs::create_dir_all(&store_dir).map_err(io)?;
            let backend_store = spec.supplier.open(&store_dir, ctx)?;
            let handle = match cache {
                Some(budget) => StoreHandle::with_cache(&spec.name, backend_store, budget.clone()),
                None => StoreHandle::new(&spec.name, backend_store),
            };
            applied.insert(spec.name.clone(), from);
            // A store rebuilt from the start cannot be missing a delete the floor passes while it
            // catches up (what a removed tombstone deleted was removed before it, at the tombstone's
            // first cleaning): its floor counts from when it first caught up.
            floors.insert(spec.name.clone(), if from == 0 && from < end { u64::MAX } else { floor });
            if from < end {
                let started = Instant::now();
                let store = spec.name.clone();
                restoring.push(Restore { store, topic: topic.clone(), from, offset: from, end, restored: 0, started });
            }
            stores.insert(spec.name.clone(), Rc::new(RefCell::new(handle)));
            changelogs.insert(spec.name.clone(), topic);
        }
        if exactly_once && !standby {
            // Under exactly-once the store may run ahead of the last commit from now on: a crash
            // must find no checkpoint, and wipe. Durably, or a stale checkpoint could reappear.
            match fs::remove_file(dir.join(CHECKPOINT)) {
                Ok(()) => File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(Some(TaskStores {
            stores,
            changelogs,
            dir,
            _lock: lock,
            task,
            restoring,
            read_committed: exactly_once,
            restored: 0,
            applied,
            floors,
            standby,
        }))
    }

    /// Changelog records applied by this task's restores so far.
    pub fn restored(&self) -> u64 {
        self.restored
    }

    /// True while some store has changelog records left to apply.
    pub fn is_restoring(&self) -> bool {
        !self.restoring.is_empty()
    }

    /// Applies changelog records until `deadline` or until every store has caught up (then true).
    pub fn restore_step(
        &mut self,
        backend: &dyn ChangelogReader,
        deadline: Instant,
        listener: Option<&RestoreListener>,
    ) -> Result<bool> {
        while let Some(r) = self.restoring.first_mut() {
            let store = &self.stores[&r.store];
            let fetched = backend.fetch(&r.topic, self.task.partition, r.offset, 1 << 20, self.read_committed)?;
            let mut batch = Vec::with_capacity(fetched.records.len());
            for rec in &fetched.records {
                if rec.offset >= r.end {
                    break;
                }
                let bad = |reason: String| StreamsError::Deserialization {
                    what: "changelog record",
                    topic: r.topic.clone(),
                    partition: self.task.partition,
                    offset: rec.offset,
                    reason: format!("store {}: {reason}", r.store),
                };
                let Some(key) = rec.key.as_deref() else { return Err(bad("no key".into())) };
                match rec.value.as_deref().map(<[u8]>::first) {
                    None | Some(Some(&crate::state::VALUE_FORMAT_VERSION)) => {}
                    Some(Some(v)) => {
                        return Err(bad(format!(
                            "unknown value format version {v} (expected {})",
                            crate::state::VALUE_FORMAT_VERSION
                        )))
                    }
                    Some(None) => return Err(bad("an empty value (expected its format version first)".into())),
                }
                batch.push((key.to_vec(), rec.value.as_deref().map(<[u8]>::to_vec)));
            }
            r.restored += batch.len() as u64;
            self.restored += batch.len() as u64;
            store.borrow_mut().restore_batch(batch)?;
            let next_offset = fetched.next_offset;
            crate::batch_pool::recycle(fetched.records);
            // No progress means the changelog ends early (truncated): what exists is restored.
            let done = next_offset >= r.end || next_offset <= r.offset;
            r.offset = next_offset.min(r.end).max(r.offset);
            self.applied.insert(r.store.clone(), r.offset);
            let progress = |done| RestoreProgress {
                store: r.store.clone(),
                task: self.task,
                restored: r.restored,
                offset: if done { r.end.max(r.offset) } else { r.offset },
                end: r.end,
                done,
            };
            if let Some(l) = listener {
                l(&progress(done));
            }
            if done {
                if self.floors.get(&r.store) == Some(&u64::MAX) {
                    let floor = backend.resume_floor(&r.topic, self.task.partition)?;
                    self.floors.insert(r.store.clone(), floor);
                }
                let secs = r.started.elapsed().as_secs_f64();
                if self.standby {
                    tracing::debug!(store = %r.store, task = %self.task, restored = r.restored, end = r.end, "standby caught up");
                } else {
                    tracing::info!(store = %r.store, task = %self.task, restored = r.restored, from = r.from, end = r.end,
                        secs, "restored store from its changelog");
                }
                self.restoring.remove(0);
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Ok(self.restoring.is_empty())
    }

    /// Restores every store to the end of its changelog.
    pub fn restore_all(&mut self, backend: &dyn ChangelogReader, listener: Option<&RestoreListener>) -> Result<()> {
        while !self.restore_step(backend, Instant::now() + std::time::Duration::from_secs(3600), listener)? {}
        Ok(())
    }

    /// Records each store's changelog end as what it holds. Called after a commit succeeded,
    /// while this member still owns the task: a checkpoint written later — after a rebalance
    /// handed the partitions on, when the next owner may already have written more — must name
    /// only what this store received.
    pub fn note_committed(&mut self, backend: &dyn ChangelogReader) -> Result<()> {
        for (name, topic) in &self.changelogs {
            if !self.restoring.iter().any(|r| &r.store == name) {
                let end = backend.end_offset(topic, self.task.partition, self.read_committed)?;
                self.applied.insert(name.clone(), end);
            }
        }
        Ok(())
    }

    /// Flushes every store and records the changelog offsets it holds: where its restore got,
    /// or where [`Self::note_committed`] found the changelog after the last commit.
    pub fn checkpoint(&self) -> Result<()> {
        if self.stores.is_empty() {
            return Ok(());
        }
        let mut out = String::from("v1\n");
        for (name, store) in &self.stores {
            store.borrow_mut().flush()?;
            let end = self.applied.get(name).copied().unwrap_or(0);
            out.push_str(&format!("{name} {end}\n"));
        }
        // Durable: the file, the rename, and the directory entry.
        let tmp = self.dir.join(".checkpoint.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            std::io::Write::write_all(&mut f, out.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join(CHECKPOINT))?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| StreamsError::backend(format!("checkpoint in {}: {e}", self.dir.display()), true))
    }

    /// Deletes the checkpoint (exactly-once: the next commit writes a fresh one).
    pub fn clear_checkpoint(&self) {
        let _ = fs::remove_file(self.dir.join(CHECKPOINT));
    }
}

/// Creates and locks a task's state directory; `None` while another holds the lock. The previous
/// owner (another thread of this process, during a rebalance, or a standby) closes the task right
/// after its poll returns: an active task waits a moment for it, then leaves it to the caller to
/// try again after its next poll, as Kafka Streams retries a locked task. A standby never waits:
/// the active owner has precedence.
fn lock_task_dir(dir: &Path, standby: bool) -> Result<Option<File>> {
    let io = |e: std::io::Error| StreamsError::backend(format!("state dir {}: {e}", dir.display()), true);
    fs::create_dir_all(dir).map_err(io)?;
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock")).map_err(io)?;
    let wait = if standby { std::time::Duration::ZERO } else { LOCK_WAIT };
    let deadline = Instant::now() + wait;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(Some(lock)),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

/// How long opening an active task waits for its state directory's lock before it leaves the
/// retry to the next poll: a thread here closes a revoked task within this, usually.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
