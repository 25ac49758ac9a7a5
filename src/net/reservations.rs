//! The relays this node reserves a relayed address on (circuit relay v2 client): asking, the
//! retries and their backoff, what a relay may hand out, and the QUIC connection kept to each
//! relay so that hole punches have a UDP mapping to offer. The reach state itself is in
//! `reach.rs`.

use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::{relay, Multiaddr, PeerId};

use super::event_loop::EventLoop;
use super::reach::Reach;

/// First wait before a relay reservation that failed or closed is tried again; it doubles up to
/// [`RELAY_RETRY_MAX`].
const RELAY_RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a relay reservation.
const RELAY_RETRY_MAX: Duration = Duration::from_secs(60);
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

/// A relay this node reserves an address on, and when to try again after a failure.
#[derive(Debug)]
pub(super) struct RelayUse {
    /// The relay (`None` if its address did not name it; `spawn` refuses those).
    pub(super) peer: Option<PeerId>,
    /// `<relay address>/p2p/<relay>/p2p-circuit`.
    pub(super) circuit: Multiaddr,
    pub(super) listener: Option<ListenerId>,
    pub(super) retry_at: Option<Instant>,
    pub(super) delay: Duration,
    /// When the listener was last asked for.
    pub(super) tried_at: Option<Instant>,
    /// When the current reservation was accepted, and last renewed.
    pub(super) reserved_at: Option<Instant>,
    pub(super) renewed_at: Option<Instant>,
    /// Addresses the current listener reported.
    pub(super) addrs_seen: usize,
    /// Until when the reservation waits for a QUIC connection to the relay.
    pub(super) quic_wait_until: Option<Instant>,
}

impl RelayUse {
    /// A relay at `addr` (ending in `/p2p/<relay>`), due for its first reservation shortly.
    pub(super) fn new(addr: &Multiaddr, now: Instant) -> Self {
        Self {
            peer: super::peers::split_p2p(addr).0,
            circuit: addr.clone().with(AddrPart::P2pCircuit),
            listener: None,
            // Time for the mesh to hand over the roster's addresses (the relay's QUIC one
            // among them) before the first reservation.
            retry_at: Some(now + FIRST_RESERVATION),
            delay: RELAY_RETRY_MIN,
            tried_at: None,
            reserved_at: None,
            renewed_at: None,
            addrs_seen: 0,
            quic_wait_until: None,
        }
    }
}

impl Reach {
    /// Whether `listener` is one of the relay reservations.
    pub(crate) fn is_relay_listener(&self, listener: ListenerId) -> bool {
        self.relay_of_listener(listener).is_some()
    }

    /// The index of the relay whose reservation `listener` is.
    fn relay_of_listener(&self, listener: ListenerId) -> Option<usize> {
        self.relays
            .iter()
            .position(|r| r.listener == Some(listener))
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
        if self.dials_held() {
            return;
        }
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
        let Some(i) = self.reach.relay_of_listener(listener) else {
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
        let Some(i) = self.reach.relay_of_listener(listener) else {
            return true;
        };
        let relay = &mut self.reach.relays[i];
        relay.addrs_seen += 1;
        if relay.addrs_seen > MAX_RELAY_ADDRS {
            tracing::warn!(relay = %relay.circuit, "relay hands out too many addresses; dropping it");
            relay.reserved_at = None;
            self.swarm.remove_listener(listener);
            return false;
        }
        self.reach.announces(addr)
    }

    /// Opens a QUIC connection to each relay this node reaches over TCP alone. The relay tells
    /// this node where it sees it, per connection: over QUIC, that is the NAT's UDP mapping of
    /// the QUIC listener, which stays the same for every destination (a TCP mapping may not: a
    /// node that restarts within minutes meets its old connection's entry in the NAT's table and
    /// gets a new port), and DCUtR needs it to punch with QUIC.
    pub(super) fn quic_to_relays_due(&mut self, now: Instant) {
        if self.dials_held() {
            return;
        }
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
        if self.reach.has_quic(&relay) {
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
            Some(until) => now < until && !self.reach.has_quic(&relay),
            None => {
                let waits = self.dial_quic(relay, now);
                if waits {
                    self.reach.relays[i].quic_wait_until = Some(now + QUIC_WAIT);
                }
                waits
            }
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

    /// The members changed: reservations refused so far are asked for again soon (a relay
    /// refuses a node that is not yet its member, as a joiner is until its admission spreads),
    /// at most every [`RESERVE_AGAIN_EVERY`] per relay, the backoff kept.
    pub(super) fn reserve_again_soon(&mut self, now: Instant) {
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
}
