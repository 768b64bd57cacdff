//! A few long-lived threads that fsync partitions together for transaction commits.
//!
//! One commit touches many partitions, and the file system folds concurrent fsyncs into few
//! journal commits where one after another would each wait for its own. Spawning a thread per
//! partition per commit, which this replaces, cost a thread start each: 128 of them per fsync
//! round for a worker thread with 32 tasks of 3 stores, and every exited thread's allocator heap
//! to reclaim.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::error::{LogError, Result};
use crate::partition::Partition;

/// Threads fsyncing at once, besides the committing thread itself: enough for the file system to
/// fold a commit's fsyncs together, few enough to cost nothing while idle.
const THREADS: usize = 8;

struct Job {
    partition: Arc<Partition>,
    done: Sender<Result<()>>,
}

/// The pool: its threads start on first use and end when the pool is dropped.
#[derive(Default)]
pub(crate) struct FsyncPool {
    threads: Mutex<Threads>,
}

#[derive(Default)]
enum Threads {
    #[default]
    NotStarted,
    Running(Sender<Job>),
    /// None could start: every fsync runs on its caller's thread.
    Unavailable,
}

impl FsyncPool {
    /// Fsyncs `parts` (on the pool's threads and this one together), and runs `also` (another
    /// fsync) on this thread meanwhile. Returns the first error; every fsync has ended by then.
    pub(crate) fn flush_all_and(
        &self,
        parts: &[Arc<Partition>],
        also: Option<impl FnOnce() -> Result<()>>,
    ) -> Result<()> {
        let Some((first, rest)) = parts.split_first() else {
            return also.map_or(Ok(()), |also| also());
        };
        let (done, results) = mpsc::channel();
        let mut queued = 0;
        let mut result = Ok(());
        for part in rest {
            match self.submit(Job { partition: part.clone(), done: done.clone() }) {
                Ok(()) => queued += 1,
                // No pool thread could start: fsync here instead.
                Err(job) => keep_first_error(&mut result, guarded(|| job.partition.flush())),
            }
        }
        drop(done);
        // Every queued fsync is waited for below, even after a failure here: a caller that
        // retries must not race the fsyncs of its previous attempt.
        keep_first_error(&mut result, guarded(|| first.flush()));
        if let Some(also) = also {
            keep_first_error(&mut result, guarded(also));
        }
        for _ in 0..queued {
            let r = results
                .recv()
                .unwrap_or_else(|_| Err(LogError::InvalidArgument("an fsync thread ended without an answer".into())));
            keep_first_error(&mut result, r);
        }
        result
    }

    /// Queues a job, starting the threads the first time; gives the job back if none could start.
    fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*threads, Threads::NotStarted) {
            *threads = start_threads();
        }
        match &*threads {
            Threads::Running(tx) => tx.send(job).map_err(|e| e.0),
            Threads::NotStarted | Threads::Unavailable => Err(job),
        }
    }
}

/// Runs `f`, turning a panic into an error: a commit fails cleanly rather than unwinding past the
/// fsyncs it still has to wait for, and a group commit is not left busy.
pub(crate) fn guarded(f: impl FnOnce() -> Result<()>) -> Result<()> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(LogError::InvalidArgument("an fsync panicked".into())))
}

fn keep_first_error(result: &mut Result<()>, r: Result<()>) {
    if result.is_ok() {
        *result = r;
    }
}

/// Starts the threads; `Unavailable` when not one could start.
fn start_threads() -> Threads {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let started = (0..THREADS)
        .filter(|i| {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("garam-fsync-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || serve(&rx));
            if let Err(e) = &spawned {
                tracing::warn!(error = %e, "could not start an fsync thread");
            }
            spawned.is_ok()
        })
        .count();
    if started > 0 {
        Threads::Running(tx)
    } else {
        Threads::Unavailable
    }
}

/// Runs jobs until the pool is dropped. A panicking fsync answers with an error, so no commit
/// waits forever.
fn serve(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(Job { partition, done }) = job else { return };
        let r = guarded(|| partition.flush());
        // Released before answering: once the caller has its answers it may close the log, and
        // nothing here may keep the partition's files open then.
        drop(partition);
        let _ = done.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Log, TopicConfig};
    use garam_core::Record;

    #[test]
    fn flushes_every_partition_and_runs_the_extra_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("t", 12, TopicConfig::default()).unwrap();
        let mut producer = log.producer(Default::default()).unwrap();
        for p in 0..12u32 {
            producer.send_to("t", Some(p), Record::new(Some("k"), Some("v"))).unwrap();
        }
        producer.flush().unwrap();
        let parts = log.topic("t").unwrap().partitions();
        assert!(parts.iter().all(|p| p.flushed_offset() == 0));
        let mut ran = false;
        let pool = FsyncPool::default();
        pool.flush_all_and(
            &parts,
            Some(|| {
                ran = true;
                Ok(())
            }),
        )
        .unwrap();
        assert!(ran);
        assert!(parts.iter().all(|p| p.flushed_offset() == 1), "every partition fsynced up to its end");
        // The threads are reused: a second round works the same.
        producer.send_to("t", Some(3), Record::new(Some("k"), Some("v"))).unwrap();
        producer.flush().unwrap();
        pool.flush_all_and(&parts, None::<fn() -> Result<()>>).unwrap();
        assert_eq!(parts[3].flushed_offset(), 2);
    }

    #[test]
    fn the_extra_fsyncs_error_is_returned_after_the_partitions_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("t", 3, TopicConfig::default()).unwrap();
        let mut producer = log.producer(Default::default()).unwrap();
        for p in 0..3u32 {
            producer.send_to("t", Some(p), Record::new(Some("k"), Some("v"))).unwrap();
        }
        producer.flush().unwrap();
        let parts = log.topic("t").unwrap().partitions();
        let pool = FsyncPool::default();
        let r = pool.flush_all_and(&parts, Some(|| Err(LogError::InvalidArgument("offsets".into()))));
        assert!(matches!(r, Err(LogError::InvalidArgument(m)) if m == "offsets"));
        assert!(parts.iter().all(|p| p.flushed_offset() == 1), "every partition fsynced despite the error");
    }
}
