//! View queries over the datasets held here (rows and aggregates), and the owner's side of
//! compute-to-data: aggregates and pushed-down searches asked by other organizations' apps,
//! answered from this node's own data with the `query` right checked and small groups suppressed.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::apps::{Action, App};
use crate::error::{Error, Result};
use crate::hlc;
use crate::naming::{self, DatasetId};
use crate::record::Record;
use crate::view::aggregate::{self, Aggregation, Groups};
use crate::view::plan::{self, Filter, Plan, Shape};

use super::Node;

/// Most matches one owner returns to a pushed-down search.
pub const MAX_SEARCH_MATCHES: usize = 1_000;

/// What one dataset contributed to an aggregate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// The dataset.
    pub dataset: String,
    /// Its owner organization.
    pub owner: String,
    /// `local` (computed here), `answered` (by its owner), `timed_out` or `refused`.
    pub status: String,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One match of a pushed-down search: where and when, never the record's data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Match {
    /// Record id.
    pub id: String,
    /// Record name.
    pub name: String,
    /// Record time (ms).
    pub time: u64,
    /// The name segment that says where (the search's `location_segment`).
    pub location: Option<String>,
}

/// Why an owner refused to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Node {
    /// The records of `ds` that `caller` may read and `filter` passes (grant prefix applied).
    fn readable_rows(&self, caller: &App, id: &DatasetId, filter: &Filter) -> Result<Vec<Record>> {
        let (ds, prefix) = self.dataset_for(caller, Action::Read, id)?;
        let p = prefix.as_deref();
        Ok(ds.with_records(|recs| {
            recs.values()
                .filter(|r| p.is_none_or(|p| naming::is_under(&r.name, p)) && filter.matches(r))
                .cloned()
                .collect()
        }))
    }

    /// The rows of a (non-aggregate) view query over datasets the caller may read, projected,
    /// ordered and limited.
    pub fn view_rows(&self, caller: &App, plan: &Plan) -> Result<Vec<Json>> {
        let Shape::Rows {
            select,
            order,
            limit,
        } = &plan.shape
        else {
            return Err(Error::Invalid("not a row query".into()));
        };
        let mut all = Vec::new();
        for id in &plan.datasets {
            all.push((id, self.readable_rows(caller, id, &plan.filter)?));
        }
        let mut rows: Vec<plan::Row> = all
            .iter()
            .flat_map(|(id, recs)| recs.iter().map(move |r| (*id, r)))
            .collect();
        plan::order_rows(&mut rows, order, *limit);
        Ok(rows
            .iter()
            .map(|(id, r)| plan::project(id, r, select))
            .collect())
    }

    /// An aggregate over one dataset held here, for `caller`: a reader gets every group; an app
    /// with only the `query` right gets groups of at least `min_group_size` rows.
    pub fn aggregate_held(
        &self,
        caller: &App,
        id: &DatasetId,
        filter: &Filter,
        agg: &Aggregation,
    ) -> Result<Groups> {
        let (ds, prefix, small) = match self.dataset_for(caller, Action::Read, id) {
            Ok((ds, prefix)) => (ds, prefix, None),
            Err(Error::Forbidden(_) | Error::NotFound(_)) => {
                let (ds, prefix) = self.dataset_for(caller, Action::Query, id)?;
                query_only(filter).map_err(|r| Error::Forbidden(r.0))?;
                (ds, prefix, Some(self.inner.config.min_group_size))
            }
            Err(e) => return Err(e),
        };
        let p = prefix.as_deref();
        // Folded where the records are: no copy of the rows (the lock is held while folding).
        ds.with_records(|recs| {
            let rows = recs
                .values()
                .filter(|r| p.is_none_or(|p| naming::is_under(&r.name, p)) && filter.matches(r));
            fold(agg, rows, small)
        })
    }

    /// The owner's answer to another organization's app asking an aggregate over `id`: the
    /// app needs a live `query` grant; groups under the minimum size are suppressed.
    pub fn answer_aggregate(
        &self,
        org: &str,
        app: &str,
        id: &DatasetId,
        filter: &Filter,
        agg: &Aggregation,
    ) -> std::result::Result<Groups, Refusal> {
        query_only(filter)?;
        let min = Some(self.inner.config.min_group_size);
        self.with_grantee_rows(org, app, id, |rows| {
            fold(agg, rows.filter(|r| filter.matches(r)), min)
        })?
        .map_err(|e| Refusal(e.to_string()))
    }

    /// The owner's answer to a pushed-down search by another organization's app over its own
    /// dataset `name`: only where and when of each match, at most `limit`.
    pub fn answer_search(
        &self,
        org: &str,
        app: &str,
        name: &str,
        filter: &Filter,
        location_segment: usize,
        limit: usize,
    ) -> std::result::Result<Vec<Match>, Refusal> {
        let id =
            DatasetId::new(&self.inner.config.org, name).map_err(|e| Refusal(e.to_string()))?;
        self.with_grantee_rows(org, app, &id, |rows| {
            let mut hits: Vec<&Record> = rows.filter(|r| filter.matches(r)).collect();
            hits.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
            hits.into_iter()
                .take(limit.min(MAX_SEARCH_MATCHES))
                .map(|r| Match {
                    location: naming::segment(&r.name, location_segment).map(str::to_owned),
                    id: r.id.clone(),
                    name: r.name.clone(),
                    time: r.time,
                })
                .collect()
        })
    }

    /// Runs `f` over the records of `id` (owned here) that app `app` of `org`, holding a live
    /// `query` grant, may ask about (its name prefix applied), where they are: no copy.
    fn with_grantee_rows<T>(
        &self,
        org: &str,
        app: &str,
        id: &DatasetId,
        f: impl FnOnce(&mut dyn Iterator<Item = &Record>) -> T,
    ) -> std::result::Result<T, Refusal> {
        let refuse = || Refusal(format!("{org}/{app} holds no query grant on {id}"));
        if id.owner() != self.inner.config.org {
            return Err(Refusal(format!("{id} is not owned here")));
        }
        let ds = self.held(id).ok_or_else(refuse)?;
        let prefix = {
            let set = ds.access.lock().unwrap_or_else(|e| e.into_inner());
            let g = set.allowing(org, app, Action::Query, hlc::wall_millis());
            g.ok_or_else(refuse)?.prefix.clone()
        };
        let p = prefix.as_deref();
        Ok(ds.with_records(|recs| {
            f(&mut recs
                .values()
                .filter(|r| p.is_none_or(|p| naming::is_under(&r.name, p))))
        }))
    }
}

