//! Garam: stream processing in Rust, on an embedded, durable, partitioned log (or Kafka).
//!
//! This facade re-exports the crates users write against:
//!
//! | crate | what it gives |
//! |---|---|
//! | [`core`] (`garam-core`) | records, serdes, the Processor API, topologies, the runtime ([`App`]), the test driver |
//! | [`operators`] (`garam-operators`) | the DSL: [`StreamBuilder`], [`Stream`], [`GroupedStream`] |
//! | [`log`] (`garam-log`) | the embedded log, the default [`Backend`](garam_core::backend::Backend) |
//! | [`connectors`] (`garam-connectors`) | Parquet and JSON-lines file sinks with atomic commits, file sources |
//! | [`analytics`] | the click-analytics application (topology, runner, live view) |
//!
//! ```no_run
//! use std::sync::Arc;
//! use garam::prelude::*;
//!
//! # fn main() -> garam::Result<()> {
//! let b = StreamBuilder::new();
//! b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde))
//!     .filter(|_user, event| event.contains("\"view\""))
//!     .to("views", Produced::with(StringSerde, StringSerde));
//! let topology = b.build()?;
//! println!("{}", topology.describe());
//!
//! let backend = garam::embedded("./garam-data")?;
//! let mut app = App::new(topology, AppConfig::new("views-app"), backend)?;
//! app.run_until_shutdown()
//! # }
//! ```
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

pub mod analytics;
pub mod clicks;

pub use garam_connectors as connectors;
pub use garam_core as core;
pub use garam_log as log;
pub use garam_operators as operators;

pub use garam_core::runtime::{App, AppConfig, ProcessingGuarantee};
pub use garam_core::{Result, StreamsError};
pub use garam_operators::{
    Consumed, Grouped, GroupedStream, Materialized, Produced, Repartitioned, Stream, StreamBuilder, Table,
};

/// Opens (or creates) the embedded log in `dir` as a backend for [`App`].
pub fn embedded(dir: impl AsRef<Path>) -> Result<Arc<dyn garam_core::backend::Backend>> {
    let log = garam_log::Log::open(dir).map_err(|e| {
        let r = e.is_retriable();
        StreamsError::backend(e, r)
    })?;
    Ok(Arc::new(log))
}

/// Everything a typical program needs.
pub mod prelude {
    pub use garam_core::processor::{Processor, ProcessorContext, PunctuationType};
    pub use garam_core::record::StreamRecord;
    pub use garam_core::runtime::{App, AppConfig, KeyQueryMetadata, ReadOnlyStore};
    pub use garam_core::serdes::{
        BincodeSerde, BytesSerde, I32Serde, I64Serde, JsonSerde, OptionSerde, Serde, StringSerde, U32Serde, U64Serde,
        UnitSerde,
    };
    pub use garam_core::testing::TopologyTestDriver;
    pub use garam_operators::{
        Change, Consumed, EmitStrategy, GlobalTable, Grouped, GroupedStream, GroupedTable, JoinWindows, Materialized,
        Produced, Repartitioned, SessionWindowedStream, SessionWindows, SlidingWindowedStream, SlidingWindows, Stream,
        StreamBuilder, StreamJoined, Table, TimeWindowedStream, TimeWindows, Window, Windowed, WindowedSerde,
    };
}
