//! The mesh: membership, the dataset catalog and replication between member nodes.
//!
//! [`Mesh`] runs beside a [`Node`](crate::Node) and talks to peers through the networking actor
//! ([`crate::net`]). It owns the roster (who is a member), answers joins by invitation, pushes every
//! envelope this node writes to the connected members entitled to its dataset, and catches up with
//! each member on connect and every [`SYNC_EVERY`]: Hello (digests) -> vectors that differ ->
//! missing envelopes, fetched in byte-capped pages. Cost is proportional to what is missing.
//!
//! | module | reason to exist |
//! |---|---|
//! | [`govern`] | signed governance operations (found, admit, role, remove) and the rule that resolves them |
//! | [`roster`] | members with keys, roles and addresses: governance plus self-signed address certificates |
//! | [`invite`] | invitation tokens |
//! | `join` | issuing and redeeming invitations (admins); this node's own certificate |
//! | `members` | removal and role changes from this node; acting on every roster change |
//! | [`catalog`] | owner-signed dataset descriptions; who is entitled to a dataset |
//! | [`proto`] | the messages on the wire (CBOR), with caps |
//! | `state` | the mesh's mutable state and its persistence |
//! | `serve` | answers to peers' requests |
//! | `sync` | outbound catch-up |
//! | `fanout` | push: this node's envelopes to the first members of their trees, and received ones on to the next |
//! | [`tree`] | the tree one envelope travels along |
//! | [`query`] | federated aggregates and pushed-down searches: asking owners, answering as owner |

pub mod catalog;
pub mod error;
mod fanout;
pub mod forks;
mod gaps;
pub mod govern;
pub mod invite;
mod join;
mod members;
mod observe;
pub mod plan;
pub mod proto;
pub mod query;
pub mod roster;
mod rotate;
mod seen;
mod serve;
pub mod shape;
mod state;
mod sync;
pub mod tree;

pub use error::{MeshError, MeshResult};

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::net;
use crate::node::Node;

pub use rotate::Rotated;
pub use state::Progress;
use state::State;

