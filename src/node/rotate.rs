//! This node's side of a key rotation: new keys staged on disk, signing with the current key
//! stopped at one instant (the rotation's `until`), the signed rotation committed, the new keys
//! put in place and a restart requested (the node's PeerId changes with its key). The mesh
//! signs and spreads the rotation between [`Node::begin_key_rotation`] and
//! [`Node::finish_key_rotation`]; see `identity::rotation` for the files.

use crate::error::{Error, Result};
use crate::identity::{rotation, Identity};

use super::Node;

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
            return Err(Error::Unavailable(
                "this node's keys are being rotated; it restarts with its new keys in a few \
                 seconds: retry then"
                    .into(),
            ));
        }
        Ok(gate)
    }

    /// Like [`Self::signing`], for code that cannot wait: refuses while a rotation begins.
    pub(super) fn signing_now(&self) -> Result<tokio::sync::RwLockReadGuard<'_, bool>> {
        match self.inner.signing_stopped.try_read() {
            Ok(gate) if !*gate => Ok(gate),
            _ => Err(Error::Unavailable(
                "this node's keys are being rotated; retry once it has restarted".into(),
            )),
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

    /// Whether the node asked to be restarted.
    pub fn restart_pending(&self) -> bool {
        *self.inner.restart.borrow()
    }

    /// The signed rotations of the keys this node rotated away, as committed.
    pub fn rotations(&self) -> &[Vec<u8>] {
        &self.inner.rotations
    }
}
