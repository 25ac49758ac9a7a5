//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// fogmesh: one node per organization, sharing a CRDT data view with per-app encrypted access.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// The node's home directory.
    #[arg(long, global = true, env = "FOGMESH_HOME", default_value = ".fogmesh")]
    pub home: PathBuf,
    /// Print exactly one JSON document on stdout (NDJSON for streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// HTTP API address of the node (client commands); default: the home's config.
    #[arg(long, global = true, env = "FOGMESH_API")]
    pub api: Option<SocketAddr>,
    /// Bearer token to use instead of the home's admin token (client commands). On the command
    /// line it is visible to other users (`ps`): prefer FOGMESH_TOKEN or --token-file.
    #[arg(long, global = true, env = "FOGMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token to use instead of the home's admin token (client commands).
    #[arg(long, global = true, env = "FOGMESH_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Whether `--token` was typed on the command line (not taken from FOGMESH_TOKEN).
    #[arg(skip)]
    pub token_on_command_line: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments like `Cli::parse` (usage errors exit 2), noting whether
    /// `--token` was typed on the command line.
    pub fn from_args() -> Self {
        let matches = crate::help::with_examples(Self::command()).get_matches();
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.token_on_command_line = matches.value_source("token") == Some(ValueSource::CommandLine);
        cli
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a node home: keys (0600), documented config.toml, admin token.
    Init(InitArgs),
    /// Run the node until SIGTERM or ctrl-c.
    Run(RunArgs),
    /// Print this node's identity and addresses (reads the home; no running node needed).
    Id,
    /// Show the running node, its mesh, peers, datasets and counts, and catch-up progress.
    Status,
    /// Issue an invitation token for a new member (shown once).
    Invite(InviteArgs),
    /// Join the mesh of an invitation token.
    Join {
        /// The token from `fogmesh invite` on a member. (Its own id: the global `--token` is
        /// the bearer token for the API.)
        #[arg(id = "invitation", value_name = "INVITATION")]
        invitation: String,
    },
    /// Members and connected peers: up or down, last seen, round-trip time, addresses.
    Peers,
    /// The mesh's members and their roles; removing one or changing a role (admins).
    #[command(subcommand)]
    Member(MemberCmd),
    /// This node's keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage apps and their tokens.
    #[command(subcommand)]
    App(AppCmd),
    /// Manage the node's admin token.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Manage datasets.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Manage computation flows (source dataset -> operators -> target dataset, kept up to date).
    #[command(subcommand)]
    Flow(FlowCmd),
    /// Grant an organization's app (or all its apps) rights on a dataset this node owns.
    Grant(GrantArgs),
    /// Revoke a grant by id; a grant that carried keys starts a new key epoch.
    Revoke {
        /// The grant id (from `fogmesh grant` or `fogmesh grants`).
        id: String,
    },
    /// List the grants of the datasets this node holds.
    Grants,
    /// Publish records: one from flags, or NDJSON lines `{name, data, time?, id?}` on stdin.
    Publish(PublishArgs),
    /// Query the shared view: records of one or several datasets, or aggregates (--agg), computed
    /// by the datasets' owners with --federated.
    Query(QueryArgs),
    /// Query the shared view in SQL: one SELECT over one or several datasets (see
    /// docs/queries.md for the dialect); --federated asks the owners for aggregates.
    Sql(SqlArgs),
    /// Stream a dataset's live changes.
    Watch(WatchArgs),
    /// Push a search to other organizations' nodes: only where and when of each match comes
    /// back, as each node answers.
    Search(SearchArgs),
    /// Run the five-organization flu demo on loopback (`--single`: one node).
    Demo(DemoArgs),
    /// Read the audit log: who invited, joined, granted, revoked, asked or was refused what
    /// (admin). `audit verify` checks its hash chain.
    Audit(AuditArgs),
}

