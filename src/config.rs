//! Node configuration: what `config.toml` holds, with every field's default.
//!
//! Layering (defaults < file < environment < flags) happens in the binary; this module defines the
//! fields, their defaults and the commented file `fogmesh init` writes.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::naming;

/// Name of the configuration file inside the home directory.
pub const FILE: &str = "config.toml";
/// Default address of the HTTP API.
pub const DEFAULT_API: &str = "127.0.0.1:7070";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the file failed.
    #[error("config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A field holds a bad value.
    #[error("config: {0}")]
    Invalid(String),
}

/// Largest `max_body_bytes` accepted: a batch's Automerge change stays well under
/// [`crate::envelope::MAX_PAYLOAD`].
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Longest audit retention accepted, in days (100 years).
pub const MAX_AUDIT_DAYS: u32 = 36_500;
/// Fewest audit entries a node may be configured to keep.
pub const MIN_AUDIT_ENTRIES: u64 = 100;
/// Most audit entries a node may be configured to keep (entries are at most about 1.5 KiB).
pub const MAX_AUDIT_ENTRIES: u64 = 100_000_000;

/// Everything a node is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's organization, e.g. `hospital`.
    pub org: String,
    /// The mesh it belongs to, e.g. `flu-response`.
    pub mesh: String,
    /// Address of the HTTP API (local apps and the CLI).
    pub api: SocketAddr,
    /// libp2p listen addresses for peers.
    pub listen: Vec<String>,
    /// Members to reach across networks (multiaddrs ending in `/p2p/<peer id>`), for Kademlia
    /// and the first dials; on a LAN, mDNS finds members without them.
    pub bootstrap: Vec<String>,
    /// Discover members on the local network with mDNS.
    pub mdns: bool,
    /// Envelopes written to one dataset between two snapshots of its document.
    pub snapshot_every: u64,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Federated aggregates and search: groups with fewer rows than this are never sent to
    /// another organization.
    pub min_group_size: u64,
    /// Audit entries older than this many days are pruned (checked every minute).
    pub audit_retention_days: u32,
    /// Most audit entries kept; the oldest are pruned as new ones are appended.
    pub audit_max_entries: u64,
    /// Most datasets of one other member this node adopts; past it, that member's new
    /// descriptions are refused (logged), so no member can fill this node with datasets.
    pub max_datasets_per_member: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            org: String::new(),
            mesh: String::new(),
            api: DEFAULT_API
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7070))),
            listen: vec![
                "/ip4/0.0.0.0/tcp/7071".into(),
                "/ip4/0.0.0.0/udp/7071/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            snapshot_every: 1_000,
            max_body_bytes: 8 * 1024 * 1024,
            min_group_size: 5,
            audit_retention_days: 365,
            audit_max_entries: 200_000,
            max_datasets_per_member: 10_000,
        }
    }
}