/// Folds rows into groups. For a caller with only the `query` right (`min` given), groups under
/// `min` rows are dropped, without saying how many (a count of small groups would itself tell
/// that a filter matched a few rows), and each group keeps only what its measures need.
fn fold<'a>(
    agg: &Aggregation,
    rows: impl Iterator<Item = &'a Record>,
    min: Option<u64>,
) -> Result<Groups> {
    let mut groups = agg.fold(rows).map_err(|n| {
        Error::Invalid(format!(
            "group_by: the aggregate would make more than {n} groups; group more coarsely"
        ))
    })?;
    if let Some(m) = min {
        aggregate::suppress_small(&mut groups, m);
        agg.minimize(&mut groups);
    }
    Ok(groups)
}

/// Refuses, for a caller with only the `query` right, filters that pick out records by id or
/// name: differencing two aggregates that differ by one named record would disclose it.
fn query_only(filter: &Filter) -> std::result::Result<(), Refusal> {
    if filter.names_records() {
        return Err(Refusal(
            "where: the query right does not allow filtering on id or name (use name_prefix or segments)".into(),
        ));
    }
    Ok(())
}

/// The answer to an aggregate view query.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateAnswer {
    /// One object per group: dimension values and measures.
    pub groups: Vec<serde_json::Map<String, Json>>,
    /// What each dataset contributed.
    pub sources: Vec<Source>,
}

/// Turns merged groups into the answer, at most `limit` groups.
pub fn answer(
    agg: &Aggregation,
    groups: &Groups,
    sources: Vec<Source>,
    limit: usize,
) -> AggregateAnswer {
    AggregateAnswer {
        groups: aggregate::ordered(groups)
            .into_iter()
            .take(limit)
            .map(|(k, p)| agg.finish(k, p))
            .collect(),
        sources,
    }
}
