//! Reaching members behind NATs with libp2p's own parts: the relays this node reserves a relayed
//! address on (circuit relay v2 client), the relay it serves to members when configured to (within
//! limits), what AutoNAT says of this node's reachability, and how each connection was made
//! (direct, hole-punched by DCUtR from a relayed one, or through a relay).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, dcutr, relay, Multiaddr, PeerId};
use serde::Serialize;

use super::event_loop::EventLoop;

/// First wait before a relay reservation that failed or closed is tried again; it doubles up to
/// [`RELAY_RETRY_MAX`].
const RELAY_RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a relay reservation.
const RELAY_RETRY_MAX: Duration = Duration::from_secs(60);
/// First wait after a failed hole punch before the relayed connection is closed, so that the
/// next relayed connection brings a new attempt; it doubles up to [`PUNCH_RETRY_MAX`].
const PUNCH_RETRY_MIN: Duration = Duration::from_secs(15);
/// Longest wait between two hole-punch attempts to one member.
const PUNCH_RETRY_MAX: Duration = Duration::from_secs(600);
/// A direct connection this soon after the last relayed one to its peer closed is a hole
/// punch's.
const RELAYED_LATELY: Duration = Duration::from_secs(5);
/// Wait before the first reservation after the start.
const FIRST_RESERVATION: Duration = Duration::from_millis(500);
/// Longest wait of a reservation for a QUIC connection to its relay.
const QUIC_WAIT: Duration = Duration::from_secs(3);
/// Wait between two tries of a QUIC connection to a relay connected over TCP alone.
const QUIC_RETRY: Duration = Duration::from_secs(30);
/// A reservation that lasted this long starts the relay's backoff over when it ends; a relay
/// that accepts and drops at once stays backed off.
const RESERVATION_LASTED: Duration = Duration::from_secs(60);
/// A relay renewing a reservation sooner than this after the last is dropped (its listener
/// removed, its backoff kept): each renewal hands this node addresses.
const RENEWAL_EVERY: Duration = Duration::from_secs(60);
/// Most addresses one relay listener may report; past it the listener is removed.
const MAX_RELAY_ADDRS: usize = 16;
/// Least time between two rounds of dials of every member that is down, after reservations.
const REDIAL_ALL_EVERY: Duration = Duration::from_secs(30);
/// Least time between two reservation tries on one relay brought forward by roster changes.
const RESERVE_AGAIN_EVERY: Duration = Duration::from_secs(10);

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

/// A relay this node reserves an address on, and when to try again after a failure.
#[derive(Debug)]
struct RelayUse {
    /// The relay (`None` if its address did not name it; `spawn` refuses those).
    peer: Option<PeerId>,
    /// `<relay address>/p2p/<relay>/p2p-circuit`.
    circuit: Multiaddr,
    listener: Option<ListenerId>,
    retry_at: Option<Instant>,
    delay: Duration,
    /// When the listener was last asked for.
    tried_at: Option<Instant>,
    /// When the current reservation was accepted, and last renewed.
    reserved_at: Option<Instant>,
    renewed_at: Option<Instant>,
    /// Addresses the current listener reported.
    addrs_seen: usize,
    /// Until when the reservation waits for a QUIC connection to the relay.
    quic_wait_until: Option<Instant>,
}

/// The reach state the event loop keeps.
#[derive(Debug)]
pub(crate) struct Reach {
    relays: Vec<RelayUse>,
    kinds: HashMap<ConnectionId, (PeerId, Connection)>,
    /// Members whose hole punch failed: when to try again, and the wait after that.
    punch_again: HashMap<PeerId, (Instant, Duration)>,
    /// When the last relayed connection to a peer closed: a direct connection that follows
    /// closely is the hole punch's, though the other end closed the relayed one first.
    relayed_until: HashMap<PeerId, Instant>,
    /// Direct QUIC connections, and their peers.
    quic: HashMap<ConnectionId, PeerId>,
    /// When a QUIC connection to each relay was last tried.
    quic_tried: HashMap<PeerId, Instant>,
    pub(crate) members: Members,
    reachability: Reachability,
    serves_relay: bool,
    /// When every member that is down was last dialed because a reservation was accepted.
    redialed_all_at: Option<Instant>,
}

