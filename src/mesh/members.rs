//! Governing the membership from this node: removing members and changing roles (admins only),
//! listing them, and acting on every roster change, whoever made it: the network layer learns who
//! the members are and whom to refuse, the node learns their keys, and the datasets this node owns
//! stop granting anything to a removed organization (a new key epoch without it).

use std::collections::HashSet;

use libp2p::PeerId;

use crate::error::{Error, Result};

use crate::audit;

use super::govern::{Action, Op, Role};
use super::roster::{Listed, Member, Roster};
use super::{member_keys, net_err, Mesh};

impl Mesh {
    /// Fails with 403 unless this node's organization is a current admin of the mesh.
    pub(crate) fn require_admin(&self, what: &str) -> Result<()> {
        let roster = self.inner.state.roster();
        let org = &self.inner.node.config().org;
        if roster.is_admin(org) {
            return Ok(());
        }
        let admins: Vec<String> = roster
            .list()
            .into_iter()
            .filter(|l| l.role == Role::Admin && l.state == "active")
            .map(|l| l.org)
            .collect();
        Err(Error::Forbidden(format!(
            "{what} is for admins of the mesh; {org} is not one (admins: {})",
            admins.join(", ")
        )))
    }

    /// Removes `org` from the mesh (admins only). Every node that learns of it disconnects the
    /// organization and refuses it from then on; its owners revoke its grants.
    pub async fn remove_member(&self, org: &str) -> Result<Op> {
        self.require_admin("removing a member")?;
        if org == self.inner.node.config().org {
            return Err(Error::Invalid(format!(
                "{org} is this node's own organization: another admin must remove it"
            )));
        }
        self.check_target(org)?;
        let op = self
            .sign_governance(
                Action::Remove {
                    org: org.to_owned(),
                },
                None,
            )
            .await?;
        tracing::warn!(%org, "member removed");
        self.audit_governance(audit::Action::MemberRemove, format!("{org} removed"), &op);
        Ok(op)
    }

    /// Changes the role of `org` (admins only).
    pub async fn set_role(&self, org: &str, role: Role) -> Result<Op> {
        self.require_admin("changing roles")?;
        self.check_target(org)?;
        let roster = self.inner.state.roster();
        if roster.entry(org).is_some_and(|e| e.role == role) {
            return Err(Error::Conflict(format!(
                "{org} is already {}",
                role.as_str()
            )));
        }
        let op = self
            .sign_governance(
                Action::Role {
                    org: org.to_owned(),
                    role,
                },
                None,
            )
            .await?;
        tracing::info!(%org, role = role.as_str(), "role changed");
        let what = format!("{org} made {}", role.as_str());
        self.audit_governance(audit::Action::RoleChange, what, &op);
        Ok(op)
    }

    fn audit_governance(&self, action: audit::Action, what: String, op: &Op) {
        let me = self.inner.node.config().org.clone();
        let detail = format!("{what}; governance operation {}", op.id());
        self.inner
            .node
            .audit(audit::Event::ok(me, action).detail(detail));
    }

    /// Notes in the audit log the removals this node learnt from others (its own are noted
    /// when it signs them).
    pub(crate) fn audit_learnt_removals(&self, before: &Roster, after: &Roster) {
        let me = &self.inner.node.config().org;
        let listed = after.list();
        for l in &listed {
            let (Some(op_id), true) = (&l.removed_by, before.by_org(&l.org).is_some()) else {
                continue;
            };
            let by = after
                .log
                .ops
                .get(op_id)
                .and_then(|op| listed.iter().find(|m| m.author == op.body.author))
                .map_or_else(|| "unknown".to_owned(), |m| m.org.clone());
            if by == *me {
                continue;
            }
            let detail = format!(
                "{} removed by {by}, learnt from the roster; operation {op_id}",
                l.org
            );
            self.inner
                .node
                .audit(audit::Event::ok(by, audit::Action::MemberRemove).detail(detail));
        }
    }

    fn check_target(&self, org: &str) -> Result<()> {
        crate::naming::validate_ident("organization", org)?;
        match self.inner.state.roster().entry(org) {
            None => Err(Error::NotFound(format!(
                "{org} is not a member of the mesh"
            ))),
            Some(e) if !e.active() => Err(Error::Conflict(format!("{org} was already removed"))),
            Some(_) => Ok(()),
        }
    }

    /// Every organization ever admitted, with its role and whether it was removed.
    pub fn members(&self) -> Vec<Listed> {
        self.inner.state.roster().list()
    }

    /// Tells the network layer who the members are, where they were last seen and whom to
    /// refuse; tells the node their keys; revokes removed organizations' grants on the datasets
    /// this node owns. Run after every roster change.
    pub(crate) async fn refresh_members(&self) -> Result<()> {
        // One at a time, each on the roster as it is once it runs: a run on an older roster
        // finishing last would restore its ban list and member keys.
        let _one = self.inner.refreshing.lock().await;
        let roster = self.inner.state.roster();
        let keys = roster.entries().filter_map(member_keys).collect();
        self.inner.node.set_members(keys).await?;
        let mut members = HashSet::new();
        for m in roster.iter() {
            let Ok(peer) = m.peer_id.parse::<PeerId>() else {
                continue;
            };
            members.insert(peer);
            for a in m.addresses.iter().filter_map(|a| a.parse().ok()) {
                self.inner.net.add_address(peer, a).await.map_err(net_err)?;
            }
        }
        self.inner.net.set_members(members).await.map_err(net_err)?;
        let banned = roster.removed_keys();
        self.inner.net.ban(peers(&banned)).await.map_err(net_err)?;
        for e in roster.entries().filter(|e| !e.active()) {
            let org = &e.member.org;
            let n = self.inner.node.revoke_org(org).await?;
            if n > 0 {
                tracing::warn!(%org, grants = n, "grants of a removed member revoked");
            }
        }
        Ok(())
    }
}

fn peers(members: &[Member]) -> HashSet<PeerId> {
    members
        .iter()
        .filter_map(|m| m.peer_id.parse().ok())
        .collect()
}
