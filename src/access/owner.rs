//! Who signs a dataset's access items (grants and wrapped keys): the owner's key, or, once the
//! owner's organization rotated its key, any key it had. A retired key's grants count only up to
//! the rotation; wrapped keys carry no date, so any key the organization had verifies them (a
//! thief of a retired key could only wrap a key of its own choosing, disclosing nothing).

use crate::identity::AuthorId;

/// Checks a signature over an access item.
pub trait Signers {
    /// Whether one of the keys signed `msg` with `sig`; `issued_ms` is the item's signing time
    /// when it has one (a grant), checked against a retired key's rotation.
    fn signed(&self, msg: &[u8], sig: &[u8; 64], issued_ms: Option<u64>) -> bool;
}

impl Signers for AuthorId {
    fn signed(&self, msg: &[u8], sig: &[u8; 64], _issued_ms: Option<u64>) -> bool {
        self.verify(msg, sig)
    }
}

/// The keys an owner organization signed with: each with the time (ms) up to which its grants
/// count (`u64::MAX` for the current key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerKeys(Vec<(AuthorId, u64)>);

impl OwnerKeys {
    /// One key, valid without limit.
    pub fn one(key: AuthorId) -> Self {
        Self(vec![(key, u64::MAX)])
    }

    /// Adds `key`, valid up to `until_ms`; a key held already keeps the later limit.
    pub fn add(&mut self, key: AuthorId, until_ms: u64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, u)) => *u = (*u).max(until_ms),
            None => self.0.push((key, until_ms)),
        }
    }

    /// The keys, in the order added.
    pub fn keys(&self) -> impl Iterator<Item = &AuthorId> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl Signers for OwnerKeys {
    fn signed(&self, msg: &[u8], sig: &[u8; 64], issued_ms: Option<u64>) -> bool {
        // Newest first: most items are signed with the current key.
        self.0
            .iter()
            .rev()
            .any(|(k, until)| issued_ms.is_none_or(|t| t <= *until) && k.verify(msg, sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_retired_key_signs_only_what_it_signed_before_its_rotation() {
        let (old, new) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let mut keys = OwnerKeys::one(new.author());
        keys.add(old.author(), 1_000);
        let sig = old.sign(b"grant");
        assert!(keys.signed(b"grant", &sig, Some(1_000)));
        assert!(
            !keys.signed(b"grant", &sig, Some(1_001)),
            "signed after the rotation"
        );
        assert!(keys.signed(b"grant", &sig, None), "an undated item");
        assert!(keys.signed(b"grant", &new.sign(b"grant"), Some(5_000)));
        let outsider = Identity::from_seed([3; 32]);
        assert!(!keys.signed(b"grant", &outsider.sign(b"grant"), None));
    }
}
