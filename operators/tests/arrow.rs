//! The data plane carries Arrow `RecordBatch`es as values: SQL over streams will compile to the same
//! graph with vectorised operators.

use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch};
use garam_core::serdes::{StringSerde, U64Serde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{Consumed, Produced, StreamBuilder};

#[test]
fn record_batches_flow_between_operators() {
    let b = StreamBuilder::new();
    b.stream::<String, String>("csv", Consumed::with(StringSerde, StringSerde))
        // One input record (a CSV line of numbers) becomes one columnar batch.
        .map_values(|line: String| {
            let col: Int64Array = line.split(',').filter_map(|x| x.trim().parse::<i64>().ok()).collect();
            RecordBatch::try_from_iter([("n", Arc::new(col) as Arc<dyn Array>)]).expect("one column")
        })
        .filter(|_, batch: &RecordBatch| batch.num_rows() > 0)
        // A vectorised operator: filter rows, then sum a column, batch at a time.
        .map_values(|batch: RecordBatch| {
            let n = batch.column(0).as_any().downcast_ref::<Int64Array>().expect("int64");
            n.iter().flatten().filter(|x| *x > 10).sum::<i64>() as u64
        })
        .to("sums", Produced::with(StringSerde, U64Serde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("csv", StringSerde, StringSerde);
    input.pipe("a".into(), "1, 20, 30".into()).unwrap();
    input.pipe("b".into(), "no numbers".into()).unwrap();
    input.pipe("c".into(), "11,5".into()).unwrap();
    let out = d.output_topic("sums", StringSerde, U64Serde).read_key_values().unwrap();
    assert_eq!(out, vec![("a".to_string(), 50), ("c".to_string(), 11)]);
}
