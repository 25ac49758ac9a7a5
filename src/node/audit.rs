//! The node's face of the audit log ([`crate::audit`]): recording from anywhere in the node, the
//! mesh or the API without ever failing the operation recorded, and reading it (admin only).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::access::Grant;
use crate::apps::App;
use crate::audit::{Action, Entry, Event, Filter, Recorded, Verification};
use crate::dataset::Meta;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::hlc;
use crate::identity::AuthorId;
use crate::naming::DatasetId;

use super::Node;

/// What `GET /v1/audit` answers.
#[derive(Debug, Clone, Serialize)]
pub struct AuditListing {
    /// The entries that passed the filter, oldest first.
    pub entries: Vec<Entry>,
    /// The seq of the last entry appended when the listing began (0: none yet): follow from
    /// there (`GET /v1/audit/events?after=...`) to miss nothing.
    pub last_seq: u64,
}

impl Node {
    /// Appends `event` to the audit log, timed now. Never fails and never blocks on the disk: the
    /// entry is written in memory and reaches the disk with the next flush (within a second). A
    /// failed append is logged as a warning and counted in `fogmesh_audit_failures_total`; a
    /// refusal over its organization's budget in `fogmesh_audit_refusals_skipped_total`.
    pub fn audit(&self, event: Event) {
        let m = &self.inner.metrics;
        match self.inner.audit.record(event, hlc::wall_millis()) {
            Ok(Recorded::Appended(_)) => {
                m.audit_entries.inc();
            }
            Ok(Recorded::Skipped) => {
                m.audit_refusals_skipped.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit entry not appended");
                m.audit_failures.inc();
            }
        }
    }

    /// How the audit log names a local app: `org/app`.
    pub fn actor(&self, caller: &App) -> String {
        format!("{}/{}", self.inner.config.org, caller.name)
    }

    /// Records a dataset's creation and the reader grants issued with it.
    pub(super) fn audit_created(&self, caller: &App, meta: &Meta, grants: &[Grant]) {
        let actor = self.actor(caller);
        let sealed = if meta.encrypted { ", sealed" } else { "" };
        let visibility = format!("{:?}", meta.visibility).to_lowercase();
        let detail = format!(
            "{visibility}{sealed}; readers [{}]",
            meta.readers.join(", ")
        );
        self.audit(
            Event::ok(&actor, Action::DatasetCreate)
                .dataset(&meta.id)
                .detail(detail),
        );
        for g in grants {
            let detail = super::grants::grant_detail(g);
            self.audit(
                Event::ok(&actor, Action::Grant)
                    .dataset(&meta.id)
                    .detail(detail),
            );
        }
    }

    /// Records envelopes refused for want of write authority: one entry per author, naming the
    /// author's organization (or its key when it is no member) and the sequences refused.
    pub(super) fn audit_refused_envelopes(&self, id: &DatasetId, refused: &[Envelope]) {
        let mut by_author: BTreeMap<AuthorId, (usize, u64, u64)> = BTreeMap::new();
        for env in refused {
            let e = by_author.entry(env.author).or_insert((0, env.seq, env.seq));
            *e = (e.0 + 1, e.1.min(env.seq), e.2.max(env.seq));
        }
        for (author, (n, lo, hi)) in by_author {
            let actor = self.author_name(&author);
            let reason = "no write authority, or dated more than an hour ahead";
            let detail = format!("{n} envelopes, seq {lo} to {hi}");
            let ev = Event::refused(actor, Action::Push, reason).dataset(id);
            self.audit(ev.detail(detail));
        }
    }

    /// The audit entries that pass `filter` (admin only), oldest first, and the seq of the last
    /// entry appended before they were read.
    pub async fn audit_entries(&self, caller: &App, filter: Filter) -> Result<AuditListing> {
        Self::require_admin(caller, "reading the audit log")?;
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let log = &node.inner.audit;
            let last_seq = log.span().1.saturating_sub(1);
            let entries = log.list(&filter)?;
            Ok(AuditListing { entries, last_seq })
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Verifies the whole kept log (admin only): every entry's hash, every link, the anchor and
    /// the head. A damaged log is an answer (`ok: false` naming the first bad entry), not an error.
    pub async fn audit_verify(&self, caller: &App) -> Result<Verification> {
        Self::require_admin(caller, "verifying the audit log")?;
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.inner.audit.verify())
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::from)
    }

    /// Every entry appended from now on (admin only); a follower more than
    /// [`crate::audit::EVENTS_CAP`] entries behind is told it lagged.
    pub fn audit_follow(&self, caller: &App) -> Result<broadcast::Receiver<Arc<Entry>>> {
        Self::require_admin(caller, "following the audit log")?;
        Ok(self.inner.audit.subscribe())
    }

    /// Prunes audit entries past the configured retention (`audit_retention_days`,
    /// `audit_max_entries`); the daemon runs it every [`super::RETENTION_SWEEP`]. Returns how
    /// many it removed.
    pub async fn prune_audit(&self) -> Result<usize> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.inner.audit.prune(hlc::wall_millis()))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::from)
    }
}
