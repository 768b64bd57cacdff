//! File sinks (Parquet, JSON lines) whose files appear atomically, tied to the application's
//! commits — Flink's two-phase-commit file sink, on Garam's stores.
//!
//! Between rolls, records are kept in the sink's store (changelogged), so they commit with the
//! input offsets that produced them. When a roll is due at a commit (size, row count, age, or a
//! graceful stop), the records are written to hidden staging files
//! (`<dir>/<partition>/.part-<task>-<seq>.<ext>.tmp`, fsynced), and in the same commit the
//! store trades the records for the names of those files. Once the commit succeeded the files
//! are renamed into place (`part-<task>-<seq>.<ext>`). After a crash the restored store says
//! exactly which staging files were committed: those are renamed, every other staging file of
//! the task is deleted, and the records of uncommitted work are produced again by the replay.
//! Under exactly-once no row is lost, partial or duplicated; under at-least-once rows may repeat.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use garam_core::processor::{Processor, ProcessorContext, TaskId};
use garam_core::record::StreamRecord;
use garam_core::state::SharedStore;
use garam_core::{Result, StreamsError};
use serde::de::DeserializeOwned;
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
        FileSink { dir: dir.into(), format: FileFormat::Parquet(schema), partition_by: None, roll: RollPolicy::default() }
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

    /// Writes each record under the subdirectory `f(record)` (Hive-style `key=value/…`).
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
    pub(crate) config: FileSink<V>,
    pub(crate) name: String,
    pub(crate) store: SharedStore,
    task: Option<TaskId>,
    rows: Vec<V>,
    row_bytes: usize,
    oldest: Option<Instant>,
    /// Store keys `r<seq>` of `rows` are `first_row..next_row`.
    first_row: u64,
    next_row: u64,
    next_file: u64,
    /// Staging files (relative to the sink's directory) of the commit in flight.
    staged: Vec<String>,
    key_buf: Vec<u8>,
}

const ROW: u8 = b'r';
const PENDING: u8 = b'p';
const META: &[u8] = b"m";

impl<V> FileSinkProcessor<V> {
    pub(crate) fn new(config: FileSink<V>, name: String, store: SharedStore) -> Self {
        FileSinkProcessor {
            config,
            name,
            store,
            task: None,
            rows: Vec::new(),
            row_bytes: 0,
            oldest: None,
            first_row: 0,
            next_row: 0,
            next_file: 0,
            staged: Vec::new(),
            key_buf: Vec::with_capacity(9),
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> StreamsError {
        StreamsError::Processor { processor: self.name.clone(), message: e.to_string() }
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> StreamsError {
        self.error(format!("cannot {what} {}: {e}", path.display()))
    }

    fn row_key(&mut self, seq: u64) -> &[u8] {
        self.key_buf.clear();
        self.key_buf.push(ROW);
        self.key_buf.extend_from_slice(&seq.to_be_bytes());
        &self.key_buf
    }

    fn task(&self) -> Result<TaskId> {
        self.task.ok_or_else(|| self.error("internal: the sink was not initialized"))
    }

    /// `<partition>/.part-<task>-<seq>.<ext>.tmp` and its final name.
    fn staging_name(&self, partition: &str, seq: u64) -> Result<String> {
        let file = format!(".part-{}-{seq:06}.{}.tmp", self.task()?, self.config.format.extension());
        Ok(if partition.is_empty() { file } else { format!("{partition}/{file}") })
    }

    /// Renames a committed staging file into place; fine if that already happened.
    fn publish(&self, staged: &str) -> Result<()> {
        let from = self.config.dir.join(staged);
        let to = self.config.dir.join(final_name(staged));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !to.exists() {
                    tracing::warn!(sink = %self.name, file = %from.display(), "a committed file is gone from the sink's directory");
                }
                return Ok(());
            }
            Err(e) => return Err(self.io("rename", &from, e)),
        }
        if let Some(parent) = to.parent() {
            sync_dir(parent).map_err(|e| self.io("sync", parent, e))?;
        }
        tracing::debug!(sink = %self.name, file = %to.display(), "file committed");
        Ok(())
    }

    fn roll_due(&self, closing: bool) -> bool {
        !self.rows.is_empty()
            && (closing
                || self.rows.len() >= self.config.roll.max_rows
                || self.row_bytes >= self.config.roll.max_bytes
                || self.oldest.is_some_and(|t| t.elapsed() >= self.config.roll.max_age))
    }
}

/// `a/.part-x.parquet.tmp` → `a/part-x.parquet`.
fn final_name(staged: &str) -> String {
    let (dir, file) = staged.rsplit_once('/').map_or(("", staged), |(d, f)| (d, f));
    let file = file.strip_prefix('.').unwrap_or(file);
    let file = file.strip_suffix(".tmp").unwrap_or(file);
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Staging files of `task` under `dir`, relative to `dir`.
fn staging_files(dir: &Path, task: &str, out: &mut Vec<String>, prefix: &str) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if entry.file_type()?.is_dir() {
            staging_files(&entry.path(), task, out, &rel)?;
        } else if name.starts_with(&format!(".part-{task}-")) && name.ends_with(".tmp") {
            out.push(rel);
        }
    }
    Ok(())
}

