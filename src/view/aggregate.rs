//! Aggregates over records: count, sum, avg, min, max, grouped by data field, name segment or time
//! bucket. Groups carry mergeable partial states (row count, and per measure the count of numeric
//! values, their sum, min and max), so partial results computed by several owners merge into the
//! same answer as one computation over all rows: an average is the merged sum over the merged
//! count, never an average of averages. Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::naming;
use crate::record::Record;

use super::query::lookup;

/// Most group-by dimensions in one query.
pub const MAX_DIMENSIONS: usize = 4;
/// Most measures in one query.
pub const MAX_MEASURES: usize = 16;
/// Most groups one aggregate may produce (more is an error, not a silent cut).
pub const MAX_GROUPS: usize = 100_000;
/// Shortest time bucket.
pub const MIN_BUCKET_MS: u64 = 1_000;

/// A malformed dimension or measure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {why}")]
pub struct Error {
    /// As given.
    pub text: String,
    /// What is wrong.
    pub why: String,
}

fn err(text: &str, why: impl Into<String>) -> Error {
    Error {
        text: text.to_owned(),
        why: why.into(),
    }
}

/// What records are grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    /// `field:PATH`: a data field (dotted path).
    Field(Vec<String>),
    /// `segment:N`: the N-th segment of the record name (0 = first).
    Segment(usize),
    /// `bucket:DURATION`: the record time rounded down to a multiple of the duration (ms).
    Bucket(u64),
}

impl Dimension {
    /// Parses `field:PATH`, `segment:N` or `bucket:N(s|m|h|d)`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (kind, arg) = text
            .split_once(':')
            .ok_or_else(|| err(text, "expected field:PATH, segment:N or bucket:DURATION"))?;
        match kind {
            "field" => {
                let arg = arg.strip_prefix("data.").unwrap_or(arg);
                let path: Vec<String> = arg.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(err(text, "empty field name"));
                }
                Ok(Self::Field(path))
            }
            "segment" => {
                let n: usize = arg
                    .parse()
                    .map_err(|_| err(text, "segment takes an index: 0, 1, 2..."))?;
                if n >= naming::NAME_MAX_SEGMENTS {
                    return Err(err(
                        text,
                        format!("names have at most {} segments", naming::NAME_MAX_SEGMENTS),
                    ));
                }
                Ok(Self::Segment(n))
            }
            "bucket" => Ok(Self::Bucket(parse_duration(arg).map_err(|w| err(text, w))?)),
            _ => Err(err(
                text,
                "expected field:PATH, segment:N or bucket:DURATION",
            )),
        }
    }

    /// The record's value for this dimension (`null` when it has none).
    pub fn value(&self, r: &Record) -> Json {
        match self {
            Self::Field(path) => lookup(&r.data, path).map_or(Json::Null, canonical),
            Self::Segment(i) => naming::segment(&r.name, *i).map_or(Json::Null, Json::from),
            Self::Bucket(ms) => Json::from(r.time - r.time % ms),
        }
    }
}

/// One value per number: `1` and `1.0` group together (as `where v=1` matches both).
fn canonical(v: &Json) -> Json {
    match v.as_f64() {
        Some(x) if v.is_f64() && x.fract() == 0.0 && x.abs() < 9.0e15 => Json::from(x as i64),
        _ => v.clone(),
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(p) => write!(f, "field:{}", p.join(".")),
            Self::Segment(i) => write!(f, "segment:{i}"),
            Self::Bucket(ms) => write!(f, "bucket:{}", format_duration(*ms)),
        }
    }
}

/// Parses `90s`, `15m`, `1h`, `1d`, `7d` into milliseconds (at least one second).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let units = [
        ("s", 1_000u64),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    let (n, per) = units
        .iter()
        .find_map(|(u, per)| s.strip_suffix(u).map(|n| (n, *per)))
        .ok_or("a duration is a number and s, m, h or d, e.g. 1d")?;
    let n: u64 = n
        .parse()
        .map_err(|_| "a duration is a whole number and a unit")?;
    match n.checked_mul(per) {
        Some(ms) if (MIN_BUCKET_MS..=366 * 86_400_000).contains(&ms) => Ok(ms),
        _ => Err("a bucket is between 1s and 366d".into()),
    }
}

fn format_duration(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms / 1_000),
    }
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// Rows in the group.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Mean of a numeric field (from sums and counts).
    Avg,
    /// Smallest value of a numeric field.
    Min,
    /// Largest value of a numeric field.
    Max,
}

/// One measure: `count`, or `sum:F`, `avg:F`, `min:F`, `max:F` over data field `F`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// The function.
    pub func: Func,
    /// The data field (dotted path); none for `count`.
    pub field: Option<Vec<String>>,
}

