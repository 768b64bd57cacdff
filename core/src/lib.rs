//! Garam's core: records, serdes, the Processor API, topologies, the runtime, and the backend trait.
//!
//! | module | what it holds |
//! |---|---|
//! | [`record`] | [`Record`] to produce, [`ConsumedRecord`] as read, [`StreamRecord`] as operators see it |
//! | [`serdes`] | the [`Serde`](serdes::Serde) trait; JSON, bincode, string, bytes, integers, unit, option |
//! | [`partitioner`] | Kafka's default partitioner (murmur2), so a key lands where it would on Kafka |
//! | [`batch_pool`] | batch vectors kept for reuse on the thread that emptied them |
//! | [`processor`] | the Processor API and the batch plumbing operators are built on |
//! | [`state`] | the store trait, store handles with changelogs, store specs |
//! | [`topology`] | the dataflow graph, sub-topologies, `describe()` and DOT |
//! | [`backend`] | what the runtime needs from a log (embedded log now, Kafka later) |
//! | [`runtime`] | [`App`](runtime::App): worker threads, tasks, commits, shutdown, metrics |
//! | [`testing`] | [`TopologyTestDriver`](testing::TopologyTestDriver): run a topology synchronously |
//! | [`time`] | wall-clock helpers in epoch milliseconds |
//!
//! ```
//! use garam_core::{partitioner, Record};
//! let r = Record::new(Some("user-42"), Some("{\"page\":1}"));
//! let p = partitioner::partition_for_key(r.key.as_deref().unwrap(), 8);
//! assert!(p < 8);
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod batch_pool;
pub mod error;
pub mod partitioner;
pub mod processor;
pub mod record;
pub mod runtime;
pub mod serdes;
pub mod state;
pub mod testing;
pub mod time;
pub mod topology;

pub use error::{Result, StreamsError};
pub use record::{ConsumedRecord, Header, Record, StreamRecord};
