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
        Ok(match t {
            DataType::Utf8 => Column::Utf8(StringBuilder::new()),
            DataType::Int64 => Column::Int64(Int64Builder::new()),
            DataType::Int32 => Column::Int32(Int32Builder::new()),
            DataType::UInt64 => Column::UInt64(UInt64Builder::new()),
            DataType::Float64 => Column::Float64(Float64Builder::new()),
            DataType::Boolean => Column::Boolean(BooleanBuilder::new()),
            other => {
                return Err(ConnectorError::Schema(format!(
                    "field '{name}' has type {other}; supported: Utf8, Int64, Int32, UInt64, Float64, Boolean"
                )))
            }
        })
    }

    /// Appends `v`; `None` when it does not fit the column's type.
    fn append(&mut self, v: Option<&Value>) -> Option<()> {
        let v = v.filter(|v| !v.is_null());
        match self {
            Column::Utf8(b) => match v {
                None => b.append_null(),
                Some(Value::String(s)) => b.append_value(s),
                Some(_) => return None,
            },
            Column::Int64(b) => b.append_option(match v {
                None => None,
                Some(v) => Some(v.as_i64()?),
            }),
            Column::Int32(b) => b.append_option(match v {
                None => None,
                Some(v) => Some(i32::try_from(v.as_i64()?).ok()?),
            }),
            Column::UInt64(b) => b.append_option(match v {
                None => None,
                Some(v) => Some(v.as_u64()?),
            }),
            Column::Float64(b) => b.append_option(match v {
                None => None,
                Some(v) => Some(v.as_f64()?),
            }),
            Column::Boolean(b) => b.append_option(match v {
                None => None,
                Some(v) => Some(v.as_bool()?),
            }),
        }
        Some(())
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
        let v = obj.get(field.name()).filter(|v| !v.is_null());
        let fits = match (v, field.data_type()) {
            (None, _) => field.is_nullable(),
            (Some(v), DataType::Utf8) => v.is_string(),
            (Some(v), DataType::Int64) => v.is_i64(),
            (Some(v), DataType::Int32) => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            (Some(v), DataType::UInt64) => v.is_u64(),
            (Some(v), DataType::Float64) => v.is_number(),
            (Some(v), DataType::Boolean) => v.is_boolean(),
            (Some(_), other) => {
                return Err(ConnectorError::Schema(format!(
                    "field '{}' has type {other}; supported: Utf8, Int64, Int32, UInt64, Float64, Boolean",
                    field.name()
                )))
            }
        };
        if !fits {
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
            let v = obj.get(field.name());
            if !field.is_nullable() && v.is_none_or(Value::is_null) {
                return Err(ConnectorError::Schema(format!(
                    "row {i}: field '{}' is null but not nullable",
                    field.name()
                )));
            }
            col.append(v).ok_or_else(|| {
                ConnectorError::Schema(format!(
                    "row {i}: field '{}' is {v:?}, expected {}",
                    field.name(),
                    field.data_type()
                ))
            })?;
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
}
