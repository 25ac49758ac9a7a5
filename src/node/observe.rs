//! What the node measures of itself at each scrape of `/metrics`: the gauges, read from the same
//! places `GET /v1/node`, `GET /v1/datasets` and `GET /v1/grants` (and so `fogmesh status`) read.

use crate::metrics::{count, label, set_bounded};

use super::Node;

impl Node {
    /// The Prometheus text exposition of the node's metrics, gauges brought up to date (the
    /// mesh's are brought up to date by `Mesh::observe`).
    pub fn metrics_text(&self) -> String {
        let m = &self.inner.metrics;
        let info = self.info();
        m.disk_failed.set(i64::from(info.disk_failed.is_some()));
        m.store_bytes.set(count(info.store_bytes));
        m.memory_bytes.set(count(info.memory_bytes));
        self.observe_datasets();
        m.grants.clear();
        for (state, n) in self.grant_states() {
            m.grants.get_or_create(&label("state", state)).set(n);
        }
        m.render()
    }

    /// Datasets by role, records and envelopes by dataset.
    fn observe_datasets(&self) {
        let m = &self.inner.metrics;
        let me = &self.inner.config.org;
        let (mut owned, mut replicas) = (0, 0);
        let (mut records, mut envelopes) = (Vec::new(), Vec::new());
        for d in self.all_datasets() {
            if d.meta.id.owner() == me.as_str() {
                owned += 1;
            } else {
                replicas += 1;
            }
            if !d.is_loaded() {
                // No series while it loads, rather than a count of 0.
                continue;
            }
            let (r, e) = d.stats();
            let id = d.meta.id.to_string();
            records.push((id.clone(), count(r as u64)));
            envelopes.push((id, count(e)));
        }
        m.datasets.get_or_create(&label("role", "owned")).set(owned);
        m.datasets
            .get_or_create(&label("role", "replica"))
            .set(replicas);
        set_bounded(&m.records, "dataset", records);
        set_bounded(&m.envelopes, "dataset", envelopes);
    }
}

/// Resident memory of this process in bytes, from `/proc/self/status` (0 elsewhere).
pub(crate) fn resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
