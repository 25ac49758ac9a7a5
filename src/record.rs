//! Records: the article's table of `(id, time, name, data)`.
//!
//! `id` is a ULID (time-sortable) unless the writer names one; `time` is milliseconds since the Unix
//! epoch from the node's hybrid logical clock unless the writer gives one; `name` is a path of
//! location and activity segments; `data` is a JSON object. Everything an app sends is checked here,
//! before it reaches a document, and every refusal says what is wrong.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::naming;

/// Largest `data` object, serialized as JSON, in bytes.
pub const DATA_MAX_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects and arrays inside `data`.
pub const DATA_MAX_DEPTH: usize = 16;
/// Longest record id, in bytes.
pub const ID_MAX_BYTES: usize = 64;
/// Most records (upserts plus deletes) in one write batch.
pub const BATCH_MAX_RECORDS: usize = 10_000;
/// Latest accepted record time: year 9999, so a typo in units (µs, ns) is caught.
pub const TIME_MAX_MS: u64 = 253_402_300_799_999;

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique within its dataset; a ULID unless the writer chose it.
    pub id: String,
    /// Location/activity path, e.g. `district-7/ward-3/flu-admission`.
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    /// The payload: a JSON object.
    pub data: Map<String, Value>,
}

/// One record as an app writes it. With an `id` that exists, it updates that record: the fields of
/// `data` given are set, the others kept, so concurrent updates of different fields all survive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Location/activity path.
    pub name: String,
    /// A JSON object.
    pub data: Value,
    /// Milliseconds since the Unix epoch; the node's clock when absent.
    #[serde(default)]
    pub time: Option<u64>,
    /// The record to create or update; a new ULID when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The name broke a naming rule.
    #[error("record {index}: {source}")]
    Name {
        /// Position in the batch.
        index: usize,
        /// The rule broken.
        source: naming::Error,
    },
    /// `data` is not a JSON object.
    #[error("record {index}: data must be a JSON object, got {kind}")]
    NotObject {
        /// Position in the batch.
        index: usize,
        /// What it was instead.
        kind: &'static str,
    },
    /// `data` is too large.
    #[error("record {index}: data is {len} bytes as JSON; the limit is {max}")]
    DataTooLarge {
        /// Position in the batch.
        index: usize,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `data` nests too deep.
    #[error("record {index}: data nests deeper than {max} levels")]
    TooDeep {
        /// Position in the batch.
        index: usize,
        /// The limit.
        max: usize,
    },
    /// A bad record id.
    #[error("record {index}: id {id:?} must be 1 to {max} letters, digits, '-' or '_'")]
    BadId {
        /// Position in the batch.
        index: usize,
        /// The id.
        id: String,
        /// The length limit.
        max: usize,
    },
    /// A time outside the accepted range.
    #[error("record {index}: time {time} is not milliseconds between 1970 and 9999")]
    BadTime {
        /// Position in the batch.
        index: usize,
        /// The time given.
        time: u64,
    },
    /// The batch is empty or too large.
    #[error("a batch holds a record or a delete, and at most {max} of each; this one has {len}")]
    BatchSize {
        /// Records in the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One id twice in a batch.
    #[error("record id {0:?} appears twice in one batch")]
    DuplicateId(String),
}

/// Checks a record id chosen by a writer.
pub fn validate_id(index: usize, id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= ID_MAX_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadId {
            index,
            id: id.chars().take(80).collect(),
            max: ID_MAX_BYTES,
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How deeply `v` nests arrays and objects (a scalar: 0), without recursion.
pub fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// Checks one input record (its position in the batch goes into the message).
pub fn validate(index: usize, input: &Input) -> Result<(), Error> {
    naming::validate_record_name(&input.name).map_err(|source| Error::Name { index, source })?;
    if !input.data.is_object() {
        return Err(Error::NotObject {
            index,
            kind: kind(&input.data),
        });
    }
    // Depth first: serde_json's own recursion limit is 128, ours is far lower.
    if json_depth(&input.data) > DATA_MAX_DEPTH {
        return Err(Error::TooDeep {
            index,
            max: DATA_MAX_DEPTH,
        });
    }
    let len = serde_json::to_vec(&input.data).map_or(usize::MAX, |b| b.len());
    if len > DATA_MAX_BYTES {
        return Err(Error::DataTooLarge {
            index,
            len,
            max: DATA_MAX_BYTES,
        });
    }
    if let Some(id) = &input.id {
        validate_id(index, id)?;
    }
    match input.time {
        Some(time) if time > TIME_MAX_MS => Err(Error::BadTime { index, time }),
        _ => Ok(()),
    }
}

/// Checks a whole batch: its size (records and deletes each bounded), every record, and that
/// no id appears twice.
pub fn validate_batch(inputs: &[Input], deletes: &[String]) -> Result<(), Error> {
    let len = inputs.len().max(deletes.len());
    if len == 0 || len > BATCH_MAX_RECORDS {
        return Err(Error::BatchSize {
            len,
            max: BATCH_MAX_RECORDS,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for (i, input) in inputs.iter().enumerate() {
        validate(i, input)?;
        if let Some(id) = &input.id {
            if !seen.insert(id.as_str()) {
                return Err(Error::DuplicateId(id.clone()));
            }
        }
    }
    for (i, id) in deletes.iter().enumerate() {
        validate_id(inputs.len() + i, id)?;
        if !seen.insert(id.as_str()) {
            return Err(Error::DuplicateId(id.clone()));
        }
    }
    Ok(())
}

/// A fresh time-sortable id for a record written at `ms`.
pub fn new_id(ms: u64) -> String {
    ulid::Ulid::from_parts(ms, rand::random::<u128>()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(name: &str, data: Value) -> Input {
        Input {
            name: name.into(),
            data,
            time: None,
            id: None,
        }
    }

    #[test]
    fn a_plain_record_is_accepted() {
        assert_eq!(
            validate(0, &input("d7/ward-3", json!({"cases": 3}))),
            Ok(())
        );
    }

    #[test]
    fn data_must_be_an_object() {
        let e = validate(2, &input("a", json!([1]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "record 2: data must be a JSON object, got an array"
        );
    }

    #[test]
    fn data_over_the_size_cap_is_refused() {
        let big = "x".repeat(DATA_MAX_BYTES);
        let e = validate(0, &input("a", json!({ "s": big }))).unwrap_err();
        assert!(matches!(e, Error::DataTooLarge { .. }), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut v = json!(1);
        for _ in 0..DATA_MAX_DEPTH + 1 {
            v = json!({ "k": v });
        }
        assert!(matches!(
            validate(0, &input("a", v)),
            Err(Error::TooDeep { .. })
        ));
    }

    #[test]
    fn ids_and_times_are_checked() {
        let mut i = input("a", json!({}));
        i.id = Some("has space".into());
        assert!(matches!(validate(0, &i), Err(Error::BadId { .. })));
        i.id = Some("ok-id_1".into());
        i.time = Some(TIME_MAX_MS + 1);
        assert!(matches!(validate(0, &i), Err(Error::BadTime { .. })));
    }

    #[test]
    fn batches_are_bounded_and_ids_unique() {
        assert!(matches!(
            validate_batch(&[], &[]),
            Err(Error::BatchSize { .. })
        ));
        let mut a = input("a", json!({}));
        a.id = Some("x".into());
        assert!(matches!(
            validate_batch(&[a.clone(), a.clone()], &[]),
            Err(Error::DuplicateId(_))
        ));
        assert!(matches!(
            validate_batch(&[a], &["x".into()]),
            Err(Error::DuplicateId(_))
        ));
    }

    #[test]
    fn generated_ids_sort_by_time() {
        let a = new_id(1_000);
        let b = new_id(2_000);
        assert!(a < b);
        assert!(validate_id(0, &a).is_ok());
    }
}
