//! Equivocation across the mesh: evidence found here is pushed to the members the dataset is
//! shared with, and taken from theirs; catch-up sends it to a member whose history of an author
//! runs past a fork kept here, and fetches the envelopes before tips that differ, so the node
//! that holds the other version finds the fork (`mesh::plan`; see [`crate::equivocation`]).

use std::collections::BTreeMap;

use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tokio::sync::broadcast::error::RecvError;

use crate::equivocation::Evidence;
use crate::identity::AuthorId;
use crate::naming::DatasetId;

use super::catalog;
use super::error::{MeshError, MeshResult};
use super::proto::{self, Push};
use super::Mesh;

/// Most pieces of evidence one push may carry.
pub const MAX_EVIDENCE: usize = 64;

impl Mesh {
    /// Pushes the evidence of every fork proven here to the connected members entitled to its
    /// dataset.
    pub(crate) async fn run_forks(self) {
        let mut rx = self.inner.node.subscribe_forks();
        loop {
            match rx.recv().await {
                Ok((id, author)) => self.push_evidence(&id, &author, None).await,
                Err(RecvError::Lagged(_)) => self.sync_all().await,
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Pushes the evidence kept against `author` in `id` to `only`, or to every connected
    /// member entitled to the dataset.
    pub(crate) async fn push_evidence(
        &self,
        id: &DatasetId,
        author: &AuthorId,
        only: Option<PeerId>,
    ) {
        let (Some(meta), Some(ev)) = (self.held_meta(id), self.inner.node.evidence(id, author))
        else {
            return;
        };
        let peers: Vec<PeerId> = match only {
            Some(p) => vec![p],
            None => match self.inner.net.peers().await {
                Ok(ps) => ps
                    .into_iter()
                    .filter(|p| p.up && p.member)
                    .filter_map(|p| p.peer.parse().ok())
                    .collect(),
                Err(_) => return,
            },
        };
        let bytes = ByteBuf::from(ev.encode());
        for peer in peers {
            if !self
                .org_of(&peer)
                .is_some_and(|org| catalog::entitled(&meta, &org))
            {
                continue;
            }
            let push = Push {
                catalog: Vec::new(),
                access: Vec::new(),
                envelopes: Vec::new(),
                evidence: vec![bytes.clone()],
                tree: false,
            };
            self.push_unless_busy(peer, push).await;
        }
    }

    /// Takes the evidence a peer pushed: the lowest fork per dataset and author (the others
    /// would change nothing). Evidence that does not check is the peer's bad input.
    pub(crate) async fn take_pushed_evidence(&self, list: &[ByteBuf]) -> MeshResult<()> {
        proto::cap("push evidence", list.len(), MAX_EVIDENCE)?;
        if list.is_empty() {
            return Ok(());
        }
        let list = list.to_vec();
        let lowest = tokio::task::spawn_blocking(move || lowest_forks(&list))
            .await
            .map_err(|e| MeshError::Node(crate::Error::Internal(e.to_string())))??;
        for ev in lowest {
            if let Some(fork) = self.inner.node.take_evidence(ev).await? {
                tracing::info!(dataset = %fork.dataset, author = %fork.author, seq = fork.seq, "evidence of equivocation received");
            }
        }
        Ok(())
    }
}

/// The pieces of `list` that prove the lowest fork of each dataset and author, all checked.
fn lowest_forks(list: &[ByteBuf]) -> MeshResult<Vec<Evidence>> {
    let mut lowest: BTreeMap<(DatasetId, AuthorId), (u64, Evidence)> = BTreeMap::new();
    for bytes in list {
        let ev = Evidence::decode(bytes)?;
        let fork = ev.check()?;
        let slot = lowest.entry((fork.dataset, fork.author));
        match slot {
            std::collections::btree_map::Entry::Occupied(mut o) if fork.seq < o.get().0 => {
                o.insert((fork.seq, ev));
            }
            std::collections::btree_map::Entry::Occupied(_) => {}
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((fork.seq, ev));
            }
        }
    }
    Ok(lowest.into_values().map(|(_, ev)| ev).collect())
}
