//! This node's side of a key rotation: new keys staged on disk, signing with the current key
//! stopped at one instant (the rotation's `until`), the signed rotation committed, the new keys
//! put in place and a restart requested (the node's PeerId changes with its key). The mesh
//! signs and spreads the rotation between [`Node::begin_key_rotation`] and
//! [`Node::finish_key_rotation`]; see `identity::rotation` for the files.

use crate::error::{Error, Result};
use crate::hlc;
use crate::identity::{rotation, Identity};

use super::access::lock;
use super::Node;

/// Where the key that last re-signed this node's access state is noted.
const RESIGNED_KEY: &str = "access/resigned-by";

/// What a key rotation started: the staged keys and the HLC time after which the current key
/// signs nothing.
pub struct Begun {
    /// The keys rotated to.
    pub new: Identity,
    /// Envelopes signed with the current key are dated at most this.
    pub until: u64,
}

impl Node {
    fn rotation_home(&self) -> Result<&std::path::Path> {
        self.inner.home.as_deref().ok_or_else(|| {
            Error::Invalid("a node opened without a home directory cannot rotate its keys".into())
        })
    }

    /// Refuses to sign with a key being rotated away.
    pub(super) async fn signing(&self) -> Result<tokio::sync::RwLockReadGuard<'_, bool>> {
        let gate = self.inner.signing_stopped.read().await;
        if *gate {
            return Err(crate::error::Unavailable::Rotating.into());
        }
        Ok(gate)
    }

    /// Like [`Self::signing`], for code that cannot wait: refuses while a rotation begins.
    pub(super) fn signing_now(&self) -> Result<tokio::sync::RwLockReadGuard<'_, bool>> {
        match self.inner.signing_stopped.try_read() {
            Ok(gate) if !*gate => Ok(gate),
            _ => Err(crate::error::Unavailable::Rotating.into()),
        }
    }

    /// Stages new keys and stops signing with the current ones once every write in progress
    /// is stored.
    pub async fn begin_key_rotation(&self) -> Result<Begun> {
        let home = self.rotation_home()?.to_owned();
        let mut gate = self.inner.signing_stopped.write().await;
        if *gate {
            return Err(Error::Conflict(
                "a key rotation is under way; the node restarts once it ends".into(),
            ));
        }
        let new = tokio::task::spawn_blocking(move || rotation::stage(&home))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        *gate = true;
        // Every write took its time before the gate closed: this one is later than all.
        let until = self.inner.clock.tick().0;
        Ok(Begun { new, until })
    }

    /// Records the signed rotation (`rotation`, opaque here): from now on it happens.
    pub async fn commit_key_rotation(&self, rotation: Vec<u8>) -> Result<()> {
        let home = self.rotation_home()?.to_owned();
        tokio::task::spawn_blocking(move || rotation::commit(&home, &rotation))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        Ok(())
    }

    /// Gives up a rotation not committed: the staged keys are deleted and signing resumes.
    pub async fn abort_key_rotation(&self) {
        let mut gate = self.inner.signing_stopped.write().await;
        if let Ok(home) = self.rotation_home() {
            if let Err(e) = rotation::discard(home) {
                tracing::warn!(error = %e, "staged keys of an aborted rotation not deleted");
            }
        }
        *gate = false;
    }

    /// Puts the new keys in place and asks the process to restart with them.
    pub async fn finish_key_rotation(&self) -> Result<()> {
        let home = self.rotation_home()?.to_owned();
        tokio::task::spawn_blocking(move || rotation::finish(&home))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        self.inner.restart.send_replace(true);
        Ok(())
    }

    /// Resolves once the node asked to be restarted (its keys changed).
    pub async fn restart_requested(&self) {
        let mut rx = self.inner.restart.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// After a key rotation: signs again, with the current key, every grant and wrapped key of
    /// the datasets this node owns that a retired key signed (other nodes take nothing new from
    /// a retired key, and these copies supersede the old ones everywhere). Once per key; returns
    /// how many items were signed again.
    pub async fn resign_access(&self) -> Result<usize> {
        let me = &self.inner.identity;
        let author = me.author().to_string();
        if me.past().is_empty() || self.load_state::<String>(RESIGNED_KEY)? == Some(author.clone())
        {
            return Ok(0);
        }
        let _signing = self.signing().await?;
        let mut total = 0;
        for ds in self.owned_datasets() {
            let n = {
                let mut set = lock(&ds.access);
                let mut n = 0;
                let stale: Vec<_> = set
                    .grants()
                    .filter(|g| g.verify(&me.author()).is_err())
                    .cloned()
                    .collect();
                for g in stale {
                    let again = g.grant.reissued(set.next_seq(), hlc::wall_millis());
                    set.merge_grant(again.sign(me), &me.author())
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    n += 1;
                }
                let stale: Vec<_> = set
                    .wraps()
                    .filter(|w| !w.signed_by(&me.author()))
                    .cloned()
                    .collect();
                for w in stale {
                    set.merge_wrap(w.resigned(me), &me.author())
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    n += 1;
                }
                n
            };
            if n > 0 {
                self.access_changed(&ds).await?;
                total += n;
            }
        }
        self.save_state(RESIGNED_KEY, &author).await?;
        Ok(total)
    }

    /// Whether the node asked to be restarted.
    pub fn restart_pending(&self) -> bool {
        *self.inner.restart.borrow()
    }

    /// The signed rotations of the keys this node rotated away, as committed.
    pub fn rotations(&self) -> &[Vec<u8>] {
        &self.inner.rotations
    }
}
