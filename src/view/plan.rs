//! View queries: the JSON a caller sends to `POST /v1/query` over one or several datasets, checked
//! and compiled into a [`Plan`]: a filter, then either rows (projection, order, limit) or
//! aggregates (grouped, see [`super::aggregate`]). Pure: no I/O. The language is documented with
//! examples in `docs/queries.md`.

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::naming::{self, DatasetId};
use crate::record::Record;

use super::aggregate::{self, Aggregation};
use super::condition::{Condition, Where};
use super::query::{self, lookup, Query};

/// Rows returned when a query names no limit.
pub const DEFAULT_ROWS: usize = 1_000;
/// Most rows one query may return (as a stream).
pub const MAX_ROWS: usize = 1_000_000;
/// Most rows one query may return as a single JSON document.
pub const MAX_JSON_ROWS: usize = 10_000;
/// Most datasets in one query.
pub const MAX_DATASETS: usize = 64;
/// Most projected fields.
pub const MAX_SELECT: usize = 64;
/// Default wait for owners' answers to a federated query.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait a caller may ask for (the network layer's request timeout).
pub const MAX_TIMEOUT: Duration = crate::net::REQUEST_TIMEOUT;

/// A malformed view query: which part, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {why}")]
pub struct Error {
    /// The offending part, e.g. `group_by[1]` or `where[0]`.
    pub at: String,
    /// What is wrong.
    pub why: String,
}

fn err(at: impl Into<String>, why: impl std::fmt::Display) -> Error {
    Error {
        at: at.into(),
        why: why.to_string(),
    }
}

/// A view query as sent (see `docs/queries.md`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    /// `owner/name` of every dataset queried.
    pub datasets: Vec<String>,
    /// Only names equal to or below this path.
    #[serde(default)]
    pub name_prefix: Option<String>,
    /// Name segment filters `N=VALUE`: the N-th segment (from 0) equals VALUE.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Only times >= this (ms).
    #[serde(default)]
    pub since: Option<u64>,
    /// Only times < this (ms).
    #[serde(default)]
    pub until: Option<u64>,
    /// Conditions, all must hold: predicates `FIELD OP VALUE`, or `and`/`or`/`not` of them.
    #[serde(default, rename = "where")]
    pub predicates: Vec<Where>,
    /// Projection: `dataset`, `id`, `name`, `time` or data fields (dotted); empty: whole records.
    #[serde(default)]
    pub select: Vec<String>,
    /// `time` (default), `name`, `id` or a data field; `-` in front for descending.
    #[serde(default)]
    pub order_by: Option<String>,
    /// Most rows (or groups) returned.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Group-by dimensions: `field:PATH`, `segment:N`, `bucket:DURATION`.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Measures: `count`, `sum:F`, `avg:F`, `min:F`, `max:F`. Present: an aggregate query.
    #[serde(default)]
    pub aggregates: Vec<String>,
    /// Ask each dataset's owner to compute the aggregate over its own data.
    #[serde(default)]
    pub federated: bool,
    /// Wait at most this long for owners' answers (federated), ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The filter part of a query, as it travels to owners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// See [`ViewQuery::name_prefix`].
    #[serde(default)]
    pub name_prefix: Option<String>,
    /// See [`ViewQuery::segments`].
    #[serde(default)]
    pub segments: Vec<String>,
    /// See [`ViewQuery::since`].
    #[serde(default)]
    pub since: Option<u64>,
    /// See [`ViewQuery::until`].
    #[serde(default)]
    pub until: Option<u64>,
    /// See [`ViewQuery::predicates`].
    #[serde(default, rename = "where")]
    pub predicates: Vec<Where>,
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    query: Query,
    condition: Condition,
    segments: Vec<(usize, String)>,
}

impl FilterSpec {
    /// Checks and compiles it.
    pub fn compile(&self) -> Result<Filter, Error> {
        let condition = Where::compile_all(&self.predicates).map_err(|e| match e.index {
            Some(i) => err(format!("where[{i}]"), e),
            None => err("where", e),
        })?;
        let query = Query {
            name_prefix: self.name_prefix.clone(),
            since: self.since,
            until: self.until,
            predicates: Vec::new(),
            limit: query::MAX_LIMIT,
            order: query::Order::Asc,
        };
        query.validate().map_err(|e| match e {
            query::Error::Prefix(_) => err("name_prefix", e),
            other => err("query", other),
        })?;
        let segments = self
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| parse_segment(s).map_err(|w| err(format!("segments[{i}]"), w)))
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            query,
            condition,
            segments,
        })
    }
}

