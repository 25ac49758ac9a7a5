//! Who signs a dataset's access items (grants and wrapped keys): the owner organization's
//! current key. Once it rotated its key, items its retired keys signed stay where they are held
//! (they were checked when they came), but no new one is taken: the owner signs its whole access
//! state again with its new key when it restarts, and those copies supersede the old ones
//! everywhere. So the thief of a retired key cannot add a grant or wrap a key of its choosing.

use crate::identity::AuthorId;

/// Checks a signature over an access item.
pub trait Signers {
    /// Whether a key that may sign new items signed `msg` with `sig`.
    fn signed(&self, msg: &[u8], sig: &[u8; 64]) -> bool;
}

impl Signers for AuthorId {
    fn signed(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.verify(msg, sig)
    }
}

/// The keys an owner organization signed with, each marked current (signs new items) or
/// retired (what it signed is kept where held, nothing new is taken).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerKeys(Vec<(AuthorId, bool)>);

impl OwnerKeys {
    /// One current key.
    pub fn one(key: AuthorId) -> Self {
        Self(vec![(key, true)])
    }

    /// Adds `key`, current or retired; a key added twice is current if either says so.
    pub fn add(&mut self, key: AuthorId, current: bool) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, c)) => *c |= current,
            None => self.0.push((key, current)),
        }
    }

    /// Every key, current and retired, in the order added.
    pub fn keys(&self) -> impl Iterator<Item = &AuthorId> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl Signers for OwnerKeys {
    fn signed(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.0
            .iter()
            .any(|(k, current)| *current && k.verify(msg, sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_retired_key_signs_nothing_new() {
        let (old, new) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let mut keys = OwnerKeys::one(new.author());
        keys.add(old.author(), false);
        assert!(!keys.signed(b"grant", &old.sign(b"grant")));
        assert!(keys.signed(b"grant", &new.sign(b"grant")));
        let outsider = Identity::from_seed([3; 32]);
        assert!(!keys.signed(b"grant", &outsider.sign(b"grant")));
        assert_eq!(
            keys.keys().count(),
            2,
            "both are kept, to open what is held"
        );
    }
}