impl Reach {
    /// The state for `relays` (each ending in `/p2p/<relay>`), all due for a reservation now.
    pub(crate) fn new(relays: &[Multiaddr], serves_relay: bool) -> Self {
        let now = Instant::now();
        Self {
            relays: relays
                .iter()
                .map(|a| RelayUse {
                    peer: super::peers::split_p2p(a).0,
                    circuit: a.clone().with(AddrPart::P2pCircuit),
                    listener: None,
                    // Time for the mesh to hand over the roster's addresses (the relay's QUIC
                    // one among them) before the first reservation.
                    retry_at: Some(now + FIRST_RESERVATION),
                    delay: RELAY_RETRY_MIN,
                    tried_at: None,
                    reserved_at: None,
                    renewed_at: None,
                    addrs_seen: 0,
                    quic_wait_until: None,
                })
                .collect(),
            kinds: HashMap::new(),
            punch_again: HashMap::new(),
            relayed_until: HashMap::new(),
            quic: HashMap::new(),
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
            .kinds
            .values()
            .filter(|(p, _)| p == peer)
            .map(|(_, k)| *k);
        kinds.min_by_key(|k| match k {
            Connection::HolePunched => 0,
            Connection::Direct => 1,
            Connection::Relayed => 2,
        })
    }

    /// The relayed connections to `peer`.
    fn relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.kinds
            .iter()
            .filter(|(_, (p, k))| p == peer && *k == Connection::Relayed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `listener` is one of the relay reservations.
    pub(crate) fn is_relay_listener(&self, listener: ListenerId) -> bool {
        self.relays.iter().any(|r| r.listener == Some(listener))
    }

    /// Whether this node announces `addr` (a listen address): any direct one, and a relayed one
    /// only at a configured relay's own address.
    pub(crate) fn announces(&self, addr: &Multiaddr) -> bool {
        if !addr.iter().any(|p| p == AddrPart::P2pCircuit) {
            return true;
        }
        let bare = super::peers::split_p2p(addr).1;
        self.relays.iter().any(|r| r.circuit == bare)
    }
}

impl EventLoop {
    /// Listens on each relay's circuit address that is due (the reservation follows).
    pub(super) fn reserve_due(&mut self, now: Instant) {
        for i in 0..self.reach.relays.len() {
            let relay = &self.reach.relays[i];
            if relay.listener.is_some() || relay.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            let circuit = relay.circuit.clone();
            if self.waits_for_quic(i, now) {
                continue;
            }
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(relay = %circuit, "asking for a relay reservation");
                    let relay = &mut self.reach.relays[i];
                    relay.listener = Some(id);
                    relay.retry_at = None;
                    relay.tried_at = Some(now);
                    relay.addrs_seen = 0;
                    relay.quic_wait_until = None;
                }
                Err(e) => {
                    tracing::warn!(relay = %circuit, error = %e, "relay reservation not started");
                    self.relay_failed_at(i, now);
                }
            }
        }
    }

    /// A relay listener closed (its reservation failed, expired or lost its connection): tries
    /// again after the relay's backoff.
    pub(super) fn on_relay_listener_closed(&mut self, listener: ListenerId, reason: &str) {
        let Some(i) = self
            .reach
            .relays
            .iter()
            .position(|r| r.listener == Some(listener))
        else {
            return;
        };
        let relay = &mut self.reach.relays[i];
        relay.listener = None;
        if relay
            .reserved_at
            .take()
            .is_some_and(|t| t.elapsed() >= RESERVATION_LASTED)
        {
            relay.delay = RELAY_RETRY_MIN;
        }
        relay.renewed_at = None;
        tracing::warn!(
            relay = %relay.circuit,
            reason,
            retry_in_s = relay.delay.as_secs(),
            "relay reservation lost; will ask again"
        );
        self.relay_failed_at(i, Instant::now());
    }

