//! Grants on the datasets this node owns: issuing, revoking (a new key epoch when the grant
//! carried keys), expiring, listing; and keeping every entitled member's wrapped epoch keys in
//! place.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::{EpochKey, Grant, Grantee, Rights, WrappedKey};
use crate::apps::{Action, App};
use crate::audit::{self, Event};
use crate::error::{Error, Result};
use crate::hlc;
use crate::naming::DatasetId;
use crate::store::Table;

use super::access::{lock, my_keys, MemberKeys};
use super::dataset::Dataset;
use super::Node;

/// Longest grant lifetime accepted (ten years).
pub const MAX_GRANT_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// What an admin asks for when granting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// `owner/name` of a dataset this node owns.
    pub dataset: String,
    /// `org/app` or `org/*`.
    pub to: String,
    /// Any of `read`, `write`, `query` (`metrics` is refused: it is no grant's).
    pub rights: Vec<Action>,
    /// Only records whose name lies under this prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Lifetime such as `30d`, `12h`, `90m`, `3600s`; none: until revoked.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A grant as listed, with its state.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    /// The grant.
    #[serde(flatten)]
    pub grant: Grant,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

/// Parses `30d`, `12h`, `90m`, `45s` into milliseconds.
pub fn parse_ttl(s: &str) -> Result<u64> {
    let bad = || {
        Error::Invalid(format!(
            "expiry {s:?}: expected a number and d, h, m or s, e.g. 30d"
        ))
    };
    let t = s.trim();
    let (num, per) = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ]
    .into_iter()
    .find_map(|(unit, per)| t.strip_suffix(unit).map(|n| (n, per)))
    .ok_or_else(bad)?;
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = n
        .checked_mul(per)
        .filter(|ms| (1..=MAX_GRANT_TTL_MS).contains(ms));
    ms.ok_or_else(|| Error::Invalid(format!("expiry {s:?}: between 1s and 3650d")))
}

impl Node {
    /// Sets up the access state of a dataset this node just created: the first epoch key when
    /// it is sealed, and a read-and-query grant to every reader organization (returned).
    pub(crate) async fn init_access(&self, ds: &Arc<Dataset>) -> Result<Vec<Grant>> {
        if ds.meta.encrypted {
            // Stored (wrapped for this node) before any write can be sealed with it:
            // `access_changed` persists, then hands the key to the dataset.
            let key = EpochKey::generate();
            self.wrap_for_self(ds, 1, &key)?;
        }
        let mut issued = Vec::new();
        for reader in &ds.meta.readers {
            let grantee = Grantee::parse(&format!("{reader}/*"))
                .map_err(|e| Error::Invalid(e.to_string()))?;
            issued.push(self.sign_grant(
                ds,
                grantee,
                Rights::of(&[Action::Read, Action::Query]),
                None,
                None,
                false,
            )?);
        }
        self.access_changed(ds).await?;
        self.reconcile_keys(ds).await?;
        Ok(issued)
    }

