//! Joining by invitation. The inviter issues a token carrying a one-time secret (it keeps only the
//! secret's hash and the expiry); the new node redeems it over `/fogmesh/join/1`; the inviter signs
//! the new member's certificate, and the roster spreads to everyone else through catch-up.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::error::{Error, Result};
use crate::hlc::wall_millis;
use crate::net::{Frame, Protocol};

use super::invite::Invite;
use super::proto::{self, JoinRequest, JoinResponse};
use super::roster::{Cert, Member, Roster};
use super::{net_err, Mesh};

/// An invitation as the inviter stores it (under its secret's hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Issued {
    expires: u64,
}

/// The latest expiry of the invitations issued: until then, non-members may connect to join.
const OPEN_UNTIL_KEY: &str = "mesh/invites-open-until";

fn issued_key(hash: &str) -> String {
    format!("mesh/invite/{hash}")
}

fn used_key(hash: &str) -> String {
    format!("mesh/invite-used/{hash}")
}

impl Mesh {
    /// Issues an invitation valid for `ttl`; returns the token and its expiry (ms).
    pub async fn invite(&self, ttl: Duration) -> Result<(String, u64)> {
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let expires = wall_millis() + ttl.as_millis() as u64;
        let hash = Invite::secret_hash(&secret);
        let node = &self.inner.node;
        node.save_state(&issued_key(&hash), &Issued { expires })
            .await?;
        let open: u64 = node.load_state(OPEN_UNTIL_KEY)?.unwrap_or(0);
        node.save_state(OPEN_UNTIL_KEY, &open.max(expires)).await?;
        self.accept_strangers_until(expires).await?;
        let addrs = self.inner.net.listen_addrs().await.map_err(net_err)?;
        let cfg = node.config();
        let invite = Invite {
            mesh: self.inner.state.roster().mesh,
            inviter_org: cfg.org.clone(),
            inviter_peer: self.inner.net.local_peer_id().to_string(),
            addresses: addrs.iter().map(ToString::to_string).collect(),
            secret,
            expires,
        };
        tracing::info!(expires, "invitation issued");
        node.audit(
            audit::Event::ok(&cfg.org, audit::Action::Invite).detail(format!("expires {expires}")),
        );
        Ok((invite.encode(), expires))
    }

    /// Lets non-members connect until `expires` (unix ms), the life of an invitation.
    pub(crate) async fn accept_strangers_until(&self, expires: u64) -> Result<()> {
        let left = Duration::from_millis(expires.saturating_sub(wall_millis()));
        let until = std::time::Instant::now() + left;
        self.inner
            .net
            .accept_strangers(until)
            .await
            .map_err(net_err)
    }

    /// Re-opens the door for invitations issued before a restart.
    pub(crate) async fn restore_invitations(&self) -> Result<()> {
        let open: Option<u64> = self.inner.node.load_state(OPEN_UNTIL_KEY)?;
        match open {
            Some(t) if t > wall_millis() => self.accept_strangers_until(t).await,
            _ => Ok(()),
        }
    }

