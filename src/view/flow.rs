//! Computation flows: a source dataset, through predefined operators (filter, project, aggregate
//! by time bucket, name segment or field), into a target dataset, computed where the source
//! lives. This module is the pure part: checking a flow and computing target records, from
//! scratch or for the groups a change touched. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::naming::{self, DatasetId};
use crate::record::{Input, Record};

use super::aggregate::{Aggregation, Dimension, GroupKey};
use super::plan::{Filter, FilterSpec};
use super::query::lookup;

/// Most flows one node runs.
pub const MAX_FLOWS: usize = 64;

/// A flow as declared (API, CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// The flow's name, unique on its node.
    pub name: String,
    /// Source dataset `owner/name`, owned by the node running the flow.
    pub source: String,
    /// Target dataset `owner/name`, owned by the same node (usually shared).
    pub target: String,
    /// Which source records enter.
    #[serde(default)]
    pub filter: FilterSpec,
    /// Data fields carried into the target (record mode); empty: all.
    #[serde(default)]
    pub project: Vec<String>,
    /// Group-by dimensions (aggregate mode): `segment:N`, `bucket:DURATION`, `field:PATH`.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Measures (aggregate mode): `count`, `sum:F`, `avg:F`, `min:F`, `max:F`.
    #[serde(default)]
    pub aggregates: Vec<String>,
    /// Aggregate mode: groups of fewer source rows are left out of the target (default 1: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rows: Option<u64>,
}

/// A checked flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// As declared.
    pub spec: FlowSpec,
    /// Source dataset.
    pub source: DatasetId,
    /// Target dataset.
    pub target: DatasetId,
    /// Compiled filter.
    pub filter: Filter,
    /// Record mode (`None`) or aggregate mode.
    pub aggregation: Option<Aggregation>,
}

/// Target records by id.
pub type Targets = BTreeMap<String, Input>;

impl FlowSpec {
    /// Checks the flow; the error names the part at fault.
    pub fn check(&self) -> Result<Flow, String> {
        naming::validate_ident("flow name", &self.name).map_err(|e| e.to_string())?;
        let source = DatasetId::parse(&self.source).map_err(|e| format!("source: {e}"))?;
        let target = DatasetId::parse(&self.target).map_err(|e| format!("target: {e}"))?;
        if source == target {
            return Err("target: a flow cannot write into its own source".into());
        }
        let filter = self.filter.compile().map_err(|e| format!("filter.{e}"))?;
        let aggregation = if self.aggregates.is_empty() && self.group_by.is_empty() {
            None
        } else {
            if !self.project.is_empty() {
                return Err("project: an aggregating flow writes groups; drop project".into());
            }
            Some(
                Aggregation::parse(&self.group_by, &self.aggregates)
                    .map_err(|(at, e)| format!("{at}: {e}"))?,
            )
        };
        if self.min_rows == Some(0) {
            return Err("min_rows: at least 1".into());
        }
        Ok(Flow {
            spec: self.clone(),
            source,
            target,
            filter,
            aggregation,
        })
    }
}

impl Flow {
    /// The target records computed from scratch over `records` (the source's).
    pub fn compute<'a>(
        &self,
        records: impl Iterator<Item = &'a Record>,
    ) -> Result<Targets, String> {
        let kept = records.filter(|r| self.filter.matches(r));
        match &self.aggregation {
            None => Ok(kept.map(|r| (r.id.clone(), self.projected(r))).collect()),
            Some(agg) => {
                let rows: Vec<&Record> = kept.collect();
                let mut groups = agg
                    .fold(rows.iter().copied())
                    .map_err(|n| format!("more than {n} groups"))?;
                super::aggregate::suppress_small(&mut groups, self.spec.min_rows.unwrap_or(1));
                let latest = latest_times(agg, &rows);
                Ok(groups
                    .iter()
                    .map(|(k, p)| {
                        let rec = self.group_record(agg, k, &agg.finish(k, p), latest.get(k));
                        (rec.id.clone().unwrap_or_default(), rec)
                    })
                    .collect())
            }
        }
    }

    /// The group a source record belongs to (aggregate mode), if the filter keeps it.
    pub fn group_of(&self, r: &Record) -> Option<GroupKey> {
        let agg = self.aggregation.as_ref()?;
        self.filter
            .matches(r)
            .then(|| GroupKey::of(&agg.dims.iter().map(|d| d.value(r)).collect::<Vec<_>>()))
    }

    /// The id of the target record of group `key`.
    pub fn group_id(&self, key: &GroupKey) -> String {
        let h = Sha256::digest(key.0.as_bytes());
        format!("{}-{}", self.spec.name, hex::encode(&h[..8]))
    }

    fn projected(&self, r: &Record) -> Input {
        let data = if self.spec.project.is_empty() {
            r.data.clone()
        } else {
            let mut m = Map::new();
            for f in &self.spec.project {
                let path: Vec<String> = f.split('.').map(str::to_owned).collect();
                if let Some(v) = lookup(&r.data, &path) {
                    m.insert(f.clone(), v.clone());
                }
            }
            m
        };
        Input {
            id: Some(r.id.clone()),
            name: r.name.clone(),
            data: Json::Object(data),
            time: Some(r.time),
        }
    }

    /// A group's target record: named by its segment values and the flow's name, timed by its
    /// bucket (or its latest row), holding the dimension values and measures.
    fn group_record(
        &self,
        agg: &Aggregation,
        key: &GroupKey,
        values: &Map<String, Json>,
        latest: Option<&u64>,
    ) -> Input {
        let vals = key.values();
        let mut segments: Vec<String> = Vec::new();
        let mut time = latest.copied().unwrap_or(0);
        for (d, v) in agg.dims.iter().zip(&vals) {
            match d {
                Dimension::Segment(_) => segments.push(match v {
                    Json::String(s) => s.clone(),
                    _ => "none".into(),
                }),
                Dimension::Bucket(_) => time = v.as_u64().unwrap_or(time),
                Dimension::Field(_) => {}
            }
        }
        segments.push(self.spec.name.clone());
        Input {
            id: Some(self.group_id(key)),
            name: segments.join("/"),
            data: Json::Object(values.clone()),
            time: Some(time),
        }
    }
}

