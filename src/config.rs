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
    /// Members to reach across networks (multiaddrs ending in `/p2p/<peer id>`), for the first
    /// dials (the signed roster carries every member's addresses after that); on a LAN, mDNS
    /// finds members without them.
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
    /// Members serving as relays (multiaddrs ending in `/p2p/<peer id>`) to reserve a relayed
    /// address on, for a node that members cannot dial (behind a NAT or a firewall).
    pub relays: Vec<String>,
    /// Turn relayed connections into direct ones by hole punching (DCUtR) where the NATs allow.
    pub hole_punch: bool,
    /// How this node pushes the envelopes it writes: along trees that members pass them on
    /// through (see `mesh::tree`), or to every member itself.
    pub push: PushMode,
    /// Whether, and within which limits, this node relays for other members.
    pub relay: RelayServer,
}

/// How a node pushes the envelopes it writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushMode {
    /// Along a tree per envelope: the writer sends `mesh::tree::FANOUT` copies, members pass
    /// them on, each member receives one.
    #[default]
    Tree,
    /// To every connected member, by the writer alone (nothing is passed on).
    Direct,
}

impl PushMode {
    fn name(self) -> &'static str {
        match self {
            PushMode::Tree => "tree",
            PushMode::Direct => "direct",
        }
    }
}

/// The `[relay]` table: serving as a relay for members (circuit relay v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayServer {
    /// Relay for members. Only for a node whose listen addresses members can reach.
    pub serve: bool,
    /// Most members holding a reservation at once.
    pub max_reservations: usize,
    /// Most circuits relayed at once.
    pub max_circuits: usize,
    /// Most circuits relayed at once opened by one member.
    pub max_circuits_per_peer: usize,
    /// A circuit is closed after this many seconds.
    pub max_circuit_secs: u64,
    /// A circuit is closed after relaying this many bytes each way.
    pub max_circuit_bytes: u64,
}

impl Default for RelayServer {
    fn default() -> Self {
        let d = crate::net::RelayLimits::default();
        Self {
            serve: false,
            max_reservations: d.max_reservations,
            max_circuits: d.max_circuits,
            max_circuits_per_peer: d.max_circuits_per_peer,
            max_circuit_secs: d.max_circuit_duration.as_secs(),
            max_circuit_bytes: d.max_circuit_bytes,
        }
    }
}

impl RelayServer {
    /// The limits the networking layer takes, if this node serves as a relay.
    pub fn limits(&self) -> Option<crate::net::RelayLimits> {
        self.serve.then(|| crate::net::RelayLimits {
            max_reservations: self.max_reservations,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: std::time::Duration::from_secs(self.max_circuit_secs),
            max_circuit_bytes: self.max_circuit_bytes,
        })
    }

