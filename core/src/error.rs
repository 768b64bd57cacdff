//! Errors of topologies and the runtime, sorted by cause.

/// Result alias for the streams runtime.
pub type Result<T, E = StreamsError> = std::result::Result<T, E>;

/// Everything building or running a topology can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// The topology is invalid (names, serdes, co-partitioning): fix the program.
    #[error("invalid topology: {0}")]
    Topology(String),
    /// A config key or value is wrong.
    #[error("invalid config {key}={value}: {reason}")]
    Config {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A record could not be deserialized and the policy is `fail`.
    #[error("cannot deserialize the {what} of {topic}-{partition} at offset {offset}: {reason}")]
    Deserialization {
        /// "key" or "value".
        what: &'static str,
        /// Source topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// The serde's complaint.
        reason: String,
    },
    /// A record could not be serialized for an output topic.
    #[error("cannot serialize the {what} of a record for topic {topic}: {reason}")]
    Serialization {
        /// "key" or "value".
        what: &'static str,
        /// Destination topic.
        topic: String,
        /// The serde's complaint.
        reason: String,
    },
    /// The backend (log or Kafka) failed.
    #[error("backend: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// Whether retrying can help.
        retriable: bool,
    },
    /// A user processor or callback panicked or failed.
    #[error("processor {processor} failed: {message}")]
    Processor {
        /// Processor name.
        processor: String,
        /// What happened.
        message: String,
    },
    /// An interactive query named a store this topology does not have, or the wrong types.
    #[error("no queryable store '{store}': {reason}")]
    StoreNotFound {
        /// The store.
        store: String,
        /// What is wrong.
        reason: String,
    },
    /// An interactive query reached a store that is still restoring from its changelog: retry.
    #[error("store '{store}' partition {partition} is restoring from its changelog; retry later")]
    StoreRestoring {
        /// The store.
        store: String,
        /// The partition (task) that is restoring.
        partition: u32,
    },
    /// An interactive query asked for a store whose tasks here have not committed since the
    /// query asked (a commit publishes what their caches hold): retry.
    #[error("store '{store}' is not ready for queries: {reason}; retry later")]
    StoreUnavailable {
        /// The store.
        store: String,
        /// Which partitions are waited for, and for how long.
        reason: String,
    },
    /// The key's partition of a store is not hosted by this instance.
    #[error("store '{store}' partition {partition} is not hosted here{}", host.as_ref().map(|h| format!(" (owner: {h})")).unwrap_or_default())]
    NotHosted {
        /// The store.
        store: String,
        /// The key's partition.
        partition: u32,
        /// The member that hosts it, if known (its `application.server` when set).
        host: Option<String>,
    },
    /// The application is not running (or already stopped).
    #[error("the application is not running")]
    NotRunning,
}

impl StreamsError {
    /// A backend error.
    pub fn backend(message: impl std::fmt::Display, retriable: bool) -> StreamsError {
        StreamsError::Backend { message: message.to_string(), retriable }
    }

    /// Whether retrying can help.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            StreamsError::Backend { retriable: true, .. }
                | StreamsError::StoreRestoring { .. }
                | StreamsError::StoreUnavailable { .. }
        )
    }
}