/// How often each member is caught up with, besides on every connect.
pub const SYNC_EVERY: Duration = Duration::from_secs(30);
/// How often a member that may lack something (a push to it failed, a catch-up stopped) is tried
/// again while it is connected.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Pushes in flight at once; more wait (catch-up covers anything a slow peer misses).
pub const PUSH_INFLIGHT_CAP: usize = 256;
/// Pushes in flight to one peer: well under the 100 streams libp2p accepts per connection, so
/// a burst is never dropped by the receiver.
pub const PEER_PUSH_CAP: usize = 32;
/// Aggregates and searches from members evaluated at once; more wait.
pub const QUERIES_AT_ONCE: usize = 2;
/// Default lifetime of an invitation.
pub const INVITE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A member as `GET /v1/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Organization (empty for a connected non-member).
    pub org: String,
    /// Connection state and statistics from the network layer.
    #[serde(flatten)]
    pub net: net::PeerInfo,
}

/// What `fogmesh status` shows of the mesh.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Mesh name.
    pub mesh: String,
    /// Organizations on the roster.
    pub members: Vec<String>,
    /// Addresses this node listens on, relayed ones (`.../p2p-circuit/...`) among them.
    pub listen: Vec<String>,
    /// Whether members can dial this node, as AutoNAT last found.
    pub reachability: net::Reachability,
    /// Catch-ups under way.
    pub catching_up: Vec<Progress>,
    /// Authors proven to have signed two histories of a dataset (see
    /// [`crate::equivocation`]).
    pub equivocations: Vec<crate::node::Equivocation>,
}

/// Handle to the running mesh service. Clone it freely.
#[derive(Clone)]
pub struct Mesh {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) node: Node,
    pub(crate) net: net::Client,
    pub(crate) state: State,
    pub(crate) pushes: Arc<tokio::sync::Semaphore>,
    /// Questions from members evaluated at once (`QUERIES_AT_ONCE`).
    pub(crate) queries: tokio::sync::Semaphore,
    pub(crate) peer_pushes:
        std::sync::Mutex<std::collections::HashMap<PeerId, Arc<tokio::sync::Semaphore>>>,
    /// The service's long-running tasks, ended by [`Mesh::shutdown`].
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Held while the consequences of a roster change are applied (`refresh_members`).
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    /// Envelopes to pass on along their trees (see `fanout`).
    pub(crate) forwards: mpsc::Sender<fanout::Spread>,
    /// Gaps pushes revealed, repaired by catch-up if still open after a grace.
    pub(crate) gaps: gaps::Gaps,
    /// Envelopes passed on lately (each is passed on once).
    pub(crate) passed: seen::Seen,
    /// Bytes of envelopes waiting to be passed on.
    pub(crate) queued: fanout::Queued,
}

impl Mesh {
    /// Starts the networking actor and the mesh service for `node`.
    pub async fn start(node: Node, config: net::Config) -> Result<Self> {
        let keypair = node.identity().libp2p_keypair()?;
        let (net, events) = net::spawn(keypair, config).map_err(net_err)?;
        let state = State::load_or_found(&node).await?;
        let (forwards, forward_rx) = fanout::forward_queue();
        let mesh = Self {
            inner: Arc::new(Inner {
                node,
                net,
                state,
                pushes: Arc::new(tokio::sync::Semaphore::new(PUSH_INFLIGHT_CAP)),
                queries: tokio::sync::Semaphore::new(QUERIES_AT_ONCE),
                peer_pushes: std::sync::Mutex::default(),
                tasks: std::sync::Mutex::new(Vec::new()),
                refreshing: tokio::sync::Mutex::new(()),
                forwards,
                gaps: gaps::Gaps::default(),
                passed: seen::Seen::default(),
                queued: fanout::Queued::default(),
            }),
        };
        mesh.apply_own_rotations().await?;
        mesh.refresh_members().await?;
        mesh.restore_invitations().await?;
        let tasks = vec![
            tokio::spawn(mesh.clone().run_events(events)).abort_handle(),
            tokio::spawn(mesh.clone().run_outbox()).abort_handle(),
            tokio::spawn(mesh.clone().run_forwards(forward_rx)).abort_handle(),
            tokio::spawn(mesh.clone().run_access()).abort_handle(),
            tokio::spawn(mesh.clone().run_forks()).abort_handle(),
            tokio::spawn(mesh.clone().run_periodic()).abort_handle(),
        ];
        *mesh.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        match mesh.inner.node.resign_access().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(items = n, "access state signed again with the new key"),
            Err(e) => tracing::warn!(error = %e, "access state not signed again with the new key"),
        }
        Ok(mesh)
    }

    /// The node this mesh serves.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    async fn run_events(self, mut events: mpsc::Receiver<net::Event>) {
        while let Some(ev) = events.recv().await {
            self.on_event(ev).await;
        }
        tracing::info!("network events ended");
    }

    async fn on_event(&self, ev: net::Event) {
        match ev {
            net::Event::PeerUp { peer, .. } if self.is_member(&peer) => {
                tokio::spawn(self.clone().sync_with(peer));
            }
            net::Event::Request {
                peer,
                protocol,
                frame,
                reply,
                held,
            } => {
                let mesh = self.clone();
                tokio::spawn(async move {
                    if let Some(answer) = mesh.answer(peer, protocol, frame).await {
                        let _ = reply.send(answer);
                    }
                    drop(held);
                });
            }
            net::Event::Discovered { peer, addrs } if self.is_member(&peer) => {
                for a in addrs {
                    let _ = self.inner.net.add_address(peer, a).await;
                }
            }
            net::Event::BadInput {
                peer,
                protocol,
                detail,
            } => self.count_bad(&peer, &format!("{protocol:?}: {detail}")),
            net::Event::Refused { peer, reason } => self.count_refused(&peer, reason),
            net::Event::Listening { addr } => {
                tracing::info!(%addr, "mesh listening");
                if let Err(e) = self.publish_addresses().await {
                    tracing::warn!(error = %e, "could not update this node's roster entry");
                }
            }
            _ => {}
        }
    }

    async fn run_periodic(self) {
        let mut full = tokio::time::interval(SYNC_EVERY);
        let mut retry = tokio::time::interval(RETRY_EVERY);
        full.tick().await;
        loop {
            tokio::select! {
                _ = full.tick() => self.sync_all().await,
                _ = retry.tick() => {
                    self.repair_gaps();
                    self.retry_dirty().await
                }
            }
        }
    }

    /// Marks every member but `except` and this node for a catch-up (retried every
    /// [`RETRY_EVERY`] until it completes): what changed here reaches them within a second.
    pub(crate) fn mark_members_dirty(&self, except: Option<PeerId>) {
        let me = self.inner.net.local_peer_id();
        for m in self.inner.state.roster().iter() {
            match m.peer_id.parse::<PeerId>() {
                Ok(p) if Some(p) != except && p != me => self.inner.state.mark_dirty(p),
                _ => {}
            }
        }
    }

    /// Catches up with the connected members marked dirty.
    pub(crate) async fn retry_dirty(&self) {
        let dirty = self.inner.state.dirty();
        if dirty.is_empty() {
            return;
        }
        let Ok(peers) = self.inner.net.peers().await else {
            return;
        };
        for peer in dirty {
            let up = peers.iter().any(|p| p.up && p.peer == peer.to_string());
            if up {
                tokio::spawn(self.clone().sync_with(peer));
            }
        }
    }

    /// Catches up with every connected member now.
    pub async fn sync_all(&self) {
        self.sync_all_but(None).await;
    }

    /// Catches up with every connected member except `skip`.
    pub(crate) async fn sync_all_but(&self, skip: Option<PeerId>) {
        let Ok(peers) = self.inner.net.peers().await else {
            return;
        };
        for p in peers.into_iter().filter(|p| p.up && p.member) {
            match p.peer.parse::<PeerId>() {
                Ok(peer) if Some(peer) != skip => {
                    tokio::spawn(self.clone().sync_with(peer));
                }
                _ => {}
            }
        }
    }

    pub(crate) fn is_member(&self, peer: &PeerId) -> bool {
        self.org_of(peer).is_some()
    }

    pub(crate) fn org_of(&self, peer: &PeerId) -> Option<String> {
        let seats = self.inner.state.seats();
        seats
            .iter()
            .find(|m| m.peer == *peer)
            .map(|m| m.org.clone())
    }

    pub(crate) fn count_bad(&self, peer: &PeerId, detail: &str) {
        tracing::warn!(%peer, detail, "bad input from peer");
        let m = &self.inner.node.metrics().peer_bad_inputs;
        m.inc_by("peer", &peer.to_string(), 1);
    }

    /// Counts a connection refused because its peer was removed from the mesh.
    pub(crate) fn count_refused(&self, peer: &PeerId, reason: &str) {
        let org = self
            .inner
            .state
            .removed_org_of(&peer.to_string())
            .unwrap_or_else(|| peer.to_string());
        tracing::warn!(%peer, %org, reason, "connection refused");
        let labels = vec![("org".to_owned(), org)];
        self.inner
            .node
            .metrics()
            .removed_refused
            .get_or_create(&labels)
            .inc();
    }

    /// Members and connected peers with their state.
    pub async fn peers(&self) -> Result<Vec<PeerView>> {
        let infos = self.inner.net.peers().await.map_err(net_err)?;
        let roster = self.inner.state.roster();
        let me = self.inner.net.local_peer_id().to_string();
        Ok(infos
            .into_iter()
            .filter(|p| p.peer != me)
            .map(|net| PeerView {
                org: roster
                    .by_peer(&net.peer)
                    .map(|m| m.org.clone())
                    .unwrap_or_default(),
                net,
            })
            .collect())
    }

    /// The mesh's state for `fogmesh status`.
    pub async fn status(&self) -> Result<Status> {
        let roster = self.inner.state.roster();
        let listen = self.inner.net.listen_addrs().await.map_err(net_err)?;
        let reachability = self.inner.net.reachability().await.map_err(net_err)?;
        Ok(Status {
            mesh: roster.mesh.clone(),
            members: roster.orgs(),
            listen: listen.iter().map(ToString::to_string).collect(),
            reachability,
            catching_up: self.inner.state.progress(),
            equivocations: self.inner.node.equivocations(),
        })
    }

    /// Stops the service's tasks and the networking actor. Catch-ups and pushes in flight end
    /// with errors as the network goes away.
    pub async fn shutdown(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
        self.inner.net.shutdown().await;
    }
}

/// A governance entry's keys, retired ones included, if they parse.
fn member_keys(e: &govern::Entry) -> Option<crate::node::MemberKeys> {
    let m = &e.member;
    let agreement = hex::decode(&m.agreement_key).ok()?.try_into().ok()?;
    let retired = e
        .retired
        .iter()
        .filter_map(|r| {
            Some(crate::node::RetiredKey {
                author: r.member.author_id()?,
                until: r.until,
            })
        })
        .collect();
    Some(crate::node::MemberKeys {
        org: m.org.clone(),
        author: m.author_id()?,
        agreement,
        removed: !e.active(),
        retired,
    })
}

pub(crate) fn net_err(e: net::Error) -> Error {
    Error::Network(e.to_string())
}

/// The networking settings of a node's configuration.
pub fn net_config(cfg: &crate::config::Config) -> Result<net::Config> {
    let parse = |list: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
        list.iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| Error::Invalid(format!("{a:?} is not a multiaddr: {e}")))
            })
            .collect()
    };
    Ok(net::Config {
        listen: parse(&cfg.listen)?,
        bootstrap: parse(&cfg.bootstrap)?,
        relays: parse(&cfg.relays)?,
        serve_relay: cfg.relay.limits(),
        hole_punch: cfg.hole_punch,
        mdns: cfg.mdns,
        ..net::Config::default()
    })
}