    fn validate(&self) -> Result<(), Error> {
        let counts = [
            ("max_reservations", self.max_reservations),
            ("max_circuits", self.max_circuits),
            ("max_circuits_per_peer", self.max_circuits_per_peer),
        ];
        for (name, n) in counts {
            if !(1..=100_000).contains(&n) {
                return Err(Error::Invalid(format!("relay.{name} must be 1 to 100000")));
            }
        }
        if !(1..=86_400 * 30).contains(&self.max_circuit_secs) {
            return Err(Error::Invalid(
                "relay.max_circuit_secs must be 1 to 2592000 (30 days)".into(),
            ));
        }
        if self.max_circuit_bytes < 1024 {
            return Err(Error::Invalid(
                "relay.max_circuit_bytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }
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
            relays: Vec::new(),
            hole_punch: true,
            push: PushMode::Tree,
            relay: RelayServer::default(),
        }
    }
}

impl Config {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), Error> {
        naming::validate_ident("org", &self.org).map_err(|e| Error::Invalid(e.to_string()))?;
        naming::validate_ident("mesh", &self.mesh).map_err(|e| Error::Invalid(e.to_string()))?;
        for a in self
            .listen
            .iter()
            .chain(&self.bootstrap)
            .chain(&self.relays)
        {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| Error::Invalid(format!("{a:?} is not a multiaddr: {e}")))?;
        }
        for a in self.bootstrap.iter().chain(&self.relays) {
            if !a.contains("/p2p/") {
                return Err(Error::Invalid(format!(
                    "{a:?} must end in /p2p/<peer id> (bootstrap and relays name a member)"
                )));
            }
        }
        self.relay.validate()?;
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
             # mDNS finds members without them; after the first contact the members' signed\n\
             # roster entries carry everyone's current addresses. Default: []\n\
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
             max_datasets_per_member = {adopt}\n\n\
             # Members serving as relays, multiaddrs ending in /p2p/<peer id>: for a node that\n\
             # members cannot dial (behind a NAT or a firewall). It reserves a relayed address on\n\
             # each, announces it to the members, and tries to punch a direct connection to each\n\
             # member that reaches it there. Default: []\n\
             relays = {relays}\n\n\
             # Turn a relayed connection into a direct one by hole punching (DCUtR) where both\n\
             # NATs allow; off, relayed connections stay relayed. Default: {dpunch}\n\
             hole_punch = {punch}\n\n\
             # How this node pushes what it writes: \"tree\" (each envelope travels along a tree\n\
             # of members who pass it on: the writer sends {k} copies whatever the mesh size) or\n\
             # \"direct\" (the writer sends one to every member). Default: \"{dpush}\"\n\
             push = \"{push}\"\n\n\
             # Relaying for other members (only members may reserve or open circuits). Turn it on\n\
             # only on a node whose listen addresses members can reach.\n\
             [relay]\n\
             # Default: {dserve}\n\
             serve = {serve}\n\
             # Most members holding a reservation at once. Default: {dres}\n\
             max_reservations = {res}\n\
             # Most circuits relayed at once, and opened by one member. Defaults: {dcirc}, {dper}\n\
             max_circuits = {circ}\n\
             max_circuits_per_peer = {per}\n\
             # A circuit is closed after this many seconds or bytes each way (its ends open a\n\
             # new one). Defaults: {dsecs}, {dbytes}\n\
             max_circuit_secs = {secs}\n\
             max_circuit_bytes = {bytes}\n",
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
            relays = list(&self.relays),
            dpunch = d.hole_punch,
            punch = self.hole_punch,
            k = crate::mesh::tree::FANOUT,
            dpush = d.push.name(),
            push = self.push.name(),
            dserve = d.relay.serve,
            serve = self.relay.serve,
            dres = d.relay.max_reservations,
            res = self.relay.max_reservations,
            dcirc = d.relay.max_circuits,
            circ = self.relay.max_circuits,
            dper = d.relay.max_circuits_per_peer,
            per = self.relay.max_circuits_per_peer,
            dsecs = d.relay.max_circuit_secs,
            secs = self.relay.max_circuit_secs,
            dbytes = d.relay.max_circuit_bytes,
            bytes = self.relay.max_circuit_bytes,
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
            relays: vec![
                "/ip4/203.0.113.5/tcp/7071/p2p/12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4"
                    .into(),
            ],
            hole_punch: false,
            push: PushMode::Direct,
            relay: RelayServer {
                serve: true,
                max_reservations: 3,
                ..RelayServer::default()
            },
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
            "relays",
            "hole_punch",
            "push",
            "serve",
            "max_reservations",
            "max_circuits",
            "max_circuits_per_peer",
            "max_circuit_secs",
            "max_circuit_bytes",
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
        let valid = Config {
            org: "hospital".into(),
            mesh: "m".into(),
            ..Config::default()
        };
        assert!(valid.validate().is_ok());
        let bad = [
            Config {
                relays: vec!["/ip4/203.0.113.5/tcp/7071".into()],
                ..valid.clone()
            },
            Config {
                relays: vec!["not an address".into()],
                ..valid.clone()
            },
            Config {
                relay: RelayServer {
                    max_circuits: 0,
                    ..RelayServer::default()
                },
                ..valid.clone()
            },
            Config {
                relay: RelayServer {
                    max_circuit_bytes: 10,
                    ..RelayServer::default()
                },
                ..valid.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
