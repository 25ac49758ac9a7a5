//! Node identity: one ed25519 key (signs envelopes; its libp2p PeerId names the node) and one
//! X25519 key (receives wrapped dataset keys). Both live in the node's home directory, mode 0600.
//! Keys rotated away stay beside them ([`rotation`]), to open what was wrapped for them.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

pub mod rotation;

/// File name of the ed25519 secret key inside the home directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the X25519 secret key inside the home directory.
pub const AGREEMENT_FILE: &str = "x25519.key";

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A key file does not hold a 32-byte key.
    #[error("key file {path} is malformed: expected 32 bytes, found {len}")]
    Malformed {
        /// The file.
        path: String,
        /// Bytes found.
        len: usize,
    },
    /// libp2p refused the key.
    #[error("deriving the peer id: {0}")]
    PeerId(String),
}

/// An author of envelopes: an ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthorId([u8; 32]);

impl AuthorId {
    /// Wraps 32 raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// Wraps a slice if it is 32 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }

    /// Parses the hex form that `Display` prints.
    pub fn from_hex(s: &str) -> Option<Self> {
        hex::decode(s).ok().and_then(|b| Self::from_slice(&b))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `sig` over `msg` strictly (no malleable or small-order keys).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }
}

impl serde::Serialize for AuthorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Debug for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The node's keys.
pub struct Identity {
    signing: SigningKey,
    agreement: x25519_dalek::StaticSecret,
    /// Keys this node rotated away: they still open keys wrapped for them.
    past: Vec<Identity>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("author", &self.author())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Fresh random keys.
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        Self {
            signing: SigningKey::generate(&mut rng),
            agreement: x25519_dalek::StaticSecret::random_from_rng(rng),
            past: Vec::new(),
        }
    }

    /// Keys derived from a seed (tests and benchmarks only need reproducible identities).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut second = seed;
        second[0] ^= 0x5a;
        Self {
            signing: SigningKey::from_bytes(&seed),
            agreement: x25519_dalek::StaticSecret::from(second),
            past: Vec::new(),
        }
    }

    /// Writes both secret keys into `dir` with mode 0600, refusing to overwrite.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        write_secret(&dir.join(IDENTITY_FILE), &self.signing.to_bytes())?;
        write_secret(&dir.join(AGREEMENT_FILE), &self.agreement.to_bytes())
    }

    /// Reads both keys from `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let signing = read_secret(&dir.join(IDENTITY_FILE))?;
        let agreement = read_secret(&dir.join(AGREEMENT_FILE))?;
        Ok(Self {
            signing: SigningKey::from_bytes(&signing),
            agreement: x25519_dalek::StaticSecret::from(*agreement),
            past: Vec::new(),
        })
    }

    /// The same keys, with `past` as the keys rotated away.
    pub fn with_past(mut self, past: Vec<Identity>) -> Self {
        self.past = past;
        self
    }

    /// Keys this node rotated away (in no particular order).
    pub fn past(&self) -> &[Identity] {
        &self.past
    }

    /// This identity, then every key it rotated away.
    pub fn all(&self) -> impl Iterator<Item = &Identity> {
        std::iter::once(self).chain(self.past.iter())
    }

    /// This node's author id (its ed25519 public key).
    pub fn author(&self) -> AuthorId {
        AuthorId(self.signing.verifying_key().to_bytes())
    }

    /// The X25519 public key others wrap dataset keys for.
    pub fn agreement_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.agreement).to_bytes()
    }

    /// The X25519 secret, for opening keys wrapped for this node.
    pub(crate) fn agreement_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.agreement.to_bytes())
    }

    /// Signs `msg` with the identity key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The libp2p keypair for the same ed25519 key, so the PeerId names this identity.
    pub fn libp2p_keypair(&self) -> Result<libp2p::identity::Keypair, Error> {
        let mut secret = Zeroizing::new(self.signing.to_bytes());
        libp2p::identity::Keypair::ed25519_from_bytes(&mut *secret)
            .map_err(|e| Error::PeerId(e.to_string()))
    }

    /// The libp2p PeerId, derived from the identity key.
    pub fn peer_id(&self) -> Result<libp2p::PeerId, Error> {
        Ok(self.libp2p_keypair()?.public().to_peer_id())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `path` with mode 0600 (never overwriting) and writes `bytes`, synced.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn read_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>, Error> {
    let bytes = Zeroizing::new(fs::read(path).map_err(io_err(path))?);
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Malformed {
        path: path.display().to_string(),
        len: bytes.len(),
    })?;
    Ok(Zeroizing::new(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_files_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::generate();
        id.save(dir.path()).expect("save");
        let back = Identity::load(dir.path()).expect("load");
        assert_eq!(back.author(), id.author());
        assert_eq!(back.agreement_public(), id.agreement_public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(id.save(dir.path()).is_err(), "refuses to overwrite");
    }

    #[test]
    fn the_peer_id_is_derived_from_the_identity_key() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([1; 32]);
        let c = Identity::from_seed([2; 32]);
        assert_eq!(a.peer_id().expect("id"), b.peer_id().expect("id"));
        assert_ne!(a.peer_id().expect("id"), c.peer_id().expect("id"));
    }

    #[test]
    fn signatures_verify_only_for_their_message() {
        let id = Identity::from_seed([3; 32]);
        let sig = id.sign(b"hello");
        assert!(id.author().verify(b"hello", &sig));
        assert!(!id.author().verify(b"hellO", &sig));
    }
}