    fn relay_failed_at(&mut self, i: usize, now: Instant) {
        let relay = &mut self.reach.relays[i];
        relay.retry_at = Some(now + relay.delay);
        relay.delay = (relay.delay * 2).min(RELAY_RETRY_MAX);
    }

    /// A relay reservation was accepted (its backoff starts over once it has lasted), and
    /// members that are down are dialed at once (a dial that failed before the reservation may
    /// pass now), at most every [`REDIAL_ALL_EVERY`].
    fn on_reserved(&mut self, relay_peer: PeerId) {
        let now = Instant::now();
        for relay in self
            .reach
            .relays
            .iter_mut()
            .filter(|r| r.peer == Some(relay_peer))
        {
            relay.reserved_at = Some(now);
            relay.renewed_at = Some(now);
        }
        if self
            .reach
            .redialed_all_at
            .is_some_and(|t| now < t + REDIAL_ALL_EVERY)
        {
            return;
        }
        self.reach.redialed_all_at = Some(now);
        for (peer, addrs) in self.table.down_members() {
            self.dial_beside(peer, addrs);
        }
    }

    /// A reservation was renewed: one renewed sooner than [`RENEWAL_EVERY`] after the last is
    /// dropped, its backoff kept (each renewal hands this node addresses to listen on).
    fn on_renewed(&mut self, relay_peer: PeerId) {
        let now = Instant::now();
        let Some(i) = self
            .reach
            .relays
            .iter()
            .position(|r| r.peer == Some(relay_peer))
        else {
            return;
        };
        let relay = &mut self.reach.relays[i];
        let too_soon = relay.renewed_at.is_some_and(|t| now < t + RENEWAL_EVERY);
        relay.renewed_at = Some(now);
        if let (true, Some(id)) = (too_soon, relay.listener) {
            tracing::warn!(relay = %relay_peer, "relay renews its reservation too often; dropping it");
            relay.reserved_at = None;
            self.swarm.remove_listener(id);
        }
    }

