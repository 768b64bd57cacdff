//! Per-topic configuration: Kafka's keys, validated, persisted as overrides.

use std::collections::BTreeMap;

use crate::error::{LogError, Result};

/// `cleanup.policy`: delete old segments, compact by key, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Retention by time and size deletes whole segments.
    pub delete: bool,
    /// Compaction keeps the latest value per key.
    pub compact: bool,
}

/// `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamp is kept.
    CreateTime,
    /// The log stamps each batch with its append time.
    LogAppendTime,
}

/// The validated configuration of a topic.
///
/// Only keys that were set explicitly are persisted (see [`TopicConfig::overrides`]), so changing a
/// default later changes every topic that did not override it, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
    /// `retention.ms`; `None` is infinite (-1).
    pub retention_ms: Option<u64>,
    /// `retention.bytes` per partition; `None` is infinite (-1).
    pub retention_bytes: Option<u64>,
    /// `segment.bytes`: roll the active segment past this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once it is this old.
    pub segment_ms: u64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long compaction keeps tombstones.
    pub delete_retention_ms: u64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: u64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `flush.messages`: fsync after this many unflushed records; `None` leaves it to `flush.ms`.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: fsync data older than this in the background; `None` never (OS write-back only).
    pub flush_ms: Option<u64>,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: u64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u64,
}

/// Every key a topic accepts, with its default as Kafka would print it.
pub const KEYS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("delete.retention.ms", "86400000"),
    ("flush.messages", "-1"),
    ("flush.ms", "1000"),
    ("index.interval.bytes", "4096"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.compaction.lag.ms", "0"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("segment.ms", "604800000"),
];

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig::from_overrides(&BTreeMap::new()).expect("defaults are valid")
    }
}

impl TopicConfig {
    /// Builds a config from explicit `key=value` overrides, rejecting unknown keys and bad values.
    pub fn from_overrides(overrides: &BTreeMap<String, String>) -> Result<TopicConfig> {
        let mut cfg = TopicConfig {
            overrides: BTreeMap::new(),
            retention_ms: Some(604_800_000),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            segment_ms: 604_800_000,
            cleanup_policy: CleanupPolicy { delete: true, compact: false },
            delete_retention_ms: 86_400_000,
            min_compaction_lag_ms: 0,
            timestamp_type: TimestampType::CreateTime,
            flush_messages: None,
            flush_ms: Some(1000),
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
        };
        for (k, v) in overrides {
            cfg.set(k, v)?;
        }
        Ok(cfg)
    }

    /// Parses `key=value` pairs, as the CLI's `--config` takes them.
    pub fn parse_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for p in pairs {
            let (k, v) = p.split_once('=').ok_or_else(|| LogError::InvalidConfig {
                key: p.to_string(),
                value: String::new(),
                reason: "expected key=value".into(),
            })?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(map)
    }

    /// Sets one key, validating it. The value is remembered as an override.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad =
            |reason: &str| LogError::InvalidConfig { key: key.into(), value: value.into(), reason: reason.into() };
        let long = |min: i64| -> Result<i64> {
            let n: i64 = value.parse().map_err(|_| bad("expected an integer"))?;
            if n < min {
                return Err(bad(&format!("must be at least {min}")));
            }
            Ok(n)
        };
        let optional = |n: i64| if n < 0 { None } else { Some(n as u64) };
        match key {
            "retention.ms" => self.retention_ms = optional(long(-1)?),
            "retention.bytes" => self.retention_bytes = optional(long(-1)?),
            "segment.bytes" => {
                let n = long(128)?;
                if n > i32::MAX as i64 {
                    return Err(bad("must fit in 31 bits (2 GiB)"));
                }
                self.segment_bytes = n as u64
            }
            "segment.ms" => self.segment_ms = long(1)? as u64,
            "cleanup.policy" => {
                let mut p = CleanupPolicy { delete: false, compact: false };
                for part in value.split(',').map(str::trim) {
                    match part {
                        "delete" => p.delete = true,
                        "compact" => p.compact = true,
                        _ => return Err(bad("expected delete, compact, or compact,delete")),
                    }
                }
                self.cleanup_policy = p;
            }
            "delete.retention.ms" => self.delete_retention_ms = long(0)? as u64,
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = long(0)? as u64,
            "message.timestamp.type" => {
                self.timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(bad("expected CreateTime or LogAppendTime")),
                }
            }
            "flush.messages" => self.flush_messages = optional(long(-1)?).filter(|n| *n > 0),
            "flush.ms" => self.flush_ms = optional(long(-1)?),
            "max.message.bytes" => self.max_message_bytes = long(64)? as u64,
            "index.interval.bytes" => self.index_interval_bytes = long(0)? as u64,
            _ => {
                return Err(LogError::InvalidConfig {
                    key: key.into(),
                    value: value.into(),
                    reason: format!(
                        "unknown config key; known keys: {}",
                        KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ),
                })
            }
        }
        self.overrides.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Removes an override, returning the key to its default.
    pub fn unset(&mut self, key: &str) -> Result<()> {
        if !KEYS.iter().any(|(k, _)| *k == key) {
            return Err(LogError::InvalidConfig {
                key: key.into(),
                value: String::new(),
                reason: "unknown config key".into(),
            });
        }
        let mut rest = self.overrides.clone();
        rest.remove(key);
        *self = TopicConfig::from_overrides(&rest)?;
        Ok(())
    }

    /// The keys set explicitly, as persisted.
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    /// Every key with its effective value and whether it is a default.
    pub fn effective(&self) -> Vec<(&'static str, String, bool)> {
        KEYS.iter()
            .map(|(k, d)| match self.overrides.get(*k) {
                Some(v) => (*k, v.clone(), false),
                None => (*k, d.to_string(), true),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_keys_and_values() {
        let mut c = TopicConfig::default();
        c.set("cleanup.policy", "compact,delete").unwrap();
        assert_eq!(c.cleanup_policy, CleanupPolicy { delete: true, compact: true });
        c.set("retention.ms", "-1").unwrap();
        assert_eq!(c.retention_ms, None);
        assert!(c.set("retention.ms", "soon").is_err());
        assert!(c.set("segment.bytes", "10").is_err());
        assert!(c.set("cleanup.policy", "forever").is_err());
        assert!(c.set("message.timestamp.type", "Now").is_err());
        let e = c.set("retention.msec", "1").unwrap_err().to_string();
        assert!(e.contains("unknown config key"), "{e}");
        assert_eq!(c.overrides().len(), 2);
        c.unset("retention.ms").unwrap();
        assert_eq!(c.retention_ms, Some(604_800_000));
    }

    #[test]
    fn defaults_round_trip_through_effective() {
        let c = TopicConfig::default();
        for (k, v, is_default) in c.effective() {
            assert!(is_default);
            let mut d = TopicConfig::default();
            d.set(k, &v).unwrap();
        }
    }
}
