//! Record queries: name prefix, time range, field predicates, order and limit. Pure: parsing and
//! evaluation over records, no I/O.
//!
//! A predicate is written `FIELD OP VALUE`: `FIELD` is `id`, `name`, `time`, or a data field (dotted
//! for nested objects, optionally prefixed `data.`); `OP` is one of `=`, `!=`, `<`, `<=`, `>`, `>=`,
//! or ` in ` followed by a JSON array; `VALUE` is JSON if it parses as JSON, a string otherwise.
//! `FIELD is null` and `FIELD is not null` test whether a record lacks the field (or holds JSON
//! null). A record without the field matches no other predicate on it (the predicate is unknown,
//! see [`super::condition`]).
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
/// Longest predicate text, bytes.
pub const MAX_PREDICATE_LEN: usize = 1024;

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
    /// ` is null`: the field is missing or null.
    IsNull,
    /// ` is not null`: the field holds a value other than null.
    NotNull,
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
            text: text.chars().take(64).collect(),
            why,
        };
        if text.len() > MAX_PREDICATE_LEN {
            return Err(err("longer than 1024 bytes"));
        }
        if let Some(p) = Self::parse_null_test(text) {
            return p.map_err(err);
        }
        let (pos, sym, op) = OPS
            .iter()
            .filter_map(|(sym, op)| text.find(sym).map(|p| (p, *sym, *op)))
            .min_by_key(|(p, sym, _)| (*p, usize::MAX - sym.len()))
            .ok_or_else(|| err("no operator (=, !=, <, <=, >, >=, in, is null, is not null)"))?;
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

    /// `FIELD is null` or `FIELD is not null` (any case, any blanks between), if `text` is one.
    fn parse_null_test(text: &str) -> Option<Result<Self, &'static str>> {
        let rest = strip_word(text, "null")?;
        let (rest, op) = match strip_word(rest, "not") {
            Some(r) => (r, Op::NotNull),
            None => (rest, Op::IsNull),
        };
        let field = strip_word(rest, "is")?.trim();
        if field.is_empty() || field.contains(|c: char| c.is_whitespace() || "=<>!".contains(c)) {
            return Some(Err("is null takes one field name before it"));
        }
        Some(Ok(Self {
            path: field_path(field),
            op,
            value: Json::Null,
        }))
    }

    /// Evaluates the clause against a field's value (`None`: the record lacks the field):
    /// `None` where the answer is unknown: the field is missing or JSON null (as SQL's NULL, so
    /// `x=null` and `x in [null]` are never true: test with `x is null`), or not comparable in
    /// order.
    pub fn eval_json(&self, v: Option<&Json>) -> Option<bool> {
        let present = v.filter(|v| !v.is_null());
        let order = |v: Option<&Json>| compare(v?, &self.value);
        match self.op {
            Op::IsNull => Some(present.is_none()),
            Op::NotNull => Some(present.is_some()),
            Op::Eq => present.map(|v| json_eq(v, &self.value)),
            Op::Ne => present.map(|v| !json_eq(v, &self.value)),
            Op::In => present.map(|v| {
                self.value
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| json_eq(v, x)))
            }),
            Op::Lt => Some(order(v)? == Ordering::Less),
            Op::Le => Some(order(v)? != Ordering::Greater),
            Op::Gt => Some(order(v)? == Ordering::Greater),
            Op::Ge => Some(order(v)? != Ordering::Less),
        }
    }

    /// Whether the clause holds for a field's value (`None`: the record lacks the field).
    pub fn matches_json(&self, v: Option<&Json>) -> bool {
        self.eval_json(v) == Some(true)
    }

    /// Evaluates the clause against a record (`None`: unknown).
    pub fn eval(&self, r: &Record) -> Option<bool> {
        match self.path.first().map(String::as_str) {
            Some("id") if self.path.len() == 1 => self.eval_json(Some(&Json::from(r.id.as_str()))),
            Some("name") if self.path.len() == 1 => {
                self.eval_json(Some(&Json::from(r.name.as_str())))
            }
            Some("time") if self.path.len() == 1 => self.eval_json(Some(&Json::from(r.time))),
            _ => self.eval_json(lookup(&r.data, &self.path[1..])),
        }
    }

    /// Whether the clause holds for a record.
    pub fn matches(&self, r: &Record) -> bool {
        self.eval(r) == Some(true)
    }
}

/// `s` without its last word `w` (any case), when blanks come before that word.
fn strip_word<'a>(s: &'a str, w: &str) -> Option<&'a str> {
    let s = s.trim_end();
    let cut = s.len().checked_sub(w.len())?;
    let (rest, last) = (s.get(..cut)?, s.get(cut..)?);
    (last.eq_ignore_ascii_case(w) && rest.ends_with(char::is_whitespace)).then_some(rest)
}

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

/// `a.b` -> `["data","a","b"]`; `id`, `name`, `time` stay top-level; `data.a` is accepted too.
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

    #[test]
    fn null_tests_take_any_case_and_blanks() {
        for (text, op) in [
            ("x is null", Op::IsNull),
            ("\n\t x  Is \u{b} nuLL \u{c}", Op::IsNull),
            ("a.b IS NOT NULL", Op::NotNull),
            ("not is null", Op::IsNull),
        ] {
            let p = Predicate::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(p.op, op, "{text:?}");
        }
        assert_eq!(Predicate::parse("x Is  nuLL").unwrap().path, ["data", "x"]);
        for bad in ["is null", "x isnull", "x = 1 is null", "a b is null"] {
            assert!(Predicate::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("x={}", "1".repeat(MAX_PREDICATE_LEN));
        assert!(Predicate::parse(&long).is_err());
    }

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
