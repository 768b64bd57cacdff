//! The application: validation, internal topics, worker threads, shutdown, metrics, status files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use super::config::AppConfig;
use super::metrics::{Metrics, MetricsSnapshot};
use super::worker::{self, Shared};
use crate::backend::Backend;
use crate::error::{Result, StreamsError};
use crate::processor::DeserializationPolicy;
use crate::topology::Topology;

/// Watches a running [`App`] from another thread (see [`App::monitor`]).
#[derive(Clone)]
pub struct AppMonitor {
    metrics: Arc<Metrics>,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
}

impl AppMonitor {
    /// A copy of the app's metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// True once the app is stopping.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Asks the app to stop, as Ctrl-C does.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
}

/// Where an application is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AppStatus {
    /// Built, not started.
    Created,
    /// Workers are running.
    Running,
    /// Stopped cleanly.
    Stopped,
    /// A worker failed; the others were stopped.
    Failed,
}

/// A running (or runnable) stream-processing application.
///
/// Several `App`s with the same `application.id` — in one process or several — form one consumer
/// group and split the partitions between them.
pub struct App {
    topology: Arc<Topology>,
    config: AppConfig,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    status_thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<AppStatus>>,
    failure: Arc<Mutex<Option<String>>>,
    restore_listener: Option<crate::runtime::stores::RestoreListener>,
    queries: Arc<super::queries::StoreRegistry>,
    standby_thread: Option<JoinHandle<()>>,
    global_thread: Option<JoinHandle<()>>,
    globals: crate::topology::GlobalStores,
    /// Cloned to every store this app opens: one memory bound for all of them.
    store_context: crate::state::StoreContext,
}

impl App {
    /// An application running `topology` on `backend`.
    pub fn new(topology: Topology, config: AppConfig, backend: Arc<dyn Backend>) -> Result<App> {
        let globals = super::global::stores(&topology);
        let store_context = config.new_store_context();
        Ok(App {
            globals,
            global_thread: None,
            topology: Arc::new(topology),
            config,
            backend,
            metrics: Arc::new(Metrics::default()),
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            status_thread: None,
            status: Arc::new(Mutex::new(AppStatus::Created)),
            failure: Arc::new(Mutex::new(None)),
            queries: Arc::default(),
            standby_thread: None,
            restore_listener: None,
            store_context,
        })
    }

    /// What this app's stores open with: its share of `state.memory.max.bytes` and the RocksDB
    /// block cache and write-buffer manager all its stores share (`garam_state::RocksDbSupplier::
    /// memory_of` reports what they hold).
    pub fn store_context(&self) -> &crate::state::StoreContext {
        &self.store_context
    }

