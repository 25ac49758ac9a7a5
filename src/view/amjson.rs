//! JSON <-> Automerge values: how a record's `{name, time, data}` becomes Automerge objects and
//! scalars, and back. Objects become maps and arrays lists, strings scalar strings (not text
//! objects). No layout here: where records live in a document is `doc`'s business.

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{hydrate, ObjId, ObjType, ScalarValue};
use serde_json::{Map, Number, Value as Json};

use super::doc::{Error, Upsert};
use crate::record::Record;

/// A whole new record as one hydrate value, laid out as the per-field path writes it.
pub(super) fn new_record(u: &Upsert) -> hydrate::Value {
    let data: HashMap<String, hydrate::Value> = u
        .data
        .iter()
        .map(|(k, v)| (k.clone(), to_hydrate(v)))
        .collect();
    let rec = HashMap::from([
        ("name".to_owned(), hydrate::Value::from(u.name.as_str())),
        ("time".to_owned(), hydrate::Value::from(u.time)),
        ("data".to_owned(), hydrate::Map::from(data).into()),
    ]);
    hydrate::Map::from(rec).into()
}

fn to_hydrate(v: &Json) -> hydrate::Value {
    match v {
        Json::Object(m) => {
            let m: HashMap<String, hydrate::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_hydrate(v))).collect();
            hydrate::Map::from(m).into()
        }
        Json::Array(a) => a.iter().map(to_hydrate).collect::<Vec<_>>().into(),
        scalar => to_scalar(scalar).into(),
    }
}

pub(super) fn put_json<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    prop: automerge::Prop,
    v: &Json,
) -> Result<(), Error> {
    let insert = matches!(prop, automerge::Prop::Seq(_));
    let place_obj = |tx: &mut T, t: ObjType| -> Result<ObjId, Error> {
        Ok(match &prop {
            automerge::Prop::Seq(i) if insert => tx.insert_object(obj, *i, t)?,
            p => tx.put_object(obj, p.clone(), t)?,
        })
    };
    match v {
        Json::Object(m) => {
            let child = place_obj(tx, ObjType::Map)?;
            for (k, v) in m {
                put_json(tx, &child, k.as_str().into(), v)?;
            }
        }
        Json::Array(a) => {
            let child = place_obj(tx, ObjType::List)?;
            for (i, v) in a.iter().enumerate() {
                put_json(tx, &child, i.into(), v)?;
            }
        }
        scalar => {
            let s = to_scalar(scalar);
            match &prop {
                automerge::Prop::Seq(i) => tx.insert(obj, *i, s)?,
                p => tx.put(obj, p.clone(), s)?,
            }
        }
    }
    Ok(())
}

/// A JSON scalar as an Automerge scalar (integers stay integers; objects and arrays are not
/// scalars and become null).
pub fn to_scalar(v: &Json) -> ScalarValue {
    match v {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        _ => ScalarValue::Null,
    }
}

fn from_hydrated(v: &hydrate::Value) -> Json {
    match v {
        hydrate::Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, mv)| (k.clone(), from_hydrated(&mv.value)))
                .collect(),
        ),
        hydrate::Value::List(l) => {
            Json::Array(l.iter().map(|lv| from_hydrated(&lv.value)).collect())
        }
        hydrate::Value::Text(t) => Json::String(t.to_string()),
        hydrate::Value::Scalar(s) => from_scalar(s),
    }
}

fn from_scalar(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::String(hex::encode(b)),
        _ => Json::Null,
    }
}

/// The record `id` from its hydrated map, `None` when the map is not a record.
pub(super) fn from_record_map(id: &str, m: &hydrate::Map) -> Option<Record> {
    let name = match m.get("name") {
        Some(hydrate::Value::Scalar(ScalarValue::Str(s))) => s.to_string(),
        _ => return None,
    };
    // A writer's own node checks the time it writes; one another member wrote is read within
    // the same range on every node (a time past year 9999 as its end, one before 1970 as 0).
    let time = match m.get("time") {
        Some(hydrate::Value::Scalar(ScalarValue::Uint(t))) => *t,
        Some(hydrate::Value::Scalar(ScalarValue::Int(t))) => u64::try_from(*t).unwrap_or(0),
        _ => 0,
    }
    .min(crate::record::TIME_MAX_MS);
    let data = match m.get("data").map(from_hydrated) {
        Some(Json::Object(o)) => o,
        _ => Map::new(),
    };
    Some(Record {
        id: id.to_owned(),
        name,
        time,
        data,
    })
}
