//! Reaching members behind NATs with libp2p's own parts: the relay this node serves to members
//! when configured to (within limits), what AutoNAT says of this node's reachability, how each
//! connection was made (direct, hole-punched by DCUtR from a relayed one, or through a relay),
//! and the hole punches' retries. The relays this node reserves an address on are in
//! `reservations.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, dcutr, relay, Multiaddr, PeerId};
use serde::Serialize;

use super::event_loop::EventLoop;
use super::reservations::RelayUse;

/// First wait after a failed hole punch before the relayed connection is closed, so that the
/// next relayed connection brings a new attempt; it doubles up to [`PUNCH_RETRY_MAX`].
const PUNCH_RETRY_MIN: Duration = Duration::from_secs(15);
/// Longest wait between two hole-punch attempts to one member.
const PUNCH_RETRY_MAX: Duration = Duration::from_secs(600);
/// A direct connection this soon after the last relayed one to its peer closed is a hole
/// punch's.
const RELAYED_LATELY: Duration = Duration::from_secs(5);

/// How a connection to a peer was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connection {
    /// Dialed or accepted directly.
    Direct,
    /// Direct, made by hole punching (DCUtR) from a relayed connection.
    HolePunched,
    /// Through a relay's circuit.
    Relayed,
}

/// What AutoNAT has found out about this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reachability {
    /// Other members dialed back one of its addresses.
    Public,
    /// Other members could not dial it back: members reach it through a relay.
    Private,
    /// Not known yet (no member has probed it).
    Unknown,
}

/// Limits of the relay a node serves to the other members (`[relay]` in `config.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most members holding a reservation at once.
    pub max_reservations: usize,
    /// Most circuits relayed at once.
    pub max_circuits: usize,
    /// Most circuits relayed at once opened by one member.
    pub max_circuits_per_peer: usize,
    /// A circuit is closed after this long; its ends reconnect (or have hole-punched by then).
    pub max_circuit_duration: Duration,
    /// A circuit is closed after relaying this many bytes in each direction.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 64,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 1 << 30,
        }
    }
}

/// The current members, shared with the relay server: only they may reserve or open circuits.
pub(crate) type Members = Arc<RwLock<HashSet<PeerId>>>;

/// The relay server behaviour: members only, within `limits`. libp2p's own rate limits stay.
pub(crate) fn relay_server(
    local: PeerId,
    limits: &RelayLimits,
    members: &Members,
) -> relay::Behaviour {
    // libp2p refuses past `count > per_peer`: 0 allows one reservation, and `n - 1` n circuits.
    let mut config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: 0,
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer.saturating_sub(1),
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    };
    // First, so that a refused stranger spends none of the members' rate-limit tokens.
    config
        .reservation_rate_limiters
        .insert(0, members_only(members));
    config
        .circuit_src_rate_limiters
        .insert(0, members_only(members));
    relay::Behaviour::new(local, config)
}

/// A relay "rate limiter" that admits members and no one else.
fn members_only(members: &Members) -> Box<dyn relay::RateLimiter> {
    let members = members.clone();
    Box::new(move |peer: PeerId, _: &Multiaddr, _| {
        let member = members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&peer);
        if !member {
            tracing::debug!(%peer, "relay: not a member");
        }
        member
    })
}

/// AutoNAT (v1): members probe each other's addresses; only members are asked (they are added
/// as servers as the roster names them). Members may sit on private networks (a hospital's
/// LAN), so private addresses are probed too. A node serving as a relay runs none: its
/// operator declares it reachable, and what AutoNAT confirms would become addresses the relay
/// hands out.
pub(crate) fn autonat(local: PeerId, serves_relay: bool) -> Option<autonat::Behaviour> {
    (!serves_relay).then(|| {
        autonat::Behaviour::new(
            local,
            autonat::Config {
                boot_delay: Duration::from_secs(5),
                retry_interval: Duration::from_secs(10),
                throttle_server_period: Duration::from_secs(5),
                only_global_ips: false,
                use_connected: false,
                ..autonat::Config::default()
            },
        )
    })
}

