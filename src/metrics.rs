//! Prometheus metrics of one node: counters updated where things happen, gauges brought up to
//! date at each scrape from the same reads `fogmesh status` shows (`node::observe`,
//! `mesh::observe`).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a metric family: `(name, value)` pairs.
pub type CodeLabels = Vec<(String, String)>;

/// Most datasets (or members) named in a label; the rest are summed under [`OTHER`], so a node
/// with 10,000 datasets still exposes a bounded number of series.
pub const LABELLED: usize = 50;

/// The label value the series past [`LABELLED`] are summed under.
pub const OTHER: &str = "_other";

/// Counters labelled by a value from outside whose variety nothing bounds (a peer id, a dataset a
/// peer names): the first [`LABELLED`] values each get a series of their own, for as long as the
/// node runs; later ones are summed under [`OTHER`]. A flood of new values costs one series.
#[derive(Default)]
pub struct CappedCounters {
    family: Family<CodeLabels, Counter>,
    named: Mutex<HashSet<String>>,
}

impl CappedCounters {
    /// Adds `n` to the series `name="value"`, or `name="_other"` once the cap is reached.
    pub fn inc_by(&self, name: &str, value: &str, n: u64) {
        let value = {
            let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
            let room = named.len() < LABELLED;
            if named.contains(value) || (room && named.insert(value.to_owned())) {
                value
            } else {
                OTHER
            }
        };
        self.family.get_or_create(&label(name, value)).inc_by(n);
    }
}

/// A gauge of fractional values (seconds).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A count as a gauge's value (saturating).
pub fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One label.
pub fn label(name: &str, value: &str) -> CodeLabels {
    vec![(name.to_owned(), value.to_owned())]
}

/// The flush latency histogram: 0.25 ms to 2 s, doubling.
#[derive(Clone)]
pub struct FlushHistogram(pub Histogram);

impl Default for FlushHistogram {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.000_25, 2.0, 14)))
    }
}

impl std::ops::Deref for FlushHistogram {
    type Target = Histogram;

    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// The node's metrics, registered. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    instruments: Instruments,
    /// Held while a scrape brings the gauges up to date and renders them: two at once would
    /// each clear and refill the same families.
    pub scrape: tokio::sync::Mutex<()>,
}

impl std::ops::Deref for Metrics {
    type Target = Instruments;

    fn deref(&self) -> &Instruments {
        &self.instruments
    }
}

