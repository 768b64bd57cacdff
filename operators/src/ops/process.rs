//! Runs a user `Processor`, with its punctuations.

use std::marker::PhantomData;
use std::sync::Arc;

use garam_core::processor::{
    Batch, Downstream, Fanout, Lifecycle, Processor, ProcessorContext, PunctuationType, Schedule, TaskContext,
};
use garam_core::topology::builder::Factory;
use garam_core::topology::Instantiation;
use garam_core::Result;

use crate::Data;

struct ProcessNode<P, KIn, VIn, K, V> {
    processor: P,
    next: Fanout<K, V>,
    schedules: Vec<Schedule>,
    _in: PhantomData<fn(KIn, VIn)>,
}

impl<P: Processor<KIn, VIn, K, V>, KIn, VIn, K: Data, V: Data> Downstream<KIn, VIn> for ProcessNode<P, KIn, VIn, K, V> {
    fn push(&mut self, batch: Batch<KIn, VIn>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut pctx =
                ProcessorContext::new(&mut out, &mut self.schedules, ctx.task, ctx.stream_time, ctx.wall_clock_ms)
                    .with_watermark(ctx.watermark);
            for r in batch {
                pctx.stream_time = pctx.stream_time.max(r.timestamp);
                self.processor.process(r, &mut pctx)?;
            }
        }
        self.next.push(out, ctx)
    }
}

impl<P: Processor<KIn, VIn, K, V>, KIn, VIn, K: Data, V: Data> Lifecycle for ProcessNode<P, KIn, VIn, K, V> {
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::new();
        {
            let mut pctx =
                ProcessorContext::new(&mut out, &mut self.schedules, ctx.task, ctx.stream_time, ctx.wall_clock_ms)
                    .with_watermark(ctx.watermark);
            self.processor.init(&mut pctx)?;
        }
        self.next.push(out, ctx)
    }

    fn punctuate(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        if self.schedules.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let mut schedules = std::mem::take(&mut self.schedules);
        for s in schedules.iter_mut() {
            let now = match s.kind {
                PunctuationType::StreamTime => ctx.stream_time,
                PunctuationType::WallClockTime => ctx.wall_clock_ms,
            };
            if now < 0 {
                continue;
            }
            if s.next_ms < 0 {
                // As in Kafka Streams: stream-time punctuation fires with the first record; wall-clock
                // punctuation one interval after it was scheduled.
                s.next_ms = match s.kind {
                    PunctuationType::StreamTime => now,
                    PunctuationType::WallClockTime => now + s.interval_ms,
                };
            }
            if now >= s.next_ms {
                let mut more = Vec::new();
                let mut pctx = ProcessorContext::new(&mut out, &mut more, ctx.task, ctx.stream_time, ctx.wall_clock_ms)
                    .with_watermark(ctx.watermark);
                self.processor.punctuate(s.kind, now, &mut pctx)?;
                // Stay on the grid: the next multiple of the interval after now, skipping missed ones.
                s.next_ms += ((now - s.next_ms) / s.interval_ms + 1) * s.interval_ms;
                self.schedules.extend(more);
            }
        }
        schedules.append(&mut self.schedules);
        self.schedules = schedules;
        self.next.push(out, ctx)
    }

    fn prepare_commit(&mut self, closing: bool) -> Result<()> {
        self.processor.prepare_commit(closing)
    }

    fn committed(&mut self) -> Result<()> {
        self.processor.committed()
    }

    fn close(&mut self) -> Result<()> {
        self.processor.close()
    }
}

pub(crate) fn factory<KIn: Data, VIn: Data, K: Data, V: Data, P>(
    supplier: impl Fn() -> P + Send + Sync + 'static,
) -> Factory
where
    P: Processor<KIn, VIn, K, V>,
{
    factory_with(move |_| Ok(supplier()))
}

/// A user processor made by `make(instantiation)` for each task (which may open the task's
/// stores).
pub(crate) fn factory_with<KIn: Data, VIn: Data, K: Data, V: Data, P>(
    make: impl Fn(&mut Instantiation<'_>) -> Result<P> + Send + Sync + 'static,
) -> Factory
where
    P: Processor<KIn, VIn, K, V>,
{
    Factory::Node(Arc::new(move |inst, id| {
        let next = inst.children::<K, V>(id)?;
        let processor = make(inst)?;
        let node = ProcessNode { processor, next, schedules: Vec::new(), _in: PhantomData::<fn(KIn, VIn)> };
        Ok(crate::ops::registered::<KIn, VIn, _>(inst, node))
    }))
}
