//! File source: JSON lines or CSV into a topic, read once or tailed as the file grows — Kafka
//! Connect's file source, for loading data the application then reads from a topic.
//!
//! Each line becomes one record whose value is a JSON object: JSON lines as they are (checked to
//! be JSON), CSV rows as `{"<header>": "<field>", …}` (numbers stay strings). The key is a field
//! of the object, if named; the timestamp is a numeric field (epoch ms), if named, else the
//! producer's clock. A malformed line is an error naming the file and line, and a line longer
//! than `max_line_bytes` is rejected before it is read whole.
//!
//! Progress (bytes and lines consumed) is saved to `position_file` after each flush, so a
//! restarted source goes on from there: at-least-once (lines sent after the last save are sent
//! again).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use garam_core::backend::Backend;
use serde_json::{Map, Value};

use crate::ConnectorError;

/// How lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// One JSON object per line.
    JsonLines,
    /// Comma-separated, with a header line naming the fields.
    Csv,
}

impl LineFormat {
    /// `jsonl` / `json` / `ndjson` → JSON lines, `csv` → CSV, from a file's extension.
    pub fn from_path(path: &Path) -> Option<LineFormat> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" | "ndjson" => Some(LineFormat::JsonLines),
            "csv" => Some(LineFormat::Csv),
            _ => None,
        }
    }
}

/// A file source's configuration.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: LineFormat,
    /// The topic records go to.
    pub topic: String,
    /// The field whose value is the record key (as a string), if any.
    pub key_field: Option<String>,
    /// The numeric field holding the record timestamp (epoch ms), if any.
    pub timestamp_field: Option<String>,
    /// Keep reading as the file grows, until `stop` is set.
    pub tail: bool,
    /// Where progress is saved (none: always from the start).
    pub position_file: Option<PathBuf>,
    /// The longest line accepted.
    pub max_line_bytes: usize,
}

impl FileSource {
    /// Reads `path` once into `topic`, in the format its extension says (JSON lines unless `.csv`).
    pub fn new(path: impl Into<PathBuf>, topic: &str) -> Self {
        let path = path.into();
        FileSource {
            format: LineFormat::from_path(&path).unwrap_or(LineFormat::JsonLines),
            path,
            topic: topic.to_string(),
            key_field: None,
            timestamp_field: None,
            tail: false,
            position_file: None,
            max_line_bytes: 1 << 20,
        }
    }
}

/// What a run read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceProgress {
    /// Bytes of the file consumed (whole lines).
    pub bytes: u64,
    /// Lines consumed (the CSV header included).
    pub lines: u64,
    /// Records sent.
    pub records: u64,
}

impl FileSource {
    fn io(&self, e: std::io::Error) -> ConnectorError {
        ConnectorError::Io { path: self.path.clone(), source: e }
    }

