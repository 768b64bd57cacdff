//! Garam's core types, shared by every other crate.
//!
//! | module | what it holds |
//! |---|---|
//! | [`record`] | [`Record`] and [`Header`]: what producers send and consumers receive |
//! | [`partitioner`] | Kafka's default partitioner (murmur2), so a key lands where it would on Kafka |
//! | [`time`] | wall-clock helpers in epoch milliseconds, the unit of every timestamp |
//!
//! ```
//! use garam_core::{partitioner, Record};
//! let r = Record::new(Some("user-42"), Some("{\"page\":1}"));
//! let p = partitioner::partition_for_key(r.key.as_deref().unwrap(), 8);
//! assert!(p < 8);
//! ```
#![deny(missing_docs)]

pub mod partitioner;
pub mod record;
pub mod time;

pub use record::{Header, Record};
