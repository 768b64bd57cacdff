//! The embedded log as a [`garam_core::backend::Backend`]: the runtime's default backend.
//!
//! In-process and without copies: consumed records are `Bytes` slices of the fetched segment
//! buffer, and produced records are written once, into the producer's batch buffer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use garam_core::backend::{
    Backend, BackendConsumer, BackendProducer, ConsumerSettings, Fetched, GroupMetadata, OffsetCommitter,
    PolledRecords, RebalanceListener as CoreListener, TopicPartition,
};
use garam_core::{Header, StreamsError};

use crate::consumer::{Consumer, ConsumerConfig, PartitionRecords, RebalanceListener, RevokeCommits};
use crate::error::LogError;
use crate::log::Log;
use crate::producer::Producer;
use crate::txn::TransactionalProducer;
use crate::TopicConfig;

pub(crate) fn to_streams(e: LogError) -> StreamsError {
    let retriable = e.is_retriable();
    StreamsError::Backend { message: e.to_string(), retriable }
}

impl Backend for Log {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn partition_count(&self, topic: &str) -> garam_core::Result<Option<u32>> {
        Ok(Log::partition_count(self, topic))
    }

    fn ensure_topic(&self, topic: &str, partitions: u32, config: &BTreeMap<String, String>) -> garam_core::Result<()> {
        let cfg = TopicConfig::from_overrides(config).map_err(to_streams)?;
        match self.create_topic(topic, partitions, cfg) {
            Ok(_) => Ok(()),
            Err(LogError::TopicExists(_)) => {
                let have = Log::partition_count(self, topic).unwrap_or(0);
                if have < partitions {
                    self.add_partitions(topic, partitions).map_err(to_streams)?;
                }
                Ok(())
            }
            Err(e) => Err(to_streams(e)),
        }
    }

    fn producer(&self) -> garam_core::Result<Box<dyn BackendProducer>> {
        Ok(Box::new(self.producer(Default::default()).map_err(to_streams)?))
    }

    fn transactional_producer(&self, transactional_id: &str) -> garam_core::Result<Box<dyn BackendProducer>> {
        let p = Log::transactional_producer(self, transactional_id, Default::default()).map_err(to_streams)?;
        Ok(Box::new(p))
    }

    fn consumer(
        &self,
        s: ConsumerSettings,
        listener: Box<dyn CoreListener>,
    ) -> garam_core::Result<Box<dyn BackendConsumer>> {
        let mut c = Log::consumer(
            self,
            ConsumerConfig {
                group: Some(s.group),
                topics: s.topics,
                client_id: s.client_id,
                auto_offset_reset: s.auto_offset_reset,
                session_timeout: s.session_timeout,
                max_poll_records: Some(s.max_poll_records),
                read_committed: s.read_committed,
                assignor: crate::group::Assignor::Range,
                ..Default::default()
            },
        )
        .map_err(to_streams)?;
        c.set_listener(Box::new(ListenerAdapter(listener)));
        Ok(Box::new(c))
    }

    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        read_committed: bool,
    ) -> garam_core::Result<Fetched> {
        let part = self.partition(topic, partition).map_err(to_streams)?;
        let start = part.offsets().log_start_offset;
        let offset = offset.max(start);
        let data = part.read_isolated(offset, max_bytes, read_committed).map_err(to_streams)?;
        let recs = PartitionRecords::new(TopicPartition::new(topic, partition), offset, data, read_committed);
        let records = recs.collect_records().map_err(to_streams)?;
        Ok(Fetched { records, next_offset: recs.next_offset() })
    }

    fn end_offset(&self, topic: &str, partition: u32, read_committed: bool) -> garam_core::Result<u64> {
        let part = self.partition(topic, partition).map_err(to_streams)?;
        Ok(if read_committed { part.last_stable_offset() } else { part.high_watermark() })
    }

    fn resume_floor(&self, topic: &str, partition: u32) -> garam_core::Result<u64> {
        Ok(self.partition(topic, partition).map_err(to_streams)?.resume_floor())
    }

    fn group_members(&self, group: &str) -> garam_core::Result<Vec<garam_core::backend::GroupMember>> {
        Ok(self
            .groups()
            .describe(group)
            .members
            .into_iter()
            .map(|m| garam_core::backend::GroupMember {
                member_id: m.member_id,
                client_id: m.client_id,
                partitions: m.owned,
            })
            .collect())
    }

    fn group_offsets(&self, group: &str, topic: &str) -> garam_core::Result<Vec<(u32, Option<u64>, u64)>> {
        Ok(crate::consumer::group_lag(self, group, topic)
            .map_err(to_streams)?
            .into_iter()
            .map(|(p, c, end, _)| (p, c, end))
            .collect())
    }

    fn status_dir(&self) -> Option<PathBuf> {
        Some(self.dir().to_path_buf())
    }
}

/// Runs the runtime's rebalance callbacks from the log consumer's.
struct ListenerAdapter(Box<dyn CoreListener>);

struct Committer<'a, 'b>(&'a mut RevokeCommits<'b>);

