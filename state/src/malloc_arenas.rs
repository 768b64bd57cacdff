//! The C allocator RocksDB allocates from: glibc's malloc, held to few arenas.
//!
//! RocksDB allocates its block cache entries, memtable arenas and table readers with the C
//! allocator. glibc's malloc gives threads arenas of their own (up to eight per core), so blocks
//! freed by one thread leave holes in its arena that another thread's allocations cannot fill.
//! With 64 tasks × 3 stores in a 256 MiB budget, glibc held ~150 MiB resident for the ~131 MiB
//! RocksDB counted; in one arena it held 132 MiB, and the count's peak fell by ~10 MiB
//! (`garam bench count --partitions 64 --stores 3`, BENCHMARKS.md).
//!
//! One arena means one lock for every thread that calls `malloc`. That is cheap when RocksDB
//! is its only user — a program whose Rust allocations go through another allocator, as the
//! `garam` binary's go through mimalloc — and a bottleneck when every worker thread allocates
//! through glibc. So this is a call for `main` to make, not something a store does on its own.

/// Holds glibc's malloc to at most `max` arenas (at least 1) for the rest of the process (glibc's
/// `M_ARENA_MAX`), unless the environment chose already (`MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`). Call it first thing in `main`: threads that
/// allocated before keep the arenas they have. Returns whether it set the limit; on anything
/// but Linux with glibc it does nothing.
///
/// ```
/// // First thing in the `main` of a program whose Rust allocations go through another
/// // allocator (mimalloc, say):
/// garam_state::limit_malloc_arenas(1);
/// ```
pub fn limit_malloc_arenas(max: u32) -> bool {
    if environment_chose() {
        return false;
    }
    set_arena_max(max)
}

/// True when the environment sets glibc's arena limit itself.
fn environment_chose() -> bool {
    let tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || tunables.as_encoded_bytes().windows(b"arena_max".len()).any(|w| w == b"arena_max")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(max: u32) -> bool {
    let max = std::ffi::c_int::try_from(max.max(1)).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: `mallopt` only sets a tuning parameter of glibc's allocator; it returns 1 on success.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, max) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_max: u32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_limit_unless_the_environment_set_one() {
        let expected = cfg!(all(target_os = "linux", target_env = "gnu")) && !super::environment_chose();
        assert_eq!(super::limit_malloc_arenas(1), expected);
    }
}
