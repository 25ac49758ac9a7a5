//! Record queries: name prefix, time range, field predicates, order and limit. Pure: parsing and
//! evaluation over records, no I/O.
//!
//! A predicate is written `FIELD OP VALUE`: `FIELD` is `id`, `name`, `time`, or a data field (dotted
//! for nested objects, optionally prefixed `data.`); `OP` is one of `=`, `!=`, `<`, `<=`, `>`, `>=`,
//! or ` in ` followed by a JSON array; `VALUE` is JSON if it parses as JSON, a string otherwise.
//! A record without the field matches no predicate on it.
//!
//! ```
//! use fogmesh::view::query::Predicate;
//! let p = Predicate::parse("cases>=5").unwrap();
//! assert!(p.matches_json(Some(&serde_json::json!(7))));
//! ```

use std::cmp::Ordering;

use serde_json::Value as Json;

use crate::naming;
use crate::record::Record;

/// Records returned when a query names no limit.
pub const DEFAULT_LIMIT: usize = 1_000;
/// Most records one query may return.
pub const MAX_LIMIT: usize = 10_000;
/// Most predicates in one query.
pub const MAX_PREDICATES: usize = 32;

/// A malformed query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A predicate that does not parse.
    #[error("where {text:?}: {why}")]
    Predicate {
        /// The predicate as given.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A limit out of range.
    #[error("limit must be 1 to {MAX_LIMIT}, got {0}")]
    Limit(usize),
    /// An order other than asc/desc.
    #[error("order must be \"asc\" or \"desc\", got {0:?}")]
    Order(String),
    /// Too many predicates.
    #[error("at most {MAX_PREDICATES} where clauses, got {0}")]
    TooManyPredicates(usize),
    /// A bad name prefix.
    #[error("name_prefix: {0}")]
    Prefix(naming::Error),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// ` in [..]`
    In,
}

/// One `FIELD OP VALUE` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// Path of the field: `["id"]`, `["time"]`, `["data", "a", "b"]`...
    pub path: Vec<String>,
    /// The comparison.
    pub op: Op,
    /// The operand.
    pub value: Json,
}

const OPS: [(&str, Op); 7] = [
    (" in ", Op::In),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("=", Op::Eq),
    ("<", Op::Lt),
    (">", Op::Gt),
];

impl Predicate {
    /// Parses `FIELD OP VALUE`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let err = |why| Error::Predicate {
            text: text.to_owned(),
            why,
        };
        let (pos, sym, op) = OPS
            .iter()
            .filter_map(|(sym, op)| text.find(sym).map(|p| (p, *sym, *op)))
            .min_by_key(|(p, sym, _)| (*p, usize::MAX - sym.len()))
            .ok_or_else(|| err("no operator (=, !=, <, <=, >, >=, in)"))?;
        let field = text[..pos].trim();
        let raw = text[pos + sym.len()..].trim();
        if field.is_empty() {
            return Err(err("no field before the operator"));
        }
        let value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(_) if op == Op::In => in_list(raw).unwrap_or(Json::Null),
            Err(_) => Json::String(raw.to_owned()),
        };
        if op == Op::In && !value.is_array() {
            return Err(err("'in' takes a JSON array, e.g. status in [\"a\",\"b\"]"));
        }
        Ok(Self {
            path: field_path(field),
            op,
            value,
        })
    }

    /// Evaluates the clause against a field's value (`None`: the record lacks the field).
    pub fn matches_json(&self, v: Option<&Json>) -> bool {
        let Some(v) = v else { return false };
        match self.op {
            Op::Eq => json_eq(v, &self.value),
            Op::Ne => !json_eq(v, &self.value),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|a| a.iter().any(|x| json_eq(v, x))),
            Op::Lt => compare(v, &self.value) == Some(Ordering::Less),
            Op::Le => matches!(
                compare(v, &self.value),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Gt => compare(v, &self.value) == Some(Ordering::Greater),
            Op::Ge => matches!(
                compare(v, &self.value),
                Some(Ordering::Greater | Ordering::Equal)
            ),
        }
    }

    /// Evaluates the clause against a record.
    pub fn matches(&self, r: &Record) -> bool {
        match self.path.first().map(String::as_str) {
            Some("id") if self.path.len() == 1 => {
                self.matches_json(Some(&Json::from(r.id.as_str())))
            }
            Some("name") if self.path.len() == 1 => {
                self.matches_json(Some(&Json::from(r.name.as_str())))
            }
            Some("time") if self.path.len() == 1 => self.matches_json(Some(&Json::from(r.time))),
            _ => self.matches_json(lookup(&r.data, &self.path[1..])),
        }
    }
}

