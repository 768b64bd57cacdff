//! Batch vectors kept for reuse on the thread that emptied them.
//!
//! The log's consumer collects each fetch into a vector, and every operator hands its children a
//! fresh vector per batch. Freed, a batch's pages went back to the allocator, which returned them
//! to the system after its purge delay and faulted them back in for the next batch: at 64 tasks ×
//! 3 stores the consumer's and the operators' vectors took over a third of a count's page faults.
//! A thread keeps emptied vectors of each element type and hands them out again, as an operator
//! keeping its own output buffer would, across operators and tasks. A poll collects every
//! partition's records before any is processed, so the pool holds up to 64 vectors.
//!
//! The pool is bounded (64 vectors, 8 MiB per thread): when full it lets go of the vectors kept
//! longest, and a vector over 2 MiB goes back to the allocator as before.
//!
//! ```
//! use garam_core::batch_pool;
//! let mut v: Vec<u64> = batch_pool::with_capacity(1000);
//! v.extend(0..1000);
//! let at = v.as_ptr();
//! batch_pool::recycle(v);
//! let again: Vec<u64> = batch_pool::with_capacity(500);
//! assert!(again.is_empty());
//! assert_eq!(again.as_ptr(), at, "the same allocation, reused");
//! ```

use std::any::{Any, TypeId};
use std::cell::RefCell;

/// At most this many vectors kept per thread.
const MAX_VECS: usize = 64;
/// At most this many bytes of vector capacity kept per thread.
const MAX_BYTES: usize = 8 << 20;
/// A vector bigger than this goes back to the allocator: an unusually large batch should not
/// stay resident for the rest of the run.
const MAX_VEC_BYTES: usize = 2 << 20;

#[derive(Default)]
struct Pool {
    /// Emptied vectors: element type, capacity in bytes, the `Vec<T>` itself.
    vecs: Vec<(TypeId, usize, Box<dyn Any>)>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An empty vector with room for at least `n` items: one this thread emptied earlier when there
/// is one (the smallest big enough, else the biggest, grown), otherwise a new one. Batches of one
/// type vary in size from poll to poll; taking only vectors big enough left the small ones in
/// the pool and allocated anew (the 64 × 3 count peaked ~10 MiB higher).
pub fn with_capacity<T: 'static>(n: usize) -> Vec<T> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Vec::with_capacity(n);
    }
    let kept = POOL
        .try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let id = TypeId::of::<T>();
            let bytes_needed = n.saturating_mul(std::mem::size_of::<T>());
            let (i, bytes) = pool
                .vecs
                .iter()
                .enumerate()
                .filter(|(_, (t, _, _))| *t == id)
                .map(|(i, (_, bytes, _))| (i, *bytes))
                .min_by_key(|&(_, bytes)| if bytes >= bytes_needed { (0, bytes) } else { (1, usize::MAX - bytes) })?;
            pool.bytes -= bytes;
            let (_, _, v) = pool.vecs.remove(i);
            v.downcast::<Vec<T>>().ok().map(|v| *v)
        })
        .ok()
        .flatten();
    match kept {
        // Empty: growing it copies nothing the allocator must keep.
        Some(mut v) => {
            v.reserve_exact(n);
            v
        }
        None => Vec::with_capacity(n),
    }
}

/// Empties `v` and keeps it for [`with_capacity`] on this thread, making room by letting go of
/// the vectors kept longest: a type recycled more often than it is asked for (a branch's parts,
/// outputs allocated elsewhere) must not fill the pool for good.
pub fn recycle<T: 'static>(mut v: Vec<T>) {
    v.clear();
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes == 0 || bytes > MAX_VEC_BYTES {
        return;
    }
    // The vectors let go of are empty: dropping them only frees their memory, and runs no code
    // that could come back to the pool while it is borrowed.
    let _ = POOL.try_with(move |pool| {
        let mut pool = pool.borrow_mut();
        while !pool.vecs.is_empty() && (pool.vecs.len() >= MAX_VECS || pool.bytes + bytes > MAX_BYTES) {
            let (_, old, _) = pool.vecs.remove(0);
            pool.bytes -= old;
        }
        pool.bytes += bytes;
        pool.vecs.push((TypeId::of::<T>(), bytes, Box::new(v)));
    });
}

/// `input` mapped by `f` into a vector from the pool, `input`'s vector going back to it.
pub fn map<T: 'static, U: 'static>(mut input: Vec<T>, f: impl FnMut(T) -> U) -> Vec<U> {
    let mut out = with_capacity(input.len());
    out.extend(input.drain(..).map(f));
    recycle(input);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_comes_back_only_for_its_own_type() {
        let v: Vec<u32> = with_capacity(100);
        let at = v.as_ptr() as usize;
        recycle(v);
        let other: Vec<u64> = with_capacity(10);
        assert_ne!(other.as_ptr() as usize, at);
        let same: Vec<u32> = with_capacity(50);
        assert_eq!(same.as_ptr() as usize, at);
    }

    #[test]
    fn the_smallest_big_enough_vector_is_taken() {
        let (small, big): (Vec<u8>, Vec<u8>) = (with_capacity(1000), with_capacity(100_000));
        let (small_at, big_at) = (small.as_ptr() as usize, big.as_ptr() as usize);
        recycle(big);
        recycle(small);
        let v: Vec<u8> = with_capacity(500);
        assert_eq!(v.as_ptr() as usize, small_at);
        let w: Vec<u8> = with_capacity(50_000);
        assert_eq!(w.as_ptr() as usize, big_at);
    }

    #[test]
    fn a_vector_too_small_is_grown() {
        let small: Vec<i16> = with_capacity(10);
        recycle(small);
        let big: Vec<i16> = with_capacity(1000);
        assert!(big.capacity() >= 1000);
        POOL.with(|p| {
            assert!(p.borrow().vecs.iter().all(|(t, _, _)| *t != TypeId::of::<i16>()), "the small one was taken")
        });
    }

    #[test]
    fn the_pool_is_bounded_and_keeps_the_newest() {
        for _ in 0..2 * MAX_VECS {
            recycle(Vec::<u16>::with_capacity(10));
        }
        // A type recycled more than asked for does not crowd out the next.
        let last: Vec<i32> = Vec::with_capacity(10);
        let at = last.as_ptr() as usize;
        recycle(last);
        recycle(Vec::<u8>::with_capacity(MAX_VEC_BYTES + 1));
        POOL.with(|p| {
            let p = p.borrow();
            assert!(p.vecs.len() <= MAX_VECS);
            assert!(p.bytes <= MAX_BYTES);
            assert_eq!(p.bytes, p.vecs.iter().map(|(_, bytes, _)| bytes).sum::<usize>());
            assert!(p.vecs.iter().all(|(_, bytes, _)| *bytes <= MAX_VEC_BYTES));
        });
        let v: Vec<i32> = with_capacity(10);
        assert_eq!(v.as_ptr() as usize, at);
    }
}
