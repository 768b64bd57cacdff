//! Garam's Streams DSL: typed streams that build a dataflow graph, and the operators behind them.
//!
//! | module | job |
//! |---|---|
//! | [`builder`] | [`StreamBuilder`] and the option objects: [`Consumed`], [`Produced`], [`Grouped`], [`Repartitioned`] |
//! | [`stream`] | [`Stream<K, V>`]: `filter`, `map`, `flat_map`, `select_key`, `split`, `merge`, `to`, `repartition`, `group_by`, `process` … |
//! | [`grouped`] | [`GroupedStream`]: a stream partitioned by its key, ready for aggregations |
//! | [`table`] | [`Table`] (latest value per key) and [`Materialized`] (store name, serdes, backend) |
//! | `ops` | one file per operator: source, sink, stateless transforms, split, user processors |
//!
//! ```
//! use garam_core::serdes::{StringSerde, JsonSerde};
//! use garam_core::testing::TopologyTestDriver;
//! use garam_operators::{Consumed, Produced, StreamBuilder};
//!
//! let b = StreamBuilder::new();
//! b.stream::<String, u64>("clicks", Consumed::with(StringSerde, JsonSerde::new()))
//!     .filter(|_user, n| *n > 1)
//!     .map_values(|n| n * 10)
//!     .to("big-clicks", Produced::with(StringSerde, JsonSerde::new()));
//! let topology = b.build().unwrap();
//! assert!(topology.describe().contains("Sink: KSTREAM-SINK"));
//!
//! let driver = TopologyTestDriver::new(topology).unwrap();
//! let input = driver.input_topic("clicks", StringSerde, JsonSerde::<u64>::new());
//! let output = driver.output_topic("big-clicks", StringSerde, JsonSerde::<u64>::new());
//! input.pipe("ann".to_string(), 1).unwrap();
//! input.pipe("bob".to_string(), 3).unwrap();
//! assert_eq!(output.read_key_values().unwrap(), vec![("bob".to_string(), 30)]);
//! ```
#![deny(missing_docs)]

pub mod builder;
pub mod change;
pub mod grouped;
pub mod join;
mod ops;
pub mod stream;
pub mod table;
pub mod window;
pub mod windowed;

pub use builder::{Consumed, Grouped, Produced, Repartitioned, StreamBuilder};
pub use change::{Change, ChangeSerde};
pub use grouped::GroupedStream;
pub use join::{GlobalTable, JoinWindows, StreamJoined};
pub use stream::{Splitter, Stream};
pub use table::{GroupedTable, Materialized, Table};
pub use window::{EmitStrategy, SessionWindows, SlidingWindows, TimeWindows, Window, Windowed, WindowedSerde};
pub use windowed::{SessionWindowedStream, SlidingWindowedStream, TimeWindowedStream};

/// What a key or value type needs to flow through operators: it is cloned only when one stream
/// feeds several operators.
pub trait Data: Clone + 'static {}
impl<T: Clone + 'static> Data for T {}