fn parse_segment(s: &str) -> Result<(usize, String), &'static str> {
    let (n, v) = s
        .split_once('=')
        .ok_or("expected N=VALUE, e.g. 0=district-3")?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| "N is a segment index: 0, 1, 2...")?;
    if n >= naming::NAME_MAX_SEGMENTS || v.is_empty() || v.contains('/') {
        return Err("N below 16 and VALUE one non-empty segment");
    }
    Ok((n, v.to_owned()))
}

impl Filter {
    /// Whether a predicate tests a record's `id` or `name` (which single out records).
    pub fn names_records(&self) -> bool {
        self.condition
            .any_predicate(&|p| p.path.len() == 1 && (p.path[0] == "id" || p.path[0] == "name"))
    }

    /// Whether `r` passes.
    pub fn matches(&self, r: &Record) -> bool {
        self.query.matches(r)
            && self.condition.matches(r)
            && self
                .segments
                .iter()
                .all(|(i, v)| naming::segment(&r.name, *i) == Some(v.as_str()))
    }
}

/// How rows are ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBy {
    /// `["time"]`, `["name"]`, `["id"]` or `["data", ...]`.
    pub path: Vec<String>,
    /// Descending.
    pub desc: bool,
}

/// What a plan returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Matching records, projected, ordered, limited.
    Rows {
        /// Projection (empty: whole records).
        select: Vec<String>,
        /// Order.
        order: OrderBy,
        /// Limit.
        limit: usize,
    },
    /// Groups with measures, ordered by key, limited.
    Aggregate {
        /// What to compute.
        aggregation: Aggregation,
        /// Most groups returned.
        limit: usize,
    },
}

/// A checked view query.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Datasets queried, in order, without repeats.
    pub datasets: Vec<DatasetId>,
    /// The filter, as sent (for owners).
    pub filter_spec: FilterSpec,
    /// The filter, compiled.
    pub filter: Filter,
    /// Rows or aggregates.
    pub shape: Shape,
    /// Ask owners (aggregates only).
    pub federated: bool,
    /// How long to wait for owners.
    pub timeout: Duration,
}

impl ViewQuery {
    /// Checks and compiles the query; the error names the part at fault.
    pub fn plan(&self) -> Result<Plan, Error> {
        let datasets = self.dataset_ids()?;
        let filter_spec = FilterSpec {
            name_prefix: self.name_prefix.clone(),
            segments: self.segments.clone(),
            since: self.since,
            until: self.until,
            predicates: self.predicates.clone(),
        };
        let filter = filter_spec.compile()?;
        let shape = self.shape()?;
        if self.federated && !matches!(shape, Shape::Aggregate { .. }) {
            return Err(err(
                "federated",
                "only aggregates are federated (raw rows never leave their owner); add aggregates",
            ));
        }
        let timeout = match self.timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms) if ms > 0 && ms <= MAX_TIMEOUT.as_millis() as u64 => Duration::from_millis(ms),
            Some(ms) => {
                let max = MAX_TIMEOUT.as_millis();
                return Err(err("timeout_ms", format!("1 to {max}, got {ms}")));
            }
        };
        Ok(Plan {
            datasets,
            filter_spec,
            filter,
            shape,
            federated: self.federated,
            timeout,
        })
    }

    fn dataset_ids(&self) -> Result<Vec<DatasetId>, Error> {
        if self.datasets.is_empty() || self.datasets.len() > MAX_DATASETS {
            return Err(err("datasets", format!("1 to {MAX_DATASETS} datasets")));
        }
        let mut out: Vec<DatasetId> = Vec::new();
        for (i, d) in self.datasets.iter().enumerate() {
            let id = DatasetId::parse(d).map_err(|e| err(format!("datasets[{i}]"), e))?;
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn shape(&self) -> Result<Shape, Error> {
        if self.aggregates.is_empty() {
            if !self.group_by.is_empty() {
                return Err(err(
                    "group_by",
                    "grouping needs aggregates, e.g. [\"count\"]",
                ));
            }
            return self.rows_shape();
        }
        if !self.select.is_empty() || self.order_by.is_some() {
            let at = if self.select.is_empty() {
                "order_by"
            } else {
                "select"
            };
            return Err(err(
                at,
                "aggregate answers are groups ordered by key; drop it",
            ));
        }
        let aggregation =
            Aggregation::parse(&self.group_by, &self.aggregates).map_err(|(at, e)| err(at, e))?;
        let limit = self.limit.unwrap_or(aggregate::MAX_GROUPS);
        if limit == 0 || limit > aggregate::MAX_GROUPS {
            return Err(err(
                "limit",
                format!("1 to {} groups", aggregate::MAX_GROUPS),
            ));
        }
        Ok(Shape::Aggregate { aggregation, limit })
    }

    fn rows_shape(&self) -> Result<Shape, Error> {
        if self.select.len() > MAX_SELECT || self.select.iter().any(|s| s.is_empty()) {
            return Err(err(
                "select",
                format!("1 to {MAX_SELECT} non-empty field names"),
            ));
        }
        let limit = self.limit.unwrap_or(DEFAULT_ROWS);
        if limit == 0 || limit > MAX_ROWS {
            return Err(err("limit", format!("1 to {MAX_ROWS} rows")));
        }
        let order = parse_order(self.order_by.as_deref().unwrap_or("time"))?;
        Ok(Shape::Rows {
            select: self.select.clone(),
            order,
            limit,
        })
    }
}

fn parse_order(s: &str) -> Result<OrderBy, Error> {
    let (desc, field) = match s.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, s),
    };
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(err("order_by", "a field name, `-` in front for descending"));
    }
    let path = match field {
        "time" | "name" | "id" => vec![field.to_owned()],
        f => std::iter::once("data")
            .chain(f.strip_prefix("data.").unwrap_or(f).split('.'))
            .map(str::to_owned)
            .collect(),
    };
    Ok(OrderBy { path, desc })
}