impl Command {
    /// A client command: it talks to the node over one HTTP request or stream and prints, so a
    /// closed stdout may simply end it. `run` and `demo` serve or drive nodes over sockets.
    pub fn writes_to_a_pipe_only(&self) -> bool {
        !matches!(self, Self::Run(_) | Self::Demo(_))
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Organization name, e.g. hospital.
    #[arg(long)]
    pub org: String,
    /// Mesh name, e.g. flu-response.
    #[arg(long)]
    pub mesh: String,
    /// libp2p listen multiaddr (repeatable).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Member multiaddr ending in /p2p/<peer id> to reach across networks (repeatable).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Do not discover members by mDNS on the local network.
    #[arg(long)]
    pub no_mdns: bool,
    /// Member serving as a relay, multiaddr ending in /p2p/<peer id>, to reserve a relayed
    /// address on when members cannot dial this node (behind a NAT; repeatable).
    #[arg(long = "relay")]
    pub relays: Vec<String>,
    /// Relay for other members (this node's listen addresses must be reachable by them).
    #[arg(long)]
    pub serve_relay: bool,
}

#[derive(Args, Debug)]
pub struct InviteArgs {
    /// How long the token stays valid, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// libp2p listen multiaddr (repeatable); overrides the config file and FOGMESH_LISTEN.
    #[arg(long)]
    pub listen: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Every organization ever admitted: role, active or removed, peer id, addresses.
    List,
    /// Remove an organization from the mesh (admins).
    Remove {
        /// The organization.
        org: String,
    },
    /// Change an organization's role (admins).
    Role {
        /// The organization.
        org: String,
        /// `admin` (may invite, remove, change roles) or `member`.
        #[arg(value_parser = ["admin", "member"])]
        role: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Replace this node's ed25519 and X25519 keys (admin token). The mesh learns the new keys
    /// from a rotation signed with the old one; the node restarts under its new peer id. Run it
    /// while the other members are connected: it reports which ones took the rotation.
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum AppCmd {
    /// Register an app; its token is shown once.
    Add {
        /// App name, e.g. restock-planner.
        name: String,
        /// Rights, comma-separated ACTION:DATASET (read, write, query; owner/name, owner/*, *), or
        /// metrics:* (scrape /metrics, no dataset: for Prometheus).
        #[arg(long, value_delimiter = ',')]
        rights: Vec<String>,
        #[command(flatten)]
        save: SaveToken,
    },
    /// List registered apps.
    List,
    /// Remove an app: its token is refused at once and its open event streams end.
    Remove {
        /// App name.
        name: String,
    },
    /// Give an app a new token, shown once: the old one is refused at once and its open event
    /// streams end.
    Rotate {
        /// App name.
        name: String,
        #[command(flatten)]
        save: SaveToken,
    },
    /// Replace an app's rights; its event streams that the new rights do not cover end.
    Rights {
        /// App name.
        name: String,
        /// The new rights, comma-separated ACTION:DATASET; none (`--rights` alone) leaves only
        /// what grants give it.
        #[arg(long, value_delimiter = ',', required = true, num_args = 0..)]
        rights: Vec<String>,
    },
}

/// Where to keep a new token instead of printing it.
#[derive(Args, Debug)]
pub struct SaveToken {
    /// Write the new token to this file (mode 0600, replacing it) instead of printing it; give
    /// the file to the app with --token-file or FOGMESH_TOKEN_FILE.
    #[arg(long, value_name = "PATH")]
    pub save_token: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Replace the admin token: the old one is refused at once; the node rewrites its home's
    /// admin.token, so local commands keep working.
    RotateToken,
}

#[derive(Subcommand, Debug)]
pub enum DatasetCmd {
    /// Create a dataset owned by this node's organization.
    Create(CreateArgs),
    /// List the datasets the caller may see.
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PriorityArg {
    Low,
    Normal,
    High,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Dataset name, e.g. flu-cases.
    pub name: String,
    /// Share it (default: private, never leaves this node).
    #[arg(long)]
    pub shared: bool,
    /// Reader organizations (shared datasets), comma-separated: each gets read and query for
    /// all its apps.
    #[arg(long, value_delimiter = ',')]
    pub readers: Vec<String>,
    /// Keep a shared dataset's envelopes in clear (for public data; default: sealed).
    #[arg(long, requires = "shared")]
    pub clear: bool,
    /// Service priority.
    #[arg(long, value_enum, default_value = "normal")]
    pub priority: PriorityArg,
    /// Keep records newer than this many days.
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Keep at most this many newest records.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// JSON schema description of the data fields.
    #[arg(long)]
    pub schema: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Declare a flow and start it.
    Add(Box<FlowArgs>),
    /// List the flows of this node.
    List,
    /// Stop and forget a flow (its target keeps what it holds).
    Remove {
        /// Flow name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct FlowArgs {
    /// Flow name, e.g. flu-daily.
    pub name: String,
    /// Source dataset OWNER/NAME (owned here).
    #[arg(long)]
    pub source: String,
    /// Target dataset OWNER/NAME (owned here; the flow owns its records).
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Data fields carried over (record mode; comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub project: Vec<String>,
    /// Group by (comma-separated): segment:N, bucket:DURATION, field:PATH.
    #[arg(long, value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// Aggregates (comma-separated): count, sum:F, avg:F, min:F, max:F.
    #[arg(long = "agg", value_delimiter = ',')]
    pub aggregates: Vec<String>,
    /// Leave out groups of fewer source rows (aggregate mode).
    #[arg(long)]
    pub min_rows: Option<u64>,
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// Dataset, OWNER/NAME (owned by this node).
    pub dataset: String,
    /// Grantee, ORG/APP or ORG/* for every app of the organization.
    #[arg(long)]
    pub to: String,
    /// Rights, comma-separated: read, write, query.
    #[arg(long, value_delimiter = ',', required = true)]
    pub rights: Vec<String>,
    /// Lifetime, e.g. 30d, 12h, 90m (default: until revoked).
    #[arg(long)]
    pub expires: Option<String>,
    /// Only records whose name lies under this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Dataset, OWNER/NAME.
    pub dataset: String,
    /// Record name (location/activity path); without it, NDJSON is read from stdin.
    #[arg(long)]
    pub name: Option<String>,
    /// Record data, a JSON object.
    #[arg(long, requires = "name")]
    pub data: Option<String>,
    /// Record time, ms since the epoch (default: the node's clock).
    #[arg(long, requires = "name")]
    pub time: Option<u64>,
    /// Record id to create or update (default: a new ULID).
    #[arg(long, requires = "name")]
    pub id: Option<String>,
    /// Records per request when reading stdin.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// Rows by time, oldest or newest first.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

impl Order {
    /// The same order as an `order_by` of the query plan.
    pub fn by_time(self) -> &'static str {
        match self {
            Self::Asc => "time",
            Self::Desc => "-time",
        }
    }
}

impl std::fmt::Display for Order {
    /// The value as written on the command line (clap's own name for it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.to_possible_value();
        f.write_str(name.as_ref().map_or("", |v| v.get_name()))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Ndjson,
}

/// Which records: the filter shared by `query`, `search` and `flow add`.
#[derive(Args, Debug)]
pub struct FilterArgs {
    /// Only names at or below this path.
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Name segment filter N=VALUE (repeatable), e.g. '0=district-3'.
    #[arg(long = "segment")]
    pub segments: Vec<String>,
    /// Only times >= this (ms).
    #[arg(long)]
    pub since: Option<u64>,
    /// Only times < this (ms).
    #[arg(long)]
    pub until: Option<u64>,
    /// Field predicate FIELD OP VALUE (repeatable), e.g. 'cases>=5'.
    #[arg(long = "where")]
    pub predicates: Vec<String>,
}

impl FilterArgs {
    /// The JSON filter the API takes.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name_prefix": self.name_prefix, "segments": self.segments,
            "since": self.since, "until": self.until, "where": self.predicates,
        })
    }
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Datasets, OWNER/NAME (one or more: the shared view).
    #[arg(required = true, num_args = 1..)]
    pub datasets: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Fields to return (comma-separated): dataset, id, name, time or data fields.
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Order rows by time (default), name, id or a data field; '-' in front for descending.
    #[arg(long, allow_hyphen_values = true)]
    pub order_by: Option<String>,
    /// asc or desc by time (single-dataset form; same as --order-by time / -time).
    #[arg(long, value_enum, conflicts_with = "order_by")]
    pub order: Option<Order>,
    /// Group by (comma-separated): field:PATH, segment:N, bucket:DURATION (e.g. bucket:1d).
    #[arg(long, value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// Aggregates (comma-separated): count, sum:F, avg:F, min:F, max:F.
    #[arg(long = "agg", value_delimiter = ',')]
    pub aggregates: Vec<String>,
    /// Ask each dataset's owner to compute the aggregates over its own data.
    #[arg(long)]
    pub federated: bool,
    /// Wait at most this long for owners (federated), ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Most rows (or groups) to return.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output format (--json implies json).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// One SELECT; `-` reads it from stdin. Datasets are quoted "owner/name" or written
    /// owner.name.
    pub statement: String,
    /// Ask each dataset's owner to compute the aggregates over its own data.
    #[arg(long)]
    pub federated: bool,
    /// Wait at most this long for owners (federated), ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print the view query the statement becomes (POST /v1/query's body), without running it.
    #[arg(long)]
    pub explain: bool,
    /// Output format (--json implies json); rows stream as NDJSON whatever their number.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Dataset name searched in each target organization, e.g. sightings.
    pub dataset: String,
    /// Organizations to ask (comma-separated; default: every other member).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The name segment reported as the location (0 = first).
    #[arg(long, default_value_t = 0)]
    pub location_segment: u32,
    /// Most matches per target.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Wait at most this long for answers, ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Dataset, OWNER/NAME.
    pub dataset: String,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCmd>,
    /// Only entries at or after this time: ms since the epoch, or an age such as 30m, 12h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Only entries before this time: ms since the epoch, or an age such as 1h.
    #[arg(long)]
    pub until: Option<String>,
    /// Only entries by this organization (its apps, or its node).
    #[arg(long)]
    pub org: Option<String>,
    /// Only this action, e.g. grant, revoke, federated-aggregate, fetch, read.
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries about this dataset, OWNER/NAME.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Only refusals.
    #[arg(long)]
    pub refused: bool,
    /// The newest this many entries.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Keep printing new entries as they are appended (NDJSON with --json).
    #[arg(long)]
    pub follow: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check every kept entry's hash and link, and the recorded head; exits 1 naming the first
    /// bad entry.
    Verify,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's node directory instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Run the single-node walkthrough instead of the five-organization mesh.
    #[arg(long, conflicts_with = "lost_child")]
    pub single: bool,
    /// Run the lost-child search: a coordinator and eight camera nodes.
    #[arg(long)]
    pub lost_child: bool,
    /// After the scenario, keep the nodes running and print each one's dashboard address and
    /// admin token file; stop them on Enter or at the end of standard input.
    #[arg(long, conflicts_with = "single")]
    pub serve: bool,
}
