//! Invitation tokens: `fm-invite-` + base64url(JSON). A token names the mesh, the inviting node and
//! where to reach it, and carries a one-time secret; the inviter keeps only the secret's hash, with
//! the expiry, and consumes it on first use.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every invitation token.
pub const PREFIX: &str = "fm-invite-";
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// Mesh name.
    pub mesh: String,
    /// Inviter's organization.
    pub inviter_org: String,
    /// Inviter's PeerId.
    pub inviter_peer: String,
    /// Multiaddrs of the inviter (may be empty: found by mDNS then).
    pub addresses: Vec<String>,
    /// Hex one-time secret.
    pub secret: String,
    /// Expiry, ms since the epoch.
    pub expires: u64,
    /// Id of the mesh's founding governance operation: the newcomer adopts only a roster that
    /// grows from it, so an inviter cannot hand it a made-up mesh of the same name.
    #[serde(default)]
    pub founding: String,
}

/// A token that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid invitation token: {0}")]
pub struct Error(pub &'static str);

impl Error {
    /// Whether the token is not of an invitation's form at all (too long, or without the
    /// prefix), rather than of that form but not an invitation.
    pub fn is_malformed(&self) -> bool {
        self.0 == TOO_LONG || self.0 == NO_PREFIX
    }
}

const TOO_LONG: &str = "too long";
const NO_PREFIX: &str = "it must start with fm-invite-";

impl Invite {
    /// The token string.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses a token string.
    pub fn decode(token: &str) -> Result<Self, Error> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error(TOO_LONG));
        }
        let body = token.strip_prefix(PREFIX).ok_or(Error(NO_PREFIX))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| Error("not base64url"))?;
        serde_json::from_slice(&json).map_err(|_| Error("not an invitation"))
    }

    /// The stored form of the secret.
    pub fn secret_hash(secret_hex: &str) -> String {
        hex::encode(Sha256::digest(secret_hex.as_bytes()))
    }
}

/// A fresh random secret, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let i = Invite {
            mesh: "flu".into(),
            inviter_org: "hospital".into(),
            inviter_peer: "12D3Koo".into(),
            addresses: vec!["/ip4/127.0.0.1/tcp/7071".into()],
            secret: new_secret(),
            expires: 5,
            founding: "ab".repeat(32),
        };
        assert_eq!(Invite::decode(&i.encode()), Ok(i));
        assert!(Invite::decode("hello").is_err());
        assert!(Invite::decode("fm-invite-!!!").is_err());
        assert!(
            Invite::decode("fm-invite-e30").is_err(),
            "{{}} lacks fields"
        );
        assert_ne!(Invite::secret_hash("a"), Invite::secret_hash("b"));
    }
}