/// A record of a dataset, as a row source.
pub type Row<'a> = (&'a DatasetId, &'a Record);

fn sort_value(r: &Record, path: &[String]) -> Option<Json> {
    match path.first().map(String::as_str) {
        Some("time") => Some(Json::from(r.time)),
        Some("name") => Some(Json::from(r.name.as_str())),
        Some("id") => Some(Json::from(r.id.as_str())),
        _ => lookup(&r.data, &path[1..]).cloned(),
    }
}

fn cmp_json(a: &Option<Json>, b: &Option<Json>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Greater,
        (_, None) => Ordering::Less,
        (Some(x), Some(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p.partial_cmp(&q).unwrap_or(Ordering::Equal),
            _ => x.to_string().cmp(&y.to_string()),
        },
    }
}

/// Orders rows (missing values last; ties by time, dataset, id) and keeps the first `limit`.
pub fn order_rows<'a>(rows: &mut Vec<Row<'a>>, order: &OrderBy, limit: usize) {
    rows.sort_by(|a, b| {
        let (x, y) = (sort_value(a.1, &order.path), sort_value(b.1, &order.path));
        // Rows without the field come last in either direction.
        let primary = match (&x, &y) {
            (Some(_), Some(_)) if order.desc => cmp_json(&x, &y).reverse(),
            _ => cmp_json(&x, &y),
        };
        primary.then_with(|| (a.1.time, a.0, &a.1.id).cmp(&(b.1.time, b.0, &b.1.id)))
    });
    rows.truncate(limit);
}