/// Whether this end tries a failed hole punch again. Only one end may: both closing the relayed
/// connection at once and redialing each other cross their circuits. The end whose punch dials
/// all failed ("Giving up after N dial attempts") is the only one that hears of it (the other
/// end dials once and is told nothing), so it retries whatever the ids; of the other failures
/// (a DCUtR stream that broke, which both ends may see), the end with the lower peer id retries.
fn retries(local: &PeerId, peer: &PeerId, error: &dcutr::Error) -> bool {
    // dcutr's error kinds are private; its text ("Failed to hole-punch connection: Giving up
    // after 3 dial attempts", libp2p-dcutr 0.15) is all that tells them apart. The netns NAT
    // test fails if it stops matching (the punch that fails there is never tried again).
    local < peer || error.to_string().contains("Giving up after")
}

/// One established connection: to whom, how it was made, and whether it is direct QUIC.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    kind: Connection,
    quic: bool,
}

/// The reach state the event loop keeps.
#[derive(Debug)]
pub(crate) struct Reach {
    pub(super) relays: Vec<RelayUse>,
    conns: HashMap<ConnectionId, Conn>,
    /// Members whose hole punch failed: when to try again, and the wait after that.
    punch_again: HashMap<PeerId, (Instant, Duration)>,
    /// When the last relayed connection to a peer closed: a direct connection that follows
    /// closely is the hole punch's, though the other end closed the relayed one first.
    relayed_until: HashMap<PeerId, Instant>,
    /// When a QUIC connection to each relay was last tried.
    pub(super) quic_tried: HashMap<PeerId, Instant>,
    pub(crate) members: Members,
    reachability: Reachability,
    serves_relay: bool,
    /// When every member that is down was last dialed because a reservation was accepted.
    pub(super) redialed_all_at: Option<Instant>,
}

impl Reach {
    /// The state for `relays` (each ending in `/p2p/<relay>`), all due for a reservation now.
    pub(crate) fn new(relays: &[Multiaddr], serves_relay: bool) -> Self {
        let now = Instant::now();
        Self {
            relays: relays.iter().map(|a| RelayUse::new(a, now)).collect(),
            conns: HashMap::new(),
            punch_again: HashMap::new(),
            relayed_until: HashMap::new(),
            quic_tried: HashMap::new(),
            members: Members::default(),
            // A relay runs no AutoNAT: its operator declares it reachable.
            reachability: match serves_relay {
                true => Reachability::Public,
                false => Reachability::Unknown,
            },
            serves_relay,
            redialed_all_at: None,
        }
    }

    /// What AutoNAT last concluded.
    pub(crate) fn reachability(&self) -> Reachability {
        self.reachability
    }

    /// How this node is connected to `peer` now: a direct connection before a relayed one.
    pub(crate) fn connection(&self, peer: &PeerId) -> Option<Connection> {
        let kinds = self
            .conns
            .values()
            .filter(|c| c.peer == *peer)
            .map(|c| c.kind);
        kinds.min_by_key(|k| match k {
            Connection::HolePunched => 0,
            Connection::Direct => 1,
            Connection::Relayed => 2,
        })
    }

    /// The relayed connections to `peer`.
    fn relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.peer == *peer && c.kind == Connection::Relayed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether this node has a direct QUIC connection to `peer`.
    pub(super) fn has_quic(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|c| c.peer == *peer && c.quic)
    }
}

impl EventLoop {
    /// Notes how a new connection was made. A direct connection to a peer connected only
    /// through a relay until then is the hole punch's: DCUtR reports it on the side that dialed
    /// it, and this is how the other side knows. The relayed connections then close (requests
    /// would otherwise go on taking the relay's way for half their trips).
    pub(super) fn note_connection(&mut self, id: ConnectionId, peer: PeerId, at: &ConnectedPoint) {
        let relayed = self.reach.relayed(&peer);
        let lately = self
            .reach
            .relayed_until
            .remove(&peer)
            .is_some_and(|t| t.elapsed() < RELAYED_LATELY);
        let kind = match at.is_relayed() {
            true => Connection::Relayed,
            false if relayed.is_empty() && !lately => Connection::Direct,
            false => Connection::HolePunched,
        };
        let addr = match at {
            ConnectedPoint::Dialer { address, .. } => address,
            ConnectedPoint::Listener { local_addr, .. } => local_addr,
        };
        let quic = kind != Connection::Relayed && addr.iter().any(|p| p == AddrPart::QuicV1);
        self.reach.conns.insert(id, Conn { peer, kind, quic });
        if kind == Connection::HolePunched {
            tracing::info!(%peer, "direct connection while relayed: hole punched");
            self.reach.punch_again.remove(&peer);
            for relayed in relayed {
                self.swarm.close_connection(relayed);
            }
        }
    }