    fn wrap_for_self(&self, ds: &Dataset, epoch: u64, key: &EpochKey) -> Result<()> {
        let me = &self.inner.identity;
        let w = WrappedKey::wrap(
            me,
            &ds.meta.id,
            epoch,
            key,
            me.author(),
            &me.agreement_public(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let fresh = lock(&ds.access)
            .merge_wrap(w, &me.author())
            .map_err(|e| Error::Internal(e.to_string()))?;
        if fresh {
            Ok(())
        } else {
            Err(crate::error::Unavailable::KeyTableFull(ds.meta.id.clone()).into())
        }
    }

    /// Signs and adds a grant on `ds` (owned here); `rotate` starts a new epoch with it.
    fn sign_grant(
        &self,
        ds: &Dataset,
        grantee: Grantee,
        rights: Rights,
        prefix: Option<String>,
        not_after: Option<u64>,
        rotate: bool,
    ) -> Result<Grant> {
        // Held while signing: a rotation's `until` is later than every grant the old key signed.
        let _signing = self.signing_now()?;
        let (cut, cuts) = self.grantee_cuts(ds, &grantee.org);
        let me = &self.inner.identity;
        let mut set = lock(&ds.access);
        let epoch = set.epoch() + u64::from(rotate);
        let now = hlc::wall_millis();
        let grant = Grant {
            id: ulid::Ulid::new().to_string(),
            dataset: ds.meta.id.clone(),
            grantee,
            rights,
            prefix,
            not_after,
            seq: set.next_seq(),
            epoch,
            cut,
            issued: now,
            cuts,
        };
        grant
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        set.merge_grant(grant.clone().sign(me), &me.author())
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(grant)
    }

    /// Wraps every epoch key this node holds for `ds` (owned here) for each member whose
    /// organization holds a live read or write grant and lacks it.
    pub(super) async fn reconcile_keys(&self, ds: &Arc<Dataset>) -> Result<()> {
        if !ds.meta.encrypted || ds.meta.id.owner() != self.inner.config.org {
            return Ok(());
        }
        let (keys, holders) = {
            let set = lock(&ds.access);
            (
                my_keys(&set, &self.inner.identity),
                set.key_holders(hlc::wall_millis()),
            )
        };
        let members: Vec<MemberKeys> = {
            let dir = self
                .inner
                .directory
                .read()
                .unwrap_or_else(|e| e.into_inner());
            holders
                .iter()
                .filter_map(|o| dir.0.get(o).filter(|m| !m.removed).cloned())
                .collect()
        };
        let me = &self.inner.identity;
        let mut added = 0;
        // Keys wrapped for a key this node rotated away: wrapped again for its current key.
        for (epoch, key) in &keys {
            if !lock(&ds.access).has_wrap(*epoch, &me.author()) {
                let w = WrappedKey::wrap(
                    me,
                    &ds.meta.id,
                    *epoch,
                    key,
                    me.author(),
                    &me.agreement_public(),
                )
                .map_err(|e| Error::Internal(e.to_string()))?;
                let fresh = lock(&ds.access).merge_wrap(w, &me.author());
                added += usize::from(fresh.map_err(|e| Error::Internal(e.to_string()))?);
            }
        }
        for m in members.iter().filter(|m| m.org != self.inner.config.org) {
            for (epoch, key) in &keys {
                if lock(&ds.access).has_wrap(*epoch, &m.author) {
                    continue;
                }
                // A member whose published key cannot be wrapped for (a low-order point, say)
                // gets no key; it must not stop delivery to the others.
                let w = match WrappedKey::wrap(me, &ds.meta.id, *epoch, key, m.author, &m.agreement)
                {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(org = %m.org, dataset = %ds.meta.id, error = %e, "cannot wrap a key for this member");
                        break;
                    }
                };
                let fresh = lock(&ds.access).merge_wrap(w, &me.author());
                added += usize::from(fresh.map_err(|e| Error::Internal(e.to_string()))?);
            }
        }
        if added > 0 {
            self.access_changed(ds).await?;
        }
        Ok(())
    }

    fn owned_for_admin(&self, caller: &App, id: &DatasetId, what: &str) -> Result<Arc<Dataset>> {
        Self::require_admin(caller, what)?;
        // A grant's cuts come from the members' keys, which the mesh tells once it runs.
        self.started("grants are issued and revoked")?;
        if id.owner() != self.inner.config.org {
            return Err(Error::Forbidden(format!(
                "{what}: dataset {id} is owned by {}; only its owner grants",
                id.owner()
            )));
        }
        self.held_loaded(id, || Error::NotFound(format!("dataset {id} not found")))
    }

    /// Issues a grant on a dataset this node owns (admin only) and delivers keys.
    pub async fn grant(&self, caller: &App, req: GrantRequest) -> Result<Grant> {
        let id = DatasetId::parse(&req.dataset)?;
        let ds = self.owned_for_admin(caller, &id, "granting")?;
        let grantee = Grantee::parse(&req.to).map_err(|e| Error::Invalid(e.to_string()))?;
        if self.is_removed(&grantee.org) {
            return Err(Error::Conflict(format!(
                "{} was removed from the mesh; it can be granted nothing",
                grantee.org
            )));
        }
        if req.rights.contains(&Action::Metrics) {
            return Err(Error::Invalid(
                "rights: read, write or query; metrics is a right of this node's apps, not of a grant"
                    .into(),
            ));
        }
        let rights = Rights::of(&req.rights);
        if rights.is_empty() {
            return Err(Error::Invalid(
                "a grant needs at least one right: read, write or query (revoke to remove)".into(),
            ));
        }
        if rights.needs_keys() && ds.meta.visibility == crate::dataset::Visibility::Private {
            // Well formed, but the dataset is private: a conflict with its state.
            return Err(Error::Conflict(format!(
                "{id} is private: its rows never leave this node, so only query can be granted"
            )));
        }
        let not_after = match &req.expires {
            Some(t) => Some(hlc::wall_millis() + parse_ttl(t)?),
            None => None,
        };
        let grant = self.sign_grant(&ds, grantee, rights, req.prefix, not_after, false)?;
        self.access_changed(&ds).await?;
        self.reconcile_keys(&ds).await?;
        tracing::info!(dataset = %id, grantee = %grant.grantee, rights = ?rights.actions(), "grant issued");
        self.audit(
            Event::ok(self.actor(caller), audit::Action::Grant)
                .dataset(&id)
                .detail(grant_detail(&grant)),
        );
        Ok(grant)
    }

    /// Revokes the grant `grant_id` (admin only): its grantee's standing grant becomes a
    /// revocation, and when the grantee held keys a new epoch starts whose key is wrapped only
    /// for the remaining key holders.
    pub async fn revoke(&self, caller: &App, grant_id: &str) -> Result<Grant> {
        Self::require_admin(caller, "revoking")?;
        self.started("grants are issued and revoked")?;
        let (ds, old) = self
            .owned_datasets()
            .into_iter()
            .find_map(|d| {
                let g = lock(&d.access).find(grant_id).cloned();
                g.map(|g| (d, g))
            })
            .ok_or_else(|| self.unknown_grant(grant_id))?;
        if old.rights.is_empty() {
            return Err(Error::Conflict(format!(
                "grant {grant_id} is already revoked"
            )));
        }
        self.ready(&ds)?;
        let tomb = self.revoke_in(&ds, &old).await?;
        let key = format!("revoked-grant/{grant_id}");
        self.inner
            .store
            .put_json(Table::Meta, key.as_bytes(), &tomb.id)?;
        self.inner.store.durable().await?;
        let detail = format!(
            "grant {grant_id} of {}; {}",
            old.grantee,
            grant_detail(&tomb)
        );
        self.audit(
            Event::ok(self.actor(caller), audit::Action::Revoke)
                .dataset(&ds.meta.id)
                .detail(detail),
        );
        Ok(tomb)
    }

    /// 409 for a grant this node revoked earlier (its revocation replaced it), else 404.
    fn unknown_grant(&self, id: &str) -> Error {
        let key = format!("revoked-grant/{id}");
        match self
            .inner
            .store
            .get_json::<String>(Table::Meta, key.as_bytes())
        {
            Ok(Some(by)) => Error::Conflict(format!("grant {id} is already revoked (by {by})")),
            _ => Error::NotFound(format!("grant {id} not found")),
        }
    }

    /// Revokes every expired grant that carried keys on the datasets this node owns, so the
    /// expired grantee gets no key for what is written next. The daemon runs it with the
    /// retention sweep. Returns how many it revoked.
    pub async fn expire_grants(&self) -> Result<usize> {
        let now = hlc::wall_millis();
        self.revoke_where(|g| !g.live(now), "expired").await
    }

    /// Revokes every standing grant to `org` on the datasets this node owns (the organization
    /// was removed from the mesh): a new key epoch starts without it wherever it held keys.
    /// Returns how many grants it revoked; none when there is nothing left to revoke.
    pub async fn revoke_org(&self, org: &str) -> Result<usize> {
        self.revoke_where(
            |g| g.grantee.org == org,
            "revoked: its organization was removed from the mesh",
        )
        .await
    }

    /// Revokes every standing grant (one with rights) on the datasets this node owns that
    /// `matches`, noting `why` in the audit log; returns how many.
    async fn revoke_where(&self, matches: impl Fn(&Grant) -> bool, why: &str) -> Result<usize> {
        let mut n = 0;
        for ds in self.owned_datasets() {
            // The mesh and the sweep run once every dataset is loaded; a caller before that
            // is refused rather than a grant left standing.
            self.ready(&ds)?;
            let standing: Vec<Grant> = lock(&ds.access)
                .grants()
                .map(|g| g.grant.clone())
                .filter(|g| !g.rights.is_empty() && matches(g))
                .collect();
            for g in standing {
                match self.revoke_in(&ds, &g).await {
                    Ok(tomb) => {
                        n += 1;
                        let detail = format!(
                            "grant {} of {} {why}; {}",
                            g.id,
                            g.grantee,
                            grant_detail(&tomb)
                        );
                        let me = self.inner.config.org.clone();
                        self.audit(
                            Event::ok(me, audit::Action::Revoke)
                                .dataset(&ds.meta.id)
                                .detail(detail),
                        );
                    }
                    // Replaced meanwhile (a new grant, a revocation): nothing to revoke.
                    Err(Error::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    async fn revoke_in(&self, ds: &Arc<Dataset>, old: &Grant) -> Result<Grant> {
        let ds = ds.clone();
        if lock(&ds.access).find(&old.id).is_none() {
            return Err(Error::Conflict(format!(
                "grant {} no longer stands",
                old.id
            )));
        }
        let rotate = ds.meta.encrypted && old.rights.needs_keys();
        let tomb = self.sign_grant(&ds, old.grantee.clone(), Rights::NONE, None, None, rotate)?;
        if rotate {
            // Stored before use: the key reaches the dataset only once its wrap is durable.
            let key = EpochKey::generate();
            self.wrap_for_self(&ds, tomb.epoch, &key)?;
        }
        self.access_changed(&ds).await?;
        self.reconcile_keys(&ds).await?;
        tracing::info!(dataset = %ds.meta.id, grantee = %old.grantee, epoch = tomb.epoch, "grant revoked");
        Ok(tomb)
    }

    /// Standing grants of every dataset held (admin only), revocations included.
    pub fn grants(&self, caller: &App) -> Result<Vec<GrantView>> {
        Self::require_admin(caller, "listing grants")?;
        let mut out = Vec::new();
        self.each_grant(|g, state| {
            out.push(GrantView {
                grant: g.clone(),
                state,
            })
        });
        out.sort_by(|a, b| (&a.grant.dataset, a.grant.seq).cmp(&(&b.grant.dataset, b.grant.seq)));
        Ok(out)
    }

    /// How many grants of the datasets held are in each state (for the metrics).
    pub(super) fn grant_states(&self) -> Vec<(&'static str, i64)> {
        let mut counts = vec![("active", 0), ("expired", 0), ("revoked", 0)];
        self.each_grant(|_, state| {
            if let Some((_, n)) = counts.iter_mut().find(|(s, _)| *s == state) {
                *n += 1;
            }
        });
        counts
    }

    /// Calls `f` with every standing grant of every dataset held, revocations included, and
    /// its state: `active`, `expired` or `revoked`.
    fn each_grant(&self, mut f: impl FnMut(&Grant, &'static str)) {
        let now = hlc::wall_millis();
        for ds in self.all_datasets() {
            for g in lock(&ds.access).grants() {
                let state = match &g.grant {
                    g if g.rights.is_empty() => "revoked",
                    g if !g.live(now) => "expired",
                    _ => "active",
                };
                f(&g.grant, state);
            }
        }
    }
}

/// How the audit log describes a grant or a revocation.
pub(super) fn grant_detail(g: &Grant) -> String {
    let rights: Vec<String> = g
        .rights
        .actions()
        .iter()
        .map(|a| format!("{a:?}").to_lowercase())
        .collect();
    let mut d = format!(
        "{} {} to {}; key epoch {}",
        g.id,
        if rights.is_empty() {
            "nothing".to_owned()
        } else {
            rights.join(",")
        },
        g.grantee,
        g.epoch
    );
    if let Some(p) = &g.prefix {
        d.push_str(&format!("; prefix {p}"));
    }
    if let Some(t) = g.not_after {
        d.push_str(&format!("; until {t}"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_and_bad_ones_are_errors_not_panics() {
        assert_eq!(parse_ttl("30d").expect("ok"), 30 * 86_400_000);
        assert_eq!(parse_ttl(" 90m ").expect("ok"), 5_400_000);
        assert_eq!(parse_ttl("1s").expect("ok"), 1_000);
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "0d",
            "3651d",
            "30é",
            "é",
            "-1d",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }
}
