//! One file per operator. Each exposes a `factory` that builds the operator for a task.

pub(crate) mod keyed_update;
pub(crate) mod pre_aggregate;
pub(crate) mod process;
pub(crate) mod session_aggregate;
pub(crate) mod sink;
pub(crate) mod sliding_aggregate;
pub(crate) mod source;
pub(crate) mod split;
pub(crate) mod stateless;
pub(crate) mod stream_join;
pub(crate) mod table_join;
pub(crate) mod window_aggregate;

/// Per-key operator state keyed by serialized keys. `entry_ref(&key)` finds a key with one hash
/// lookup and copies it only when it is new (`entry(key.to_vec())` copied it on every record).
pub(crate) type KeyMap<V> = hashbrown::HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::processor::{Downstream, DownstreamRef, Fanout, Lifecycle};
use garam_core::topology::builder::Factory;
use garam_core::topology::Instantiation;

use crate::Data;

/// A factory for an operator `N` with input `(KIn, VIn)` and output `(KOut, VOut)`.
pub(crate) fn node<KIn, VIn, KOut, VOut, N>(make: impl Fn(Fanout<KOut, VOut>) -> N + Send + Sync + 'static) -> Factory
where
    KIn: Data,
    VIn: Data,
    KOut: Data,
    VOut: Data,
    N: Downstream<KIn, VIn> + 'static,
{
    Factory::Node(Arc::new(move |inst, id| {
        let next = inst.children::<KOut, VOut>(id)?;
        let handle: DownstreamRef<KIn, VIn> = Rc::new(RefCell::new(make(next)));
        Ok(Box::new(handle) as Box<dyn Any>)
    }))
}

/// The input handle a factory returns for an operator with lifecycle hooks (commit, watermark,
/// punctuation): the task calls the hooks, the parent pushes batches, both through one cell.
pub(crate) fn registered<K, V, N>(inst: &mut Instantiation<'_>, node: N) -> Box<dyn Any>
where
    K: Data,
    V: Data,
    N: Downstream<K, V> + Lifecycle + 'static,
{
    let node = Rc::new(RefCell::new(node));
    inst.register(node.clone());
    let handle: DownstreamRef<K, V> = node;
    Box::new(handle)
}
