//! Garam's embedded, durable, partitioned log: Kafka's model on one machine.
//!
//! | module | what it owns |
//! |---|---|
//! | [`batch`] | Kafka's record batch format v2: building, reading, compression |
//! | [`config`] | per-topic config keys, validated and persisted |
//! | `segment`, `index` | segment files named by base offset, sparse offset and time indexes |
//! | [`partition`] | the append path, group-commit fsync, fetches, recovery, retention |
//! | [`compaction`] | keeping the latest value per key, crash-safe segment swaps |
//! | [`group`] | consumer groups: coordinator, assignors, committed offsets |
//! | [`txn`] | transactions: the coordinator, the transactional producer, recovery |
//! | [`txn_state`] | a partition's open and aborted transactions (last stable offset, read-committed) |
//! | [`producer`], [`consumer`] | the client side: batching producer, long-polling consumer |
//! | [`Log`] | a data directory: topics, lock file, background maintenance |
//! | `backend` | `Log` as the streams runtime's [`Backend`](garam_core::backend::Backend) |
//!
//! ```
//! use std::time::Duration;
//! use garam_log::{consumer::{ConsumerConfig, OffsetReset}, Log, TopicConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(dir.path()).unwrap();
//! log.create_topic("clicks", 2, TopicConfig::default()).unwrap();
//! let mut p = log.producer(Default::default()).unwrap();
//! for i in 0..10 {
//!     p.send("clicks", garam_core::Record::new(Some(format!("user-{i}")), Some("view"))).unwrap();
//! }
//! p.flush().unwrap();
//! let mut c = log.consumer(ConsumerConfig {
//!     auto_offset_reset: OffsetReset::Earliest,
//!     ..ConsumerConfig::group("analytics", &["clicks"])
//! }).unwrap();
//! let mut seen = 0;
//! while seen < 10 {
//!     for part in c.poll(Duration::from_secs(1)).unwrap() {
//!         seen += part.records().count();
//!     }
//! }
//! c.commit_positions().unwrap();
//! ```
#![deny(missing_docs)]

mod backend;
pub mod batch;
pub mod compaction;
pub mod config;
pub mod consumer;
pub mod error;
mod fsync_pool;
pub mod group;
mod index;
mod log;
mod name;
pub mod partition;
pub mod producer;
mod producer_state;
mod segment;
mod signal;
mod topic;
pub mod txn;
pub mod txn_state;

pub use config::{CleanupPolicy, TimestampType, TopicConfig};
pub use error::{ErrorKind, LogError, Result};
pub use log::{Log, LogOptions};
pub use name::validate_topic_name;
pub use signal::Signal;
pub use topic::Topic;
