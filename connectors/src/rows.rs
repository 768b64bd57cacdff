//! Records to Arrow: each record is serialized with serde (as JSON) and its fields are appended
//! to the columns of a schema, by name. The schema is given, or inferred from a sample record.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;
use serde_json::Value;

use crate::ConnectorError;

/// The schema of `sample`'s fields, in order: strings → `Utf8`, integers → `Int64`, other
/// numbers → `Float64`, booleans → `Boolean`. Every field is
/// nullable. Fields that are `null`, arrays or objects in the sample cannot be inferred: give the
/// schema explicitly.
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Views { page_id: String, views: u64 }
/// let schema = garam_connectors::rows::infer_schema(&Views { page_id: "p".into(), views: 1 }).unwrap();
/// assert_eq!(schema.field(1).name(), "views");
/// ```
pub fn infer_schema<T: Serialize>(sample: &T) -> Result<SchemaRef, ConnectorError> {
    let value = serde_json::to_value(sample).map_err(|e| ConnectorError::Schema(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ConnectorError::Schema("the record does not serialize to an object with fields".into()));
    };
    let mut out = Vec::with_capacity(fields.len());
    for (name, v) in fields {
        let t = match v {
            Value::String(_) => DataType::Utf8,
            Value::Bool(_) => DataType::Boolean,
            Value::Number(n) if n.is_i64() || n.is_u64() => DataType::Int64,
            Value::Number(_) => DataType::Float64,
            other => {
                return Err(ConnectorError::Schema(format!(
                    "field '{name}' is {} in the sample: give the schema explicitly",
                    kind(&other)
                )))
            }
        };
        out.push(Field::new(name, t, true));
    }
    Ok(Arc::new(Schema::new(out)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        _ => "a scalar",
    }
}

/// A JSON value read as one of the supported Arrow types: the one place that says which values
/// fit which type, for [`check_row`] and for building columns alike.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Utf8(&'a str),
    Int64(i64),
    Int32(i32),
    UInt64(u64),
    Float64(f64),
    Boolean(bool),
}

impl<'a> Scalar<'a> {
    /// `v` as type `t`; `None` when it does not fit (or `t` is not supported).
    fn read(t: &DataType, v: &'a Value) -> Option<Scalar<'a>> {
        match t {
            DataType::Utf8 => v.as_str().map(Scalar::Utf8),
            DataType::Int64 => v.as_i64().map(Scalar::Int64),
            DataType::Int32 => v.as_i64().and_then(|n| i32::try_from(n).ok()).map(Scalar::Int32),
            DataType::UInt64 => v.as_u64().map(Scalar::UInt64),
            DataType::Float64 => v.as_f64().map(Scalar::Float64),
            DataType::Boolean => v.as_bool().map(Scalar::Boolean),
            _ => None,
        }
    }

    /// Fails for a type no JSON value is read as.
    fn check_supported(t: &DataType, field: &str) -> Result<(), ConnectorError> {
        match t {
            DataType::Utf8
            | DataType::Int64
            | DataType::Int32
            | DataType::UInt64
            | DataType::Float64
            | DataType::Boolean => Ok(()),
            other => Err(ConnectorError::Schema(format!(
                "field '{field}' has type {other}; supported: Utf8, Int64, Int32, UInt64, Float64, Boolean"
            ))),
        }
    }
}

/// The value of `field` in `obj` as its type: `Ok(None)` for a missing or null value, `Err` with
/// the value for one of another type.
fn field_value<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &Field,
) -> Result<Option<Scalar<'a>>, Option<&'a Value>> {
    match obj.get(field.name()).filter(|v| !v.is_null()) {
        None if field.is_nullable() => Ok(None),
        None => Err(None),
        Some(v) => Scalar::read(field.data_type(), v).map(Some).ok_or(Some(v)),
    }
}

enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Int32(Int32Builder),
    UInt64(UInt64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
}

impl Column {
    fn new(t: &DataType, name: &str) -> Result<Column, ConnectorError> {
        Scalar::check_supported(t, name)?;
        Ok(match t {
            DataType::Utf8 => Column::Utf8(StringBuilder::new()),
            DataType::Int64 => Column::Int64(Int64Builder::new()),
            DataType::Int32 => Column::Int32(Int32Builder::new()),
            DataType::UInt64 => Column::UInt64(UInt64Builder::new()),
            DataType::Float64 => Column::Float64(Float64Builder::new()),
            _ => Column::Boolean(BooleanBuilder::new()),
        })
    }

