//! Topologies: the dataflow graph a program builds, split into sub-topologies at repartition topics.
//!
//! | module | job |
//! |---|---|
//! | [`builder`] | [`TopologyBuilder`]: the graph of named nodes with their factories |
//! | [`instantiate`] | turning a sub-topology into live operators for one task |
//! | [`describe`] | `describe()` text (like Kafka Streams') and Graphviz DOT |
//!
//! The typed DSL (`garam-operators`) adds nodes here; each node carries a factory that builds its
//! operator for a task, so every task gets its own operator instances.

pub mod builder;
pub mod describe;
pub mod instantiate;

use std::collections::BTreeMap;

pub use builder::{NodeId, NodeKind, TopicRef, TopologyBuilder};
pub use instantiate::{GlobalStores, Instantiation, TaskGraph};

use crate::error::{Result, StreamsError};

/// An internal topic the runtime creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopic {
    /// The name given in the program (`<application.id>-<name>-repartition` on the log).
    pub name: String,
    /// Partitions; `None` takes the largest partition count of the upstream sub-topology's sources.
    pub partitions: Option<u32>,
    /// The sub-topology writing it.
    pub writer: usize,
}

impl InternalTopic {
    /// The topic's full name for an application.
    pub fn full_name(&self, application_id: &str) -> String {
        format!("{application_id}-{}-repartition", self.name)
    }
}

/// A connected part of the graph: the unit that becomes tasks, one per input partition.
#[derive(Debug, Clone)]
pub struct SubTopology {
    /// Its number.
    pub id: usize,
    /// Its nodes, in creation order.
    pub nodes: Vec<NodeId>,
    /// Its source nodes.
    pub sources: Vec<NodeId>,
}

/// A validated topology, ready to run or to describe.
pub struct Topology {
    pub(crate) builder: TopologyBuilder,
    pub(crate) subtopologies: Vec<SubTopology>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Topology {
    /// Validates the graph and splits it into sub-topologies.
    pub fn new(mut builder: TopologyBuilder) -> Result<Topology> {
        let subtopologies = builder.components();
        builder.validate()?;
        Ok(Topology { builder, subtopologies })
    }

    /// The sub-topologies.
    pub fn subtopologies(&self) -> &[SubTopology] {
        &self.subtopologies
    }

    /// The graph.
    pub fn graph(&self) -> &TopologyBuilder {
        &self.builder
    }

    /// Internal topics to create.
    pub fn internal_topics(&self) -> &[InternalTopic] {
        self.builder.internal_topics()
    }

    /// The global tables.
    pub fn global_tables(&self) -> &[crate::state::GlobalTableSpec] {
        self.builder.global_tables()
    }

    /// The stores of a sub-topology.
    pub fn stores_of(&self, subtopology: usize) -> Vec<crate::state::StoreSpec> {
        let nodes = &self.subtopologies[subtopology].nodes;
        self.builder.stores().iter().filter(|(_, n)| nodes.contains(n)).map(|(s, _)| s.clone()).collect()
    }

    /// Every store with the sub-topology that owns it.
    pub fn all_stores(&self) -> Vec<(crate::state::StoreSpec, usize)> {
        self.subtopologies.iter().flat_map(|st| self.stores_of(st.id).into_iter().map(move |s| (s, st.id))).collect()
    }

    /// Topics a sub-topology reads, with internal topic names resolved for `application_id`.
    pub fn source_topics(&self, subtopology: usize, application_id: &str) -> Vec<String> {
        let mut topics: Vec<String> = self.subtopologies[subtopology]
            .sources
            .iter()
            .flat_map(|s| match &self.builder.node(*s).kind {
                NodeKind::Source { topics } => topics.iter().map(|t| t.resolve(application_id)).collect(),
                _ => Vec::new(),
            })
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Every topic read, mapped to the sub-topology reading it.
    pub fn topic_to_subtopology(&self, application_id: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for st in &self.subtopologies {
            for t in self.source_topics(st.id, application_id) {
                m.insert(t, st.id);
            }
        }
        m
    }

    /// Checks partition counts: the sources of one sub-topology must be co-partitioned (equal
    /// counts), and every external source and sink topic must exist. `count` answers a topic's
    /// partition count (`None`: missing). Returns each internal topic's partition count.
    pub fn check_partitions(
        &self,
        application_id: &str,
        count: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<BTreeMap<String, u32>> {
        let mut internal: BTreeMap<String, u32> = BTreeMap::new();
        let internal_names: Vec<String> = self.internal_topics().iter().map(|t| t.full_name(application_id)).collect();
        // Sub-topologies are numbered so that writers come before readers of internal topics.
        for st in &self.subtopologies {
            let mut counts = Vec::new();
            for t in self.source_topics(st.id, application_id) {
                let n = match internal.get(&t) {
                    Some(n) => *n,
                    None if internal_names.contains(&t) => {
                        return Err(StreamsError::Topology(format!("internal topic {t} is read before it is written")));
                    }
                    None => count(&t).ok_or_else(|| {
                        StreamsError::Topology(format!("source topic '{t}' does not exist; create it first"))
                    })?,
                };
                counts.push((t, n));
            }
            if counts.windows(2).any(|w| w[0].1 != w[1].1) {
                let list: Vec<String> = counts.iter().map(|(t, n)| format!("{t} ({n} partitions)")).collect();
                return Err(StreamsError::Topology(format!(
                    "sub-topology {} reads topics that are not co-partitioned: {}; they need equal partition counts \
                     (repartition one of them)",
                    st.id,
                    list.join(", ")
                )));
            }
            let max = counts.iter().map(|c| c.1).max().unwrap_or(1);
            for it in self.internal_topics().iter().filter(|it| it.writer == st.id) {
                internal.insert(it.full_name(application_id), it.partitions.unwrap_or(max));
            }
        }
        Ok(internal)
    }
}
