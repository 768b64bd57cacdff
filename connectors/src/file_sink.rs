//! File sinks (Parquet, JSON lines) whose files appear atomically, tied to the application's
//! commits — Flink's two-phase-commit file sink, on Garam's stores.
//!
//! Between rolls, records are kept in the sink's store (changelogged) as JSON, so they commit
//! with the input offsets that produced them. When a roll is due at a commit (size, row count,
//! age, or a graceful stop), the records are written to staging files
//! (`<dir>/.staging/<sink>.<task>.<seq>-<run>.<ext>`, fsynced), and in the same commit the store
//! trades the records for the names of those files. Once the commit succeeded the files are
//! moved into place (`<dir>/<partition>/part-<task>-<seq>-<run>.<ext>`) without ever replacing a
//! file. After a crash the restored store says exactly which staging files were committed: those
//! are moved, every other staging file of the sink's task is deleted, and the records of
//! uncommitted work are produced again by the replay. Under exactly-once no row is lost, partial
//! or duplicated; under at-least-once rows may repeat.
//!
//! Instances that share tasks (a group of several members) must share the directory: a task
//! that moves finishes its predecessor's commit from the store, and a committed file that is
//! missing is an error, not a silent loss.

use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use garam_core::processor::{Processor, ProcessorContext, TaskId};
use garam_core::record::StreamRecord;
use garam_core::state::SharedStore;
use garam_core::{Result, StreamsError};
use serde::Serialize;
use serde_json::Value;

use crate::ConnectorError;

/// The file format.
#[derive(Clone)]
pub enum FileFormat {
    /// Parquet (Snappy-compressed), in this schema.
    Parquet(SchemaRef),
    /// One JSON object per line.
    JsonLines,
}

impl FileFormat {
    fn extension(&self) -> &'static str {
        match self {
            FileFormat::Parquet(_) => "parquet",
            FileFormat::JsonLines => "jsonl",
        }
    }
}

/// When a sink starts a new file: at the first commit after any limit is reached, and at a
/// graceful stop.
#[derive(Debug, Clone, Copy)]
pub struct RollPolicy {
    /// Rows per file.
    pub max_rows: usize,
    /// Bytes of rows (as JSON) per file.
    pub max_bytes: usize,
    /// Age of the oldest row not yet in a file.
    pub max_age: Duration,
}

impl Default for RollPolicy {
    fn default() -> Self {
        RollPolicy { max_rows: 1_000_000, max_bytes: 128 << 20, max_age: Duration::from_secs(60) }
    }
}

/// The subdirectory of a record (`dt=2026-11-30/hr=09`, say), or `""` for the sink's directory.
pub type PartitionBy<V> = Arc<dyn Fn(&V) -> String + Send + Sync>;

/// A file sink's configuration (see the [module](self) for how it commits).
pub struct FileSink<V> {
    pub(crate) dir: PathBuf,
    pub(crate) format: FileFormat,
    pub(crate) partition_by: Option<PartitionBy<V>>,
    pub(crate) roll: RollPolicy,
}

impl<V> Clone for FileSink<V> {
    fn clone(&self) -> Self {
        FileSink {
            dir: self.dir.clone(),
            format: self.format.clone(),
            partition_by: self.partition_by.clone(),
            roll: self.roll,
        }
    }
}

impl<V: Serialize> FileSink<V> {
    /// Parquet files under `dir`, in `schema` (see [`crate::rows`] for the mapping of fields).
    pub fn parquet(dir: impl Into<PathBuf>, schema: SchemaRef) -> Self {
        FileSink {
            dir: dir.into(),
            format: FileFormat::Parquet(schema),
            partition_by: None,
            roll: RollPolicy::default(),
        }
    }

    /// Parquet files under `dir`, with the schema inferred from `sample` (see
    /// [`crate::rows::infer_schema`]).
    pub fn parquet_inferred(dir: impl Into<PathBuf>, sample: &V) -> std::result::Result<Self, ConnectorError> {
        Ok(Self::parquet(dir, crate::rows::infer_schema(sample)?))
    }

    /// JSON-lines files under `dir`.
    pub fn json_lines(dir: impl Into<PathBuf>) -> Self {
        FileSink { dir: dir.into(), format: FileFormat::JsonLines, partition_by: None, roll: RollPolicy::default() }
    }

