//! Split: routes each record to the first branch whose predicate holds.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, DownstreamRef, TaskContext};
use garam_core::topology::builder::Factory;
use garam_core::Result;

use crate::Data;

/// A branch predicate.
pub(crate) type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

struct Split<K, V> {
    /// `None` is the default branch.
    preds: Vec<Option<Predicate<K, V>>>,
    outs: Vec<DownstreamRef<K, V>>,
}

impl<K: Data, V: Data> Downstream<K, V> for Split<K, V> {
    fn push(&mut self, mut batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut parts: Vec<Batch<K, V>> = (0..self.outs.len()).map(|_| Vec::new()).collect();
        for r in batch.drain(..) {
            if let Some(i) = self.preds.iter().position(|p| p.as_ref().is_none_or(|p| p(&r.key, &r.value))) {
                parts[i].push(r);
            }
        }
        garam_core::batch_pool::recycle(batch);
        for (part, out) in parts.into_iter().zip(&self.outs) {
            if !part.is_empty() {
                out.borrow_mut().push(part, ctx)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn factory<K: Data, V: Data>(preds: Vec<Option<Predicate<K, V>>>) -> Factory {
    Factory::Node(Arc::new(move |inst, id| {
        // Children are the branch nodes, in branch order.
        let kids = inst.child_ids(id);
        let mut outs = Vec::with_capacity(kids.len());
        for k in kids {
            outs.push(inst.input::<K, V>(k)?);
        }
        let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(Split { preds: preds.clone(), outs }));
        Ok(Box::new(handle) as Box<dyn Any>)
    }))
}
