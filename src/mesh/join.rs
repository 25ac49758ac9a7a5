//! Joining by invitation. An admin issues a token carrying a one-time secret (it keeps only the
//! secret's hash and the expiry); the new node redeems it over `/fogmesh/join/2`; the admin signs
//! the admission (a governance operation), answers with it, and the newcomer fetches the whole
//! roster over `sync`. The admission spreads to everyone else through catch-up.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::error::{Error, Result};
use crate::hlc::wall_millis;
use crate::net::{Frame, Protocol};

use super::error::{MeshError, MeshResult};
use super::govern::{Action, Op, Role};
use super::invite::Invite;
use super::proto::{self, JoinRequest, JoinResponse, SyncRequest, SyncResponse};
use super::roster::{self, Cert, Member, Roster, MAX_ADDRESSES};
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
    /// Issues an invitation valid for `ttl` (admins only); returns the token and its expiry (ms).
    pub async fn invite(&self, ttl: Duration) -> Result<(String, u64)> {
        self.require_admin("issuing invitations")?;
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
        let roster = self.inner.state.roster();
        let invite = Invite {
            founding: roster.founding().unwrap_or_default(),
            mesh: roster.mesh.clone(),
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

    /// The inviter's side: checks the secret and the newcomer, signs its admission and applies
    /// it. A newcomer already admitted with this invitation and key gets its admission again (its
    /// first answer may never have arrived).
    pub(crate) async fn admit(&self, peer: PeerId, req: JoinRequest) -> MeshResult<Op> {
        let node = &self.inner.node;
        let hash = Invite::secret_hash(&req.secret);
        let issued: Option<Issued> = node.load_state(&issued_key(&hash))?;
        let issued = issued.ok_or_else(|| MeshError::refused("unknown invitation"))?;
        if issued.expires < wall_millis() {
            return Err(MeshError::refused("the invitation has expired"));
        }
        if req.member.peer_id != peer.to_string() {
            return Err(MeshError::refused(
                "the member's peer id is not the connection's",
            ));
        }
        let roster = self.inner.state.roster();
        if let Some(op) = readmission(&roster, &req.member, &hash) {
            tracing::info!(org = %req.member.org, %peer, "admission sent again");
            return Ok(op);
        }
        if let Some(e) = roster.entry(&req.member.org) {
            let what = if e.active() {
                "is already a member"
            } else {
                "was removed from the mesh"
            };
            return Err(MeshError::refused(format!("{} {what}", req.member.org)));
        }
        if !roster.is_admin(&node.config().org) {
            return Err(MeshError::refused("this node is not an admin of the mesh"));
        }
        let fresh = node.save_state_new(&used_key(&hash), &wall_millis()).await;
        if !fresh? {
            return Err(MeshError::refused("the invitation was already used"));
        }
        let org = req.member.org.clone();
        let action = Action::Admit {
            member: req.member,
            role: Role::Member,
            invitation: hash,
        };
        let op = self.sign_governance(action, Some(peer)).await?;
        tracing::info!(%org, %peer, "member admitted");
        Ok(op)
    }

    /// Signs a governance operation as this node, applies it, and tells the connected members
    /// (all but `newcomer`, which starts its own catch-up once it holds the roster: a Hello sent
    /// before that would reach a node that cannot yet know us).
    pub(crate) async fn sign_governance(
        &self,
        action: Action,
        newcomer: Option<PeerId>,
    ) -> Result<Op> {
        let node = &self.inner.node;
        let now = wall_millis();
        let op = self
            .inner
            .state
            .update_roster(node, |r| r.sign_and_apply(action, node.identity(), now))
            .await?
            .map_err(|e| match e {
                roster::Error::NotApplied(why) => Error::Forbidden(why),
                e => Error::Invalid(e.to_string()),
            })?;
        self.refresh_members().await?;
        self.mark_members_dirty(newcomer);
        self.retry_dirty().await;
        Ok(op)
    }

    /// The newcomer's side: redeems `token` with the inviter and adopts the mesh's roster.
    pub async fn join(&self, token: &str) -> Result<Roster> {
        let invite = Invite::decode(token).map_err(|e| {
            // The token's form is the contract's to state (400); one of that form that does
            // not decode to an invitation is refused (403).
            if e.is_malformed() {
                Error::Invalid(e.to_string())
            } else {
                Error::Forbidden(e.to_string())
            }
        })?;
        let cfg = self.inner.node.config();
        let mine = self.inner.state.roster();
        if invite.mesh != cfg.mesh {
            return Err(Error::Conflict(format!(
                "this node was initialized for mesh {:?}; the invitation is for {:?}",
                cfg.mesh, invite.mesh
            )));
        }
        let inviter: PeerId = invite
            .inviter_peer
            .parse()
            .map_err(|_| Error::Forbidden("invitation: bad inviter peer id".into()))?;
        if inviter == self.inner.net.local_peer_id() {
            return Err(Error::Conflict(
                "this invitation was issued by this node: redeem it on the node that joins".into(),
            ));
        }
        if mine.iter().count() > 1 {
            return Err(Error::Conflict(format!(
                "this node is already a member of mesh {} with {} members",
                mine.mesh,
                mine.iter().count()
            )));
        }
        for a in invite
            .addresses
            .iter()
            .take(MAX_ADDRESSES)
            .filter_map(|a| a.parse::<Multiaddr>().ok())
        {
            self.inner
                .net
                .add_address(inviter, a)
                .await
                .map_err(net_err)?;
        }
        let roster = self.redeem(inviter, &invite).await?;
        self.inner
            .state
            .update_roster(&self.inner.node, |r| *r = roster.clone())
            .await?;
        self.refresh_members().await?;
        tokio::spawn(self.clone().sync_with(inviter));
        tracing::info!(mesh = %roster.mesh, members = roster.iter().count(), "joined the mesh");
        self.inner.node.audit(
            audit::Event::ok(&cfg.org, audit::Action::Join).detail(format!(
                "mesh {}, invited by {}",
                roster.mesh, invite.inviter_org
            )),
        );
        Ok(roster)
    }

    async fn redeem(&self, inviter: PeerId, invite: &Invite) -> Result<Roster> {
        let secret = invite.secret.clone();
        let cfg = self.inner.node.config();
        let addrs = self.inner.net.listen_addrs().await.map_err(net_err)?;
        let addrs = reachable(addrs.iter().map(ToString::to_string).collect());
        let member = Member::of(
            self.inner.node.identity(),
            &cfg.mesh,
            &cfg.org,
            addrs.into_iter().take(MAX_ADDRESSES).collect(),
            wall_millis(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let me = member.author.clone();
        let req = Frame(proto::encode(&JoinRequest { secret, member }));
        let answer = self
            .inner
            .net
            .request(inviter, Protocol::Join, req)
            .await
            .map_err(net_err)?;
        let answer: JoinResponse =
            proto::decode("join answer", &answer.0).map_err(|e| Error::Invalid(e.to_string()))?;
        match answer {
            JoinResponse::Admitted { op } => match &op.body.action {
                Action::Admit { member, .. } if member.author == me => {}
                _ => {
                    return Err(Error::Invalid(
                        "the inviter's answer does not admit this node".into(),
                    ))
                }
            },
            JoinResponse::Refused { reason } => {
                return Err(Error::Forbidden(format!("the inviter refused: {reason}")))
            }
        }
        let SyncResponse::Roster(roster) =
            self.sync_request(inviter, &SyncRequest::Roster)
                .await
                .map_err(|e| crate::error::Unavailable::RosterNotFetched(e.to_string()))?
        else {
            return Err(Error::Invalid(
                "unexpected answer to a roster request".into(),
            ));
        };
        let roster =
            Roster::verified(&roster, wall_millis()).map_err(|e| Error::Invalid(e.to_string()))?;
        if roster.founding().unwrap_or_default() != invite.founding {
            return Err(Error::Invalid(
                "the roster sent back is not the mesh the invitation names (another founding)"
                    .into(),
            ));
        }
        match roster.by_org(&cfg.org) {
            Some(m) if m.author == me => Ok(roster),
            _ => Err(Error::Invalid(
                "the roster sent back does not include this node".into(),
            )),
        }
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
        let addrs: Vec<String> = reachable(addrs).into_iter().take(MAX_ADDRESSES).collect();
        let node = &self.inner.node;
        let now = wall_millis();
        let updated = self
            .inner
            .state
            .update_roster(node, |roster| {
                let me = roster.by_org(&node.config().org)?;
                if me.addresses == addrs {
                    return None;
                }
                let updated = Member {
                    addresses: addrs,
                    updated: now.max(me.updated.saturating_add(1)),
                    ..me
                };
                Some(roster.admit(Cert::sign(updated, node.identity()), now))
            })
            .await?;
        match updated {
            Some(Err(e)) => Err(Error::Internal(e.to_string())),
            // The members learn the new addresses now, not at their next round: a member
            // behind a NAT is reachable only at the relayed address it just took.
            Some(Ok(true)) => {
                self.mark_members_dirty(None);
                self.retry_dirty().await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The admission of `member` with the invitation `hash`, if the roster holds it.
fn readmission(roster: &Roster, member: &Member, hash: &str) -> Option<Op> {
    let entry = roster.entry(&member.org).filter(|e| e.active())?;
    let op = roster.log.ops.get(&entry.admitted_by)?;
    match &op.body.action {
        Action::Admit {
            member: m,
            invitation,
            ..
        } if m.author == member.author && invitation == hash => Some(op.clone()),
        _ => None,
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
