//! A topic: its config, its partitions, and its metadata file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::TopicConfig;
use crate::error::{LogError, Result};
use crate::index::write_atomically;
use crate::partition::Partition;

const META: &str = "topic.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    format_version: u32,
    name: String,
    partitions: u32,
    config: BTreeMap<String, String>,
    created_ms: i64,
}

/// A topic of the embedded log.
#[derive(Debug)]
pub struct Topic {
    name: String,
    dir: PathBuf,
    created_ms: i64,
    config: RwLock<Arc<TopicConfig>>,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub(crate) fn create(dir: PathBuf, name: &str, partitions: u32, config: TopicConfig) -> Result<Topic> {
        fs::create_dir_all(&dir).map_err(LogError::io("create topic dir", &dir))?;
        let config = Arc::new(config);
        let parts = (0..partitions)
            .map(|p| Partition::open(name, p, dir.join(p.to_string()), config.clone(), true).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let t = Topic {
            name: name.to_string(),
            dir,
            created_ms: garam_core::time::now_ms(),
            config: RwLock::new(config),
            partitions: RwLock::new(parts),
        };
        t.write_meta()?;
        Ok(t)
    }

    pub(crate) fn open(dir: PathBuf, clean: bool) -> Result<Topic> {
        let path = dir.join(META);
        let raw = fs::read(&path).map_err(LogError::io("read topic metadata", &path))?;
        let meta: TopicMeta = serde_json::from_slice(&raw).map_err(|e| LogError::InvalidConfig {
            key: path.display().to_string(),
            value: String::new(),
            reason: format!("unreadable topic metadata: {e}"),
        })?;
        if meta.format_version != FORMAT_VERSION {
            return Err(LogError::InvalidConfig {
                key: path.display().to_string(),
                value: meta.format_version.to_string(),
                reason: format!("unsupported topic metadata version (this build reads {FORMAT_VERSION})"),
            });
        }
        let config = Arc::new(TopicConfig::from_overrides(&meta.config)?);
        let parts = (0..meta.partitions)
            .map(|p| Partition::open(&meta.name, p, dir.join(p.to_string()), config.clone(), clean).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Topic {
            name: meta.name,
            dir,
            created_ms: meta.created_ms,
            config: RwLock::new(config),
            partitions: RwLock::new(parts),
        })
    }

    fn write_meta(&self) -> Result<()> {
        let meta = TopicMeta {
            format_version: FORMAT_VERSION,
            name: self.name.clone(),
            partitions: self.partition_count(),
            config: self.config().overrides().clone(),
            created_ms: self.created_ms,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| LogError::InvalidArgument(e.to_string()))?;
        write_atomically(&self.dir.join(META), &json)
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current config.
    pub fn config(&self) -> Arc<TopicConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.read().unwrap_or_else(|e| e.into_inner()).len() as u32
    }

    /// All partitions.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks every partition deleted, so handles still held refuse to append to them.
    pub(crate) fn mark_deleted(&self) {
        for p in self.partitions() {
            p.mark_deleted();
        }
    }

    /// One partition.
    pub fn partition(&self, p: u32) -> Result<Arc<Partition>> {
        let parts = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        parts.get(p as usize).cloned().ok_or_else(|| LogError::UnknownPartition {
            topic: self.name.clone(),
            partition: p,
            partitions: parts.len() as u32,
        })
    }

    pub(crate) fn alter_config(&self, set: &BTreeMap<String, String>, unset: &[String]) -> Result<()> {
        let mut c = (*self.config()).clone();
        for k in unset {
            c.unset(k)?;
        }
        for (k, v) in set {
            c.set(k, v)?;
        }
        let c = Arc::new(c);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
        for p in self.partitions() {
            p.set_config(c.clone());
        }
        self.write_meta()
    }

    pub(crate) fn add_partitions(&self, total: u32) -> Result<()> {
        let mut parts = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        let have = parts.len() as u32;
        if total <= have {
            return Err(LogError::InvalidArgument(format!(
                "topic '{}' has {have} partitions; the count can only grow (asked for {total})",
                self.name
            )));
        }
        for p in have..total {
            parts.push(Arc::new(Partition::open(&self.name, p, self.dir.join(p.to_string()), self.config(), true)?));
        }
        drop(parts);
        self.write_meta()
    }

    pub(crate) fn close(&self) -> Result<()> {
        for p in self.partitions() {
            p.close()?;
        }
        Ok(())
    }
}