    fn load_position(&self) -> Result<(SourceProgress, Option<Vec<String>>), ConnectorError> {
        let Some(pos) = &self.position_file else { return Ok((SourceProgress::default(), None)) };
        let text = match std::fs::read_to_string(pos) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((SourceProgress::default(), None)),
            Err(e) => return Err(ConnectorError::Io { path: pos.clone(), source: e }),
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| ConnectorError::Malformed {
            path: pos.clone(),
            line: 1,
            reason: format!("not a position file: {e}"),
        })?;
        let n = |f: &str| v.get(f).and_then(Value::as_u64).unwrap_or(0);
        let header = v
            .get("header")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect::<Vec<_>>());
        Ok((SourceProgress { bytes: n("bytes"), lines: n("lines"), records: n("records") }, header))
    }

    fn save_position(&self, p: &SourceProgress, header: &Option<Vec<String>>) -> Result<(), ConnectorError> {
        let Some(pos) = &self.position_file else { return Ok(()) };
        let v = serde_json::json!({"bytes": p.bytes, "lines": p.lines, "records": p.records, "header": header});
        let tmp = pos.with_extension("tmp");
        let io = |e| ConnectorError::Io { path: pos.clone(), source: e };
        std::fs::write(&tmp, v.to_string()).map_err(io)?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, pos).map_err(io)
    }

    /// Reads the file into the topic until its end (or, tailing, until `stop` is set); returns
    /// the progress so far, also across earlier runs.
    pub fn run(&self, backend: &dyn Backend, stop: &AtomicBool) -> Result<SourceProgress, ConnectorError> {
        let log_err = |e: garam_core::StreamsError| ConnectorError::Log(e.to_string());
        let (mut progress, mut header) = self.load_position()?;
        let mut file = File::open(&self.path).map_err(|e| self.io(e))?;
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        if len < progress.bytes {
            return Err(ConnectorError::Malformed {
                path: self.path.clone(),
                line: progress.lines,
                reason: format!(
                    "the file has {len} bytes but {} were already read: was it truncated or replaced? \
                     Remove the position file to read it from the start",
                    progress.bytes
                ),
            });
        }
        file.seek(SeekFrom::Start(progress.bytes)).map_err(|e| self.io(e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut producer = backend.producer().map_err(log_err)?;
        let mut line = Vec::with_capacity(512);
        let mut value = Vec::with_capacity(512);
        let mut since_flush = 0u64;
        loop {
            line.clear();
            let limit = self.max_line_bytes as u64 + 1;
            let n = (&mut reader).take(limit).read_until(b'\n', &mut line).map_err(|e| self.io(e))?;
            let complete = line.last() == Some(&b'\n');
            if n as u64 == limit && !complete {
                return Err(ConnectorError::Malformed {
                    path: self.path.clone(),
                    line: progress.lines + 1,
                    reason: format!("the line is longer than {} bytes", self.max_line_bytes),
                });
            }
            if n == 0 || (!complete && self.tail) {
                // End of what is written so far. A partial last line waits for its newline when
                // tailing; read once, it is a line.
                if n > 0 {
                    reader.seek_relative(-(n as i64)).map_err(|e| self.io(e))?;
                }
                if since_flush > 0 || !self.tail {
                    producer.flush().map_err(log_err)?;
                    self.save_position(&progress, &header)?;
                    since_flush = 0;
                }
                if !self.tail || stop.load(Ordering::Relaxed) {
                    return Ok(progress);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            progress.bytes += n as u64;
            progress.lines += 1;
            since_flush += 1;
            let text = trim_newline(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let object = match self.format {
                LineFormat::JsonLines => {
                    let v: Value = serde_json::from_slice(text).map_err(|e| self.malformed(progress.lines, e))?;
                    if !v.is_object() {
                        return Err(self.malformed(progress.lines, "expected a JSON object"));
                    }
                    v
                }
                LineFormat::Csv => {
                    let fields = parse_csv_line(text).map_err(|e| self.malformed(progress.lines, e))?;
                    let Some(names) = &header else {
                        header = Some(fields);
                        continue;
                    };
                    if fields.len() != names.len() {
                        return Err(self.malformed(
                            progress.lines,
                            format!("{} fields, but the header names {}", fields.len(), names.len()),
                        ));
                    }
                    let map: Map<String, Value> =
                        names.iter().cloned().zip(fields.into_iter().map(Value::String)).collect();
                    Value::Object(map)
                }
            };
            let key = match &self.key_field {
                Some(f) => Some(match object.get(f) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => return Err(self.malformed(progress.lines, format!("no key field '{f}'"))),
                }),
                None => None,
            };
            let timestamp = match &self.timestamp_field {
                Some(f) => {
                    object.get(f).and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())).ok_or_else(
                        || self.malformed(progress.lines, format!("no numeric timestamp field '{f}' (epoch ms)")),
                    )?
                }
                None => garam_core::time::now_ms(),
            };
            let bytes: &[u8] = match self.format {
                LineFormat::JsonLines => text,
                LineFormat::Csv => {
                    value.clear();
                    serde_json::to_writer(&mut value, &object).map_err(|e| self.malformed(progress.lines, e))?;
                    &value
                }
            };
            producer
                .send(&self.topic, None, key.as_deref().map(str::as_bytes), Some(bytes), timestamp, &[])
                .map_err(log_err)?;
            progress.records += 1;
            if since_flush >= 100_000 {
                producer.flush().map_err(log_err)?;
                self.save_position(&progress, &header)?;
                since_flush = 0;
            }
        }
    }

    fn malformed(&self, line: u64, reason: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Malformed { path: self.path.clone(), line, reason: reason.to_string() }
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The fields of one CSV line (RFC 4180 quoting), with the `csv` crate.
fn parse_csv_line(line: &[u8]) -> Result<Vec<String>, String> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(line);
    let mut record = csv::StringRecord::new();
    match r.read_record(&mut record) {
        Ok(true) => Ok(record.iter().map(str::to_string).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_lines_split_on_commas_outside_quotes() {
        assert_eq!(super::parse_csv_line(b"ad-1,\"campaign, 7\"").unwrap(), vec!["ad-1", "campaign, 7"]);
    }
}