    /// Writes each record under the subdirectory `f(record)` (Hive-style `key=value/…`): relative,
    /// no `..`, no component starting with `.`.
    pub fn partition_by(mut self, f: impl Fn(&V) -> String + Send + Sync + 'static) -> Self {
        self.partition_by = Some(Arc::new(f));
        self
    }

    /// Sets when files roll.
    pub fn roll(mut self, roll: RollPolicy) -> Self {
        self.roll = roll;
        self
    }
}

/// The processor behind [`crate::FileSinkExt::to_files`].
pub(crate) struct FileSinkProcessor<V> {
    config: FileSink<V>,
    name: String,
    store: SharedStore,
    task: Option<TaskId>,
    /// Distinguishes this run's files from those of earlier runs (after a reset, say).
    run: u32,
    rows: u64,
    row_bytes: usize,
    oldest: Option<Instant>,
    /// Store keys `r<seq>` of the rows waiting are `first_row..next_row`.
    first_row: u64,
    next_row: u64,
    next_file: u64,
    /// (staging name, final path) of the commit in flight.
    staged: Vec<(String, String)>,
    value_buf: Vec<u8>,
    _values: std::marker::PhantomData<fn(V)>,
}

const ROW: u8 = b'r';
const PENDING: u8 = b'p';
const META: &[u8] = b"m";
const STAGING: &str = ".staging";

