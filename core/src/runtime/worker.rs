//! A worker thread: one group member running the poll → process → produce loop over its tasks.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::config::AppConfig;
use super::metrics::Metrics;
use super::task::{Task, TaskEnv};
use crate::backend::{
    Backend, BackendConsumer, BackendProducer, ConsumerSettings, GroupMetadata, OffsetCommitter, RebalanceListener,
    TopicPartition,
};
use crate::error::Result;
use crate::processor::{RecordCollector, TaskId};
use crate::record::Header;
use crate::topology::Topology;

/// Sends through a backend producer, counting records out.
pub(crate) struct ProducerCollector<'a> {
    producer: &'a mut dyn BackendProducer,
    /// The process-wide count, added to once when the collector is dropped: every worker thread
    /// incrementing one shared counter per record kept its cache line moving between cores.
    out: &'a AtomicU64,
    sent: u64,
    backend: &'a dyn Backend,
}

impl<'a> ProducerCollector<'a> {
    pub(crate) fn new(producer: &'a mut dyn BackendProducer, out: &'a AtomicU64, backend: &'a dyn Backend) -> Self {
        ProducerCollector { producer, out, sent: 0, backend }
    }
}

impl Drop for ProducerCollector<'_> {
    fn drop(&mut self) {
        self.out.fetch_add(self.sent, Ordering::Relaxed);
    }
}

impl RecordCollector for ProducerCollector<'_> {
    fn send(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: i64,
        headers: &[Header],
    ) -> Result<()> {
        if headers.first().is_none_or(|h| h.key != super::watermark::WATERMARK_HEADER) {
            self.sent += 1;
        }
        self.producer.send(topic, partition, key, value, ts, headers)
    }

    fn send_to_partition(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        records: &mut crate::backend::PartitionRecords<'_>,
    ) -> Result<()> {
        let sent = &mut self.sent;
        self.producer.send_to_partition(topic, partition, timestamp, &mut |sink| {
            records(&mut |key, value| {
                *sent += 1;
                sink(key, value)
            })
        })
    }

    fn partition_count(&mut self, topic: &str) -> Result<u32> {
        self.backend
            .partition_count(topic)?
            .ok_or_else(|| crate::error::StreamsError::Topology(format!("output topic '{topic}' does not exist")))
    }
}

pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    pub topology: Arc<Topology>,
    pub config: AppConfig,
    pub topic_to_sub: BTreeMap<String, usize>,
    pub metrics: Arc<Metrics>,
    pub dead_letter_topic: String,
    /// This App instance's number in the process (unique transactional ids).
    pub instance: u64,
    /// `state.dir`.
    pub state_dir: std::path::PathBuf,
    /// Restore progress callback.
    pub restore_listener: Option<crate::runtime::stores::RestoreListener>,
    /// The stores open here, for interactive queries.
    pub queries: Arc<super::queries::StoreRegistry>,
    /// This app instance in the group (`<pid>.<n>`): the part of every worker's client id that
    /// standby placement goes by.
    pub instance_id: String,
    /// Tasks active (or opening) on this instance: a standby of one of them steps aside.
    pub active: Mutex<BTreeSet<TaskId>>,
    /// The instance's global tables.
    pub globals: crate::topology::GlobalStores,
    /// What every store of this instance opens with: one memory bound for all of them.
    pub store_context: crate::state::StoreContext,
}

impl Shared {
    pub(crate) fn eos(&self) -> bool {
        self.config.processing_guarantee == super::config::ProcessingGuarantee::ExactlyOnce
    }
}

/// What the rebalance listener shares with the loop: the producer, and events to apply.
struct Shared2 {
    producer: Box<dyn BackendProducer>,
    events: Vec<Event>,
    /// Set when processing failed: positions then run ahead of what was processed, so nothing
    /// may be committed any more (not on revoke, not on close).
    failed: bool,
    /// Exactly-once: outputs and offsets commit in one transaction.
    eos: bool,
    /// A transaction is open (exactly-once).
    in_txn: bool,
    /// The group and member, for transactional offset commits.
    group: Option<GroupMetadata>,
    /// Exactly-once: a transaction was aborted, so every task's store is ahead of its changelog.
    dirty: bool,
    /// Exactly-once: a commit was started and its outcome not yet awaited.
    committing: bool,
}

impl Shared2 {
    /// Opens a transaction if exactly-once needs one and none is open.
    fn ensure_txn(&mut self) -> Result<()> {
        if self.eos && !self.in_txn {
            self.producer.begin_transaction()?;
            self.in_txn = true;
        }
        Ok(())
    }

