//! Criterion micro-benchmarks for Garam live in `benches/`; this crate has no library code.
