//! The graph under construction.

use std::any::Any;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{InternalTopic, SubTopology};
use crate::error::{Result, StreamsError};
use crate::processor::RawSource;
use crate::topology::instantiate::Instantiation;

/// A node's index in the graph.
pub type NodeId = usize;

/// A topic as the program names it: a user topic, or an internal one resolved with the app id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicRef {
    /// A user topic, used as named.
    External(String),
    /// An internal repartition topic: `<application.id>-<name>-repartition`.
    Internal(String),
    /// Chosen per record by a function (sinks only).
    Dynamic,
}

impl TopicRef {
    /// The topic's name for an application.
    pub fn resolve(&self, application_id: &str) -> String {
        match self {
            TopicRef::External(t) => t.clone(),
            TopicRef::Internal(n) => format!("{application_id}-{n}-repartition"),
            TopicRef::Dynamic => "<chosen per record>".into(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            TopicRef::External(t) => t.clone(),
            TopicRef::Internal(n) => format!("{n}-repartition"),
            TopicRef::Dynamic => "<chosen per record>".into(),
        }
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Reads topics.
    Source {
        /// The topics.
        topics: Vec<TopicRef>,
    },
    /// Transforms records.
    Processor {
        /// State stores it uses (from the next issue on).
        stores: Vec<String>,
    },
    /// Writes a topic.
    Sink {
        /// The topic.
        topic: TopicRef,
    },
}

/// Builds a source operator for a task.
pub type SourceFactory = Arc<dyn Fn(&mut Instantiation<'_>, NodeId) -> Result<Box<dyn RawSource>> + Send + Sync>;
/// Builds a processor or sink for a task; returns its input handle (`DownstreamRef<K, V>`) as `Any`.
pub type NodeFactory = Arc<dyn Fn(&mut Instantiation<'_>, NodeId) -> Result<Box<dyn Any>> + Send + Sync>;

/// The factory of a node.
#[derive(Clone)]
pub enum Factory {
    /// For sources.
    Source(SourceFactory),
    /// For processors and sinks.
    Node(NodeFactory),
}

/// One node of the graph.
#[derive(Clone)]
pub struct NodeDef {
    /// Unique name (`KSTREAM-FILTER-0000000001` or a user-given one).
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
    /// Upstream nodes.
    pub parents: Vec<NodeId>,
    /// Downstream nodes.
    pub children: Vec<NodeId>,
    /// Builds it for a task.
    pub factory: Factory,
}

/// The graph of a topology under construction (Kafka's `InternalTopologyBuilder`).
#[derive(Clone, Default)]
pub struct TopologyBuilder {
    stores: Vec<(crate::state::StoreSpec, NodeId)>,
    nodes: Vec<NodeDef>,
    names: HashSet<String>,
    internal: Vec<InternalTopic>,
    globals: Vec<crate::state::GlobalTableSpec>,
    errors: Vec<String>,
    counter: usize,
}

impl TopologyBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// A generated processor name, Kafka style: `KSTREAM-<KIND>-0000000007`.
    pub fn generated_name(&mut self, kind: &str) -> String {
        let n = self.counter;
        self.counter += 1;
        format!("KSTREAM-{kind}-{n:010}")
    }

    /// Adds a node; duplicate names are reported by `build()`.
    pub fn add_node(&mut self, name: String, kind: NodeKind, parents: &[NodeId], factory: Factory) -> NodeId {
        if !self.names.insert(name.clone()) {
            self.errors.push(format!("two nodes are named '{name}'; names must be unique"));
        }
        let id = self.nodes.len();
        for p in parents {
            self.nodes[*p].children.push(id);
        }
        self.nodes.push(NodeDef { name, kind, parents: parents.to_vec(), children: Vec::new(), factory });
        id
    }

    /// Declares an internal repartition topic written by the sub-topology of `writer_node`.
    pub fn add_internal_topic(&mut self, name: &str, partitions: Option<u32>, writer_node: NodeId) {
        if self.internal.iter().any(|t| t.name == name) {
            self.errors
                .push(format!("repartition topic '{name}' is declared twice; give each repartition its own name"));
            return;
        }
        // The writer's sub-topology is resolved in `components`; remember the node for now.
        self.internal.push(InternalTopic { name: name.to_string(), partitions, writer: writer_node });
    }

    /// Declares a state store used by processor `node` (its name must be unique).
    pub fn add_store(&mut self, spec: crate::state::StoreSpec, node: NodeId) {
        if self.stores.iter().any(|(s, _)| s.name == spec.name) {
            self.errors
                .push(format!("two stores are named '{}'; every stateful operator needs its own name", spec.name));
            return;
        }
        if let NodeKind::Processor { stores } = &mut self.nodes[node].kind {
            stores.push(spec.name.clone());
        }
        self.stores.push((spec, node));
    }

    /// Declares a global table (its name must be unique among stores and global tables).
    pub fn add_global_table(&mut self, spec: crate::state::GlobalTableSpec) {
        if self.globals.iter().any(|g| g.name == spec.name) || self.stores.iter().any(|(s, _)| s.name == spec.name) {
            self.errors.push(format!("two stores are named '{}'; every global table needs its own name", spec.name));
            return;
        }
        self.globals.push(spec);
    }

    /// The global tables.
    pub fn global_tables(&self) -> &[crate::state::GlobalTableSpec] {
        &self.globals
    }

    /// Lets processor `node` use the store another node declared (a stream-table join reading
    /// the table's store): both land in one sub-topology, whose tasks open the store.
    pub fn connect_store(&mut self, store: &str, node: NodeId) {
        if let NodeKind::Processor { stores } = &mut self.nodes[node].kind {
            stores.push(store.to_string());
        }
    }

    /// The stores and the nodes that own them.
    pub fn stores(&self) -> &[(crate::state::StoreSpec, NodeId)] {
        &self.stores
    }

    /// Records a problem found while building, reported by `build()`.
    pub fn add_error(&mut self, message: String) {
        self.errors.push(message);
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &NodeDef {
        &self.nodes[id]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NodeDef] {
        &self.nodes
    }

    /// The internal topics.
    pub fn internal_topics(&self) -> &[InternalTopic] {
        &self.internal
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(e) = self.errors.first() {
            return Err(StreamsError::Topology(e.clone()));
        }
        if !self.nodes.iter().any(|n| matches!(n.kind, NodeKind::Source { .. })) {
            return Err(StreamsError::Topology("the topology has no source: call builder.stream(...) first".into()));
        }
        let mut readers: std::collections::BTreeMap<&TopicRef, &str> = std::collections::BTreeMap::new();
        for n in &self.nodes {
            if let NodeKind::Source { topics } = &n.kind {
                if topics.is_empty() {
                    return Err(StreamsError::Topology(format!("source {} reads no topic", n.name)));
                }
                for t in topics {
                    if let Some(other) = readers.insert(t, &n.name) {
                        return Err(StreamsError::Topology(format!(
                            "topic '{}' is read by two sources ({other} and {}); read it once and reuse the stream",
                            t.describe(),
                            n.name
                        )));
                    }
                }
            }
        }
        // Internal topics must have a reader.
        for it in &self.internal {
            let read = self.nodes.iter().any(|n| match &n.kind {
                NodeKind::Source { topics } => topics.contains(&TopicRef::Internal(it.name.clone())),
                _ => false,
            });
            if !read {
                return Err(StreamsError::Topology(format!(
                    "repartition topic '{}' is written but never read",
                    it.name
                )));
            }
        }
        Ok(())
    }

    /// Splits the graph into connected components, numbered so that a component writing an
    /// internal topic comes before the one reading it; fixes up internal topics' writers.
    pub(crate) fn components(&mut self) -> Vec<SubTopology> {
        let n = self.nodes.len();
        // Nodes sharing a store belong together.
        let mut users: std::collections::HashMap<&str, Vec<NodeId>> = std::collections::HashMap::new();
        for (id, node) in self.nodes.iter().enumerate() {
            if let NodeKind::Processor { stores } = &node.kind {
                for s in stores {
                    users.entry(s.as_str()).or_default().push(id);
                }
            }
        }
        let mut comp = vec![usize::MAX; n];
        let mut groups: Vec<Vec<NodeId>> = Vec::new();
        for start in 0..n {
            if comp[start] != usize::MAX {
                continue;
            }
            let c = groups.len();
            let mut stack = vec![start];
            let mut members = BTreeSet::new();
            while let Some(x) = stack.pop() {
                if comp[x] != usize::MAX {
                    continue;
                }
                comp[x] = c;
                members.insert(x);
                stack.extend(self.nodes[x].children.iter().chain(self.nodes[x].parents.iter()).copied());
                if let NodeKind::Processor { stores } = &self.nodes[x].kind {
                    for s in stores {
                        stack.extend(users.get(s.as_str()).into_iter().flatten().copied());
                    }
                }
            }
            groups.push(members.into_iter().collect());
        }
        // Order: writers of a repartition topic before its readers (topologically), ties by the
        // smallest node id, so numbering is stable and `check_partitions` can walk in order.
        groups.sort_by_key(|g| g[0]);
        let group_of = |node: NodeId, groups: &[Vec<NodeId>]| groups.iter().position(|g| g.contains(&node));
        let mut edges: Vec<(usize, usize)> = Vec::new();
        for it in &self.internal {
            let writer = group_of(it.writer, &groups);
            for (id, n) in self.nodes.iter().enumerate() {
                if let NodeKind::Source { topics } = &n.kind {
                    if topics.contains(&TopicRef::Internal(it.name.clone())) {
                        if let (Some(w), Some(r)) = (writer, group_of(id, &groups)) {
                            edges.push((w, r));
                        }
                    }
                }
            }
        }
        let mut order = Vec::with_capacity(groups.len());
        let mut placed = vec![false; groups.len()];
        while order.len() < groups.len() {
            let next =
                (0..groups.len()).find(|&g| !placed[g] && !edges.iter().any(|&(w, r)| r == g && !placed[w] && w != g));
            let g = match next {
                Some(g) => g,
                None => {
                    self.errors.push("repartition topics form a cycle between sub-topologies".into());
                    (0..groups.len()).find(|&g| !placed[g]).unwrap_or(0)
                }
            };
            placed[g] = true;
            order.push(g);
        }
        let groups: Vec<Vec<NodeId>> = order.into_iter().map(|g| groups[g].clone()).collect();
        let mut id_of_group = vec![0; n];
        for (i, g) in groups.iter().enumerate() {
            for x in g {
                id_of_group[*x] = i;
            }
        }
        for it in &mut self.internal {
            it.writer = id_of_group[it.writer];
        }
        groups
            .into_iter()
            .enumerate()
            .map(|(id, nodes)| {
                let sources =
                    nodes.iter().copied().filter(|x| matches!(self.nodes[*x].kind, NodeKind::Source { .. })).collect();
                SubTopology { id, nodes, sources }
            })
            .collect()
    }

    pub(crate) fn describe_topic(t: &TopicRef) -> String {
        t.describe()
    }
}

/// Helper for factories: a clonable `Any` check with a clear internal error.
pub fn downcast<T: Clone + 'static>(b: &dyn Any, what: &str) -> Result<T> {
    b.downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| StreamsError::Topology(format!("internal: type mismatch wiring {what}")))
}