    /// Exactly-once commit: the open transaction's outputs with `offsets`, atomically. A member
    /// that lost its partitions is refused; its transaction is aborted and the records are
    /// reprocessed by their new owner. Returns false when refused.
    fn commit_transaction(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<bool> {
        Ok(self.start_commit(offsets)? && self.finish_commit()? != Some(false))
    }

    /// Starts committing the open transaction with `offsets`; the backend may finish in the
    /// background while the next transaction is processed ([`Self::finish_commit`] waits). False
    /// when refused at once.
    fn start_commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<bool> {
        let Some(group) = self.group.clone() else { return Ok(true) };
        self.ensure_txn()?;
        match self.producer.start_commit_transaction(&group, offsets) {
            Ok(()) => {
                self.in_txn = false;
                self.committing = true;
                Ok(true)
            }
            Err(e) => self.refused(e).map(|()| false),
        }
    }

    /// Waits for the commit [`Self::start_commit`] started: `Some(true)` when it committed,
    /// `Some(false)` when it was refused (and the transactions aborted), `None` when none was in
    /// flight.
    fn finish_commit(&mut self) -> Result<Option<bool>> {
        if !self.committing {
            return Ok(None);
        }
        self.committing = false;
        match self.producer.await_commit_transaction() {
            Ok(()) => Ok(Some(true)),
            Err(e) => {
                // The failed transaction is open again (with the next one's records, if any).
                self.in_txn = true;
                self.refused(e).map(|()| Some(false))
            }
        }
    }

    /// A failed commit. Fenced or no longer the owner: the session expired, so the positions are
    /// reset on rejoin; the stores hold the aborted updates and must be rebuilt. Anything else
    /// stops the worker.
    fn refused(&mut self, e: crate::error::StreamsError) -> Result<()> {
        if e.is_retriable() {
            tracing::warn!(error = %e, "transaction refused; aborting it, the records are reprocessed");
            self.abort();
            Ok(())
        } else {
            self.failed = true;
            Err(e)
        }
    }

    /// Aborts the open transaction; every task's store then holds aborted updates: close them
    /// all without a checkpoint, so they are wiped and restored.
    fn abort(&mut self) {
        // A commit in flight is awaited by the abort (and aborted too if it failed).
        if self.in_txn || self.committing {
            self.in_txn = false;
            self.committing = false;
            if let Err(e) = self.producer.abort_transaction() {
                tracing::warn!(error = %e, "aborting the transaction failed; the log finishes it on recovery");
                self.failed = true;
            }
        }
        self.dirty = true;
    }
}

enum Event {
    Assigned(Vec<TopicPartition>),
    /// Revoked after their last changes were committed: their stores are checkpointed.
    Revoked(Vec<TopicPartition>),
    /// Gone without a commit of their last changes (the session expired, or the commit on
    /// revoke failed): closed without writing a checkpoint, as Kafka Streams closes them dirty;
    /// their stores may hold updates their changelogs lack. An older checkpoint stays (under
    /// at-least-once): the next owner here replays the changelog from it.
    Lost(Vec<TopicPartition>),
}

fn lock(s: &Mutex<Shared2>) -> MutexGuard<'_, Shared2> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn task_of(shared: &Shared, tp: &TopicPartition) -> Option<TaskId> {
    shared.topic_to_sub.get(&tp.topic).map(|s| TaskId { subtopology: *s, partition: tp.partition })
}

/// Closes tasks; after a successful commit (`checkpoint`), their stores are checkpointed so the
/// next owner restores only what came after.
fn close_tasks(shared: &Shared, tasks: &mut BTreeMap<TaskId, Task>, ids: &BTreeSet<TaskId>, checkpoint: bool) {
    for id in ids {
        if let Some(mut t) = tasks.remove(id) {
            shared.active.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            for (name, store) in &t.stores().stores {
                shared.queries.unregister(name, id.partition, &store.borrow().view());
            }
            if let Err(e) = t.close() {
                tracing::warn!(task = %id, error = %e, "closing task failed");
            }
            if checkpoint {
                if let Err(e) = t.checkpoint() {
                    tracing::warn!(task = %id, error = %e, "checkpointing stores failed; the next owner restores more");
                }
            }
            shared.metrics.report_stores(std::iter::once(&t));
            tracing::info!(task = %id, "closed task");
        }
    }
}

/// A worker's tasks. During `poll` they are lent to the rebalance listener on the same thread
/// (see [`lend_tasks`]), which flushes their caches before partitions are revoked.
type Tasks = RefCell<BTreeMap<TaskId, Task>>;

