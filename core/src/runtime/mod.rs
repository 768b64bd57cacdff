//! The runtime: an [`App`] runs a [`Topology`](crate::topology::Topology) continuously.
//!
//! Tasks are (sub-topology, partition). Each worker thread is a member of the application's
//! consumer group (`application.id`), owns the tasks of the partitions assigned to it, and runs a
//! poll → process → produce loop over batches; processing is synchronous on the worker thread.
//! At-least-once commits flush outputs before committing input offsets.

mod app;
mod config;
mod global;
mod metrics;
pub mod queries;
mod standby;
pub mod stores;
mod task;
pub mod watermark;
mod worker;

pub use app::{App, AppMonitor, AppStatus};
pub use config::{AppConfig, ProcessingGuarantee};
pub(crate) use global::stores as global_stores;
pub use metrics::{Metrics, MetricsSnapshot};
pub use queries::{KeyQueryMetadata, ReadOnlyStore};
pub use task::{Task, TaskEnv};