fn row_key(seq: u64) -> [u8; 9] {
    let mut k = [ROW; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn pending_key(staged: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + staged.len());
    key.push(PENDING);
    key.extend_from_slice(staged.as_bytes());
    key
}

/// A relative path of normal, visible components.
fn valid_partition(p: &str) -> bool {
    p.is_empty() || p.split('/').all(|c| !c.is_empty() && !c.starts_with('.') && !c.contains('\\') && c != "..")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, fsyncing each parent whose entries changed.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

impl<V> FileSinkProcessor<V> {
    pub(crate) fn new(config: FileSink<V>, name: String, store: SharedStore) -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        FileSinkProcessor {
            config,
            name,
            store,
            task: None,
            run: h.finish() as u32,
            rows: 0,
            row_bytes: 0,
            oldest: None,
            first_row: 0,
            next_row: 0,
            next_file: 0,
            staged: Vec::new(),
            value_buf: Vec::with_capacity(256),
            _values: std::marker::PhantomData,
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> StreamsError {
        StreamsError::Processor { processor: self.name.clone(), message: e.to_string() }
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> StreamsError {
        self.error(format!("cannot {what} {}: {e}", path.display()))
    }

    fn task(&self) -> Result<TaskId> {
        self.task.ok_or_else(|| self.error("internal: the sink was not initialized"))
    }

    /// This sink's staging files of this task start with this.
    fn staging_prefix(&self) -> Result<String> {
        Ok(format!("{}.{}.", self.name, self.task()?))
    }

    /// Moves a committed staging file to its final path, never replacing a file; fine if that
    /// already happened.
    fn publish(&self, staged: &str, final_path: &str) -> Result<()> {
        let from = self.config.dir.join(STAGING).join(staged);
        let to = self.config.dir.join(final_path);
        if let Some(parent) = to.parent() {
            create_dirs(parent).map_err(|e| self.io("create", parent, e))?;
        }
        match fs::hard_link(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !same_file(&from, &to) {
                    return Err(self.error(format!(
                        "{} exists and is not the committed file {}: refusing to replace it",
                        to.display(),
                        from.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if to.exists() {
                    return Ok(());
                }
                return Err(self.error(format!(
                    "the committed file {} is missing (and {} was never written): was the sink's directory \
                     changed, or not shared between the instances of the application?",
                    from.display(),
                    to.display()
                )));
            }
            Err(e) => return Err(self.io("link", &to, e)),
        }
        if let Some(parent) = to.parent() {
            sync_dir(parent).map_err(|e| self.io("sync", parent, e))?;
        }
        fs::remove_file(&from).map_err(|e| self.io("remove", &from, e))?;
        tracing::debug!(sink = %self.name, file = %to.display(), "file committed");
        Ok(())
    }

    fn roll_due(&self, closing: bool) -> bool {
        self.rows > 0
            && (closing
                || self.rows >= self.config.roll.max_rows as u64
                || self.row_bytes >= self.config.roll.max_bytes
                || self.oldest.is_some_and(|t| t.elapsed() >= self.config.roll.max_age))
    }

    /// Writes the waiting rows into staging files, one per partition directory, and trades them
    /// in the store for the files' names.
    fn stage(&mut self) -> Result<()> {
        let rows = self.store.borrow().range(&row_key(self.first_row), &row_key(self.next_row))?;
        let mut groups: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for (_, stored) in &rows {
            let (partition, json) = split_row(stored).ok_or_else(|| self.error("a stored row is malformed"))?;
            let row: Value = serde_json::from_slice(json).map_err(|e| self.error(format!("a stored row: {e}")))?;
            groups.entry(partition.to_string()).or_default().push(row);
        }
        let staging_dir = self.config.dir.join(STAGING);
        create_dirs(&staging_dir).map_err(|e| self.io("create", &staging_dir, e))?;
        let ext = self.config.format.extension();
        for (partition, rows) in groups {
            let seq = self.next_file;
            self.next_file += 1;
            let task = self.task()?;
            let staged = format!("{}{seq:06}-{:08x}.{ext}", self.staging_prefix()?, self.run);
            let file = format!("part-{task}-{seq:06}-{:08x}.{ext}", self.run);
            let final_path = if partition.is_empty() { file } else { format!("{partition}/{file}") };
            self.write_file(&staging_dir.join(&staged), &rows)?;
            self.store.borrow_mut().put(&pending_key(&staged), final_path.as_bytes())?;
            self.staged.push((staged, final_path));
        }
        sync_dir(&staging_dir).map_err(|e| self.io("sync", &staging_dir, e))?;
        for seq in self.first_row..self.next_row {
            self.store.borrow_mut().delete(&row_key(seq))?;
        }
        self.first_row = self.next_row;
        let mut meta = Vec::with_capacity(16);
        meta.extend_from_slice(&self.next_row.to_be_bytes());
        meta.extend_from_slice(&self.next_file.to_be_bytes());
        self.store.borrow_mut().put(META, &meta)?;
        self.rows = 0;
        self.row_bytes = 0;
        self.oldest = None;
        Ok(())
    }

    fn write_file(&self, path: &Path, rows: &[Value]) -> Result<()> {
        let file =
            fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| self.io("create", path, e))?;
        match &self.config.format {
            FileFormat::JsonLines => {
                let mut w = BufWriter::new(file);
                for row in rows {
                    serde_json::to_writer(&mut w, row).map_err(|e| self.error(e))?;
                    w.write_all(b"\n").map_err(|e| self.io("write", path, e))?;
                }
                let file = w.into_inner().map_err(|e| self.io("write", path, e.into_error()))?;
                file.sync_all().map_err(|e| self.io("sync", path, e))?;
            }
            FileFormat::Parquet(schema) => {
                let at = |e: &dyn std::fmt::Display| self.error(format!("{}: {e}", path.display()));
                let batch = crate::rows::to_record_batch(schema, rows).map_err(|e| at(&e))?;
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                let mut w =
                    parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| at(&e))?;
                w.write(&batch).map_err(|e| at(&e))?;
                let file = w.into_inner().map_err(|e| at(&e))?;
                file.sync_all().map_err(|e| self.io("sync", path, e))?;
            }
        }
        Ok(())
    }
}

/// `[partition length u16 BE][partition][json]`.
fn split_row(stored: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*stored.first()?, *stored.get(1)?]));
    let partition = std::str::from_utf8(stored.get(2..2 + len)?).ok()?;
    Some((partition, &stored[2 + len..]))
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_a: &Path, _b: &Path) -> bool {
    false
}

impl<K: 'static, V: Serialize + 'static> Processor<K, V, K, V> for FileSinkProcessor<V> {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, V>) -> Result<()> {
        self.task = Some(ctx.task);
        let entries = self.store.borrow().all()?;
        let mut committed: Vec<(String, String)> = Vec::new();
        let mut last_row = None;
        for (k, v) in entries {
            match k.first() {
                Some(&ROW) if k.len() == 9 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&k[1..]);
                    last_row = Some(u64::from_be_bytes(n));
                    self.rows += 1;
                    self.row_bytes += v.len();
                }
                Some(&PENDING) => committed
                    .push((String::from_utf8_lossy(&k[1..]).into_owned(), String::from_utf8_lossy(&v).into_owned())),
                _ if k == META && v.len() == 16 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&v[..8]);
                    self.first_row = u64::from_be_bytes(n);
                    n.copy_from_slice(&v[8..]);
                    self.next_file = u64::from_be_bytes(n);
                }
                _ => return Err(self.error("the sink's store holds a key it did not write")),
            }
        }
        self.next_row = last_row.map_or(self.first_row, |l| l + 1).max(self.first_row);
        if self.rows > 0 {
            self.oldest = Some(Instant::now());
        }
        // Finish the moves a crash interrupted; drop staging files no commit names.
        for (staged, final_path) in &committed {
            self.publish(staged, final_path)?;
            self.store.borrow_mut().delete(&pending_key(staged))?;
        }
        let staging_dir = self.config.dir.join(STAGING);
        let prefix = self.staging_prefix()?;
        let entries = match fs::read_dir(&staging_dir) {
            Ok(e) => e.collect::<std::io::Result<Vec<_>>>().map_err(|e| self.io("list", &staging_dir, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.io("list", &staging_dir, e)),
        };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !committed.iter().any(|(s, _)| *s == name) {
                tracing::info!(sink = %self.name, file = %name, "removing a staging file no commit names");
                fs::remove_file(entry.path()).map_err(|e| self.io("remove", &entry.path(), e))?;
            }
        }
        Ok(())
    }

    fn process(&mut self, record: StreamRecord<K, V>, _ctx: &mut ProcessorContext<'_, K, V>) -> Result<()> {
        let partition = self.config.partition_by.as_ref().map(|f| f(&record.value)).unwrap_or_default();
        if !valid_partition(&partition) || partition.len() > usize::from(u16::MAX) {
            return Err(self.error(format!(
                "partition directory '{partition}' must be relative, without '..' or components starting with '.'"
            )));
        }
        self.value_buf.clear();
        self.value_buf.extend_from_slice(&(partition.len() as u16).to_be_bytes());
        self.value_buf.extend_from_slice(partition.as_bytes());
        if let FileFormat::Parquet(schema) = &self.config.format {
            // Checked now, not when the file is written: a row that cannot be written must not
            // reach the store.
            let row =
                serde_json::to_value(&record.value).map_err(|e| self.error(format!("cannot serialize a row: {e}")))?;
            crate::rows::check_row(schema, &row).map_err(|e| self.error(e))?;
            serde_json::to_writer(&mut self.value_buf, &row).map_err(|e| self.error(e))?;
        } else {
            serde_json::to_writer(&mut self.value_buf, &record.value)
                .map_err(|e| self.error(format!("cannot serialize a row: {e}")))?;
        }
        let seq = self.next_row;
        self.next_row += 1;
        self.store.borrow_mut().put(&row_key(seq), &self.value_buf)?;
        self.rows += 1;
        self.row_bytes += self.value_buf.len();
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn prepare_commit(&mut self, closing: bool) -> Result<()> {
        if self.roll_due(closing) {
            self.stage()?;
        }
        Ok(())
    }

    fn committed(&mut self) -> Result<()> {
        for (staged, final_path) in std::mem::take(&mut self.staged) {
            self.publish(&staged, &final_path)?;
            self.store.borrow_mut().delete(&pending_key(&staged))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn partitions_stay_inside_the_directory() {
        assert!(super::valid_partition("dt=2026-11-30/hr=09"));
        assert!(super::valid_partition(""));
        for bad in ["/etc", "a/../b", "..", ".hidden", "a//b", "a\\b"] {
            assert!(!super::valid_partition(bad), "{bad}");
        }
    }

    #[test]
    fn stored_rows_split_into_partition_and_json() {
        let mut row = vec![0, 5];
        row.extend_from_slice(b"hr=01{\"a\":1}");
        assert_eq!(super::split_row(&row), Some(("hr=01", &b"{\"a\":1}"[..])));
        assert_eq!(super::split_row(&[0, 9, b'x']), None);
    }
}