/// One row as answered: the whole record with its dataset, or only the selected fields.
pub fn project(ds: &DatasetId, r: &Record, select: &[String]) -> Json {
    let mut out = Map::new();
    if select.is_empty() {
        out.insert("dataset".into(), Json::from(ds.to_string()));
        out.insert("id".into(), Json::from(r.id.as_str()));
        out.insert("name".into(), Json::from(r.name.as_str()));
        out.insert("time".into(), Json::from(r.time));
        out.insert("data".into(), Json::Object(r.data.clone()));
        return Json::Object(out);
    }
    for f in select {
        let v = match f.as_str() {
            "dataset" => Json::from(ds.to_string()),
            "id" => Json::from(r.id.as_str()),
            "name" => Json::from(r.name.as_str()),
            "time" => Json::from(r.time),
            field => {
                let path: Vec<String> = field
                    .strip_prefix("data.")
                    .unwrap_or(field)
                    .split('.')
                    .map(str::to_owned)
                    .collect();
                lookup(&r.data, &path).cloned().unwrap_or(Json::Null)
            }
        };
        out.insert(f.clone(), v);
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(v: Json) -> Result<Plan, Error> {
        serde_json::from_value::<ViewQuery>(v)
            .map_err(|e| err("body", e))?
            .plan()
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

    #[test]
    fn malformed_queries_point_at_the_problem() {
        let cases = [
            (json!({"datasets": []}), "datasets"),
            (json!({"datasets": ["nope"]}), "datasets[0]"),
            (
                json!({"datasets": ["a/b"], "where": ["cases>=1", "oops"]}),
                "where[1]",
            ),
            (
                json!({"datasets": ["a/b"], "segments": ["x=3"]}),
                "segments[0]",
            ),
            (json!({"datasets": ["a/b"], "limit": 0}), "limit"),
            (json!({"datasets": ["a/b"], "order_by": "-"}), "order_by"),
            (
                json!({"datasets": ["a/b"], "group_by": ["segment:0"]}),
                "group_by",
            ),
            (
                json!({"datasets": ["a/b"], "aggregates": ["count"], "group_by": ["bucket:1y"]}),
                "group_by[0]",
            ),
            (
                json!({"datasets": ["a/b"], "aggregates": ["mean:x"]}),
                "aggregates[0]",
            ),
            (
                json!({"datasets": ["a/b"], "aggregates": ["count"], "select": ["x"]}),
                "select",
            ),
            (json!({"datasets": ["a/b"], "federated": true}), "federated"),
            (
                json!({"datasets": ["a/b"], "aggregates": ["count"], "federated": true, "timeout_ms": 0}),
                "timeout_ms",
            ),
        ];
        for (body, at) in cases {
            let e = q(body.clone()).expect_err("malformed");
            assert_eq!(e.at, at, "{body}: {e}");
        }
        assert!(
            serde_json::from_value::<ViewQuery>(json!({"datasets": ["a/b"], "colour": 1})).is_err()
        );
    }

    #[test]
    fn filters_projection_order_and_limit() {
        let plan = q(json!({
            "datasets": ["h/flu", "h/flu"],
            "segments": ["0=district-1"],
            "where": ["cases>=2"],
            "select": ["name", "cases", "dataset"],
            "order_by": "-cases",
            "limit": 2
        }))
        .expect("valid");
        assert_eq!(plan.datasets.len(), 1, "repeats dropped");
        let ds = plan.datasets[0].clone();
        let recs = [
            rec("a", "district-1/w1", 1, json!({"cases": 2})),
            rec("b", "district-1/w2", 2, json!({"cases": 9})),
            rec("c", "district-2/w1", 3, json!({"cases": 50})),
            rec("d", "district-1/w3", 4, json!({"cases": 5})),
            rec("e", "district-1/w4", 5, json!({"cases": 1})),
        ];
        let mut rows: Vec<Row> = recs
            .iter()
            .filter(|r| plan.filter.matches(r))
            .map(|r| (&ds, r))
            .collect();
        let Shape::Rows {
            select,
            order,
            limit,
        } = &plan.shape
        else {
            panic!("rows")
        };
        order_rows(&mut rows, order, *limit);
        let out: Vec<Json> = rows.iter().map(|(d, r)| project(d, r, select)).collect();
        assert_eq!(
            Json::from(out),
            json!([
                {"name": "district-1/w2", "cases": 9, "dataset": "h/flu"},
                {"name": "district-1/w3", "cases": 5, "dataset": "h/flu"},
            ])
        );
    }

    #[test]
    fn filters_travel_and_compile_the_same() {
        let spec = FilterSpec {
            name_prefix: Some("district-1".into()),
            segments: vec!["1=ward-2".into()],
            since: Some(1),
            until: None,
            predicates: vec!["cases in [2, 9]".into()],
        };
        let back: FilterSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("json")).expect("back");
        assert_eq!(back, spec);
        let f = back.compile().expect("valid");
        assert!(f.matches(&rec("b", "district-1/ward-2", 2, json!({"cases": 9}))));
        assert!(!f.matches(&rec("b", "district-1/ward-3", 2, json!({"cases": 9}))));
        assert!(!f.matches(&rec("b", "district-1/ward-2", 0, json!({"cases": 9}))));
    }
}