/// `a.b` -> `["data","a","b"]`; `id`, `name`, `time` stay top-level; `data.a` is accepted too.
/// `[a, b, 3]` that is not JSON: its comma-separated items, each JSON or else a string.
fn in_list(raw: &str) -> Option<Json> {
    let inner = raw.strip_prefix('[')?.strip_suffix(']')?;
    let items = inner.split(',').map(str::trim).filter(|i| !i.is_empty());
    Some(Json::Array(
        items
            .map(|i| serde_json::from_str(i).unwrap_or_else(|_| Json::String(i.to_owned())))
            .collect(),
    ))
}

fn field_path(field: &str) -> Vec<String> {
    let parts: Vec<String> = field.split('.').map(str::to_owned).collect();
    match parts.first().map(String::as_str) {
        Some("id" | "name" | "time") if parts.len() == 1 => parts,
        Some("data") if parts.len() > 1 => parts,
        _ => std::iter::once("data".to_owned()).chain(parts).collect(),
    }
}

/// The value at `path` inside `data`.
pub fn lookup<'a>(data: &'a serde_json::Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(data.get(first)?, |v, k| v.as_object()?.get(k))
}

fn json_eq(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(a: &Json, b: &Json) -> Option<Ordering> {
    match (a, b) {
        (Json::Number(_), Json::Number(_)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Json::String(x), Json::String(y)) => Some(x.cmp(y)),
        (Json::Bool(x), Json::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Result order, by time then id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

impl Order {
    /// Parses `asc` or `desc`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "asc" => Ok(Self::Asc),
            "desc" => Ok(Self::Desc),
            other => Err(Error::Order(other.to_owned())),
        }
    }
}

/// A query over one dataset's records.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Only names equal to or below this path.
    pub name_prefix: Option<String>,
    /// Only times >= this (ms).
    pub since: Option<u64>,
    /// Only times < this (ms).
    pub until: Option<u64>,
    /// Every clause must hold.
    pub predicates: Vec<Predicate>,
    /// At most this many results.
    pub limit: usize,
    /// Result order.
    pub order: Order,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            name_prefix: None,
            since: None,
            until: None,
            predicates: Vec::new(),
            limit: DEFAULT_LIMIT,
            order: Order::Asc,
        }
    }
}

