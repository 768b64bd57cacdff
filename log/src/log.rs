//! The embedded log: a data directory of topics, the group coordinator, background maintenance.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::compaction::{self, CompactionStats};
use crate::config::TopicConfig;
use crate::consumer::{Consumer, ConsumerConfig};
use crate::error::{LogError, Result};
use crate::group::Coordinator;
use crate::index::write_atomically;
use crate::name::validate_topic_name;
use crate::partition::{AppendInfo, FetchData, Partition, PartitionOffsets};
use crate::producer::{Producer, ProducerConfig};
use crate::topic::Topic;

const CLEAN_MARKER: &str = ".clean-shutdown";
const LOCK_FILE: &str = "garam.lock";
const PRODUCER_ID_FILE: &str = "producer-id-block";
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Options for opening a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Run retention, compaction, `flush.ms` and session expiry in a background thread.
    pub background: bool,
    /// How often retention and compaction run.
    pub retention_check_interval: Duration,
    /// The transaction log (`transactions/transactions.log`) is rewritten with only what
    /// recovery needs — each transactional id's epoch, and transactions prepared but not yet
    /// recorded complete — once it grows past this many bytes (default 16 MiB). Without it an
    /// exactly-once application committing every 100 ms grows it by over a gigabyte a day.
    pub transaction_log_compact_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            background: true,
            retention_check_interval: Duration::from_secs(30),
            transaction_log_compact_bytes: 16 << 20,
        }
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    _lock: File,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    pub(crate) groups: Coordinator,
    pub(crate) txns: crate::txn::TransactionCoordinator,
    /// Fsyncs a transaction's partitions together.
    pub(crate) fsync: crate::fsync_pool::FsyncPool,
    producer_ids: Mutex<(i64, i64)>,
    closed: AtomicBool,
    stop: Arc<(Mutex<bool>, Condvar)>,
    background: Mutex<Option<JoinHandle<()>>>,
}

