//! The mesh's gauges, brought up to date at each scrape of `/metrics` from the same state
//! `GET /v1/mesh` and `GET /v1/peers` (and so `fogmesh status`) answer with.

use crate::metrics::{count, label, set_bounded, LABELLED, OTHER};

use super::Mesh;

impl Mesh {
    /// Brings the mesh's gauges up to date: members, connected peers and their round trips,
    /// catch-ups under way and what they still have to fetch.
    pub async fn observe(&self) {
        let m = self.inner.node.metrics();
        // Read from the mesh's own state: no round trip to the network task for these.
        m.members
            .set(count(self.inner.state.roster().orgs().len() as u64));
        let catching_up = self.inner.state.progress();
        m.catchups.set(count(catching_up.len() as u64));
        let mut remaining = std::collections::BTreeMap::<String, i64>::new();
        for p in catching_up {
            // `missing` comes from a peer's version vector: near u64::MAX from a hostile one.
            let left = count(p.missing.saturating_sub(p.fetched));
            let n = remaining.entry(p.dataset).or_default();
            *n = n.saturating_add(left);
        }
        set_bounded(
            &m.catchup_remaining,
            "dataset",
            remaining.into_iter().collect(),
        );
        let peers = match self.peers().await {
            Ok(p) => p,
            Err(e) => {
                // Nothing stale: the mesh is stopping, or its task is gone.
                m.peers_up.set(0);
                m.peer_rtt_seconds.clear();
                return tracing::debug!(error = %e, "peers unavailable for metrics");
            }
        };
        let mut up: Vec<_> = peers
            .iter()
            .filter(|p| p.net.up && !p.org.is_empty())
            .collect();
        up.sort_by(|a, b| a.org.cmp(&b.org));
        m.peers_up.set(count(up.len() as u64));
        m.peer_rtt_seconds.clear();
        for (i, p) in up.iter().enumerate() {
            let Some(ms) = p.net.rtt_ms else { continue };
            // The first organizations by name each under its own label; past the bound, the
            // slowest round trip of the rest stands for them.
            let org = if i < LABELLED { p.org.as_str() } else { OTHER };
            let g = m.peer_rtt_seconds.get_or_create(&label("org", org));
            g.set(g.get().max(ms / 1e3));
        }
    }
}
