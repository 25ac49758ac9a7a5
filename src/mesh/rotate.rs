//! Rotating this node's keys (`fogmesh key rotate`): the organization's new ed25519 and X25519
//! keys replace the current ones in a `rotate` governance operation signed with the current key,
//! which every member applies (see [`super::govern`]); the node spreads it to the connected
//! members, puts its new keys in place and restarts under its new PeerId.
//!
//! What the rotation does on every node that learns it: envelopes the retired key dates after
//! the rotation are refused (earlier ones are history and stay valid), its grants signed after
//! the rotation too; owners wrap every epoch key of their datasets for the new key (the rotated
//! node also keeps its retired keys, to open what was wrapped for them); the retired key's
//! PeerId is no member any more.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;

use crate::audit;
use crate::error::{Error, Result};
use crate::hlc::wall_millis;

use super::govern::Op;
use super::Mesh;

/// How long a rotation waits for the connected members to take the new roster.
pub const SPREAD_WAIT: Duration = Duration::from_secs(10);

/// What `fogmesh key rotate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// This node's organization.
    pub org: String,
    /// The identity key rotated away (hex).
    pub retired_key: String,
    /// The new identity key (hex).
    pub key: String,
    /// The new PeerId.
    pub peer_id: String,
    /// The governance operation.
    pub operation: String,
    /// Connected members that took the rotation before the node restarted.
    pub informed: Vec<String>,
    /// Connected members that had not yet: they learn it from any member that has it.
    pub not_informed: Vec<String>,
}

impl Mesh {
    /// Rotates this node's keys (see the module docs). The node restarts once this returns.
    pub async fn rotate_key(&self) -> Result<Rotated> {
        let node = &self.inner.node;
        let begun = node.begin_key_rotation().await?;
        let op = match self.commit_rotation(&begun).await {
            Ok(op) => op,
            Err(e) => {
                node.abort_key_rotation().await;
                return Err(e);
            }
        };
        let applied = Instant::now();
        // From here the rotation happens: a failure below is finished by the next start.
        if let Err(e) = self
            .inner
            .state
            .update_roster(node, |r| r.apply(op.clone()))
            .await?
        {
            tracing::warn!(error = %e, "the rotation did not apply to the roster now; the node applies it when it restarts");
        }
        // Spread as every roster change is: each connected member catches up with this node.
        self.refresh_members().await?;
        self.mark_members_dirty(None);
        let members = self.connected_members().await;
        self.retry_dirty().await;
        let (informed, not_informed) = self.await_spread(members, applied).await;
        node.finish_key_rotation().await?;
        let new = &begun.new;
        let rotated = Rotated {
            org: node.config().org.clone(),
            retired_key: node.identity().author().to_string(),
            key: new.author().to_string(),
            peer_id: new.peer_id()?.to_string(),
            operation: op.id(),
            informed,
            not_informed,
        };
        tracing::warn!(retired = %rotated.retired_key, key = %rotated.key, peer_id = %rotated.peer_id, "keys rotated; restarting with the new keys");
        let detail = format!(
            "key {} rotated to {} (peer id {}); governance operation {}",
            rotated.retired_key, rotated.key, rotated.peer_id, rotated.operation
        );
        node.audit(audit::Event::ok(rotated.org.clone(), audit::Action::KeyRotate).detail(detail));
        Ok(rotated)
    }

    /// Signs the rotation with the current key and commits it to disk.
    async fn commit_rotation(&self, begun: &crate::node::Begun) -> Result<Op> {
        let node = &self.inner.node;
        let mut roster = super::roster::Roster::clone(&self.inner.state.roster());
        let org = &node.config().org;
        let addresses = roster
            .by_org(org)
            .map(|m| m.addresses)
            .ok_or_else(|| Error::Conflict(format!("{org} is not a current member of the mesh")))?;
        let op = roster
            .rotate(
                node.identity(),
                &begun.new,
                addresses,
                begun.until,
                wall_millis(),
            )
            .map_err(|e| Error::Conflict(format!("the rotation cannot apply: {e}")))?;
        let bytes = serde_json::to_vec(&op).map_err(|e| Error::Internal(e.to_string()))?;
        node.commit_key_rotation(bytes).await?;
        Ok(op)
    }

    /// Connected members with their organizations.
    async fn connected_members(&self) -> Vec<(PeerId, String)> {
        let Ok(peers) = self.inner.net.peers().await else {
            return Vec::new();
        };
        peers
            .into_iter()
            .filter(|p| p.up && p.member)
            .filter_map(|p| {
                let peer: PeerId = p.peer.parse().ok()?;
                Some((peer, self.org_of(&peer).unwrap_or_default()))
            })
            .collect()
    }

    /// Waits up to [`SPREAD_WAIT`] until every one of `members` received the roster after
    /// `since`; returns the organizations that did and those that did not.
    async fn await_spread(
        &self,
        members: Vec<(PeerId, String)>,
        since: Instant,
    ) -> (Vec<String>, Vec<String>) {
        let state = &self.inner.state;
        let deadline = since + SPREAD_WAIT;
        while Instant::now() < deadline
            && !members
                .iter()
                .all(|(p, _)| state.roster_served_since(p, since))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (yes, no): (Vec<_>, Vec<_>) = members
            .into_iter()
            .partition(|(p, _)| state.roster_served_since(p, since));
        (
            yes.into_iter().map(|(_, o)| o).collect(),
            no.into_iter().map(|(_, o)| o).collect(),
        )
    }

    /// Applies the rotations this node committed before it restarted, should the roster lack
    /// one (the node stopped between committing and applying it).
    pub(crate) async fn apply_own_rotations(&self) -> Result<()> {
        let node = &self.inner.node;
        let mut theirs = super::roster::Roster::clone(&self.inner.state.roster());
        let mut missing = 0;
        for bytes in node.rotations() {
            match serde_json::from_slice::<Op>(bytes) {
                Ok(op) if !theirs.log.ops.contains_key(&op.id()) => {
                    theirs.log.ops.insert(op.id(), op);
                    missing += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a stored rotation does not parse"),
            }
        }
        // All at once: the merge stores a chain of them in order.
        if missing > 0 {
            self.inner.state.merge_roster(node, &theirs).await?;
        }
        Ok(())
    }
}