/// The embedded, durable, partitioned log. Cheap to clone; every clone shares one data directory.
///
/// ```
/// use garam_log::{Log, TopicConfig};
/// let dir = tempfile::tempdir().unwrap();
/// let log = Log::open(dir.path()).unwrap();
/// log.create_topic("clicks", 4, TopicConfig::default()).unwrap();
/// let mut producer = log.producer(Default::default()).unwrap();
/// producer.send("clicks", garam_core::Record::new(Some("user-1"), Some("view"))).unwrap();
/// producer.flush().unwrap();
/// let total: u64 = log.topic("clicks").unwrap().partitions().iter().map(|p| p.offsets().log_end_offset).sum();
/// assert_eq!(total, 1);
/// ```
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.inner.dir).finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Log> {
        Log::open_with(dir, LogOptions::default())
    }

    /// Opens the log with options. Fails if another process holds the directory.
    pub fn open_with(dir: impl AsRef<Path>, options: LogOptions) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("topics")).map_err(LogError::io("create data dir", &dir))?;
        let lock = lock_dir(&dir)?;
        let marker = dir.join(CLEAN_MARKER);
        let clean = marker.exists();
        if clean {
            fs::remove_file(&marker).map_err(LogError::io("remove clean-shutdown marker", &marker))?;
        }
        let started = Instant::now();
        let mut topics = BTreeMap::new();
        let topics_dir = dir.join("topics");
        for e in fs::read_dir(&topics_dir).map_err(LogError::io("list topics", &topics_dir))? {
            let e = e.map_err(LogError::io("list topics", &topics_dir))?;
            if !e.path().join("topic.json").exists() {
                continue;
            }
            let t = Topic::open(e.path(), clean)?;
            topics.insert(t.name().to_string(), Arc::new(t));
        }
        let _ = fs::remove_dir_all(dir.join("trash"));
        tracing::info!(dir = %dir.display(), clean, topics = topics.len(), elapsed_ms = started.elapsed().as_millis() as u64, "opened log");
        let groups = Coordinator::open(&dir.join("groups"))?;
        let txns =
            crate::txn::TransactionCoordinator::open(&dir.join("transactions"), options.transaction_log_compact_bytes)?;
        let next_pid = allocate_pid_block(&dir, 0)?;
        let log = Log {
            inner: Arc::new(Inner {
                dir,
                _lock: lock,
                topics: RwLock::new(topics),
                groups,
                txns,
                fsync: Default::default(),
                producer_ids: Mutex::new((next_pid, next_pid + PRODUCER_ID_BLOCK)),
                closed: AtomicBool::new(false),
                stop: Arc::new((Mutex::new(false), Condvar::new())),
                background: Mutex::new(None),
            }),
        };
        // Finish transactions prepared before a crash; abort those left open.
        log.inner.txns.recover(&log)?;
        if options.background {
            let handle =
                spawn_background(Arc::downgrade(&log.inner), log.inner.stop.clone(), options.retention_check_interval);
            *log.inner.background.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        Ok(log)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Creates a topic with `partitions` partitions (at least 1).
    pub fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<Arc<Topic>> {
        self.check_open()?;
        validate_topic_name(name)?;
        if partitions == 0 || partitions > 100_000 {
            return Err(LogError::InvalidArgument(format!("partition count must be 1..=100000, got {partitions}")));
        }
        let mut topics = self.inner.topics.write().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let t = Arc::new(Topic::create(self.inner.dir.join("topics").join(name), name, partitions, config)?);
        topics.insert(name.to_string(), t.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(t)
    }

    /// Creates the topic unless it exists; returns it either way.
    pub fn ensure_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<Arc<Topic>> {
        match self.create_topic(name, partitions, config) {
            Err(LogError::TopicExists(_)) => self.topic(name),
            r => r,
        }
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.inner.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Partition count of a topic, if it exists.
    pub fn partition_count(&self, name: &str) -> Option<u32> {
        self.inner.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).map(|t| t.partition_count())
    }

    /// One partition.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        self.topic(topic)?.partition(partition)
    }

    /// Deletes a topic and its data. Producers still holding it get
    /// [`LogError::TopicDeleted`] for records not yet appended, and open the topic anew (a new
    /// one of the same name) on their next send. This process's transactions with markers still
    /// to make durable in it are completed first.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.inner.txns.complete_unfinished_of_topic(self, name)?;
        let t = self
            .inner
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        t.mark_deleted();
        let trash = self.inner.dir.join("trash");
        fs::create_dir_all(&trash).map_err(LogError::io("create trash dir", &trash))?;
        let target = trash.join(format!("{}-{}", name, garam_core::time::now_ms()));
        fs::rename(t.dir(), &target).map_err(LogError::io("move deleted topic", t.dir()))?;
        fs::remove_dir_all(&target).map_err(LogError::io("delete topic", &target))?;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Sets and unsets config keys of a topic (validated; persisted).
    pub fn alter_topic_config(&self, name: &str, set: &BTreeMap<String, String>, unset: &[String]) -> Result<()> {
        self.check_open()?;
        self.topic(name)?.alter_config(set, unset)
    }

    /// Grows a topic to `total` partitions (never shrinks).
    pub fn add_partitions(&self, name: &str, total: u32) -> Result<()> {
        self.check_open()?;
        self.topic(name)?.add_partitions(total)
    }

    /// Appends whole batches to a partition (see [`Partition::append`]).
    pub fn append(&self, topic: &str, partition: u32, batches: &mut [u8]) -> Result<AppendInfo> {
        self.check_open()?;
        self.partition(topic, partition)?.append(batches)
    }

    /// Reads whole batches from `offset` (see [`Partition::read`]).
    pub fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<FetchData> {
        self.partition(topic, partition)?.read(offset, max_bytes)
    }

    /// The offsets of a partition.
    pub fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets> {
        Ok(self.partition(topic, partition)?.offsets())
    }

    /// First offset with a timestamp ≥ `ts` (Kafka's `offsetsForTimes`), `None` if there is none.
    pub fn offset_for_time(&self, topic: &str, partition: u32, ts: i64) -> Result<Option<u64>> {
        self.partition(topic, partition)?.offset_for_time(ts)
    }

    /// A fresh producer id and epoch for an idempotent producer.
    pub fn init_producer_id(&self) -> Result<(i64, i16)> {
        let mut ids = self.inner.producer_ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.0 >= ids.1 {
            let next = allocate_pid_block(&self.inner.dir, ids.1)?;
            *ids = (next, next + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok((id, 0))
    }

    /// A batching producer.
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer> {
        Producer::new(self.clone(), config)
    }

    /// A transactional producer for `transactional_id`; fences any earlier one with the same id and
    /// aborts its open transaction.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
        config: ProducerConfig,
    ) -> Result<crate::txn::TransactionalProducer> {
        self.check_open()?;
        crate::txn::TransactionalProducer::new(self.clone(), transactional_id, config)
    }

    /// A consumer: a group member when `config.group` is set, otherwise a standalone reader.
    pub fn consumer(&self, config: ConsumerConfig) -> Result<Consumer> {
        Consumer::new(self.clone(), config)
    }

    /// The consumer-group coordinator.
    pub fn groups(&self) -> &Coordinator {
        &self.inner.groups
    }

    /// Sets a group's committed offsets explicitly (may rewind). Only for groups with no active
    /// member. Transactions of this process that committed offsets for the group and are not yet
    /// recorded complete are made durable and recorded first: otherwise a crash would have the
    /// next open complete them again and undo the reset.
    pub fn reset_group_offsets(
        &self,
        group: &str,
        offsets: &[(garam_core::backend::TopicPartition, u64)],
    ) -> Result<()> {
        self.inner.txns.complete_unfinished_of_group(self, group)?;
        self.inner.groups.reset_offsets(group, offsets)
    }

    /// Deletes a group's committed offsets (a group with no active member), after settling this
    /// process's transactions for it, as [`Self::reset_group_offsets`] does.
    pub fn delete_group(&self, group: &str) -> Result<()> {
        self.inner.txns.complete_unfinished_of_group(self, group)?;
        self.inner.groups.delete_group(group)
    }

    /// fsyncs every partition.
    pub fn flush(&self) -> Result<()> {
        for t in self.topics() {
            for p in t.partitions() {
                p.flush()?;
            }
        }
        Ok(())
    }

    /// Runs retention and compaction on every partition once (the background thread calls this).
    pub fn run_cleaner(&self, now_ms: i64) -> Result<CompactionStats> {
        let mut total = CompactionStats::default();
        for t in self.topics() {
            for p in t.partitions() {
                p.apply_retention(now_ms)?;
                let s = compaction::compact(&p, now_ms)?;
                total.segments += s.segments;
                total.records_read += s.records_read;
                total.records_kept += s.records_kept;
            }
        }
        Ok(total)
    }

    /// Flushes, writes indexes and producer snapshots, and marks the directory cleanly closed.
    /// Called by `Drop` of the last handle too; calling it explicitly reports errors.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

impl Inner {
    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = self.background.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let topics: Vec<_> = self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for t in topics {
            t.close()?;
        }
        self.groups.close()?;
        write_atomically(&self.dir.join(CLEAN_MARKER), b"v1\n")?;
        tracing::info!(dir = %self.dir.display(), "closed log cleanly");
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the log failed; it will be recovered on next open");
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(LogError::io("open lock file", &path))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LogError::Locked {
                path: dir.to_path_buf(),
                pid: if pid.is_empty() { "unknown".into() } else { pid.to_string() },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(LogError::Io { context: "lock", path, source: e }),
    }
    f.set_len(0).map_err(LogError::io("write lock file", &path))?;
    f.rewind().map_err(LogError::io("write lock file", &path))?;
    writeln!(f, "{}", std::process::id()).map_err(LogError::io("write lock file", &path))?;
    Ok(f)
}

/// Reserves a block of producer ids on disk before handing any out, so ids are never reused.
fn allocate_pid_block(dir: &Path, at_least: i64) -> Result<i64> {
    let path = dir.join(PRODUCER_ID_FILE);
    let stored = fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().strip_prefix("v1 ").and_then(|n| n.parse::<i64>().ok()))
        .unwrap_or(0);
    let start = stored.max(at_least);
    write_atomically(&path, format!("v1 {}\n", start + PRODUCER_ID_BLOCK).as_bytes())?;
    Ok(start)
}

fn spawn_background(log: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>, retention_every: Duration) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("garam-log-maintenance".into())
        .spawn(move || {
            let mut last_clean = Instant::now();
            loop {
                {
                    let (m, cv) = &*stop;
                    let guard = m.lock().unwrap_or_else(|e| e.into_inner());
                    let (guard, _) = cv.wait_timeout(guard, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner());
                    if *guard {
                        return;
                    }
                }
                let Some(inner) = log.upgrade() else { return };
                let log = Log { inner };
                for t in log.topics() {
                    for p in t.partitions() {
                        if p.fsync_failed() {
                            continue; // reported once, when it failed
                        }
                        if let Err(e) = p.flush_if_due() {
                            tracing::warn!(partition = %format!("{}-{}", p.topic(), p.id()), error = %e, "background flush failed");
                        }
                    }
                }
                log.inner.groups.expire_sessions();
                if last_clean.elapsed() >= retention_every {
                    last_clean = Instant::now();
                    if let Err(e) = log.run_cleaner(garam_core::time::now_ms()) {
                        tracing::warn!(error = %e, "retention/compaction pass failed");
                    }
                }
                // Dropping `log` here may close the log if it was the last handle.
                if Arc::strong_count(&log.inner) == 1 {
                    return;
                }
            }
        })
        .expect("spawning the maintenance thread")
}