impl Query {
    /// Checks ranges and limits.
    pub fn validate(&self) -> Result<(), Error> {
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(Error::Limit(self.limit));
        }
        if self.predicates.len() > MAX_PREDICATES {
            return Err(Error::TooManyPredicates(self.predicates.len()));
        }
        if let Some(p) = &self.name_prefix {
            naming::validate_record_name(p.trim_end_matches('/')).map_err(Error::Prefix)?;
        }
        // `since` after `until` is an empty range: it matches nothing.
        Ok(())
    }

    /// True when `r` passes every filter.
    pub fn matches(&self, r: &Record) -> bool {
        self.name_prefix
            .as_deref()
            .is_none_or(|p| naming::is_under(&r.name, p))
            && self.since.is_none_or(|s| r.time >= s)
            && self.until.is_none_or(|u| r.time < u)
            && self.predicates.iter().all(|p| p.matches(r))
    }

    /// Filters, orders by (time, id) and limits.
    pub fn run<'a>(&self, records: impl Iterator<Item = &'a Record>) -> Vec<Record> {
        let mut hits: Vec<&Record> = records.filter(|r| self.matches(r)).collect();
        let key = |r: &&Record| (r.time, r.id.clone());
        match self.order {
            Order::Asc => hits.sort_by_key(key),
            Order::Desc => hits.sort_by_key(|r| std::cmp::Reverse(key(r))),
        }
        hits.into_iter().take(self.limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(id: &str, name: &str, time: u64, data: Json) -> Record {
        let Json::Object(data) = data else {
            panic!("object")
        };
        Record {
            id: id.into(),
            name: name.into(),
            time,
            data,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            rec(
                "a",
                "d7/ward-3",
                10,
                json!({"cases": 3, "sym": "fever", "loc": {"x": 1}}),
            ),
            rec("b", "d7/ward-4", 20, json!({"cases": 8, "sym": "cough"})),
            rec("c", "d70/ward-1", 30, json!({"cases": 5})),
            rec("d", "d8", 40, json!({"sym": "fever"})),
        ]
    }

    fn ids(q: &Query) -> Vec<String> {
        q.run(sample().iter()).into_iter().map(|r| r.id).collect()
    }

    fn q_where(clauses: &[&str]) -> Query {
        let predicates = clauses
            .iter()
            .map(|c| Predicate::parse(c).expect("parses"))
            .collect();
        Query {
            predicates,
            ..Query::default()
        }
    }

    #[test]
    fn every_operator_filters() {
        assert_eq!(ids(&q_where(&["cases=3"])), ["a"]);
        assert_eq!(ids(&q_where(&["cases!=3"])), ["b", "c"]);
        assert_eq!(ids(&q_where(&["cases<5"])), ["a"]);
        assert_eq!(ids(&q_where(&["cases<=5"])), ["a", "c"]);
        assert_eq!(ids(&q_where(&["cases>5"])), ["b"]);
        assert_eq!(ids(&q_where(&["cases>=5"])), ["b", "c"]);
        assert_eq!(ids(&q_where(&["sym in [\"cough\",\"x\"]"])), ["b"]);
        assert_eq!(ids(&q_where(&["sym=fever", "cases>1"])), ["a"]);
        assert_eq!(ids(&q_where(&["loc.x=1"])), ["a"]);
        assert_eq!(ids(&q_where(&["data.loc.x=1"])), ["a"]);
        assert_eq!(ids(&q_where(&["name=d8"])), ["d"]);
        assert_eq!(ids(&q_where(&["time>=30"])), ["c", "d"]);
        assert_eq!(ids(&q_where(&["id=b"])), ["b"]);
    }

    #[test]
    fn prefix_range_order_and_limit() {
        let q = Query {
            name_prefix: Some("d7".into()),
            ..Query::default()
        };
        assert_eq!(ids(&q), ["a", "b"]);
        let q = Query {
            since: Some(20),
            until: Some(40),
            ..Query::default()
        };
        assert_eq!(ids(&q), ["b", "c"]);
        let q = Query {
            order: Order::Desc,
            limit: 2,
            ..Query::default()
        };
        assert_eq!(ids(&q), ["d", "c"]);
    }

    #[test]
    fn an_empty_input_gives_an_empty_answer() {
        assert!(Query::default().run(std::iter::empty()).is_empty());
    }

    #[test]
    fn malformed_queries_say_what_is_wrong() {
        assert!(matches!(
            Predicate::parse("cases"),
            Err(Error::Predicate { .. })
        ));
        assert!(matches!(
            Predicate::parse("=3"),
            Err(Error::Predicate { .. })
        ));
        assert!(matches!(
            Predicate::parse("s in 3"),
            Err(Error::Predicate { .. })
        ));
        assert_eq!(Order::parse("up"), Err(Error::Order("up".into())));
        let q = Query {
            limit: 0,
            ..Query::default()
        };
        assert_eq!(q.validate(), Err(Error::Limit(0)));
        let q = Query {
            since: Some(5),
            until: Some(1),
            ..Query::default()
        };
        assert_eq!(q.validate(), Ok(()), "an empty range");
        assert!(q.run(std::iter::empty()).is_empty());
        let q = Query {
            name_prefix: Some("a/../b".into()),
            ..Query::default()
        };
        assert!(matches!(q.validate(), Err(Error::Prefix(_))));
    }

    #[test]
    fn values_that_are_not_json_are_strings() {
        let p = Predicate::parse("sym = fever").expect("parses");
        assert_eq!(p.value, json!("fever"));
        assert_eq!(p.op, Op::Eq);
        let p = Predicate::parse("a<=2").expect("parses");
        assert_eq!(p.op, Op::Le);
        // A bracketed list that is not JSON: its items, each JSON or else a string.
        let p = Predicate::parse("status in [open, closed, 3]").expect("parses");
        assert_eq!(p.value, json!(["open", "closed", 3]));
        assert_eq!(
            Predicate::parse("s in []").expect("parses").value,
            json!([])
        );
    }
}
