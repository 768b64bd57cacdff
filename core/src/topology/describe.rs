//! Describing a topology: Kafka Streams' text format, and Graphviz DOT.

use std::fmt::Write;

use super::builder::{NodeKind, TopologyBuilder};
use super::Topology;

impl Topology {
    /// The topology as text, in the shape of Kafka Streams' `Topology#describe()`.
    pub fn describe(&self) -> String {
        let g = self.graph();
        let mut s = String::from("Topologies:\n");
        for st in self.subtopologies() {
            let _ = writeln!(s, "   Sub-topology: {}", st.id);
            for &id in &st.nodes {
                let n = g.node(id);
                let children: Vec<&str> = n.children.iter().map(|c| g.node(*c).name.as_str()).collect();
                let parents: Vec<&str> = n.parents.iter().map(|c| g.node(*c).name.as_str()).collect();
                match &n.kind {
                    NodeKind::Source { topics } => {
                        let t: Vec<String> = topics.iter().map(TopologyBuilder::describe_topic).collect();
                        let _ = writeln!(s, "    Source: {} (topics: [{}])", n.name, t.join(", "));
                    }
                    NodeKind::Processor { stores } => {
                        let _ = writeln!(s, "    Processor: {} (stores: [{}])", n.name, stores.join(", "));
                    }
                    NodeKind::Sink { topic } => {
                        let _ = writeln!(s, "    Sink: {} (topic: {})", n.name, TopologyBuilder::describe_topic(topic));
                    }
                }
                if !matches!(n.kind, NodeKind::Sink { .. }) {
                    let _ = writeln!(
                        s,
                        "      --> {}",
                        if children.is_empty() { "none".to_string() } else { children.join(", ") }
                    );
                }
                if !parents.is_empty() {
                    let _ = writeln!(s, "      <-- {}", parents.join(", "));
                }
            }
            s.push('\n');
        }
        if !self.internal_topics().is_empty() {
            s.push_str("Internal topics:\n");
            for t in self.internal_topics() {
                let parts = t.partitions.map_or("as many as its input".to_string(), |p| p.to_string());
                let _ = writeln!(
                    s,
                    "    <application.id>-{}-repartition (written by sub-topology {}, partitions: {parts})",
                    t.name, t.writer
                );
            }
        }
        s
    }

    /// The topology as a Graphviz DOT digraph: one cluster per sub-topology, topics as ellipses.
    pub fn to_dot(&self) -> String {
        let g = self.graph();
        let mut s = String::from("digraph topology {\n  rankdir=LR;\n  node [shape=box];\n");
        let q = |x: &str| format!("\"{}\"", x.replace('"', "\\\""));
        for st in self.subtopologies() {
            let _ = writeln!(s, "  subgraph cluster_{} {{\n    label=\"Sub-topology {}\";", st.id, st.id);
            for &id in &st.nodes {
                let _ = writeln!(s, "    {};", q(&g.node(id).name));
            }
            s.push_str("  }\n");
            for &id in &st.nodes {
                let n = g.node(id);
                for c in &n.children {
                    let _ = writeln!(s, "  {} -> {};", q(&n.name), q(&g.node(*c).name));
                }
                match &n.kind {
                    NodeKind::Source { topics } => {
                        for t in topics {
                            let t = TopologyBuilder::describe_topic(t);
                            let _ = writeln!(s, "  {} [shape=ellipse];\n  {} -> {};", q(&t), q(&t), q(&n.name));
                        }
                    }
                    NodeKind::Sink { topic } => {
                        let t = TopologyBuilder::describe_topic(topic);
                        let _ = writeln!(s, "  {} [shape=ellipse];\n  {} -> {};", q(&t), q(&n.name), q(&t));
                    }
                    NodeKind::Processor { .. } => {}
                }
            }
        }
        s.push_str("}\n");
        s
    }
}