impl<V: Serialize + DeserializeOwned + 'static> FileSinkProcessor<V> {
    /// Writes the buffered rows into staging files, one per partition directory, and trades them
    /// in the store for the files' names.
    fn stage(&mut self) -> Result<()> {
        let mut groups: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for v in &self.rows {
            let partition = self.config.partition_by.as_ref().map(|f| f(v)).unwrap_or_default();
            let row = serde_json::to_value(v).map_err(|e| self.error(format!("cannot serialize a row: {e}")))?;
            groups.entry(partition).or_default().push(row);
        }
        let mut store = self.store.clone();
        for (partition, rows) in groups {
            let rel = self.staging_name(&partition, self.next_file)?;
            self.next_file += 1;
            let path = self.config.dir.join(&rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| self.io("create", parent, e))?;
            }
            self.write_file(&path, &rows)?;
            let mut key = vec![PENDING];
            key.extend_from_slice(rel.as_bytes());
            store.borrow_mut().put(&key, &[])?;
            self.staged.push(rel);
        }
        for seq in self.first_row..self.next_row {
            let key = self.row_key(seq).to_vec();
            store.borrow_mut().delete(&key)?;
        }
        store = self.store.clone();
        let mut meta = Vec::with_capacity(16);
        meta.extend_from_slice(&self.next_row.to_be_bytes());
        meta.extend_from_slice(&self.next_file.to_be_bytes());
        store.borrow_mut().put(META, &meta)?;
        self.first_row = self.next_row;
        self.rows.clear();
        self.row_bytes = 0;
        self.oldest = None;
        Ok(())
    }

    fn write_file(&self, path: &Path, rows: &[Value]) -> Result<()> {
        let file = File::create(path).map_err(|e| self.io("create", path, e))?;
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
                let batch = crate::rows::to_record_batch(schema, rows)
                    .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
                    .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
                w.write(&batch).map_err(|e| self.error(format!("{}: {e}", path.display())))?;
                let file = w.into_inner().map_err(|e| self.error(format!("{}: {e}", path.display())))?;
                file.sync_all().map_err(|e| self.io("sync", path, e))?;
            }
        }
        Ok(())
    }
}

impl<K: 'static, V: Serialize + DeserializeOwned + 'static> Processor<K, V, K, V> for FileSinkProcessor<V> {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, V>) -> Result<()> {
        self.task = Some(ctx.task);
        let entries = self.store.borrow().all()?;
        let mut committed = Vec::new();
        for (k, v) in entries {
            match k.first() {
                Some(&ROW) => {
                    let row: V = serde_json::from_slice(&v)
                        .map_err(|e| self.error(format!("a buffered row in the store does not decode: {e}")))?;
                    self.row_bytes += v.len();
                    self.rows.push(row);
                }
                Some(&PENDING) => committed.push(String::from_utf8_lossy(&k[1..]).into_owned()),
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
        self.next_row = self.first_row + self.rows.len() as u64;
        if !self.rows.is_empty() {
            self.oldest = Some(Instant::now());
        }
        // Finish the renames a crash interrupted; drop staging files no commit names.
        for staged in &committed {
            self.publish(staged)?;
            let mut key = vec![PENDING];
            key.extend_from_slice(staged.as_bytes());
            self.store.borrow_mut().delete(&key)?;
        }
        let mut strays = Vec::new();
        let task = self.task()?.to_string();
        staging_files(&self.config.dir, &task, &mut strays, "")
            .map_err(|e| self.io("list", &self.config.dir.clone(), e))?;
        for stray in strays.iter().filter(|s| !committed.contains(s)) {
            let path = self.config.dir.join(stray);
            tracing::info!(sink = %self.name, file = %path.display(), "removing a staging file no commit names");
            fs::remove_file(&path).map_err(|e| self.io("remove", &path, e))?;
        }
        Ok(())
    }

    fn process(&mut self, record: StreamRecord<K, V>, _ctx: &mut ProcessorContext<'_, K, V>) -> Result<()> {
        let json = serde_json::to_vec(&record.value).map_err(|e| self.error(format!("cannot serialize a row: {e}")))?;
        let seq = self.next_row;
        self.next_row += 1;
        let key = self.row_key(seq).to_vec();
        self.store.borrow_mut().put(&key, &json)?;
        self.row_bytes += json.len();
        self.rows.push(record.value);
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
        for staged in std::mem::take(&mut self.staged) {
            self.publish(&staged)?;
            let mut key = vec![PENDING];
            key.extend_from_slice(staged.as_bytes());
            self.store.borrow_mut().delete(&key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn final_names_drop_the_dot_and_the_suffix() {
        assert_eq!(super::final_name("dt=2026-11-30/hr=09/.part-0_1-000003.parquet.tmp"), "dt=2026-11-30/hr=09/part-0_1-000003.parquet");
        assert_eq!(super::final_name(".part-0_1-000003.jsonl.tmp"), "part-0_1-000003.jsonl");
    }
}