/// The latest row time of each group.
fn latest_times(agg: &Aggregation, rows: &[&Record]) -> BTreeMap<GroupKey, u64> {
    let mut out: BTreeMap<GroupKey, u64> = BTreeMap::new();
    for r in rows {
        let k = GroupKey::of(&agg.dims.iter().map(|d| d.value(r)).collect::<Vec<_>>());
        let t = out.entry(k).or_insert(0);
        *t = (*t).max(r.time);
    }
    out
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

    fn flu() -> Flow {
        FlowSpec {
            name: "flu-daily".into(),
            source: "hospital/patients".into(),
            target: "hospital/flu-daily".into(),
            filter: FilterSpec {
                predicates: vec!["diagnosis=flu".into()],
                ..FilterSpec::default()
            },
            project: vec![],
            group_by: vec!["segment:0".into(), "bucket:1d".into()],
            aggregates: vec!["count".into(), "avg:cost".into()],
            min_rows: None,
        }
        .check()
        .expect("valid")
    }

    #[test]
    fn cases_per_district_per_day() {
        let day = 86_400_000;
        let rows = [
            rec(
                "a",
                "district-1/ward-1/admission",
                day + 5,
                json!({"diagnosis": "flu", "cost": 100}),
            ),
            rec(
                "b",
                "district-1/ward-2/admission",
                day + 9,
                json!({"diagnosis": "flu", "cost": 300}),
            ),
            rec(
                "c",
                "district-1/ward-2/admission",
                day + 9,
                json!({"diagnosis": "cold", "cost": 50}),
            ),
            rec(
                "d",
                "district-2/ward-1/admission",
                2 * day + 1,
                json!({"diagnosis": "flu", "cost": 80}),
            ),
        ];
        let out = flu().compute(rows.iter()).expect("compute");
        let got: Vec<(String, u64, Json)> = out
            .values()
            .map(|i| (i.name.clone(), i.time.expect("time"), i.data.clone()))
            .collect();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&(
            "district-1/flu-daily".into(),
            day,
            json!({"segment:0": "district-1", "bucket:1d": day, "count": 2, "avg:cost": 200.0})
        )));
        assert!(got.contains(&(
            "district-2/flu-daily".into(),
            2 * day,
            json!({"segment:0": "district-2", "bucket:1d": 2 * day, "count": 1, "avg:cost": 80.0})
        )));
        let k = flu().group_of(&rows[0]).expect("kept");
        assert!(out.contains_key(&flu().group_id(&k)));
        assert!(flu().group_of(&rows[2]).is_none(), "filtered out");
        assert!(flu().compute([].iter()).expect("empty").is_empty());
    }

    #[test]
    fn record_mode_filters_and_projects() {
        let f = FlowSpec {
            name: "fever".into(),
            source: "h/p".into(),
            target: "h/fever".into(),
            filter: FilterSpec {
                predicates: vec!["temp>=38".into()],
                ..FilterSpec::default()
            },
            project: vec!["temp".into()],
            group_by: vec![],
            aggregates: vec![],
            min_rows: None,
        }
        .check()
        .expect("valid");
        let rows = [
            rec("a", "d1/w1", 1, json!({"temp": 39, "patient": "x"})),
            rec("b", "d1/w1", 2, json!({"temp": 37, "patient": "y"})),
        ];
        let out = f.compute(rows.iter()).expect("compute");
        assert_eq!(out.len(), 1);
        assert_eq!(out["a"].data, json!({"temp": 39}));
    }

    #[test]
    fn bad_flows_are_refused_with_the_part_named() {
        let base = FlowSpec {
            name: "f".into(),
            source: "h/p".into(),
            target: "h/t".into(),
            filter: FilterSpec::default(),
            project: vec![],
            group_by: vec![],
            aggregates: vec![],
            min_rows: None,
        };
        let cases = [
            (
                FlowSpec {
                    name: "Bad".into(),
                    ..base.clone()
                },
                "flow name",
            ),
            (
                FlowSpec {
                    target: "h/p".into(),
                    ..base.clone()
                },
                "target",
            ),
            (
                FlowSpec {
                    source: "nope".into(),
                    ..base.clone()
                },
                "source",
            ),
            (
                FlowSpec {
                    group_by: vec!["bucket:1y".into()],
                    aggregates: vec!["count".into()],
                    ..base.clone()
                },
                "group_by[0]",
            ),
            (
                FlowSpec {
                    aggregates: vec!["count".into()],
                    project: vec!["x".into()],
                    ..base.clone()
                },
                "project",
            ),
            (
                FlowSpec {
                    filter: FilterSpec {
                        predicates: vec!["oops".into()],
                        ..FilterSpec::default()
                    },
                    ..base.clone()
                },
                "filter.where[0]",
            ),
        ];
        for (spec, at) in cases {
            let e = spec.check().expect_err("bad");
            assert!(e.starts_with(at), "{e} (expected {at})");
        }
    }
}
