//! Application config, with Kafka Streams' key names.

use std::time::Duration;

use crate::backend::OffsetReset;
use crate::error::{Result, StreamsError};
use crate::processor::DeserializationPolicy;

/// `processing.guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessingGuarantee {
    /// Outputs are flushed before input offsets are committed; after a crash records may repeat.
    #[default]
    AtLeastOnce,
    /// Outputs, state and offsets commit atomically (arrives with transactions, next issue).
    ExactlyOnce,
}

/// The settings of an [`App`](super::App).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `application.id`: the consumer group, and the prefix of internal topics.
    pub application_id: String,
    /// `num.threads`: worker threads (default: available cores).
    pub num_threads: usize,
    /// `commit.interval.ms`.
    pub commit_interval: Duration,
    /// `processing.guarantee`.
    pub processing_guarantee: ProcessingGuarantee,
    /// `deserialization.error.handler`: `fail`, `log-and-continue`, `dead-letter`.
    pub deserialization_policy: DeserializationPolicy,
    /// `errors.dead.letter.queue.topic.name` (default `<application.id>-dlq`).
    pub dead_letter_topic: Option<String>,
    /// `auto.offset.reset` (default earliest, as in Kafka Streams).
    pub auto_offset_reset: OffsetReset,
    /// `max.poll.records`.
    pub max_poll_records: usize,
    /// How long a poll waits when there is nothing to do.
    pub poll_timeout: Duration,
    /// `session.timeout.ms`.
    pub session_timeout: Duration,
    /// `state.dir`: where task stores live (default: `<data dir>/state` on the embedded log).
    pub state_dir: Option<std::path::PathBuf>,
    /// `state.memory.max.bytes`: the bound on the memory of all stores together, their caches
    /// and RocksDB's block cache and memtables (default 256 MiB).
    pub state_memory_max_bytes: u64,
    /// `statestore.cache.max.bytes` (also `cache.max.bytes`): the store caches of all worker
    /// threads together, carved out of `state.memory.max.bytes`; 0 disables caching. `None`
    /// (the default) gives them half of it. See [`Self::cache_bytes`].
    pub cache_max_bytes: Option<u64>,
    /// `application.server`: this instance's `host:port` for interactive queries; other
    /// instances learn it from the group and send queries for keys hosted here.
    pub application_server: Option<String>,
    /// `num.standby.replicas`: warm copies of each task's stores on other instances.
    pub num_standby_replicas: usize,
    /// `statestore.checkpoint.interval.ms` (at-least-once): how often stores are written to disk
    /// and checkpointed at a commit (default 10 s; the changelog holds everything in between).
    pub checkpoint_interval: Duration,
    /// Event-time progress: `max.out.of.orderness.ms` (default 0) and `watermark.idle.timeout.ms`
    /// (default 5000; `none` keeps quiet inputs from ever going idle). See [`super::watermark`].
    pub watermark: super::watermark::WatermarkConfig,
    /// `task.timeout.ms`: how long a task may stall before its worker fails — today, waiting
    /// for its state directory's lock, held by its previous owner or by another process using
    /// the same `state.dir` (default 5 minutes, as in Kafka Streams; 0 fails at once).
    pub task_timeout: Duration,
    /// `interactive.query.timeout.ms`: how long [`App::store`](super::App::store) waits for the
    /// store's tasks to commit before it answers `StoreUnavailable` (or `StoreRestoring`).
    /// `None` (the default) waits `commit.interval.ms` plus 10 s.
    pub query_timeout: Option<Duration>,
    commit_interval_set: bool,
}

impl AppConfig {
    /// Defaults for an application id.
    pub fn new(application_id: impl Into<String>) -> Self {
        AppConfig {
            application_id: application_id.into(),
            num_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            commit_interval: Duration::from_millis(1000),
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
            deserialization_policy: DeserializationPolicy::Fail,
            dead_letter_topic: None,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: 10_000,
            poll_timeout: Duration::from_millis(100),
            session_timeout: Duration::from_secs(10),
            state_dir: None,
            state_memory_max_bytes: 256 << 20,
            cache_max_bytes: None,
            application_server: None,
            num_standby_replicas: 0,
            checkpoint_interval: Duration::from_secs(10),
            watermark: super::watermark::WatermarkConfig::default(),
            task_timeout: Duration::from_secs(300),
            query_timeout: None,
            commit_interval_set: false,
        }
    }