    /// Calls `f` with the progress of every store restore (before `start`).
    pub fn set_restore_listener(
        &mut self,
        f: impl Fn(&crate::runtime::stores::RestoreProgress) + Send + Sync + 'static,
    ) {
        self.restore_listener = Some(Arc::new(f));
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The config.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Validates partitions, creates internal topics, and starts the worker threads.
    pub fn start(&mut self) -> Result<()> {
        if *self.status.lock().unwrap_or_else(|e| e.into_inner()) != AppStatus::Created {
            return Err(StreamsError::Config {
                key: "start".into(),
                value: String::new(),
                reason: "already started".into(),
            });
        }
        let app_id = self.config.application_id.clone();
        let backend = self.backend.clone();
        let count = |t: &str| backend.partition_count(t).ok().flatten();
        let internal = self.topology.check_partitions(&app_id, &count)?;
        for (topic, partitions) in &internal {
            self.backend.ensure_topic(topic, *partitions, &BTreeMap::new())?;
            tracing::info!(topic = %topic, partitions, "internal topic ready");
        }
        // Changelog topics: compacted, one partition per task of the store's sub-topology.
        for (spec, sub) in self.topology.all_stores() {
            let n = self
                .topology
                .source_topics(sub, &app_id)
                .first()
                .and_then(|t| internal.get(t).copied().or_else(|| count(t)))
                .unwrap_or(1);
            let cfg = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
            self.backend.ensure_topic(&spec.changelog_topic(&app_id), n, &cfg)?;
        }
        let dlq = self.config.dead_letter_topic();
        if self.config.deserialization_policy == DeserializationPolicy::DeadLetter {
            self.backend.ensure_topic(&dlq, 1, &BTreeMap::new())?;
        }
        // Global tables: read to the end before any task runs, then followed.
        if !self.topology.global_tables().is_empty() {
            let mut feeds = super::global::GlobalFeeds::new(&self.topology, &self.globals, &*self.backend)?;
            let started = std::time::Instant::now();
            let n = feeds.bootstrap(&*self.backend)?;
            tracing::info!(records = n, ms = started.elapsed().as_millis() as u64, "global tables bootstrapped");
            let (backend, shutdown) = (self.backend.clone(), self.shutdown.clone());
            let (status, failure) = (self.status.clone(), self.failure.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{app_id}-global"))
                .spawn(move || {
                    if let Err(e) = feeds.follow(backend, shutdown.clone()) {
                        tracing::error!(error = %e, "global table thread failed; stopping the application");
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        *status.lock().unwrap_or_else(|e| e.into_inner()) = AppStatus::Failed;
                        shutdown.store(true, Ordering::Release);
                    }
                })
                .map_err(|e| StreamsError::backend(format!("cannot start the global table thread: {e}"), false))?;
            self.global_thread = Some(handle);
        }
        let instance = {
            static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        };
        let shared = Arc::new(Shared {
            backend: self.backend.clone(),
            topic_to_sub: self.topology.topic_to_subtopology(&app_id),
            topology: self.topology.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            dead_letter_topic: dlq,
            state_dir: match &self.config.state_dir {
                Some(d) => d.clone(),
                None => self
                    .backend
                    .status_dir()
                    .map_or_else(|| std::env::temp_dir().join("garam-streams"), |d| d.join("state")),
            },
            restore_listener: self.restore_listener.clone(),
            queries: self.queries.clone(),
            instance,
            instance_id: format!("{}.{instance}", std::process::id()),
            active: Mutex::default(),
            globals: self.globals.clone(),
            store_context: self.store_context.clone(),
        });
        if self.config.num_standby_replicas > 0 {
            let (shared, shutdown) = (shared.clone(), self.shutdown.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{app_id}-standby"))
                .spawn(move || super::standby::run(shared, shutdown))
                .map_err(|e| StreamsError::backend(format!("cannot start the standby thread: {e}"), false))?;
            self.standby_thread = Some(handle);
        }
        for i in 0..self.config.num_threads.max(1) {
            let (shared, backend, shutdown) = (shared.clone(), self.backend.clone(), self.shutdown.clone());
            let (status, failure) = (self.status.clone(), self.failure.clone());
            let name = format!("{app_id}-StreamThread-{}", i + 1);
            let thread_name = name.clone();
            let handle = std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || {
                    let r = worker::run(shared, backend, name, shutdown.clone());
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "worker failed; stopping the application");
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        *status.lock().unwrap_or_else(|e| e.into_inner()) = AppStatus::Failed;
                        shutdown.store(true, Ordering::Release);
                    }
                    r
                })
                .map_err(|e| StreamsError::backend(format!("cannot spawn a worker thread: {e}"), false))?;
            self.threads.push(handle);
        }
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = AppStatus::Running;
        // Status for `garam apps describe`, once a second while running.
        let (writer, shutdown) = (self.status_writer(), self.shutdown.clone());
        self.status_thread = std::thread::Builder::new()
            .name(format!("{app_id}-status"))
            .spawn(move || {
                while !shutdown.load(Ordering::Acquire) {
                    writer.write();
                    for _ in 0..20 {
                        if shutdown.load(Ordering::Acquire) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .ok();
        tracing::info!(app = %app_id, threads = self.config.num_threads, "application started");
        Ok(())
    }

    /// The application's state.
    pub fn status(&self) -> AppStatus {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// A handle other threads use to watch the app while it runs (a live view, say): metrics,
    /// and whether it is stopping.
    pub fn monitor(&self) -> AppMonitor {
        AppMonitor { metrics: self.metrics.clone(), shutdown: self.shutdown.clone() }
    }

    /// Stops fetching, finishes in-flight batches, flushes, commits and leaves the group.
    /// Returns the first worker error, if any.
    pub fn close(&mut self) -> Result<()> {
        self.shutdown.store(true, Ordering::Release);
        let mut first = None;
        for h in self.threads.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(_) => {
                    first.get_or_insert(StreamsError::Processor {
                        processor: "worker".into(),
                        message: "a worker thread panicked".into(),
                    });
                }
            }
        }
        if let Some(h) = self.standby_thread.take() {
            if h.join().is_err() {
                tracing::warn!("the standby thread panicked; standbys restore more on failover");
            }
        }
        if let Some(h) = self.global_thread.take() {
            if h.join().is_err() {
                tracing::warn!("the global table thread panicked");
            }
        }
        let result = {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            match first {
                Some(e) => {
                    *status = AppStatus::Failed;
                    Err(e)
                }
                None => {
                    if *status != AppStatus::Failed {
                        *status = AppStatus::Stopped;
                    }
                    Ok(())
                }
            }
        };
        if let Some(h) = self.status_thread.take() {
            let _ = h.join();
        }
        self.write_status();
        result
    }

    /// True once a worker failed or `close` was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Starts (if needed) and runs until Ctrl-C / SIGTERM or a worker failure, then closes.
    pub fn run_until_shutdown(&mut self) -> Result<()> {
        if self.status() == AppStatus::Created {
            self.start()?;
        }
        let flag = self.shutdown.clone();
        if let Err(e) = ctrlc_handler(flag) {
            tracing::warn!(error = %e, "cannot install the Ctrl-C handler; stop the app with App::close");
        }
        while !self.shutdown.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!("shutting down");
        self.close()
    }

    /// A store of the running app, for reads from any thread (interactive queries): `get`,
    /// `range` and `all` over the tasks hosted by this instance, as of each task's last commit or
    /// later (see [`QueryView`](crate::state::QueryView): writes since may show, under exactly-once
    /// those of a transaction not committed yet). An app not running answers
    /// [`StreamsError::NotRunning`]; one whose tasks have not committed since the first query
    /// asked (it waits `interactive.query.timeout.ms`, by default a commit interval and ten
    /// seconds) [`StreamsError::StoreUnavailable`].
    /// Keys map to partitions with the default partitioner; [`ReadOnlyStore::metadata`] says
    /// which member hosts a key that is elsewhere. A partition still restoring answers with
    /// [`StreamsError::StoreRestoring`].
    ///
    /// [`ReadOnlyStore::metadata`]: super::queries::ReadOnlyStore::metadata
    pub fn store<K: 'static, V: 'static>(&self, name: &str) -> Result<super::queries::ReadOnlyStore<K, V>> {
        let not_found =
            |reason: &str| StreamsError::StoreNotFound { store: name.to_string(), reason: reason.to_string() };
        let (spec, sub) = self
            .topology
            .all_stores()
            .into_iter()
            .find(|(s, _)| s.name == name)
            .ok_or_else(|| not_found("the topology has no store of that name"))?;
        let (key, value) = spec
            .serdes
            .as_ref()
            .and_then(|s| s.downcast_ref::<(crate::serdes::SharedSerde<K>, crate::serdes::SharedSerde<V>)>())
            .cloned()
            .ok_or_else(|| not_found("its key and value types differ from the ones asked for"))?;
        if self.status() != AppStatus::Running {
            return Err(StreamsError::NotRunning);
        }
        let app_id = &self.config.application_id;
        let topics =
            self.topology.topic_to_subtopology(app_id).into_iter().filter(|(_, s)| *s == sub).map(|(t, _)| t).collect();
        // Stores with a cache publish what they have committed from their next commit on: ask
        // for a commit and wait for it, so the first read is as fresh as the later ones.
        let wait = self.config.query_wait();
        let deadline = std::time::Instant::now() + wait;
        while !self.queries.request(name) {
            if self.shutdown.load(Ordering::Acquire) {
                return Err(StreamsError::NotRunning);
            }
            if std::time::Instant::now() >= deadline {
                let incomplete = self.queries.incomplete(name);
                if incomplete.is_empty() {
                    // Completed (or moved away) since the request above: ask again.
                    continue;
                }
                return Err(match incomplete.iter().find(|(_, restoring)| *restoring) {
                    Some((partition, _)) => {
                        StreamsError::StoreRestoring { store: name.to_string(), partition: *partition }
                    }
                    None => StreamsError::StoreUnavailable {
                        store: name.to_string(),
                        reason: format!(
                            "partition(s) {:?} did not commit within {wait:?}",
                            incomplete.iter().map(|(p, _)| p).collect::<Vec<_>>()
                        ),
                    },
                });
            }
            self.metrics.commit_requests.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(super::queries::ReadOnlyStore::new(
            name,
            self.queries.clone(),
            self.backend.clone(),
            app_id,
            topics,
            key,
            value,
        ))
    }

    /// Runs until every input partition is caught up (lag 0 with nothing in flight), then closes.
    /// For batch-like runs and tests. Windows still open stay open (in their stores); see
    /// [`App::run_to_end`] to close them.
    pub fn run_until_idle(&mut self, quiet_for: Duration) -> Result<()> {
        if self.status() == AppStatus::Created {
            self.start()?;
        }
        self.wait_idle(quiet_for);
        self.close()
    }

    /// Runs until every input partition is caught up, then ends the input as a bounded source does
    /// in Flink: every task's watermark moves to the end of time, every open window closes and
    /// emits, and the app closes once that output has gone through. Input that arrives later is
    /// behind the watermark of the windowed operators (their watermark is stored with their state).
    pub fn run_to_end(&mut self, quiet_for: Duration) -> Result<()> {
        if self.status() == AppStatus::Created {
            self.start()?;
        }
        self.wait_idle(quiet_for);
        self.metrics.end_of_input.store(true, Ordering::Release);
        tracing::info!("input ended: moving every watermark to the end of time");
        while !self.shutdown.load(Ordering::Acquire)
            && self.metrics.end_acks.load(Ordering::Acquire) < self.config.num_threads as u64
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.wait_idle(quiet_for);
        self.close()
    }

    fn wait_idle(&self, quiet_for: Duration) {
        let mut idle_since: Option<std::time::Instant> = None;
        let mut last = (u64::MAX, u64::MAX);
        let mut commits_at_change = 0;
        while !self.shutdown.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
            let m = self.metrics();
            if (m.records_in, m.records_out) != last {
                last = (m.records_in, m.records_out);
                commits_at_change = m.commits;
                idle_since = None;
                continue;
            }
            // Lag counts only what producers have flushed: records waiting in a producer (for an
            // internal topic, say) show up after its worker's next commit. Ask every worker for one.
            if m.commits < commits_at_change + self.config.num_threads as u64 {
                self.metrics.commit_requests.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            if m.tasks.is_empty() || m.total_lag() != 0 || m.restoring_tasks != 0 {
                idle_since = None;
                continue;
            }
            match idle_since {
                None => idle_since = Some(std::time::Instant::now()),
                Some(t) if t.elapsed() >= quiet_for => break,
                Some(_) => {}
            }
        }
    }

    fn status_writer(&self) -> StatusWriter {
        StatusWriter {
            backend: self.backend.clone(),
            application_id: self.config.application_id.clone(),
            metrics: self.metrics.clone(),
            status: self.status.clone(),
            failure: self.failure.clone(),
        }
    }

    fn write_status(&self) {
        self.status_writer().write();
    }
}

/// Writes `<status_dir>/apps/<application.id>/status-<pid>.json` for `garam apps describe`.
struct StatusWriter {
    backend: Arc<dyn Backend>,
    application_id: String,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<AppStatus>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl StatusWriter {
    fn write(&self) {
        let Some(dir) = self.backend.status_dir() else { return };
        let dir: PathBuf = dir.join("apps").join(&self.application_id);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        #[derive(Serialize)]
        struct Status<'a> {
            format_version: u32,
            application_id: &'a str,
            status: AppStatus,
            updated_ms: i64,
            pid: u32,
            failure: Option<String>,
            metrics: MetricsSnapshot,
        }
        let s = Status {
            format_version: 1,
            application_id: &self.application_id,
            status: *self.status.lock().unwrap_or_else(|e| e.into_inner()),
            updated_ms: crate::time::now_ms(),
            pid: std::process::id(),
            failure: self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            metrics: self.metrics.snapshot(),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&s) {
            let file = dir.join(format!("status-{}.json", std::process::id()));
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.status_thread.is_some() {
            let _ = self.close();
        }
    }
}

fn ctrlc_handler(flag: Arc<AtomicBool>) -> std::result::Result<(), String> {
    // One process-wide handler: it sets every registered app's flag.
    static FLAGS: Mutex<Vec<Arc<AtomicBool>>> = Mutex::new(Vec::new());
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    FLAGS.lock().unwrap_or_else(|e| e.into_inner()).push(flag);
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = ctrlc::set_handler(|| {
            for f in FLAGS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                f.store(true, Ordering::Release);
            }
        })
        .map_err(|e| e.to_string());
    });
    result
}