impl Measure {
    /// Parses `count` or `FUNC:FIELD`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text == "count" {
            return Ok(Self {
                func: Func::Count,
                field: None,
            });
        }
        let (f, field) = text
            .split_once(':')
            .ok_or_else(|| err(text, "expected count, sum:F, avg:F, min:F or max:F"))?;
        let func = match f {
            "sum" => Func::Sum,
            "avg" => Func::Avg,
            "min" => Func::Min,
            "max" => Func::Max,
            _ => return Err(err(text, "functions are count, sum, avg, min, max")),
        };
        let field = field.strip_prefix("data.").unwrap_or(field);
        let path: Vec<String> = field.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(err(text, "empty field name"));
        }
        Ok(Self {
            func,
            field: Some(path),
        })
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.func {
            Func::Count => return f.write_str("count"),
            Func::Sum => "sum",
            Func::Avg => "avg",
            Func::Min => "min",
            Func::Max => "max",
        };
        write!(
            f,
            "{name}:{}",
            self.field.as_deref().unwrap_or(&[]).join(".")
        )
    }
}

/// The mergeable state of one measure over some rows: numeric values seen, their sum, min, max.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Acc {
    /// Numeric values seen.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest.
    pub min: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Acc {
    fn add(&mut self, x: f64) {
        self.n = self.n.saturating_add(1);
        self.sum += x;
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
    }

    fn merge(&mut self, o: &Acc) {
        self.n = self.n.saturating_add(o.n);
        self.sum += o.sum;
        self.min = match (self.min, o.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, o.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One group's partial state: its rows and one accumulator per measure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// Rows in the group.
    pub rows: u64,
    /// One per measure, in the query's order.
    pub accs: Vec<Acc>,
}

impl Partial {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Partial) {
        self.rows = self.rows.saturating_add(other.rows);
        if self.accs.len() < other.accs.len() {
            self.accs.resize(other.accs.len(), Acc::default());
        }
        for (a, b) in self.accs.iter_mut().zip(&other.accs) {
            a.merge(b);
        }
    }
}

/// Groups by their key (the dimension values, in order).
pub type Groups = BTreeMap<GroupKey, Partial>;

/// A group's key: its dimension values, compared by their JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey(pub String);

impl std::borrow::Borrow<str> for GroupKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl GroupKey {
    /// The key of the values `vals`.
    pub fn of(vals: &[Json]) -> Self {
        Self(serde_json::to_string(vals).unwrap_or_default())
    }

    /// The dimension values.
    pub fn values(&self) -> Vec<Json> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

/// What to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    /// Group-by dimensions (none: one group of everything).
    pub dims: Vec<Dimension>,
    /// Measures.
    pub measures: Vec<Measure>,
    /// The dimensions and measures as written: the keys of the answer's objects.
    names: Vec<String>,
}

impl Aggregation {
    /// Parses dimensions and measures; names the first bad one.
    pub fn parse(group_by: &[String], aggregates: &[String]) -> Result<Self, (String, Error)> {
        if group_by.len() > MAX_DIMENSIONS {
            let e = err("group_by", format!("at most {MAX_DIMENSIONS} dimensions"));
            return Err(("group_by".into(), e));
        }
        if aggregates.is_empty() || aggregates.len() > MAX_MEASURES {
            let e = err("aggregates", format!("1 to {MAX_MEASURES} measures"));
            return Err(("aggregates".into(), e));
        }
        let dims = group_by
            .iter()
            .enumerate()
            .map(|(i, d)| Dimension::parse(d).map_err(|e| (format!("group_by[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let measures = aggregates
            .iter()
            .enumerate()
            .map(|(i, m)| Measure::parse(m).map_err(|e| (format!("aggregates[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let names = group_by.iter().chain(aggregates).cloned().collect();
        Ok(Self {
            dims,
            measures,
            names,
        })
    }

    /// Folds `records` into groups. Fails when the groups would exceed [`MAX_GROUPS`].
    pub fn fold<'a>(&self, records: impl Iterator<Item = &'a Record>) -> Result<Groups, usize> {
        // Hashed while folding (many rows, few groups), ordered once at the end. The key is
        // written into one reused buffer, in the text `GroupKey::of` gives, and copied only for
        // a new group; each distinct measure field is looked up once per row.
        let mut groups: std::collections::HashMap<String, Partial> = Default::default();
        let fields = self.distinct_fields();
        let mut values: Vec<Option<f64>> = vec![None; fields.len()];
        let mut buf: Vec<u8> = Vec::with_capacity(64);
        for r in records {
            self.write_key(r, &mut buf);
            let key = std::str::from_utf8(&buf).unwrap_or_default();
            let p = match groups.get_mut(key) {
                Some(p) => p,
                None => {
                    if groups.len() >= MAX_GROUPS {
                        return Err(MAX_GROUPS);
                    }
                    let fresh = Partial {
                        rows: 0,
                        accs: vec![Acc::default(); self.measures.len()],
                    };
                    groups.entry(key.to_owned()).or_insert(fresh)
                }
            };
            p.rows += 1;
            for (v, f) in values.iter_mut().zip(&fields) {
                *v = lookup(&r.data, f).and_then(Json::as_f64);
            }
            for (acc, m) in p.accs.iter_mut().zip(&self.measures) {
                let at = m
                    .field
                    .as_ref()
                    .and_then(|f| fields.iter().position(|x| x == f));
                if let Some(x) = at.and_then(|i| values[i]) {
                    acc.add(x);
                }
            }
        }
        Ok(groups.into_iter().map(|(k, p)| (GroupKey(k), p)).collect())
    }

    /// The data fields the measures read, each once.
    fn distinct_fields(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for f in self.measures.iter().filter_map(|m| m.field.as_ref()) {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    /// Writes `r`'s group key (the JSON array of its dimension values) into `buf`.
    fn write_key(&self, r: &Record, buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(b'[');
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            // Writing JSON into memory cannot fail.
            let _ = match d {
                Dimension::Segment(n) => match naming::segment(&r.name, *n) {
                    Some(seg) => serde_json::to_writer(&mut *buf, seg),
                    None => serde_json::to_writer(&mut *buf, &Json::Null),
                },
                Dimension::Bucket(ms) => serde_json::to_writer(&mut *buf, &(r.time - r.time % ms)),
                Dimension::Field(_) => serde_json::to_writer(&mut *buf, &d.value(r)),
            };
        }
        buf.push(b']');
    }

    /// One group's answer: its dimension values and measures, as a JSON object.
    pub fn finish(&self, key: &GroupKey, p: &Partial) -> Map<String, Json> {
        let mut out = Map::new();
        let mut names = self.names.iter();
        for v in key.values().into_iter().take(self.dims.len()) {
            out.insert(names.next().cloned().unwrap_or_default(), v);
        }
        for (m, acc) in self.measures.iter().zip(&p.accs) {
            let v = match m.func {
                Func::Count => Json::from(p.rows),
                Func::Sum => num((acc.n > 0).then_some(acc.sum)),
                Func::Avg => num((acc.n > 0).then(|| acc.sum / acc.n as f64)),
                Func::Min => num(acc.min),
                Func::Max => num(acc.max),
            };
            out.insert(names.next().cloned().unwrap_or_else(|| m.to_string()), v);
        }
        out
    }

    /// Clears from each group what its measures do not need, so an owner answers exactly what
    /// was asked (no extreme values behind an average, no sums behind a minimum).
    pub fn minimize(&self, groups: &mut Groups) {
        for p in groups.values_mut() {
            for (acc, m) in p.accs.iter_mut().zip(&self.measures) {
                match m.func {
                    Func::Count => *acc = Acc::default(),
                    Func::Sum | Func::Avg => (acc.min, acc.max) = (None, None),
                    Func::Min => (acc.sum, acc.max) = (0.0, None),
                    Func::Max => (acc.sum, acc.min) = (0.0, None),
                }
            }
        }
    }

    /// Whether `p` has the shape these measures give (one accumulator each).
    pub fn fits(&self, key: &GroupKey, p: &Partial) -> bool {
        p.accs.len() == self.measures.len() && key.values().len() == self.dims.len()
    }
}

fn num(x: Option<f64>) -> Json {
    x.and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// Groups in the order answers list them: by their dimension values, numbers by value (not by
/// their text), then strings, booleans, null last.
pub fn ordered(groups: &Groups) -> Vec<(&GroupKey, &Partial)> {
    let mut v: Vec<(Vec<Json>, (&GroupKey, &Partial))> =
        groups.iter().map(|(k, p)| (k.values(), (k, p))).collect();
    v.sort_by(|a, b| cmp_values(&a.0, &b.0));
    v.into_iter().map(|(_, kp)| kp).collect()
}

fn cmp_values(a: &[Json], b: &[Json]) -> std::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| cmp_value(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(a.len().cmp(&b.len()))
}

/// Orders two values as groups are ordered: numbers by value, then strings, booleans, null last.
pub fn cmp_value(a: &Json, b: &Json) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let rank = |v: &Json| match v {
        Json::Number(_) => 0,
        Json::String(_) => 1,
        Json::Bool(_) => 2,
        Json::Null => 4,
        _ => 3,
    };
    match (a, b) {
        (Json::Number(_), Json::Number(_)) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

/// Merges several partial results (from several datasets or owners) into one.
pub fn merge_all<'a>(parts: impl IntoIterator<Item = &'a Groups>) -> Groups {
    let mut out = Groups::new();
    for g in parts {
        for (k, p) in g {
            out.entry(k.clone()).or_default().merge(p);
        }
    }
    out
}

/// Drops groups with fewer than `min` rows; returns how many were dropped.
pub fn suppress_small(groups: &mut Groups, min: u64) -> usize {
    let before = groups.len();
    groups.retain(|_, p| p.rows >= min);
    before - groups.len()
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