    /// Whether a new listen address may be used: a relay listener's is counted, and past
    /// [`MAX_RELAY_ADDRS`] the listener is removed; a relayed address at another place than the
    /// configured relay's is listened on but neither announced nor reported.
    pub(super) fn relay_address_ok(&mut self, listener: ListenerId, addr: &Multiaddr) -> bool {
        let Some(relay) = self
            .reach
            .relays
            .iter_mut()
            .find(|r| r.listener == Some(listener))
        else {
            return true;
        };
        relay.addrs_seen += 1;
        if relay.addrs_seen > MAX_RELAY_ADDRS {
            tracing::warn!(relay = %relay.circuit, "relay hands out too many addresses; dropping it");
            relay.reserved_at = None;
            self.swarm.remove_listener(listener);
            return false;
        }
        self.reach.announces(addr)
    }

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
        self.reach.kinds.insert(id, (peer, kind));
        let addr = match at {
            ConnectedPoint::Dialer { address, .. } => address,
            ConnectedPoint::Listener { local_addr, .. } => local_addr,
        };
        if kind != Connection::Relayed && addr.iter().any(|p| p == AddrPart::QuicV1) {
            self.reach.quic.insert(id, peer);
        }
        if kind == Connection::HolePunched {
            tracing::info!(%peer, "direct connection while relayed: hole punched");
            self.reach.punch_again.remove(&peer);
            for relayed in relayed {
                self.swarm.close_connection(relayed);
            }
        }
    }

    /// Opens a QUIC connection to each relay this node reaches over TCP alone. The relay tells
    /// this node where it sees it, per connection: over QUIC, that is the NAT's UDP mapping of
    /// the QUIC listener, which stays the same for every destination (a TCP mapping may not: a
    /// node that restarts within minutes meets its old connection's entry in the NAT's table and
    /// gets a new port), and DCUtR needs it to punch with QUIC.
    pub(super) fn quic_to_relays_due(&mut self, now: Instant) {
        let relays: Vec<PeerId> = self.reach.relays.iter().filter_map(|r| r.peer).collect();
        for relay in relays {
            let tried = self.reach.quic_tried.get(&relay);
            if tried.is_none_or(|t| now >= *t + QUIC_RETRY) {
                self.dial_quic(relay, now);
            }
        }
    }

    /// Dials `relay` over QUIC if this node knows a QUIC address of it and has no QUIC
    /// connection to it; whether such a dial is under way or was just started.
    fn dial_quic(&mut self, relay: PeerId, now: Instant) -> bool {
        if self.reach.quic.values().any(|p| *p == relay) {
            return false;
        }
        let quic: Vec<Multiaddr> = self
            .table
            .addrs(&relay)
            .into_iter()
            .filter(|a| a.iter().any(|p| p == AddrPart::QuicV1))
            .map(|a| a.with_p2p(relay).unwrap_or_else(|a| a))
            .collect();
        if quic.is_empty() {
            return false;
        }
        self.reach.quic_tried.insert(relay, now);
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(relay)
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .addresses(quic)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%relay, error = %e, "QUIC dial of a relay not started");
                false
            }
        }
    }

    /// Whether relay `i`'s reservation waits (at most [`QUIC_WAIT`]) for a QUIC connection to
    /// the relay: the relayed connections that follow start hole punches at once, and without
    /// a QUIC connection out of the NAT this node knows only its TCP mapping, which a NAT
    /// remaps after a restart (its table still holds the old connection's).
    fn waits_for_quic(&mut self, i: usize, now: Instant) -> bool {
        let Some(relay) = self.reach.relays[i].peer else {
            return false;
        };
        match self.reach.relays[i].quic_wait_until {
            Some(until) => now < until && !self.reach.quic.values().any(|p| *p == relay),
            None => {
                let waits = self.dial_quic(relay, now);
                if waits {
                    self.reach.relays[i].quic_wait_until = Some(now + QUIC_WAIT);
                }
                waits
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
        self.reach.quic.remove(&id);
        if let Some((peer, Connection::Relayed)) = self.reach.kinds.remove(&id) {
            self.reach.relayed_until.insert(peer, Instant::now());
        }
        self.reach
            .relayed_until
            .retain(|_, t| t.elapsed() < RELAYED_LATELY);
    }

    /// The members changed: the relay (if this node serves one) admits only the new set,
    /// AutoNAT asks only members, and reservations refused so far are asked for again soon (a
    /// relay refuses a node that is not yet its member, as a joiner is until its admission
    /// spreads), at most every [`RESERVE_AGAIN_EVERY`] per relay, the backoff kept.
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
        let now = Instant::now();
        for relay in self
            .reach
            .relays
            .iter_mut()
            .filter(|r| r.listener.is_none())
        {
            let soonest = relay
                .tried_at
                .map_or(now, |t| now.max(t + RESERVE_AGAIN_EVERY));
            relay.retry_at = Some(relay.retry_at.map_or(soonest, |at| at.min(soonest)));
        }
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

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if renewal {
                    self.on_renewed(relay_peer_id);
                } else {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                    self.on_reserved(relay_peer_id);
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "circuit through a relay opened");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "a member reached this node through a relay");
            }
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
                self.reach.kinds.insert(id, (peer, Connection::HolePunched));
                self.reach.punch_again.remove(&peer);
                for relayed in self.reach.relayed(&peer) {
                    self.swarm.close_connection(relayed);
                }
            }
            // One end tries again (the one with the lower peer id): both closing the relayed
            // connection at once and redialing each other cross their circuits.
            Err(e) if *self.swarm.local_peer_id() > peer => {
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
        reach
            .kinds
            .insert(ConnectionId::new_unchecked(1), (peer, Connection::Relayed));
        assert_eq!(reach.connection(&peer), Some(Connection::Relayed));
        reach.kinds.insert(
            ConnectionId::new_unchecked(2),
            (peer, Connection::HolePunched),
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