/// The node's counters, gauges and histograms (reached through [`Metrics`]).
#[derive(Default)]
pub struct Instruments {
    /// Records written locally (upserts and deletes).
    pub records_written: Counter,
    /// Envelopes stored (local and, with the mesh, remote).
    pub envelopes_stored: Counter,
    /// Write batches acknowledged.
    pub write_batches: Counter,
    /// Duration of each group flush.
    pub flush_seconds: FlushHistogram,
    /// Snapshots taken.
    pub snapshots: Counter,
    /// API errors by status code.
    pub api_errors: Family<CodeLabels, Counter>,
    /// Malformed or refused input from peers, by peer id (capped).
    pub peer_bad_inputs: CappedCounters,
    /// Envelopes refused for want of write authority, by dataset (capped).
    pub envelopes_rejected: CappedCounters,
    /// Forks proven here (an author found signing two histories of a dataset, or a lower fork
    /// of one already known).
    pub equivocations: Counter,
    /// Connections of removed members refused, by organization.
    pub removed_refused: Family<CodeLabels, Counter>,
    /// Entries appended to the audit log.
    pub audit_entries: Counter,
    /// Audit entries that could not be appended (storage failed).
    pub audit_failures: Counter,
    /// Refusals not logged: their organization was over its budget for the minute.
    pub audit_refusals_skipped: Counter,
    /// 1 once the disk failed a write or a flush: writes are refused until a restart.
    pub disk_failed: Gauge,
    /// Datasets held, by role (`owned`, `replica`).
    pub datasets: Family<CodeLabels, Gauge>,
    /// Records held, by dataset (the [`LABELLED`] largest; the rest under [`OTHER`]).
    pub records: Family<CodeLabels, Gauge>,
    /// Envelopes held, by dataset (labelled as `records`).
    pub envelopes: Family<CodeLabels, Gauge>,
    /// Grants of the datasets held, by state (`active`, `expired`, `revoked`).
    pub grants: Family<CodeLabels, Gauge>,
    /// Bytes the store takes on disk.
    pub store_bytes: Gauge,
    /// Resident memory of the node process, bytes (0 where the system does not tell).
    pub memory_bytes: Gauge,
    /// Organizations on the roster (removed ones not counted).
    pub members: Gauge,
    /// Other members connected now.
    pub peers_up: Gauge,
    /// The last ping round trip to each connected member, by organization.
    pub peer_rtt_seconds: Family<CodeLabels, FloatGauge>,
    /// Catch-ups under way.
    pub catchups: Gauge,
    /// Envelopes the catch-ups under way still have to fetch, by dataset.
    pub catchup_remaining: Family<CodeLabels, Gauge>,
    /// Envelope pushes sent to members.
    pub pushes: Counter,
    /// Pushes that failed (catch-up repairs what they missed).
    pub push_failures: Counter,
    /// Envelopes received by push and passed on to the next members of their trees.
    pub envelopes_forwarded: Counter,
    /// Pushes of envelopes written elsewhere, passed on (counted in `pushes` too).
    pub pushes_forwarded: Counter,
    /// Envelopes not passed on because the queue of envelopes to pass on was full (catch-up
    /// brings them to the members that miss them).
    pub forwards_dropped: Counter,
    /// Pushes along a tree not answered in time, whose envelope went on to the members below.
    pub pushes_taken_over: Counter,
    /// Catch-up chunks that waited for a live apply of a higher priority to end.
    pub catchup_yields: Counter,
    /// Envelopes from members new here (pushed or fetched).
    pub envelopes_received: Counter,
    /// Pages of envelopes served to members catching up.
    pub pages_served: Counter,
    /// Questions of members (federated aggregates, searches), by kind and outcome.
    pub questions: Family<CodeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let instruments = Instruments::default();
        Self {
            registry: instruments.register(),
            instruments,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Instruments {
    fn register(&self) -> Registry {
        let mut r = Registry::with_prefix("fogmesh");
        r.register(
            "records_written",
            "Records written locally",
            self.records_written.clone(),
        );
        r.register(
            "envelopes_stored",
            "Envelopes stored",
            self.envelopes_stored.clone(),
        );
        r.register(
            "write_batches",
            "Write batches acknowledged",
            self.write_batches.clone(),
        );
        r.register(
            "flush_seconds",
            "Group flush latency",
            self.flush_seconds.0.clone(),
        );
        r.register(
            "snapshots",
            "Dataset snapshots taken",
            self.snapshots.clone(),
        );
        r.register(
            "api_errors",
            "API errors by status",
            self.api_errors.clone(),
        );
        r.register(
            "peer_bad_inputs",
            "Malformed or refused input from peers",
            self.peer_bad_inputs.family.clone(),
        );
        r.register(
            "envelopes_rejected",
            "Envelopes refused: the author holds no write grant for them",
            self.envelopes_rejected.family.clone(),
        );
        r.register(
            "equivocations",
            "Forks proven: an author found signing two histories of a dataset",
            self.equivocations.clone(),
        );
        r.register(
            "removed_member_refusals",
            "Connections of organizations removed from the mesh, refused",
            self.removed_refused.clone(),
        );
        r.register(
            "audit_entries",
            "Entries appended to the audit log",
            self.audit_entries.clone(),
        );
        r.register(
            "audit_failures",
            "Audit entries that could not be appended",
            self.audit_failures.clone(),
        );
        r.register(
            "audit_refusals_skipped",
            "Refusals not logged: over their organization's budget for the minute",
            self.audit_refusals_skipped.clone(),
        );
        r.register(
            "disk_failed",
            "1 once the disk failed a write or a flush: writes refused until the node restarts",
            self.disk_failed.clone(),
        );
        self.register_held(&mut r);
        self.register_mesh(&mut r);
        r
    }

    /// What the node holds, read at each scrape.
    fn register_held(&self, r: &mut Registry) {
        r.register(
            "datasets",
            "Datasets held, by role (owned, replica)",
            self.datasets.clone(),
        );
        r.register(
            "records",
            "Records held, by dataset (the 50 largest; the rest under _other)",
            self.records.clone(),
        );
        r.register(
            "envelopes",
            "Envelopes held, by dataset (the 50 largest; the rest under _other)",
            self.envelopes.clone(),
        );
        r.register(
            "grants",
            "Grants of the datasets held, by state (active, expired, revoked)",
            self.grants.clone(),
        );
        r.register(
            "store_bytes",
            "Bytes the store takes on disk",
            self.store_bytes.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident memory of the node process",
            self.memory_bytes.clone(),
        );
    }

    /// The mesh: members, connections, catch-up and traffic.
    fn register_mesh(&self, r: &mut Registry) {
        r.register(
            "members",
            "Organizations on the roster",
            self.members.clone(),
        );
        r.register(
            "peers_up",
            "Other members connected now",
            self.peers_up.clone(),
        );
        r.register(
            "peer_rtt_seconds",
            "Last ping round trip to each connected member, by organization",
            self.peer_rtt_seconds.clone(),
        );
        r.register("catchups", "Catch-ups under way", self.catchups.clone());
        r.register(
            "catchup_remaining_envelopes",
            "Envelopes the catch-ups under way still have to fetch, by dataset",
            self.catchup_remaining.clone(),
        );
        r.register(
            "pushes",
            "Envelope pushes sent to members",
            self.pushes.clone(),
        );
        r.register(
            "push_failures",
            "Pushes that failed (catch-up repairs them)",
            self.push_failures.clone(),
        );
        r.register(
            "envelopes_forwarded",
            "Envelopes received by push and passed on to the next members of their trees",
            self.envelopes_forwarded.clone(),
        );
        r.register(
            "pushes_forwarded",
            "Pushes of envelopes written elsewhere, passed on (counted in pushes too)",
            self.pushes_forwarded.clone(),
        );
        r.register(
            "forwards_dropped",
            "Envelopes not passed on because the queue was full (catch-up repairs them)",
            self.forwards_dropped.clone(),
        );
        r.register(
            "pushes_taken_over",
            "Pushes along a tree not answered within 5 s, whose envelope went on to the members below",
            self.pushes_taken_over.clone(),
        );
        r.register(
            "catchup_yields",
            "Catch-up chunks that waited for a live apply of a higher priority to end",
            self.catchup_yields.clone(),
        );
        r.register(
            "envelopes_received",
            "Envelopes from members new here, pushed or fetched",
            self.envelopes_received.clone(),
        );
        r.register(
            "pages_served",
            "Pages of envelopes served to members catching up",
            self.pages_served.clone(),
        );
        r.register(
            "questions",
            "Questions of members (aggregate, search), by kind and outcome",
            self.questions.clone(),
        );
    }
}

/// Sets a family of gauges to `values` (label value, value), afresh: the largest [`LABELLED`]
/// each under its own label, the rest summed under [`OTHER`]; series no longer present go.
pub fn set_bounded(family: &Family<CodeLabels, Gauge>, name: &str, mut values: Vec<(String, i64)>) {
    values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    family.clear();
    let rest = values
        .iter()
        .skip(LABELLED)
        .fold(0i64, |sum, (_, v)| sum.saturating_add(*v));
    for (value, n) in values.iter().take(LABELLED) {
        family.get_or_create(&label(name, value)).set(*n);
    }
    if values.len() > LABELLED {
        family.get_or_create(&label(name, OTHER)).set(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_past_the_bound_sums_the_rest_under_other() {
        let m = Metrics::new();
        let values: Vec<(String, i64)> = (0..70).map(|i| (format!("o/d{i:02}"), i)).collect();
        set_bounded(&m.records, "dataset", values);
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fogmesh_records{"))
            .collect();
        assert_eq!(series.len(), LABELLED + 1, "{text}");
        // The 20 smallest (0..=19) are summed: 190.
        assert!(
            text.contains("fogmesh_records{dataset=\"_other\"} 190"),
            "{text}"
        );
        assert!(
            text.contains("fogmesh_records{dataset=\"o/d69\"} 69"),
            "{text}"
        );
        assert!(!text.contains("o/d19\""), "{text}");
        // A second reading with fewer datasets drops the series gone.
        set_bounded(&m.records, "dataset", vec![("o/d00".into(), 3)]);
        let text = m.render();
        assert!(
            !text.contains("dataset=\"_other\"") && text.contains("o/d00\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn capped_counters_name_the_first_values_and_sum_the_rest() {
        let m = Metrics::new();
        for i in 0..LABELLED + 30 {
            m.peer_bad_inputs.inc_by("peer", &format!("p{i:03}"), 2);
        }
        m.peer_bad_inputs.inc_by("peer", "p000", 1);
        m.peer_bad_inputs.inc_by("peer", "p999", 1);
        let text = m.render();
        let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(
            series("fogmesh_peer_bad_inputs_total{"),
            LABELLED + 1,
            "{text}"
        );
        assert!(
            text.contains("{peer=\"p000\"} 3"),
            "a named peer keeps its series"
        );
        assert!(
            text.contains("{peer=\"_other\"} 61"),
            "30 peers past the cap, and p999"
        );
        assert_eq!(series("fogmesh_envelopes_rejected_total{"), 0);
    }
}
