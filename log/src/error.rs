//! The log's errors, sorted by cause so callers can decide what to do.

use std::path::PathBuf;

/// Result alias for the log.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Who is at fault for an error, and so what a caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (unknown topic, bad name, bad config): fix the request.
    User,
    /// The environment failed (I/O, disk full, lock held): retrying may help.
    External,
    /// Data on disk or from a peer is corrupt: needs an operator.
    Corrupt,
    /// A broken invariant inside the log: a bug.
    Internal,
}

/// Everything the log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O error, with what was being done and to which file.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done ("open segment", "fsync", ...).
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("data dir {} is locked by another process (pid {pid}); stop it or use another --data-dir", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The pid written in the lock file, or "unknown".
        pid: String,
    },
    /// The topic does not exist.
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    /// The topic was deleted while this handle still wrote to it (a producer's queued records,
    /// a transaction's partition): what was not yet appended is not in any topic.
    #[error(
        "topic '{topic}' was deleted: partition {partition} takes no more writes (recreated topics are new topics)"
    )]
    TopicDeleted {
        /// Topic name.
        topic: String,
        /// The partition written to.
        partition: u32,
    },
    /// The topic already exists.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// The partition does not exist.
    #[error("topic '{topic}' has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: u32,
        /// Partitions the topic has.
        partitions: u32,
    },
    /// A topic name breaks Kafka's rules.
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A config key or value was rejected.
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig {
        /// Config key.
        key: String,
        /// Rejected value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A request argument is out of range (partition count, offsets, sizes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A fetch or seek asked for an offset the partition does not hold.
    #[error("offset {offset} is out of range for {topic}-{partition} (log start {log_start}, log end {log_end})")]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Requested offset.
        offset: u64,
        /// First offset held.
        log_start: u64,
        /// Next offset to be written.
        log_end: u64,
    },
    /// A record batch failed to decode or verify.
    #[error("corrupt record batch{}: {reason}", location_suffix(.location))]
    CorruptBatch {
        /// Where the batch was read from, when known.
        location: Option<BatchLocation>,
        /// What was wrong.
        reason: String,
    },
    /// A producer's batch arrived out of sequence (idempotence).
    #[error("out-of-order sequence for producer {producer_id} on {topic}-{partition}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Producer id.
        producer_id: i64,
        /// The next sequence the log expects.
        expected: i32,
        /// The sequence the batch carries.
        got: i32,
    },
    /// A producer with an older epoch tried to write (a newer instance fenced it).
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}")]
    ProducerFenced {
        /// Producer id.
        producer_id: i64,
        /// The stale epoch.
        epoch: i16,
        /// The current epoch.
        current_epoch: i16,
    },
    /// A consumer group operation failed (not a member, not the owner, rebalance in progress).
    #[error("group '{group}': {reason}")]
    Group {
        /// Group name.
        group: String,
        /// What went wrong.
        reason: String,
        /// True when rejoining the group and retrying can succeed.
        retriable: bool,
    },
    /// A commit would move a committed offset backwards.
    #[error("group '{group}': commit of offset {offset} for {topic}-{partition} is behind the committed offset {committed}; use an explicit offset reset to rewind")]
    OffsetRegression {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Requested offset.
        offset: u64,
        /// Currently committed offset.
        committed: u64,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

/// Where a batch lives: file, topic-partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLocation {
    /// Segment file.
    pub file: PathBuf,
    /// `topic-partition`.
    pub partition: String,
    /// Byte position in the file.
    pub position: u64,
    /// Base offset of the batch, when it could be read.
    pub offset: Option<u64>,
}

fn location_suffix(loc: &Option<BatchLocation>) -> String {
    match loc {
        None => String::new(),
        Some(l) => match l.offset {
            Some(o) => format!(" in {} ({}) at offset {} (byte {})", l.file.display(), l.partition, o, l.position),
            None => format!(" in {} ({}) at byte {}", l.file.display(), l.partition, l.position),
        },
    }
}

impl LogError {
    /// Which party is at fault.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LogError::Io { .. } | LogError::Locked { .. } => ErrorKind::External,
            LogError::CorruptBatch { .. } => ErrorKind::Corrupt,
            LogError::Closed => ErrorKind::External,
            LogError::Group { .. } => ErrorKind::External,
            _ => ErrorKind::User,
        }
    }

    /// Whether retrying the same call later can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            LogError::Io { .. } | LogError::Locked { .. } => true,
            LogError::Group { retriable, .. } => *retriable,
            _ => false,
        }
    }

    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { context, path, source }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> LogError {
        LogError::CorruptBatch { location: None, reason: reason.into() }
    }

    /// Attaches a location to a corrupt-batch error that lacks one; other errors pass through.
    pub fn at(self, location: BatchLocation) -> LogError {
        match self {
            LogError::CorruptBatch { location: None, reason } => {
                LogError::CorruptBatch { location: Some(location), reason }
            }
            other => other,
        }
    }
}