    /// Closes the relayed connections of members whose failed hole punch is due for another
    /// try: the next relayed connection (both ends redial members that are down) brings a new
    /// DCUtR attempt. The wait doubles from 15 s to 10 min while attempts fail.
    pub(super) fn punch_again_due(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .reach
            .punch_again
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        self.reach
            .relayed_until
            .retain(|_, t| t.elapsed() < RELAYED_LATELY);
        for peer in due {
            match self.reach.connection(&peer) {
                Some(Connection::Relayed) => {}
                // Not connected now: the next relayed connection tries again by itself, and
                // the backoff holds for the one after.
                None => continue,
                Some(_) => {
                    self.reach.punch_again.remove(&peer);
                    continue;
                }
            }
            tracing::info!(%peer, "closing the relayed connection to try a hole punch again");
            for relayed in self.reach.relayed(&peer) {
                self.swarm.close_connection(relayed);
            }
            if let Some((at, wait)) = self.reach.punch_again.get_mut(&peer) {
                *at = now + *wait;
                *wait = (*wait * 2).min(PUNCH_RETRY_MAX);
            }
        }
    }

    /// Forgets a closed connection.
    pub(super) fn forget_connection(&mut self, id: ConnectionId) {
        let closed = self.reach.conns.remove(&id);
        if let Some(Conn {
            peer,
            kind: Connection::Relayed,
            ..
        }) = closed
        {
            self.reach.relayed_until.insert(peer, Instant::now());
        }
        self.reach
            .relayed_until
            .retain(|_, t| t.elapsed() < RELAYED_LATELY);
    }

    /// The members changed: the relay (if this node serves one) admits only the new set,
    /// AutoNAT asks only members, and refused reservations are asked for again soon.
    pub(super) fn share_members(&mut self, members: &HashSet<PeerId>) {
        let old = std::mem::replace(
            &mut *self
                .reach
                .members
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            members.clone(),
        );
        if let Some(autonat) = self.swarm.behaviour_mut().autonat.as_mut() {
            for gone in old.difference(members) {
                autonat.remove_server(gone);
            }
            for new in members.difference(&old) {
                autonat.add_server(*new, None);
            }
        }
        self.reserve_again_soon(Instant::now());
    }

    /// A listen address of a node that serves as a relay is announced as reachable (the relay
    /// hands its reservations out with these): the operator who turns the relay on vouches that
    /// its listen addresses are reachable from the members it serves.
    pub(super) fn announce_if_relay(&mut self, addr: &Multiaddr) {
        // Loopback stays: the roster entries leave it out wherever another address exists.
        let routable = addr.iter().all(|p| match p {
            AddrPart::Ip4(ip) => !ip.is_unspecified(),
            AddrPart::Ip6(ip) => !ip.is_unspecified(),
            AddrPart::P2pCircuit => false,
            _ => true,
        });
        if self.reach.serves_relay && routable {
            self.swarm.add_external_address(addr.clone());
        }
    }

