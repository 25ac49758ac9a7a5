//! Key rotation on the roster: signing an organization's rotation, the cap on a chain of them,
//! and the keys an organization signed with over time.

use crate::identity::{AuthorId, Identity};

use super::govern::{self, Action, Op};
use super::{Error, Member, Roster};

impl Roster {
    /// Signs the rotation of `old`'s key (this node's organization's current one) to `new`,
    /// with `addresses`, and applies it. `until`: the HLC time after which envelopes signed
    /// with `old` are refused.
    pub fn rotate(
        &mut self,
        old: &Identity,
        new: &Identity,
        addresses: Vec<String>,
        until: u64,
        now_ms: u64,
    ) -> Result<Op, Error> {
        let org = self
            .iter()
            .find(|m| m.author == old.author().to_string())
            .map(|m| m.org)
            .ok_or_else(|| Error::NotApplied("this node's key is not a current member's".into()))?;
        let member = Member::of(new, &self.mesh, &org, addresses, now_ms)?;
        let retired = old.author().to_string();
        let proof = govern::rotation_proof(&self.mesh, &org, &retired, new);
        let action = Action::Rotate {
            member,
            until,
            proof,
        };
        let op = Op::sign(&self.mesh, action, self.heads(), old, now_ms);
        // Peers would not store it: the node would restart with a key nobody knows.
        if self.rotations_before(&op, &org) >= govern::MAX_ROTATIONS {
            return Err(Error::NotApplied(format!(
                "{org} has rotated its key {} times, the most a mesh keeps",
                govern::MAX_ROTATIONS
            )));
        }
        self.apply(op.clone())?;
        Ok(op)
    }

    /// How many keys of `org` signed a rotation that the operation `op` saw (its held
    /// ancestors): a function of the operation alone, so every node decides alike whatever else
    /// it holds. A chain of rotations is capped at [`govern::MAX_ROTATIONS`]; rotations one key
    /// signed count once (a thief's of a retired key use up nothing).
    pub(super) fn rotations_before(&self, op: &Op, org: &str) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<&str> = op.body.deps.iter().map(String::as_str).collect();
        let mut signers = std::collections::HashSet::new();
        while let Some(id) = stack.pop() {
            let Some((k, o)) = self.log.ops.get_key_value(id) else {
                continue;
            };
            if !seen.insert(k.as_str()) {
                continue;
            }
            if matches!(&o.body.action, Action::Rotate { member, .. } if member.org == org) {
                signers.insert(o.body.author.as_str());
            }
            stack.extend(o.body.deps.iter().map(String::as_str));
        }
        signers.len()
    }

    /// Every key current member `org` signed with, each with the time (ms) up to which what
    /// it signed counts (`u64::MAX` for its current key).
    pub fn signing_keys(&self, org: &str) -> Vec<(AuthorId, u64)> {
        let Some(e) = self.state.entries.get(org).filter(|e| e.active()) else {
            return Vec::new();
        };
        let retired = e.retired.iter().filter_map(|r| {
            let until = crate::hlc::Timestamp(r.until).millis();
            r.member.author_id().map(|k| (k, until))
        });
        e.member
            .author_id()
            .map(|k| (k, u64::MAX))
            .into_iter()
            .chain(retired)
            .collect()
    }
}
