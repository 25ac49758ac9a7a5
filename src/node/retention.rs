//! Retention: the owner deletes records that are older than a dataset's `max_age_days` or beyond
//! its `max_records` newest. Deletions are ordinary signed write batches, so every replica sees them.
//!
//! The count limit is applied right after each write that exceeds it; the age limit by
//! [`Node::enforce_retention`], which the daemon runs every [`SWEEP_EVERY`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::dataset::Retention;
use crate::error::Result;
use crate::record::{Record, BATCH_MAX_RECORDS};

use super::dataset::Dataset;
use super::{Batch, Node};

/// How often the daemon sweeps every dataset for records past their age limit.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

const DAY_MS: u64 = 86_400_000;

/// True when `ds` holds more records than its `max_records`.
pub(super) fn over_count(ds: &Dataset) -> bool {
    ds.meta
        .retention
        .max_records
        .is_some_and(|max| ds.with_records(|r| r.len() as u64 > max))
}

/// Ids that `retention` expires at `now_ms`, oldest first, at most one batch.
pub(crate) fn expired(
    records: &BTreeMap<String, Record>,
    retention: &Retention,
    now_ms: u64,
) -> Vec<String> {
    let cutoff = retention
        .max_age_days
        .map(|d| now_ms.saturating_sub(u64::from(d) * DAY_MS));
    let excess = retention
        .max_records
        .map_or(0, |max| records.len().saturating_sub(max as usize));
    if cutoff.is_none() && excess == 0 {
        return Vec::new();
    }
    let mut by_time: Vec<(u64, &String)> = records.iter().map(|(id, r)| (r.time, id)).collect();
    by_time.sort_unstable();
    by_time
        .into_iter()
        .enumerate()
        .take_while(|(i, (t, _))| *i < excess || cutoff.is_some_and(|c| *t < c))
        .map(|(_, (_, id))| id.clone())
        .take(BATCH_MAX_RECORDS)
        .collect()
}

impl Node {
    /// Applies every owned dataset's retention policy now; returns how many records it deleted.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let org = &self.inner.config.org;
        let mut deleted = 0;
        for ds in self.all_datasets() {
            // One still loading is trimmed at the next sweep.
            if ds.meta.id.owner() == org.as_str() && ds.is_loaded() {
                deleted += self.trim(ds).await?;
            }
        }
        Ok(deleted)
    }

    /// Deletes what `ds`'s retention expires, batch by batch.
    pub(super) async fn trim(&self, ds: Arc<Dataset>) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let now = crate::hlc::wall_millis();
            let ids = ds.with_records(|r| expired(r, &ds.meta.retention, now));
            if ids.is_empty() {
                return Ok(deleted);
            }
            deleted += ids.len();
            tracing::debug!(dataset = %ds.meta.id, records = ids.len(), "retention deletes");
            let batch = Batch {
                records: vec![],
                delete: ids,
            };
            self.write(ds.clone(), batch).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(times: &[u64]) -> BTreeMap<String, Record> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let id = format!("r{i}");
                let r = Record {
                    id: id.clone(),
                    name: "a".into(),
                    time: *t,
                    data: Default::default(),
                };
                (id, r)
            })
            .collect()
    }

    #[test]
    fn no_policy_expires_nothing() {
        let r = records(&[1, 2, 3]);
        assert!(expired(&r, &Retention::default(), u64::MAX).is_empty());
    }

    #[test]
    fn max_records_expires_the_oldest_excess() {
        let r = records(&[30, 10, 20, 40]);
        let keep2 = Retention {
            max_records: Some(2),
            max_age_days: None,
        };
        assert_eq!(expired(&r, &keep2, 0), ["r1", "r2"]);
    }

    #[test]
    fn max_age_expires_records_older_than_the_cutoff() {
        let now = 10 * DAY_MS;
        let r = records(&[now - 3 * DAY_MS, now - DAY_MS / 2, now - 2 * DAY_MS - 1]);
        let two_days = Retention {
            max_age_days: Some(2),
            max_records: None,
        };
        assert_eq!(expired(&r, &two_days, now), ["r0", "r2"]);
    }

    #[test]
    fn both_limits_combine() {
        let now = 10 * DAY_MS;
        let r = records(&[now - 5 * DAY_MS, now - 1, now - 2, now - 3]);
        let both = Retention {
            max_age_days: Some(1),
            max_records: Some(2),
        };
        assert_eq!(expired(&r, &both, now), ["r0", "r3"]);
    }
}
