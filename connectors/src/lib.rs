//! Garam connectors: where results go besides topics, and where input comes from besides them.
//!
//! - [`FileSink`]: Parquet or JSON-lines files, partitioned into directories, rolled by size,
//!   rows and age, and made visible atomically when the application commits (no partial or
//!   duplicate rows after a crash under exactly-once). Attach one with [`FileSinkExt::to_files`].
//! - [`rows`]: records to Arrow record batches, with the schema given or inferred.
//! - [`hourly_partition`]: the `dt=YYYY-MM-DD/hr=HH` directory of an epoch-ms time.
#![deny(missing_docs)]

pub mod file_sink;
pub mod file_source;
pub mod rows;

pub use file_sink::{FileFormat, FileSink, RollPolicy};

use garam_operators::{Data, Materialized, Stream};
use serde::Serialize;

/// What a connector can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Records do not fit the schema, or a schema cannot be inferred.
    #[error("schema: {0}")]
    Schema(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line of an input file is malformed.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// The line number (from 1).
        line: u64,
        /// What was expected.
        reason: String,
    },
    /// Writing to the log failed.
    #[error("log: {0}")]
    Log(String),
}

/// Attaches file sinks to streams.
pub trait FileSinkExt<K, V> {
    /// Writes the stream's values to files as `sink` says. `name` names the sink's store (and
    /// its changelog `<application.id>-<name>-changelog`), which holds rows between rolls and the
    /// names of files being committed.
    fn to_files(&self, name: &str, sink: FileSink<V>);
}

impl<K: Data, V: Data + Serialize> FileSinkExt<K, V> for Stream<K, V> {
    fn to_files(&self, name: &str, sink: FileSink<V>) {
        let store_name = name.to_string();
        let _: Stream<K, V> = self.process_with_store(name, Materialized::named(name), move |store| {
            file_sink::FileSinkProcessor::new(sink.clone(), store_name.clone(), store)
        });
    }
}

/// The Hive-style directory of an epoch-ms time, in UTC: `dt=YYYY-MM-DD/hr=HH`.
///
/// ```
/// assert_eq!(garam_connectors::hourly_partition(1_700_000_000_000), "dt=2023-11-14/hr=22");
/// ```
pub fn hourly_partition(epoch_ms: i64) -> String {
    let secs = epoch_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    let (y, m, d) = civil_from_days(days);
    format!("dt={y:04}-{m:02}-{d:02}/hr={hour:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn partitions_follow_the_calendar() {
        assert_eq!(super::hourly_partition(0), "dt=1970-01-01/hr=00");
        assert_eq!(super::hourly_partition(951_782_400_000), "dt=2000-02-29/hr=00");
        assert_eq!(super::hourly_partition(-1), "dt=1969-12-31/hr=23");
    }
}