    /// The inviter's side: checks the secret and the newcomer, signs and admits it.
    pub(crate) async fn admit(&self, peer: PeerId, req: JoinRequest) -> Result<Roster, String> {
        let node = &self.inner.node;
        let hash = Invite::secret_hash(&req.secret);
        let issued: Option<Issued> = node
            .load_state(&issued_key(&hash))
            .map_err(|e| e.to_string())?;
        let issued = issued.ok_or("unknown invitation")?;
        if issued.expires < wall_millis() {
            return Err("the invitation has expired".into());
        }
        if req.member.peer_id != peer.to_string() {
            return Err("the member's peer id is not the connection's".into());
        }
        let mut roster = self.inner.state.roster();
        if roster.by_org(&req.member.org).is_some() {
            return Err(format!("{} is already a member", req.member.org));
        }
        let fresh = node.save_state_new(&used_key(&hash), &wall_millis()).await;
        if !fresh.map_err(|e| e.to_string())? {
            return Err("the invitation was already used".into());
        }
        let org = req.member.org.clone();
        roster
            .admit(Cert::sign(req.member, node.identity()))
            .map_err(|e| e.to_string())?;
        self.inner
            .state
            .set_roster(node, roster.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.refresh_members().await.map_err(|e| e.to_string())?;
        tracing::info!(%org, %peer, "member admitted");
        // Tell the other members now; the newcomer starts its own catch-up once it holds the
        // roster (a Hello sent before that would reach a node that cannot yet know us).
        let mesh = self.clone();
        tokio::spawn(async move { mesh.sync_all_but(Some(peer)).await });
        Ok(roster)
    }

    /// The newcomer's side: redeems `token` with the inviter and adopts the mesh's roster.
    pub async fn join(&self, token: &str) -> Result<Roster> {
        let invite = Invite::decode(token).map_err(|e| Error::Invalid(e.to_string()))?;
        let cfg = self.inner.node.config();
        let mine = self.inner.state.roster();
        if invite.mesh != cfg.mesh {
            return Err(Error::Invalid(format!(
                "this node was initialized for mesh {:?}; the invitation is for {:?}",
                cfg.mesh, invite.mesh
            )));
        }
        if mine.members.len() > 1 {
            return Err(Error::Conflict(format!(
                "this node is already a member of mesh {} with {} members",
                mine.mesh,
                mine.members.len()
            )));
        }
        let inviter: PeerId = invite
            .inviter_peer
            .parse()
            .map_err(|_| Error::Invalid("invitation: bad inviter peer id".into()))?;
        for a in invite
            .addresses
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
        {
            self.inner
                .net
                .add_address(inviter, a)
                .await
                .map_err(net_err)?;
        }
        let roster = self.redeem(inviter, invite.secret).await?;
        self.inner
            .state
            .set_roster(&self.inner.node, roster.clone())
            .await?;
        self.refresh_members().await?;
        tokio::spawn(self.clone().sync_with(inviter));
        tracing::info!(mesh = %roster.mesh, members = roster.members.len(), "joined the mesh");
        self.inner.node.audit(
            audit::Event::ok(&cfg.org, audit::Action::Join).detail(format!(
                "mesh {}, invited by {}",
                roster.mesh, invite.inviter_org
            )),
        );
        Ok(roster)
    }

    async fn redeem(&self, inviter: PeerId, secret: String) -> Result<Roster> {
        let cfg = self.inner.node.config();
        let addrs = self.inner.net.listen_addrs().await.map_err(net_err)?;
        let addrs = addrs.iter().map(ToString::to_string).collect();
        let member = Member::of(
            self.inner.node.identity(),
            &cfg.mesh,
            &cfg.org,
            addrs,
            wall_millis(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let req = Frame(proto::encode(&JoinRequest { secret, member }));
        let answer = self
            .inner
            .net
            .request(inviter, Protocol::Join, req)
            .await
            .map_err(net_err)?;
        let answer: JoinResponse =
            proto::decode("join answer", &answer.0).map_err(|e| Error::Invalid(e.to_string()))?;
        let roster = match answer {
            JoinResponse::Admitted { roster } => roster,
            JoinResponse::Refused { reason } => {
                return Err(Error::Forbidden(format!("the inviter refused: {reason}")))
            }
        };
        let roster = Roster::verified(&roster).map_err(|e| Error::Invalid(e.to_string()))?;
        if roster.by_org(&cfg.org).is_none() {
            return Err(Error::Invalid(
                "the roster sent back does not include this node".into(),
            ));
        }
        Ok(roster)
    }

    /// Re-signs this node's own certificate when its listen addresses change.
    pub(crate) async fn publish_addresses(&self) -> Result<()> {
        let addrs: Vec<String> = self
            .inner
            .net
            .listen_addrs()
            .await
            .map_err(net_err)?
            .iter()
            .map(ToString::to_string)
            .collect();
        let addrs = reachable(addrs);
        let node = &self.inner.node;
        let mut roster = self.inner.state.roster();
        let Some(me) = roster.by_org(&node.config().org).cloned() else {
            return Ok(());
        };
        if me.addresses == addrs {
            return Ok(());
        }
        let updated = Member {
            addresses: addrs
                .into_iter()
                .take(super::roster::MAX_ADDRESSES)
                .collect(),
            updated: wall_millis().max(me.updated + 1),
            ..me
        };
        roster
            .admit(Cert::sign(updated, node.identity()))
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.inner.state.set_roster(node, roster).await
    }
}

/// The addresses worth publishing: loopback ones only when there is nothing else (a mesh on one
/// host), since a member elsewhere that dials 127.0.0.1 reaches itself.
fn reachable(addrs: Vec<String>) -> Vec<String> {
    let outside: Vec<String> = addrs
        .iter()
        .filter(|a| !a.starts_with("/ip4/127.") && !a.starts_with("/ip6/::1/"))
        .cloned()
        .collect();
    if outside.is_empty() {
        addrs
    } else {
        outside
    }
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn loopback_addresses_are_published_only_when_alone() {
        let lo = "/ip4/127.0.0.1/tcp/7071".to_owned();
        let lan = "/ip4/10.0.0.5/tcp/7071".to_owned();
        assert_eq!(reachable(vec![lo.clone(), lan.clone()]), [lan]);
        assert_eq!(reachable(vec![lo.clone()]), [lo]);
    }
}
