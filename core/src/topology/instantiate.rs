//! Building live operators for one task.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::builder::{downcast, Factory, NodeId, NodeKind};
use super::Topology;
use crate::error::{Result, StreamsError};
use crate::processor::{DownstreamRef, Fanout, Lifecycle, RawSource, TaskId};

/// The live operators of one task.
pub struct TaskGraph {
    /// Source operators by resolved topic name.
    pub sources: HashMap<String, Rc<RefCell<Box<dyn RawSource>>>>,
    /// Operators with lifecycle hooks (punctuation, close), in creation order.
    pub lifecycles: Vec<Rc<RefCell<dyn Lifecycle>>>,
}

/// The global stores of an application instance, by name.
pub type GlobalStores = std::collections::BTreeMap<String, std::sync::Arc<dyn crate::state::GlobalStore>>;

/// State while a task's operators are built: memoised inputs, so merges share one child.
pub struct Instantiation<'a> {
    stores: &'a std::collections::BTreeMap<String, crate::state::SharedStore>,
    globals: &'a GlobalStores,
    topology: &'a Topology,
    application_id: &'a str,
    task: TaskId,
    built: HashMap<NodeId, Box<dyn Any>>,
    shared: HashMap<String, Rc<dyn Any>>,
    lifecycles: Vec<Rc<RefCell<dyn Lifecycle>>>,
}

impl<'a> Instantiation<'a> {
    /// Builds every operator of `task`'s sub-topology.
    pub fn build(
        topology: &'a Topology,
        application_id: &'a str,
        task: TaskId,
        stores: &'a std::collections::BTreeMap<String, crate::state::SharedStore>,
        globals: &'a GlobalStores,
    ) -> Result<TaskGraph> {
        let st = topology
            .subtopologies()
            .get(task.subtopology)
            .ok_or_else(|| StreamsError::Topology(format!("task {task} names a missing sub-topology")))?;
        let mut inst = Instantiation {
            stores,
            globals,
            topology,
            application_id,
            task,
            built: HashMap::new(),
            shared: HashMap::new(),
            lifecycles: Vec::new(),
        };
        let mut sources = HashMap::new();
        for &s in &st.sources {
            let node = topology.graph().node(s);
            let (Factory::Source(f), NodeKind::Source { topics }) = (&node.factory, &node.kind) else {
                return Err(StreamsError::Topology(format!("internal: {} is not a source", node.name)));
            };
            let src = Rc::new(RefCell::new(f(&mut inst, s)?));
            for t in topics {
                sources.insert(t.resolve(application_id), src.clone());
            }
        }
        Ok(TaskGraph { sources, lifecycles: inst.lifecycles })
    }

    /// The task being built.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// The application id (to resolve internal topic names).
    pub fn application_id(&self) -> &str {
        self.application_id
    }

    /// The input handle of node `id`, building it if needed.
    pub fn input<K: 'static, V: 'static>(&mut self, id: NodeId) -> Result<DownstreamRef<K, V>> {
        if !self.built.contains_key(&id) {
            let node = self.topology.graph().node(id);
            let Factory::Node(f) = &node.factory else {
                return Err(StreamsError::Topology(format!("internal: source {} used as a child", node.name)));
            };
            let f = f.clone();
            let handle = f(self, id)?;
            self.built.insert(id, handle);
        }
        let name = &self.topology.graph().node(id).name;
        downcast::<DownstreamRef<K, V>>(self.built[&id].as_ref(), name)
    }

    /// The children of node `id` as a fanout of `(K, V)` batches.
    pub fn children<K: Clone + 'static, V: Clone + 'static>(&mut self, id: NodeId) -> Result<Fanout<K, V>> {
        let kids = self.topology.graph().node(id).children.clone();
        let mut v = Vec::with_capacity(kids.len());
        for k in kids {
            v.push(self.input::<K, V>(k)?);
        }
        Ok(Fanout::new(v))
    }

    /// The ids of node `id`'s children, in the order they were added.
    pub fn child_ids(&self, id: NodeId) -> Vec<NodeId> {
        self.topology.graph().node(id).children.clone()
    }

    /// The task's instance of a store (opened and restored before the operators are built).
    pub fn store(&self, name: &str) -> Result<crate::state::SharedStore> {
        self.stores.get(name).cloned().ok_or_else(|| {
            StreamsError::Topology(format!("internal: store '{name}' is not open in task {}", self.task))
        })
    }

    /// The instance's global store `name` (bootstrapped before any task runs).
    pub fn global_store(&self, name: &str) -> Result<std::sync::Arc<dyn crate::state::GlobalStore>> {
        self.globals
            .get(name)
            .cloned()
            .ok_or_else(|| StreamsError::Topology(format!("internal: global table '{name}' is not open")))
    }

    /// State shared by several operators of one task (the two sides of a join), made by the first
    /// to ask for `key`.
    pub fn shared<T: 'static>(&mut self, key: &str, make: impl FnOnce() -> Result<T>) -> Result<Rc<T>> {
        if let Some(s) = self.shared.get(key) {
            return s
                .clone()
                .downcast::<T>()
                .map_err(|_| StreamsError::Topology(format!("internal: shared state '{key}' has another type")));
        }
        let s = Rc::new(make()?);
        self.shared.insert(key.to_string(), s.clone());
        Ok(s)
    }

    /// Registers an operator's lifecycle hooks.
    pub fn register(&mut self, l: Rc<RefCell<dyn Lifecycle>>) {
        self.lifecycles.push(l);
    }
}