    /// Appends `v` (`None`: null); false when it is of another type than the column.
    fn append(&mut self, v: Option<Scalar<'_>>) -> bool {
        match (self, v) {
            (Column::Utf8(b), Some(Scalar::Utf8(s))) => b.append_value(s),
            (Column::Int64(b), Some(Scalar::Int64(n))) => b.append_value(n),
            (Column::Int32(b), Some(Scalar::Int32(n))) => b.append_value(n),
            (Column::UInt64(b), Some(Scalar::UInt64(n))) => b.append_value(n),
            (Column::Float64(b), Some(Scalar::Float64(n))) => b.append_value(n),
            (Column::Boolean(b), Some(Scalar::Boolean(x))) => b.append_value(x),
            (Column::Utf8(b), None) => b.append_null(),
            (Column::Int64(b), None) => b.append_null(),
            (Column::Int32(b), None) => b.append_null(),
            (Column::UInt64(b), None) => b.append_null(),
            (Column::Float64(b), None) => b.append_null(),
            (Column::Boolean(b), None) => b.append_null(),
            _ => return false,
        }
        true
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Utf8(mut b) => Arc::new(b.finish()),
            Column::Int64(mut b) => Arc::new(b.finish()),
            Column::Int32(mut b) => Arc::new(b.finish()),
            Column::UInt64(mut b) => Arc::new(b.finish()),
            Column::Float64(mut b) => Arc::new(b.finish()),
            Column::Boolean(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Checks that `row` fits `schema`: an object whose fields have the schema's types (or are null
/// where nullable). Errors name the field.
pub fn check_row(schema: &SchemaRef, row: &Value) -> Result<(), ConnectorError> {
    let Value::Object(obj) = row else {
        return Err(ConnectorError::Schema(format!("a row is {}, not an object", kind(row))));
    };
    for field in schema.fields() {
        Scalar::check_supported(field.data_type(), field.name())?;
        if let Err(v) = field_value(obj, field) {
            return Err(ConnectorError::Schema(format!(
                "field '{}' is {}, expected {}{}",
                field.name(),
                v.map_or("null".to_string(), Value::to_string),
                field.data_type(),
                if field.is_nullable() { "" } else { " (not nullable)" }
            )));
        }
    }
    Ok(())
}

/// One record batch of `rows` (records serialized as JSON objects) in `schema`. A field missing
/// from a row is null; a null in a non-nullable field, or a value of the wrong type, is an error
/// naming the field.
pub fn to_record_batch(schema: &SchemaRef, rows: &[Value]) -> Result<RecordBatch, ConnectorError> {
    let mut columns =
        schema.fields().iter().map(|f| Column::new(f.data_type(), f.name())).collect::<Result<Vec<_>, _>>()?;
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(obj) = row else {
            return Err(ConnectorError::Schema(format!("row {i} is {}, not an object", kind(row))));
        };
        for (field, col) in schema.fields().iter().zip(columns.iter_mut()) {
            let appended = match field_value(obj, field) {
                Ok(v) => col.append(v),
                Err(None) => {
                    return Err(ConnectorError::Schema(format!(
                        "row {i}: field '{}' is null but not nullable",
                        field.name()
                    )))
                }
                Err(Some(_)) => false,
            };
            if !appended {
                return Err(ConnectorError::Schema(format!(
                    "row {i}: field '{}' is {:?}, expected {}",
                    field.name(),
                    obj.get(field.name()),
                    field.data_type()
                )));
            }
        }
    }
    let arrays = columns.into_iter().map(Column::finish).collect();
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| ConnectorError::Schema(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn rows_become_columns_and_bad_values_name_the_field() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("page_id", DataType::Utf8, false),
            Field::new("views", DataType::UInt64, false),
            Field::new("ctr", DataType::Float64, true),
        ]));
        let rows = vec![
            serde_json::json!({"page_id": "a", "views": 3, "ctr": 0.5}),
            serde_json::json!({"page_id": "b", "views": 4, "ctr": null}),
        ];
        let batch = to_record_batch(&schema, &rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(2).null_count(), 1);
        let bad = vec![serde_json::json!({"page_id": "a", "views": "many"})];
        let e = to_record_batch(&schema, &bad).unwrap_err().to_string();
        assert!(e.contains("'views'") && e.contains("UInt64"), "{e}");
        let missing = vec![serde_json::json!({"views": 1})];
        assert!(to_record_batch(&schema, &missing).unwrap_err().to_string().contains("'page_id'"));
    }

    #[test]
    fn check_row_accepts_exactly_the_rows_a_batch_can_hold() {
        let values = [
            serde_json::json!("s"),
            serde_json::json!(7),
            serde_json::json!(-7),
            serde_json::json!(1u64 << 40),
            serde_json::json!(u64::MAX),
            serde_json::json!(1.5),
            serde_json::json!(true),
            Value::Null,
            serde_json::json!([1]),
        ];
        let types =
            [DataType::Utf8, DataType::Int64, DataType::Int32, DataType::UInt64, DataType::Float64, DataType::Boolean];
        for t in &types {
            for nullable in [true, false] {
                let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("f", t.clone(), nullable)]));
                for v in &values {
                    let row = serde_json::json!({ "f": v });
                    let checked = check_row(&schema, &row).is_ok();
                    let built = to_record_batch(&schema, std::slice::from_ref(&row)).is_ok();
                    assert_eq!(checked, built, "{t} nullable={nullable} value={v}");
                }
                let missing = serde_json::json!({});
                assert_eq!(check_row(&schema, &missing).is_ok(), nullable);
            }
        }
        let date: SchemaRef = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        assert!(check_row(&date, &serde_json::json!({})).unwrap_err().to_string().contains("supported"));
    }
}