    pub(super) fn on_relay_server(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => tracing::info!(peer = %src_peer_id, "relay: reservation accepted"),
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => tracing::warn!(peer = %src_peer_id, ?status, "relay: reservation refused"),
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => tracing::warn!(
                peer = %src_peer_id,
                to = %dst_peer_id,
                ?status,
                "relay: circuit refused"
            ),
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => tracing::debug!(peer = %src_peer_id, to = %dst_peer_id, "relay: circuit opened"),
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => tracing::debug!(
                peer = %src_peer_id,
                to = %dst_peer_id,
                error = ?error,
                "relay: circuit closed"
            ),
            _ => {}
        }
    }

    /// A hole punch succeeded: the new connection is marked, and the relayed ones to that peer
    /// close (usually done already as the connection was noted).
    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(id) => {
                tracing::debug!(%peer, "DCUtR reports its direct connection");
                if let Some(c) = self.reach.conns.get_mut(&id) {
                    c.kind = Connection::HolePunched;
                }
                self.reach.punch_again.remove(&peer);
                for relayed in self.reach.relayed(&peer) {
                    self.swarm.close_connection(relayed);
                }
            }
            Err(e) if !retries(self.swarm.local_peer_id(), &peer, &e) => {
                tracing::info!(%peer, error = %e, "hole punch failed; staying relayed");
            }
            Err(e) => {
                let entry = self.reach.punch_again.entry(peer);
                let (at, wait) = entry.or_insert((Instant::now(), PUNCH_RETRY_MIN));
                *at = (*at).max(Instant::now() + *wait);
                tracing::info!(
                    %peer,
                    error = %e,
                    retry_in_s = (*at - Instant::now()).as_secs(),
                    "hole punch failed; staying relayed"
                );
            }
        }
    }

    pub(super) fn on_autonat(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { new, .. } = event else {
            return;
        };
        let reachability = match new {
            autonat::NatStatus::Public(_) => Reachability::Public,
            autonat::NatStatus::Private => Reachability::Private,
            autonat::NatStatus::Unknown => Reachability::Unknown,
        };
        if reachability != self.reach.reachability {
            tracing::info!(?reachability, "reachability changed (AutoNAT)");
            if reachability == Reachability::Private && self.reach.relays.is_empty() {
                tracing::warn!(
                    "members cannot dial this node and no relay is configured: only outgoing \
                     connections reach the mesh (see `relays` in config.toml)"
                );
            }
        }
        self.reach.reachability = reachability;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_connection_is_reported_before_a_relayed_one() {
        let peer = PeerId::random();
        let mut reach = Reach::new(&[], false);
        assert_eq!(reach.connection(&peer), None);
        let conn = |kind| Conn {
            peer,
            kind,
            quic: false,
        };
        reach
            .conns
            .insert(ConnectionId::new_unchecked(1), conn(Connection::Relayed));
        assert_eq!(reach.connection(&peer), Some(Connection::Relayed));
        reach.conns.insert(
            ConnectionId::new_unchecked(2),
            conn(Connection::HolePunched),
        );
        assert_eq!(reach.connection(&peer), Some(Connection::HolePunched));
        assert_eq!(reach.relayed(&peer), vec![ConnectionId::new_unchecked(1)]);
        assert_eq!(reach.connection(&PeerId::random()), None);
    }

    #[test]
    fn only_a_configured_relays_own_address_is_announced() {
        let relay =
            "/ip4/203.0.113.5/tcp/7071/p2p/12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4";
        let reach = Reach::new(&[relay.parse().unwrap()], false);
        let me = "12D3KooWGyyXDYqfE9PJ8Ttujk2wAPjGAGTZSk8sRuY5RzmCrkdF";
        let at = |a: &str| -> Multiaddr { a.parse().unwrap() };
        assert!(reach.announces(&at("/ip4/192.168.10.2/tcp/7071")));
        assert!(reach.announces(&at(&format!("{relay}/p2p-circuit/p2p/{me}"))));
        let elsewhere = relay.replace("203.0.113.5", "198.51.100.66");
        assert!(!reach.announces(&at(&format!("{elsewhere}/p2p-circuit/p2p/{me}"))));
    }

    #[test]
    fn only_members_pass_the_relay_gate() {
        let members = Members::default();
        let (member, stranger) = (PeerId::random(), PeerId::random());
        members.write().unwrap().insert(member);
        let mut gate = members_only(&members);
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        let now = Instant::now();
        assert!(gate.try_next(member, &addr, now));
        assert!(!gate.try_next(stranger, &addr, now));
    }
}