thread_local! {
    /// The tasks lent for the duration of one `poll` or `close` on this thread; null otherwise.
    static LENT: Cell<*const Tasks> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` (a `poll`) with `tasks` reachable through [`with_lent_tasks`] on this thread: the
/// rebalance listener runs inside `poll` on the polling thread but is owned by the consumer,
/// which needs it `Send`, so it cannot hold the tasks itself (the scoped-TLS pattern).
fn lend_tasks<R>(tasks: &Tasks, f: impl FnOnce() -> R) -> R {
    struct Reset(*const Tasks);
    impl Drop for Reset {
        fn drop(&mut self) {
            LENT.with(|l| l.set(self.0));
        }
    }
    let previous = LENT.with(|l| l.replace(tasks as *const Tasks));
    let _reset = Reset(previous);
    f()
}

/// Calls `f` with the tasks lent by [`lend_tasks`] further up this thread's stack, if any.
fn with_lent_tasks<R>(f: impl FnOnce(&Tasks) -> R) -> Option<R> {
    let p = LENT.with(Cell::get);
    // SAFETY: a non-null pointer was set by `lend_tasks` from a reference that outlives its call,
    // on this thread, and is reset (also on unwind) before that call returns.
    (!p.is_null()).then(|| f(unsafe { &*p }))
}

/// Opens a task's stores (restoring them from their changelogs) and builds its operators; `None`
/// while its state directory is locked by its previous owner (see [`Deferred`]).
fn new_task(shared: &Shared, id: TaskId, cache: Option<&Rc<crate::state::CacheBudget>>) -> Result<Option<Task>> {
    // Claimed before the lock: a standby of this task on this instance sees it and closes.
    shared.active.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    let Some(stores) = crate::runtime::stores::TaskStores::open(
        &shared.topology,
        &shared.config.application_id,
        &shared.state_dir,
        id,
        &crate::runtime::stores::BackendReader(&*shared.backend),
        shared.eos(),
        &shared.store_context,
        cache,
    )?
    else {
        return Ok(None);
    };
    let task = Task::new(
        &shared.topology,
        &shared.config.application_id,
        id,
        stores,
        shared.config.watermark,
        &shared.globals,
    )?;
    let restoring = task.is_restoring();
    for (name, store) in &task.stores().stores {
        let topic = &task.stores().changelogs[name];
        let partitions = shared.backend.partition_count(topic)?.unwrap_or(1);
        shared.queries.register(name, id.partition, partitions, store.borrow().view(), restoring);
    }
    Ok(Some(task))
}

/// Tasks assigned here whose state directory was still locked when they were to open — by the
/// previous owner, another thread of this process closing it after its own poll, or a standby
/// stepping aside — with when they were first tried. Their inputs stay paused and the worker
/// tries again after each poll, rather than wait and drop out of its group; after
/// `task.timeout.ms` it gives up with an error naming the directory.
#[derive(Default)]
struct Deferred(BTreeMap<TaskId, (Instant, Instant)>);

/// How often a deferred task tries its lock again.
const DEFERRED_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl Deferred {
    /// Task `id`, opened into `tasks` if it is not there yet; `None` while it is deferred (it is
    /// deferred here if its state directory is locked).
    fn open<'t>(
        &mut self,
        shared: &Shared,
        consumer: &mut dyn BackendConsumer,
        tasks: &'t mut BTreeMap<TaskId, Task>,
        id: TaskId,
        cache: Option<&Rc<crate::state::CacheBudget>>,
    ) -> Result<Option<&'t mut Task>> {
        if self.contains(&id) {
            return Ok(None);
        }
        if let std::collections::btree_map::Entry::Vacant(v) = tasks.entry(id) {
            let Some(task) = new_task(shared, id, cache)? else {
                self.defer(shared, consumer, id);
                return Ok(None);
            };
            tracing::info!(task = %id, "created task");
            v.insert(task);
        }
        Ok(tasks.get_mut(&id))
    }

    /// Defers `id`, pausing its inputs.
    fn defer(&mut self, shared: &Shared, consumer: &mut dyn BackendConsumer, id: TaskId) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.0.entry(id) {
            tracing::info!(task = %id, "state directory locked by its previous owner; input paused until it lets go");
            consumer.pause(&task_partitions(shared, id));
            v.insert((Instant::now(), Instant::now()));
        }
    }

    /// Forgets revoked tasks.
    fn revoked(&mut self, shared: &Shared, ids: &BTreeSet<TaskId>) {
        for id in ids {
            if self.0.remove(id).is_some() {
                shared.active.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            }
        }
    }

    /// Tries to open the deferred tasks again (each at most every [`DEFERRED_RETRY`]); those that
    /// open join `tasks`, their inputs resumed.
    fn retry(
        &mut self,
        shared: &Shared,
        consumer: &mut dyn BackendConsumer,
        tasks: &mut BTreeMap<TaskId, Task>,
        cache: Option<&Rc<crate::state::CacheBudget>>,
    ) -> Result<()> {
        for (id, (since, tried)) in std::mem::take(&mut self.0) {
            if tried.elapsed() < DEFERRED_RETRY {
                self.0.insert(id, (since, tried));
                continue;
            }
            match new_task(shared, id, cache)? {
                Some(task) => {
                    tracing::info!(task = %id, waited_ms = since.elapsed().as_millis() as u64, "created task");
                    tasks.insert(id, task);
                    consumer.resume(&task_partitions(shared, id));
                }
                None if since.elapsed() >= shared.config.task_timeout => {
                    return Err(crate::error::StreamsError::backend(
                        format!(
                            "the state directory of task {id} under {} stayed locked for longer than \
                             task.timeout.ms ({:?}): another process uses the same state.dir?",
                            shared.state_dir.display(),
                            shared.config.task_timeout
                        ),
                        false,
                    ));
                }
                None => {
                    self.0.insert(id, (since, Instant::now()));
                }
            }
        }
        Ok(())
    }

    fn contains(&self, id: &TaskId) -> bool {
        self.0.contains_key(id)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs inside `poll`. Tasks live on the worker thread, so the listener only flushes, commits,
/// and leaves events for the loop to apply right after `poll` returns.
struct Listener {
    state: Arc<Mutex<Shared2>>,
    shared: Arc<Shared>,
}

/// Sends what the tasks' store caches absorbed to their changelogs (inside the open transaction
/// under exactly-once): the first step of every commit.
fn flush_caches(shared: &Shared, st: &mut Shared2, tasks: &mut BTreeMap<TaskId, Task>) -> Result<()> {
    st.ensure_txn()?;
    let mut collector = ProducerCollector::new(&mut *st.producer, &shared.metrics.records_out, &*shared.backend);
    for t in tasks.values_mut() {
        t.flush_caches(&mut collector)?;
    }
    Ok(())
}

/// Flushes the caches of the lent tasks into the producer (their changelogs), before a commit
/// inside the rebalance listener.
fn flush_lent_caches(shared: &Shared, st: &mut Shared2) -> Result<()> {
    with_lent_tasks(|tasks| {
        let mut tasks = tasks
            .try_borrow_mut()
            .map_err(|_| crate::error::StreamsError::backend("tasks are busy during a rebalance callback", false))?;
        if tasks.is_empty() {
            return Ok(());
        }
        flush_caches(shared, st, &mut tasks)
    })
    .unwrap_or(Ok(()))
}

/// Tells the lent tasks' operators that the commit inside the rebalance listener succeeded
/// (file sinks publish what they staged).
fn committed_lent_tasks(shared: &Shared) {
    let result: Option<Result<()>> = with_lent_tasks(|tasks| {
        let mut tasks = tasks
            .try_borrow_mut()
            .map_err(|_| crate::error::StreamsError::backend("tasks are busy during a rebalance callback", false))?;
        for t in tasks.values_mut() {
            t.committed()?;
            // The partitions are still ours: what the changelogs hold now is what the stores
            // hold, whatever their next owner writes before they are checkpointed.
            t.note_committed(&crate::runtime::stores::BackendReader(&*shared.backend))?;
        }
        Ok(())
    });
    if let Some(Err(e)) = result {
        // What stays staged is published when the task starts again, here or elsewhere.
        tracing::warn!(error = %e, "finishing a commit on revoke failed");
    }
}

impl RebalanceListener for Listener {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        self.shared.metrics.rebalances.fetch_add(1, Ordering::Relaxed);
        tracing::info!(partitions = partitions.len(), "partitions assigned");
        lock(&self.state).events.push(Event::Assigned(partitions.to_vec()));
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition], committer: &mut dyn OffsetCommitter) {
        self.shared.metrics.rebalances.fetch_add(1, Ordering::Relaxed);
        tracing::info!(partitions = partitions.len(), "partitions revoked");
        let mut st = lock(&self.state);
        if st.failed {
            st.events.push(Event::Revoked(partitions.to_vec()));
            return;
        }
        // Exactly-once: the commit still in flight first; operators publish what it covered.
        match st.finish_commit() {
            Ok(Some(true)) => committed_lent_tasks(&self.shared),
            // Refused: aborted; `dirty` now makes the commit below abort too.
            Ok(Some(false) | None) => {}
            Err(e) => {
                tracing::error!(error = %e, "transactional commit failed; stopping this worker");
                st.events.push(Event::Revoked(partitions.to_vec()));
                return;
            }
        }
        if let Err(e) = flush_lent_caches(&self.shared, &mut st) {
            // Without the caches in the changelogs, committing positions would lose updates.
            tracing::error!(error = %e, "flushing store caches on revoke failed; committing nothing");
            if st.eos {
                st.abort();
            }
            st.events.push(Event::Lost(partitions.to_vec()));
            return;
        }
        if st.eos {
            if st.dirty {
                // A refused commit left every store ahead of its changelog: commit nothing; the
                // tasks are rebuilt from their changelogs.
                st.abort();
                st.events.push(Event::Revoked(partitions.to_vec()));
                return;
            }
            // Exactly-once: the open transaction covers every task of this member; commit it
            // with every position before the partitions go.
            let offsets = committer.positions();
            match st.commit_transaction(&offsets) {
                Ok(true) => committed_lent_tasks(&self.shared),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "transactional commit on revoke failed; stopping this worker"),
            }
            st.events.push(Event::Revoked(partitions.to_vec()));
            return;
        }
        // At-least-once: outputs first, then the offsets of what produced them. Every record
        // returned by earlier polls has been processed, since processing is synchronous.
        let result = st.producer.flush().and_then(|()| {
            let offsets: Vec<_> =
                partitions.iter().filter_map(|tp| committer.position(tp).map(|o| (tp.clone(), o))).collect();
            committer.commit(&offsets)
        });
        match result {
            Ok(()) => {
                committed_lent_tasks(&self.shared);
                st.events.push(Event::Revoked(partitions.to_vec()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit on revoke failed; records since the last commit will be reprocessed");
                st.events.push(Event::Lost(partitions.to_vec()));
            }
        }
    }

    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.shared.metrics.rebalances.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.partitions_lost.fetch_add(partitions.len() as u64, Ordering::Relaxed);
        tracing::warn!(partitions = partitions.len(), "partitions lost");
        let mut st = lock(&self.state);
        if st.eos {
            // The open transaction covers the lost tasks too: it must never commit.
            st.abort();
        }
        st.events.push(Event::Lost(partitions.to_vec()));
    }
}

fn apply_events(
    shared: &Shared,
    state: &Mutex<Shared2>,
    tasks: &mut BTreeMap<TaskId, Task>,
    cache: Option<&Rc<crate::state::CacheBudget>>,
    consumer: &mut dyn BackendConsumer,
    deferred: &mut Deferred,
) -> Result<()> {
    let (events, dirty, failed) = {
        let mut st = lock(state);
        (std::mem::take(&mut st.events), std::mem::take(&mut st.dirty), st.failed)
    };
    if failed {
        return Err(crate::error::StreamsError::backend("a commit failed during a rebalance", false));
    }
    if dirty {
        // A transaction was aborted: every store holds its updates. Close all tasks without a
        // checkpoint; they reopen wiped and restored from committed changelog records.
        let ids: BTreeSet<TaskId> = tasks.keys().copied().collect();
        close_tasks(shared, tasks, &ids, false);
    }
    // The net assignment of all events: a task assigned and revoked again by rebalances that
    // happened during one poll is never created (another thread may own it by now, and waiting
    // for its state directory would stall both).
    let mut wanted: Vec<TaskId> = Vec::new();
    for e in events {
        let (tps, clean) = match e {
            Event::Assigned(tps) => {
                for id in tps.iter().filter_map(|tp| task_of(shared, tp)) {
                    if !wanted.contains(&id) {
                        wanted.push(id);
                    }
                }
                continue;
            }
            Event::Revoked(tps) => (tps, !lock(state).failed),
            Event::Lost(tps) => (tps, false),
        };
        let ids: BTreeSet<TaskId> = tps.iter().filter_map(|tp| task_of(shared, tp)).collect();
        close_tasks(shared, tasks, &ids, clean);
        deferred.revoked(shared, &ids);
        wanted.retain(|id| !ids.contains(id));
    }
    for id in wanted {
        deferred.open(shared, consumer, tasks, id, cache)?;
    }
    Ok(())
}

/// Runs one worker until `shutdown` is set or an error stops it.
pub(crate) fn run(
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
    name: String,
    shutdown: Arc<AtomicBool>,
) -> Result<()> {
    let span = tracing::info_span!("worker", app = %shared.config.application_id, thread = %name);
    let _enter = span.enter();
    let eos = shared.config.processing_guarantee == super::config::ProcessingGuarantee::ExactlyOnce;
    let producer = if eos {
        // Unique per thread of this App instance: a restart's recovery aborts what a crashed one
        // left open, and membership checks fence a zombie's commits.
        backend.transactional_producer(&format!("{}-{}-{name}", shared.config.application_id, shared.instance))?
    } else {
        backend.producer()?
    };
    let state = Arc::new(Mutex::new(Shared2 {
        producer,
        events: Vec::new(),
        failed: false,
        eos,
        in_txn: false,
        group: None,
        dirty: false,
        committing: false,
    }));
    let listener = Listener { state: state.clone(), shared: shared.clone() };
    let settings = ConsumerSettings {
        group: shared.config.application_id.clone(),
        // The group carries `application.server` to other instances in the client id.
        client_id: match &shared.config.application_server {
            Some(server) => format!("{server}#{}/{name}", shared.instance_id),
            None => format!("{}/{name}", shared.instance_id),
        },
        topics: shared.topic_to_sub.keys().cloned().collect(),
        auto_offset_reset: shared.config.auto_offset_reset,
        max_poll_records: shared.config.max_poll_records,
        session_timeout: shared.config.session_timeout,
        read_committed: eos,
    };
    let mut consumer = backend.consumer(settings, Box::new(listener))?;
    let member = consumer.member_id();
    tracing::info!(member = %member, "worker started");
    let tasks: Tasks = RefCell::new(BTreeMap::new());
    let cache = shared.config.thread_cache();
    // A panic in user code must take the failure path (no commit), not unwind through the
    // consumer's drop, whose revoke would commit positions past unprocessed records.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_loop(&shared, &mut *consumer, &state, &tasks, cache.as_ref(), &member, &shutdown)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a processor panicked".into());
        Err(crate::error::StreamsError::Processor { processor: "user code".into(), message: msg })
    });
    // Graceful stop: commit what was processed, then leave the group. After a failure the
    // positions include records that were never processed: commit nothing, so they are read again.
    let commit = if result.is_ok() {
        for t in tasks.borrow_mut().values_mut() {
            t.closing = true;
        }
        commit(&shared, &mut *consumer, &state, &mut tasks.borrow_mut(), true)
    } else {
        let mut st = lock(&state);
        st.failed = true;
        // A commit in flight covers only records processed before the failure: it may finish.
        if st.in_txn || st.committing {
            st.in_txn = false;
            st.committing = false;
            if let Err(e) = st.producer.abort_transaction() {
                tracing::warn!(error = %e, "aborting the open transaction failed; the log aborts it on recovery");
            }
        }
        Ok(())
    };
    // Leave the group first: closing tasks checkpoints their stores, which can take longer than
    // a session, and a member does not heartbeat while it closes them. A thread of this process
    // that takes over a task waits for its state directory until it is released below.
    let close = lend_tasks(&tasks, || consumer.close());
    let mut tasks = tasks.borrow_mut();
    let ids: BTreeSet<TaskId> = tasks.keys().copied().collect();
    // A refused final commit aborted the transaction: the stores hold its updates, so they must
    // not be checkpointed; nor after a commit on revoke that failed (the listener then reports
    // the partitions lost, or the worker failed).
    let clean = result.is_ok() && commit.is_ok() && {
        let st = lock(&state);
        !st.dirty && !st.failed && !st.events.iter().any(|e| matches!(e, Event::Lost(_)))
    };
    close_tasks(&shared, &mut tasks, &ids, clean);
    shared.metrics.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(&member);
    shared.metrics.lag.lock().unwrap_or_else(|e| e.into_inner()).remove(&member);
    shared.metrics.restoring.lock().unwrap_or_else(|e| e.into_inner()).remove(&member);
    shared.metrics.watermarks.lock().unwrap_or_else(|e| e.into_inner()).remove(&member);
    shared.metrics.store_cache_bytes.lock().unwrap_or_else(|e| e.into_inner()).remove(&member);
    tracing::info!(member = %member, "worker stopped");
    result.and(commit).and(close)
}

fn run_loop(
    shared: &Shared,
    consumer: &mut dyn BackendConsumer,
    state: &Arc<Mutex<Shared2>>,
    tasks: &Tasks,
    cache: Option<&Rc<crate::state::CacheBudget>>,
    member: &str,
    shutdown: &AtomicBool,
) -> Result<()> {
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    let mut seen_request = shared.metrics.commit_requests.load(Ordering::Acquire);
    let dlq = shared.dead_letter_topic.as_str();
    // Tasks whose input partitions are paused while their stores restore.
    let mut paused: BTreeSet<TaskId> = BTreeSet::new();
    // Input partitions read to the end, refreshed with the lag report: only these can go idle.
    let mut caught_up: BTreeSet<TopicPartition> = BTreeSet::new();
    let mut end_acked = false;
    let mut end_seen = false;
    let mut deferred = Deferred::default();
    while !shutdown.load(Ordering::Acquire) {
        let end_of_input = shared.metrics.end_of_input.load(Ordering::Acquire);
        if end_of_input && !end_seen {
            // Which inputs are read to the end decides which ones end: ask now, not 100 ms ago.
            end_seen = true;
            caught_up = report(shared, consumer, &tasks.borrow(), cache, member);
        }
        // While stores restore, poll without waiting: the poll keeps the member in its group.
        // Tasks waiting for their state directory try again soon.
        let timeout = match (paused.is_empty(), deferred.is_empty()) {
            (false, _) => std::time::Duration::ZERO,
            (true, false) => shared.config.poll_timeout.min(DEFERRED_RETRY),
            (true, true) => shared.config.poll_timeout,
        };
        let polled = lend_tasks(tasks, || consumer.poll(timeout))?;
        let tasks = &mut *tasks.borrow_mut();
        apply_events(shared, state, tasks, cache, consumer, &mut deferred)?;
        if !deferred.is_empty() {
            deferred.retry(shared, consumer, tasks, cache)?;
        }
        paused.retain(|id| tasks.contains_key(id));
        pause_restoring(shared, consumer, tasks, &mut paused);
        let started = Instant::now();
        let n = polled.len() as u64;
        {
            let mut st = lock(state);
            if st.eos {
                st.group = Some(consumer.group_metadata());
                st.ensure_txn()?;
            }
            let producer = &mut st.producer;
            let env = TaskEnv {
                policy: shared.config.deserialization_policy,
                dead_letter_topic: dlq,
                wall_clock_ms: crate::time::now_ms(),
                caught_up: Some(&caught_up),
                end_of_input,
                exactly_once: shared.eos(),
            };
            let mut collector = ProducerCollector::new(&mut **producer, &shared.metrics.records_out, &*shared.backend);
            for p in polled {
                let Some(id) = task_of(shared, &p.tp) else { continue };
                let Some(task) = deferred.open(shared, consumer, tasks, id, cache)? else {
                    // Its state directory is still locked: read these records again once it opens.
                    if let Some(first) = p.records.first() {
                        consumer.seek(&p.tp, first.offset)?;
                    }
                    continue;
                };
                if task.is_restoring() {
                    // Not processed yet: read these records again once the stores are restored.
                    if let Some(first) = p.records.first() {
                        consumer.seek(&p.tp, first.offset)?;
                    }
                    if paused.insert(id) {
                        consumer.pause(&task_partitions(shared, id));
                    }
                    continue;
                }
                let before = task.counters;
                task.process(p, &mut collector, &env)?;
                let after = task.counters;
                let m = &shared.metrics;
                m.records_in.fetch_add(after.records_in - before.records_in, Ordering::Relaxed);
                m.skipped.fetch_add(after.skipped - before.skipped, Ordering::Relaxed);
                m.dead_lettered.fetch_add(after.dead_lettered - before.dead_lettered, Ordering::Relaxed);
                m.late.fetch_add(after.late - before.late, Ordering::Relaxed);
            }
            for task in tasks.values_mut().filter(|t| !t.is_restoring()) {
                task.punctuate(&mut collector, &env)?;
            }
        }
        if end_of_input && !end_acked && paused.is_empty() && deferred.is_empty() {
            // Every task has moved its watermark with input ended (what is still unread moves it
            // once read); `run_to_end` waits for every worker to get here.
            end_acked = true;
            shared.metrics.end_acks.fetch_add(1, Ordering::AcqRel);
        }
        if !paused.is_empty() {
            restore_step(shared, consumer, tasks, &mut paused)?;
        }
        {
            let mut restoring = shared.metrics.restoring.lock().unwrap_or_else(|e| e.into_inner());
            if restoring.get(member).copied().unwrap_or(0) != paused.len() {
                restoring.insert(member.to_string(), paused.len());
            }
        }
        if n > 0 {
            shared.metrics.batches.fetch_add(n, Ordering::Relaxed);
            shared.metrics.process_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let requested = shared.metrics.commit_requests.load(Ordering::Acquire);
        if last_commit.elapsed() >= shared.config.commit_interval || requested != seen_request {
            commit(shared, consumer, state, tasks, false)?;
            last_commit = Instant::now();
            seen_request = requested;
        }
        if last_report.elapsed() >= std::time::Duration::from_millis(100) {
            caught_up = report(shared, consumer, tasks, cache, member);
            last_report = Instant::now();
        }
    }
    Ok(())
}

/// The input partitions of a task.
fn task_partitions(shared: &Shared, id: TaskId) -> Vec<TopicPartition> {
    shared
        .topic_to_sub
        .iter()
        .filter(|(_, sub)| **sub == id.subtopology)
        .map(|(topic, _)| TopicPartition::new(topic.clone(), id.partition))
        .collect()
}

/// Pauses the inputs of tasks that have stores to restore.
fn pause_restoring(
    shared: &Shared,
    consumer: &mut dyn BackendConsumer,
    tasks: &BTreeMap<TaskId, Task>,
    paused: &mut BTreeSet<TaskId>,
) {
    for (id, t) in tasks {
        if t.is_restoring() && paused.insert(*id) {
            tracing::info!(task = %id, "restoring stores; input paused");
            consumer.pause(&task_partitions(shared, *id));
        }
    }
}

/// Restores paused tasks for a bounded time, then resumes the inputs of those that caught up.
fn restore_step(
    shared: &Shared,
    consumer: &mut dyn BackendConsumer,
    tasks: &mut BTreeMap<TaskId, Task>,
    paused: &mut BTreeSet<TaskId>,
) -> Result<()> {
    // Short enough that polls (heartbeats) and commits of the other tasks go on.
    let deadline = Instant::now() + std::time::Duration::from_millis(100);
    let reader = crate::runtime::stores::BackendReader(&*shared.backend);
    for id in paused.clone() {
        let Some(task) = tasks.get_mut(&id) else { continue };
        let before = task.stores().restored();
        let done = task.restore_step(&reader, deadline, shared.restore_listener.as_ref())?;
        shared.metrics.restored.fetch_add(task.stores().restored() - before, Ordering::Relaxed);
        if done {
            tracing::info!(task = %id, "stores restored; processing");
            for name in task.stores().stores.keys() {
                shared.queries.restored(name, id.partition);
            }
            consumer.resume(&task_partitions(shared, id));
            paused.remove(&id);
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Ok(())
}

/// At-least-once commit: flush outputs, then commit the positions of everything processed.
/// Exactly-once: settle the commit started last time, then start this one, which the backend
/// may finish in the background while the next records are processed; `wait` waits for it too
/// (a worker's last commit).
fn commit(
    shared: &Shared,
    consumer: &mut dyn BackendConsumer,
    state: &Arc<Mutex<Shared2>>,
    tasks: &mut BTreeMap<TaskId, Task>,
    wait: bool,
) -> Result<()> {
    let started = Instant::now();
    let positions = consumer.positions();
    {
        let mut st = lock(state);
        if st.eos {
            // Operators publish what the previous commit covered before they stage the next.
            let previous = st.finish_commit()?;
            drop(st);
            match previous {
                // Refused: both transactions were aborted; the tasks are rebuilt.
                Some(false) => return Ok(()),
                Some(true) => tasks.values_mut().try_for_each(Task::committed)?,
                None => {}
            }
            st = lock(state);
        }
        // Caches first: what they absorbed must reach the changelogs before the offsets commit.
        if !tasks.is_empty() {
            flush_caches(shared, &mut st, tasks)?;
        }
        if st.eos {
            st.group = Some(consumer.group_metadata());
            let started_ok = st.start_commit(&positions)?;
            let finished = if wait && started_ok { st.finish_commit()? } else { None };
            drop(st);
            if finished == Some(true) {
                tasks.values_mut().try_for_each(Task::committed)?;
            }
            record_commit(shared, started, positions.len());
            return Ok(());
        }
        st.producer.flush()?;
    }
    if !positions.is_empty() {
        match consumer.commit(&positions) {
            Ok(()) => {}
            // The member was fenced (its session expired while it worked, say): its partitions
            // are gone and will be reprocessed by their new owner; the next poll rejoins.
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "commit refused; this member rejoins and the records are reprocessed");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    // At-least-once: the stores may be checkpointed now; a restart restores from here. Not at
    // every commit: a checkpoint writes the caches to RocksDB and flushes its memtables, and the
    // changelog already holds every change, so a later checkpoint only means a longer replay.
    for t in tasks.values_mut() {
        if t.last_checkpoint.elapsed() >= shared.config.checkpoint_interval {
            t.note_committed(&crate::runtime::stores::BackendReader(&*shared.backend))?;
            t.checkpoint()?;
            t.last_checkpoint = Instant::now();
        }
        t.committed()?;
    }
    record_commit(shared, started, positions.len());
    Ok(())
}

fn record_commit(shared: &Shared, started: Instant, partitions: usize) {
    let us = started.elapsed().as_micros() as u64;
    let m = &shared.metrics;
    m.commits.fetch_add(1, Ordering::Relaxed);
    m.commit_us.fetch_add(us, Ordering::Relaxed);
    m.commit_max_us.fetch_max(us, Ordering::Relaxed);
    tracing::debug!(partitions, us, "committed");
}

/// Publishes lag, tasks, watermarks, the stores' counts and the store caches' bytes; returns the
/// partitions read to the end.
fn report(
    shared: &Shared,
    consumer: &dyn BackendConsumer,
    tasks: &BTreeMap<TaskId, Task>,
    cache: Option<&Rc<crate::state::CacheBudget>>,
    member: &str,
) -> BTreeSet<TopicPartition> {
    if let Some(cache) = cache {
        let bytes = cache.used() as u64;
        shared.metrics.store_cache_bytes.lock().unwrap_or_else(|e| e.into_inner()).insert(member.to_string(), bytes);
    }
    let lag: BTreeMap<TopicPartition, u64> = consumer.lag().into_iter().collect();
    let caught_up = lag.iter().filter(|(_, l)| **l == 0).map(|(tp, _)| tp.clone()).collect();
    let watermarks = tasks.iter().map(|(id, t)| (id.to_string(), t.watermark())).collect();
    shared.metrics.report_stores(tasks.values());
    let tasks: Vec<String> = tasks.keys().map(|t| t.to_string()).collect();
    shared.metrics.lag.lock().unwrap_or_else(|e| e.into_inner()).insert(member.to_string(), lag);
    shared.metrics.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(member.to_string(), tasks);
    shared.metrics.watermarks.lock().unwrap_or_else(|e| e.into_inner()).insert(member.to_string(), watermarks);
    caught_up
}