impl OffsetCommitter for Committer<'_, '_> {
    fn position(&self, tp: &TopicPartition) -> Option<u64> {
        self.0.position(tp)
    }
    fn positions(&self) -> Vec<(TopicPartition, u64)> {
        self.0.positions()
    }
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> garam_core::Result<()> {
        self.0.commit(offsets).map_err(to_streams)
    }
}

impl RebalanceListener for ListenerAdapter {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        self.0.on_assigned(partitions)
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition], commits: &mut RevokeCommits<'_>) {
        self.0.on_revoked(partitions, &mut Committer(commits))
    }
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.0.on_lost(partitions)
    }
}

impl BackendConsumer for Consumer {
    fn poll(&mut self, timeout: Duration) -> garam_core::Result<Vec<PolledRecords>> {
        let polled = Consumer::poll(self, timeout).map_err(to_streams)?;
        let mut out = Vec::with_capacity(polled.len());
        for part in polled {
            let records = part.collect_records().map_err(to_streams)?;
            out.push(PolledRecords { tp: part.tp.clone(), records });
        }
        Ok(out)
    }

    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> garam_core::Result<()> {
        Consumer::commit(self, offsets).map_err(to_streams)
    }

    fn positions(&self) -> Vec<(TopicPartition, u64)> {
        self.assignment().into_iter().filter_map(|tp| self.position(&tp).map(|p| (tp, p))).collect()
    }

    fn lag(&self) -> Vec<(TopicPartition, u64)> {
        Consumer::lag(self).into_iter().collect()
    }

    fn member_id(&self) -> String {
        Consumer::member_id(self).unwrap_or("standalone").to_string()
    }

    fn group_metadata(&self) -> GroupMetadata {
        GroupMetadata {
            group: self.group().unwrap_or_default().to_string(),
            member_id: BackendConsumer::member_id(self),
        }
    }

    fn close(&mut self) -> garam_core::Result<()> {
        Consumer::close(self).map_err(to_streams)
    }

    fn pause(&mut self, partitions: &[TopicPartition]) {
        Consumer::pause(self, partitions)
    }

    fn resume(&mut self, partitions: &[TopicPartition]) {
        Consumer::resume(self, partitions)
    }

    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> garam_core::Result<()> {
        Consumer::seek(self, tp, offset).map_err(to_streams)
    }
}

/// A failed commit: only a fenced producer or a member that lost its partitions may abort and go
/// on; anything else (I/O, past the commit point) stops the worker.
fn commit_error(e: LogError) -> StreamsError {
    let retriable = matches!(e, LogError::Group { .. } | LogError::ProducerFenced { .. });
    StreamsError::Backend { message: e.to_string(), retriable }
}

impl BackendProducer for TransactionalProducer {
    fn send(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: i64,
        headers: &[Header],
    ) -> garam_core::Result<()> {
        self.send_raw(topic, partition, key, value, ts, headers).map_err(to_streams)
    }

    fn flush(&mut self) -> garam_core::Result<()> {
        // Records of the open transaction are appended at commit; nothing to do here.
        Ok(())
    }

    fn send_to_partition(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        records: &mut garam_core::backend::PartitionRecords<'_>,
    ) -> garam_core::Result<()> {
        TransactionalProducer::send_to_partition(self, topic, partition, timestamp, records).map_err(to_streams)?
    }

    fn begin_transaction(&mut self) -> garam_core::Result<()> {
        TransactionalProducer::begin_transaction(self).map_err(to_streams)
    }

    fn commit_transaction(
        &mut self,
        group: &GroupMetadata,
        offsets: &[(TopicPartition, u64)],
    ) -> garam_core::Result<()> {
        BackendProducer::start_commit_transaction(self, group, offsets)?;
        BackendProducer::await_commit_transaction(self)
    }

    fn start_commit_transaction(
        &mut self,
        group: &GroupMetadata,
        offsets: &[(TopicPartition, u64)],
    ) -> garam_core::Result<()> {
        let meta = crate::txn::GroupMetadata { group: group.group.clone(), member_id: Some(group.member_id.clone()) };
        TransactionalProducer::start_commit(self, Some(&meta), offsets).map_err(commit_error)
    }

    fn await_commit_transaction(&mut self) -> garam_core::Result<()> {
        TransactionalProducer::await_commit(self).map_err(commit_error)
    }

    fn abort_transaction(&mut self) -> garam_core::Result<()> {
        TransactionalProducer::abort_transaction(self).map_err(to_streams)
    }
}

impl BackendProducer for Producer {
    fn send(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: i64,
        headers: &[Header],
    ) -> garam_core::Result<()> {
        self.send_raw(topic, partition, key, value, ts, headers).map(|_| ()).map_err(to_streams)
    }

    fn flush(&mut self) -> garam_core::Result<()> {
        Producer::flush(self).map_err(to_streams)
    }

    fn send_to_partition(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        records: &mut garam_core::backend::PartitionRecords<'_>,
    ) -> garam_core::Result<()> {
        let t = self.partition_slot(topic, partition).map_err(to_streams)?;
        records(&mut |key, value| {
            self.push_at(t, partition, Some(key), value, timestamp, &[]).map(|_| ()).map_err(to_streams)
        })
    }
}
