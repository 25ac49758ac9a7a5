//! The mesh's gauges, brought up to date at each scrape of `/metrics` from the same reads
//! `GET /v1/mesh` and `GET /v1/peers` (and so `fogmesh status`) answer with.

use crate::metrics::{label, set_bounded, LABELLED, OTHER};

use super::Mesh;

impl Mesh {
    /// Brings the mesh's gauges up to date: members, connected peers and their round trips,
    /// catch-ups under way and what they still have to fetch.
    pub async fn observe(&self) {
        let m = self.inner.node.metrics();
        let status = match self.status().await {
            Ok(s) => s,
            Err(e) => return tracing::debug!(error = %e, "mesh status unavailable for metrics"),
        };
        m.members.set(status.members.len() as i64);
        m.catchups.set(status.catching_up.len() as i64);
        let mut remaining: Vec<(String, i64)> = Vec::new();
        for p in &status.catching_up {
            let left = p.missing.saturating_sub(p.fetched) as i64;
            match remaining.iter_mut().find(|(d, _)| *d == p.dataset) {
                Some((_, n)) => *n += left,
                None => remaining.push((p.dataset.clone(), left)),
            }
        }
        set_bounded(&m.catchup_remaining, "dataset", remaining);
        let Ok(peers) = self.peers().await else {
            return;
        };
        let up: Vec<_> = peers
            .iter()
            .filter(|p| p.net.up && !p.org.is_empty())
            .collect();
        m.peers_up.set(up.len() as i64);
        m.peer_rtt_seconds.clear();
        for (i, p) in up.iter().enumerate() {
            let Some(ms) = p.net.rtt_ms else { continue };
            // Past the bound, the slowest round trip stands for the rest.
            let org = if i < LABELLED { p.org.as_str() } else { OTHER };
            let g = m.peer_rtt_seconds.get_or_create(&label("org", org));
            g.set(g.get().max(ms / 1e3));
        }
    }
}
