//! Prometheus metrics of one node.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the API error counter.
pub type CodeLabels = Vec<(String, String)>;

/// The node's counters and histograms. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// Records written locally (upserts and deletes).
    pub records_written: Counter,
    /// Envelopes stored (local and, with the mesh, remote).
    pub envelopes_stored: Counter,
    /// Write batches acknowledged.
    pub write_batches: Counter,
    /// Duration of each group flush.
    pub flush_seconds: Histogram,
    /// Snapshots taken.
    pub snapshots: Counter,
    /// API errors by status code.
    pub api_errors: Family<CodeLabels, Counter>,
    /// Malformed or refused input from peers, by peer id.
    pub peer_bad_inputs: Family<CodeLabels, Counter>,
    /// Envelopes refused for want of write authority, by dataset.
    pub envelopes_rejected: Family<CodeLabels, Counter>,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fogmesh");
        let m = Self {
            records_written: Counter::default(),
            envelopes_stored: Counter::default(),
            write_batches: Counter::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            snapshots: Counter::default(),
            api_errors: Family::default(),
            peer_bad_inputs: Family::default(),
            envelopes_rejected: Family::default(),
            equivocations: Counter::default(),
            removed_refused: Family::default(),
            audit_entries: Counter::default(),
            audit_failures: Counter::default(),
            audit_refusals_skipped: Counter::default(),
            disk_failed: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_written",
            "Records written locally",
            m.records_written.clone(),
        );
        registry.register(
            "envelopes_stored",
            "Envelopes stored",
            m.envelopes_stored.clone(),
        );
        registry.register(
            "write_batches",
            "Write batches acknowledged",
            m.write_batches.clone(),
        );
        registry.register(
            "flush_seconds",
            "Group flush latency",
            m.flush_seconds.clone(),
        );
        registry.register("snapshots", "Dataset snapshots taken", m.snapshots.clone());
        registry.register("api_errors", "API errors by status", m.api_errors.clone());
        registry.register(
            "peer_bad_inputs",
            "Malformed or refused input from peers",
            m.peer_bad_inputs.clone(),
        );
        registry.register(
            "envelopes_rejected",
            "Envelopes refused: the author holds no write grant for them",
            m.envelopes_rejected.clone(),
        );
        registry.register(
            "equivocations",
            "Forks proven: an author found signing two histories of a dataset",
            m.equivocations.clone(),
        );
        registry.register(
            "removed_member_refusals",
            "Connections of organizations removed from the mesh, refused",
            m.removed_refused.clone(),
        );
        registry.register(
            "audit_entries",
            "Entries appended to the audit log",
            m.audit_entries.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit entries that could not be appended",
            m.audit_failures.clone(),
        );
        registry.register(
            "audit_refusals_skipped",
            "Refusals not logged: over their organization's budget for the minute",
            m.audit_refusals_skipped.clone(),
        );
        registry.register(
            "disk_failed",
            "1 once the disk failed a write or a flush: writes refused until the node restarts",
            m.disk_failed.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