    /// Sets a key by its Kafka Streams name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<&mut Self> {
        let bad = |reason: &str| StreamsError::Config { key: key.into(), value: value.into(), reason: reason.into() };
        let num = || value.parse::<u64>().map_err(|_| bad("expected a non-negative integer"));
        match key {
            "application.id" => {
                if value.is_empty() {
                    return Err(bad("must not be empty"));
                }
                self.application_id = value.into()
            }
            "num.threads" | "num.stream.threads" => {
                let n = num()?;
                if n == 0 {
                    return Err(bad("must be at least 1"));
                }
                self.num_threads = n as usize
            }
            "commit.interval.ms" => {
                self.commit_interval = Duration::from_millis(num()?);
                self.commit_interval_set = true;
            }
            "processing.guarantee" => {
                self.processing_guarantee = match value {
                    "at_least_once" | "at-least-once" => ProcessingGuarantee::AtLeastOnce,
                    "exactly_once" | "exactly_once_v2" | "exactly-once" => ProcessingGuarantee::ExactlyOnce,
                    _ => return Err(bad("expected at_least_once or exactly_once_v2")),
                };
                // As Kafka Streams: exactly-once commits every 100 ms unless told otherwise.
                if !self.commit_interval_set {
                    self.commit_interval = Duration::from_millis(match self.processing_guarantee {
                        ProcessingGuarantee::ExactlyOnce => 100,
                        ProcessingGuarantee::AtLeastOnce => 1000,
                    });
                }
            }
            "deserialization.error.handler" | "default.deserialization.exception.handler" => {
                self.deserialization_policy = DeserializationPolicy::parse(value)
                    .ok_or_else(|| bad("expected fail, log-and-continue or dead-letter"))?
            }
            "errors.dead.letter.queue.topic.name" => self.dead_letter_topic = Some(value.into()),
            "auto.offset.reset" => {
                self.auto_offset_reset =
                    OffsetReset::parse(value).ok_or_else(|| bad("expected earliest, latest or none"))?
            }
            "max.poll.records" => self.max_poll_records = num()?.max(1) as usize,
            "poll.ms" => self.poll_timeout = Duration::from_millis(num()?),
            "session.timeout.ms" => self.session_timeout = Duration::from_millis(num()?.max(1)),
            "state.dir" => self.state_dir = Some(value.into()),
            "state.memory.max.bytes" => self.state_memory_max_bytes = num()?.max(1 << 20),
            "num.standby.replicas" => self.num_standby_replicas = num()? as usize,
            "max.out.of.orderness.ms" => {
                self.watermark.max_out_of_orderness_ms =
                    i64::try_from(num()?).map_err(|_| bad("expected milliseconds that fit in an i64"))?
            }
            "watermark.publish.interval.ms" => {
                self.watermark.publish_interval_ms =
                    i64::try_from(num()?).map_err(|_| bad("expected milliseconds that fit in an i64"))?
            }
            "watermark.idle.timeout.ms" => {
                self.watermark.idle_timeout_ms = match value {
                    "none" => None,
                    _ => Some(i64::try_from(num()?).map_err(|_| bad("expected milliseconds or none"))?),
                }
            }
            "statestore.checkpoint.interval.ms" => self.checkpoint_interval = Duration::from_millis(num()?),
            "task.timeout.ms" => self.task_timeout = Duration::from_millis(num()?),
            "interactive.query.timeout.ms" => self.query_timeout = Some(Duration::from_millis(num()?)),
            "application.server" => {
                if value.contains('#') || !value.contains(':') {
                    return Err(bad("expected host:port"));
                }
                self.application_server = Some(value.into())
            }
            "statestore.cache.max.bytes" | "cache.max.bytes" | "cache.max.bytes.buffering" => {
                self.cache_max_bytes = Some(num()?)
            }
            _ => return Err(bad("unknown config key")),
        }
        Ok(self)
    }

    /// The store caches' share of `state.memory.max.bytes`: `statestore.cache.max.bytes` when
    /// set, half of the total when not, and never more than three quarters of it, so RocksDB
    /// keeps a quarter. Lowering `state.memory.max.bytes` alone therefore lowers both shares:
    /// the total is the promise, not one of its parts.
    ///
    /// ```
    /// use garam_core::runtime::AppConfig;
    /// let mut c = AppConfig::new("app");
    /// c.set("state.memory.max.bytes", "33554432").unwrap();
    /// assert_eq!(c.cache_bytes(), 16 << 20);
    /// c.set("statestore.cache.max.bytes", "1073741824").unwrap();
    /// assert_eq!(c.cache_bytes(), 24 << 20);
    /// assert_eq!(c.new_store_context().memory_max_bytes, 8 << 20);
    /// ```
    pub fn cache_bytes(&self) -> u64 {
        let total = self.state_memory_max_bytes;
        self.cache_max_bytes.unwrap_or(total / 2).min(total - total / 4)
    }

    /// A new context for store suppliers: RocksDB's share of `state.memory.max.bytes` after the
    /// caches, with resources of its own. An app makes one ([`App::store_context`]) and hands
    /// clones of it to all its stores, so that they share one bound; each call makes another.
    ///
    /// [`App::store_context`]: crate::runtime::App::store_context
    pub fn new_store_context(&self) -> crate::state::StoreContext {
        crate::state::StoreContext::new(self.state_memory_max_bytes - self.cache_bytes())
    }

    /// How long [`App::store`](super::App::store) waits for a store's tasks to commit:
    /// `interactive.query.timeout.ms`, or `commit.interval.ms` plus 10 s when it is not set.
    ///
    /// ```
    /// use garam_core::runtime::AppConfig;
    /// use std::time::Duration;
    /// let mut c = AppConfig::new("app");
    /// assert_eq!(c.query_wait(), Duration::from_secs(11));
    /// c.set("interactive.query.timeout.ms", "2500").unwrap();
    /// assert_eq!(c.query_wait(), Duration::from_millis(2500));
    /// ```
    pub fn query_wait(&self) -> Duration {
        self.query_timeout.unwrap_or(self.commit_interval + Duration::from_secs(10))
    }

    /// The store-cache budget of one worker thread (`None`: caching disabled).
    pub fn thread_cache(&self) -> Option<std::rc::Rc<crate::state::CacheBudget>> {
        let per_thread = self.cache_bytes() / self.num_threads.max(1) as u64;
        (per_thread > 0).then(|| crate::state::CacheBudget::new(per_thread as usize))
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}-dlq", self.application_id))
    }
}