impl Config {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), Error> {
        naming::validate_ident("org", &self.org).map_err(|e| Error::Invalid(e.to_string()))?;
        naming::validate_ident("mesh", &self.mesh).map_err(|e| Error::Invalid(e.to_string()))?;
        for a in self.listen.iter().chain(&self.bootstrap) {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| Error::Invalid(format!("{a:?} is not a multiaddr: {e}")))?;
        }
        if self.snapshot_every == 0 {
            return Err(Error::Invalid("snapshot_every must be at least 1".into()));
        }
        if self.min_group_size == 0 {
            return Err(Error::Invalid("min_group_size must be at least 1".into()));
        }
        if !(1..=MAX_AUDIT_DAYS).contains(&self.audit_retention_days) {
            return Err(Error::Invalid(format!(
                "audit_retention_days must be 1 to {MAX_AUDIT_DAYS}"
            )));
        }
        if !(MIN_AUDIT_ENTRIES..=MAX_AUDIT_ENTRIES).contains(&self.audit_max_entries) {
            return Err(Error::Invalid(format!(
                "audit_max_entries must be {MIN_AUDIT_ENTRIES} to {MAX_AUDIT_ENTRIES}"
            )));
        }
        if !(1..=1_000_000).contains(&self.max_datasets_per_member) {
            return Err(Error::Invalid(
                "max_datasets_per_member must be 1 to 1000000".into(),
            ));
        }
        if !(1024..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(Error::Invalid(format!(
                "max_body_bytes must be 1024 to {MAX_BODY_BYTES}: one request becomes one envelope, \
                 and envelopes must stay under the replication caps"
            )));
        }
        Ok(())
    }

    /// How much of the audit log is kept.
    pub fn audit_limits(&self) -> crate::audit::Limits {
        crate::audit::Limits {
            max_entries: self.audit_max_entries,
            max_age_days: self.audit_retention_days,
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| Error::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file `fogmesh init` writes: every field, with its meaning and default.
    pub fn to_commented_toml(&self) -> String {
        let d = Self::default();
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
            )
        };
        format!(
            "# fogmesh node configuration. Values given here override the defaults; environment\n\
             # variables (FOGMESH_API, FOGMESH_LISTEN) and command-line flags override this file.\n\n\
             # This node's organization (lowercase letters, digits, '-', '_'). Required.\n\
             org = {org}\n\n\
             # The mesh (collaboration) this node belongs to. Required.\n\
             mesh = {mesh}\n\n\
             # Address of the HTTP API for local apps and the CLI. Default: {dapi}\n\
             # Keep it on loopback unless a proxy with TLS stands in front of it.\n\
             api = {api}\n\n\
             # libp2p listen addresses for peers. Default: {dlisten}\n\
             listen = {listen}\n\n\
             # Members to reach across networks: multiaddrs ending in /p2p/<peer id>. On one LAN\n\
             # mDNS finds members without them. Default: []\n\
             bootstrap = {bootstrap}\n\n\
             # Find members on the local network by mDNS (multicast DNS). Default: {dmdns}\n\
             mdns = {mdns}\n\n\
             # Envelopes written to one dataset between two snapshots of its document; restart\n\
             # replays at most this many per dataset. Default: {dsnap}\n\
             snapshot_every = {snap}\n\n\
             # Largest HTTP request body in bytes; larger requests get 413. Default: {dbody}\n\
             max_body_bytes = {body}\n\n\
             # Federated aggregates: groups of fewer rows than this are suppressed in answers to\n\
             # other organizations, so small groups cannot single anyone out. Default: {dgroup}\n\
             min_group_size = {group}\n\n\
             # The audit log (grants, revocations, joins, questions answered for other\n\
             # organizations, refusals): entries older than this many days are pruned.\n\
             # Default: {ddays}\n\
             audit_retention_days = {days}\n\n\
             # Most audit entries kept; the oldest go first. Default: {dentries}\n\
             audit_max_entries = {entries}\n\n\
             # Most datasets of one other member this node adopts; past it that member's new\n\
             # dataset descriptions are refused and logged. Default: {dadopt}\n\
             max_datasets_per_member = {adopt}\n",
            org = q(&self.org),
            mesh = q(&self.mesh),
            dapi = d.api,
            api = q(&self.api.to_string()),
            dlisten = list(&d.listen),
            listen = list(&self.listen),
            bootstrap = list(&self.bootstrap),
            dmdns = d.mdns,
            mdns = self.mdns,
            dsnap = d.snapshot_every,
            snap = self.snapshot_every,
            dbody = d.max_body_bytes,
            body = self.max_body_bytes,
            dgroup = d.min_group_size,
            group = self.min_group_size,
            ddays = d.audit_retention_days,
            days = self.audit_retention_days,
            dentries = d.audit_max_entries,
            entries = self.audit_max_entries,
            dadopt = d.max_datasets_per_member,
            adopt = self.max_datasets_per_member,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_file_parses_back_to_the_same_config() {
        let cfg = Config {
            org: "hospital".into(),
            mesh: "flu".into(),
            ..Config::default()
        };
        let text = cfg.to_commented_toml();
        let back: Config = toml::from_str(&text).expect("parses");
        assert_eq!(back, cfg);
        // Every field is documented.
        for field in [
            "org",
            "mesh",
            "api",
            "listen",
            "bootstrap",
            "mdns",
            "snapshot_every",
            "max_body_bytes",
            "min_group_size",
            "audit_retention_days",
            "audit_max_entries",
            "max_datasets_per_member",
        ] {
            assert!(text.contains(&format!("\n{field} = ")), "{field} missing");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let cfg = Config {
            org: "Bad Org".into(),
            mesh: "m".into(),
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
    }
}
