//! The one task that owns the swarm: a `biased` select over commands, replies to inbound requests,
//! swarm events and a housekeeping tick. Swarm events are handled in `swarm_events.rs`.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::core::transport::ListenerId;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::DialError;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::behaviour::Behaviour;
use super::client::Command;
use super::codec::Wire;
use super::peers::{split_p2p, PeerTable, BAD_INPUT_LIMIT};
use super::reach::Reach;
use super::{Config, Error, Event, Frame, Protocol, REQUEST_TIMEOUT};

/// How often due redials and expired join windows are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);
/// Most inbound requests waiting for the mesh layer's reply; more are refused unanswered.
const PENDING_REPLIES_CAP: usize = 4096;
/// Most outbound requests waiting for a response; more fail with [`Error::Busy`].
const PENDING_REQUESTS_CAP: usize = 4096;
/// Most `listen_addrs` calls parked until the listeners report; more are answered at once.
const LISTEN_WAITERS_CAP: usize = 64;
/// Least time between two dials of one peer beside the dial under way.
const BESIDE_EVERY: Duration = Duration::from_secs(10);
/// Longest time the first dials wait for the listeners to report.
const LISTENERS_WITHIN: Duration = Duration::from_secs(1);
/// Most [`Command::Dial`] addresses held until the listeners report; more are dialed at once.
const HELD_DIALS_CAP: usize = 64;

/// Where the outcome of a [`Command::Dial`] goes.
type DialReply = oneshot::Sender<Result<(), Error>>;

/// Resolves with the local id of an inbound request and the reply, if one was sent in time.
type ReplyFuture = BoxFuture<'static, (u64, Option<Frame>)>;

/// An inbound request waiting for the mesh layer's reply.
pub(super) struct Inbound {
    pub(super) protocol: Protocol,
    pub(super) channel: ResponseChannel<Wire>,
}

/// The state owned by the swarm task.
pub(crate) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    pub(super) table: PeerTable,
    join_window: Duration,
    /// Inbound connections from non-members are accepted until then (an invitation is out).
    pub(super) strangers_until: Option<Instant>,
    /// Removed members: every connection of theirs is closed when established.
    pub(super) banned: HashSet<PeerId>,
    /// Outbound requests by protocol and libp2p id (ids are per behaviour).
    pub(super) outbound:
        HashMap<(Protocol, OutboundRequestId), oneshot::Sender<Result<Frame, Error>>>,
    /// Inbound requests by local id, until their reply future resolves.
    inbound: HashMap<u64, Inbound>,
    replies: FuturesUnordered<ReplyFuture>,
    next_inbound: u64,
    /// Listeners from spawn that have not reported an address yet.
    pending_listeners: HashSet<ListenerId>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    dropped_events: u64,
    /// Relays, relayed connections and reachability.
    pub(super) reach: Reach,
    /// When each peer was last dialed beside a dial under way, at relayed addresses or not.
    beside: HashMap<(PeerId, bool), Instant>,
    /// Dials waiting for the listeners, until they report.
    held: Option<Held>,
}

/// Until the listeners report (at most [`LISTENERS_WITHIN`] after the start), no dial leaves: a
/// TCP dial leaves from a listener's port once there is one, the port a NAT in front of this
/// node most likely keeps and other members are told of; before, it leaves from an ephemeral
/// port, and a hole punch offers that.
struct Held {
    until: Instant,
    /// The bootstrap members and relays.
    bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Addresses [`Command::Dial`] asked for meanwhile, each answered once dialed.
    dials: Vec<(Multiaddr, DialReply)>,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        config: &Config,
        reach: Reach,
    ) -> Self {
        let table = PeerTable::new(*swarm.local_peer_id());
        Self {
            swarm,
            commands,
            events,
            table,
            join_window: config.join_window,
            strangers_until: None,
            banned: HashSet::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            replies: FuturesUnordered::new(),
            next_inbound: 0,
            pending_listeners: HashSet::new(),
            listen_waiters: Vec::new(),
            dropped_events: 0,
            reach,
            beside: HashMap::new(),
            held: None,
        }
    }

    /// Notes the listeners to wait for and adds the bootstrap members and relays; once the
    /// listeners report, dials those and asks the relays for reservations.
    pub(crate) fn start(&mut self, listeners: Vec<ListenerId>, members: Vec<(PeerId, Multiaddr)>) {
        self.pending_listeners = listeners.into_iter().collect();
        for (peer, addr) in &members {
            self.remember(*peer, addr.clone());
        }
        let now = Instant::now();
        self.held = Some(Held {
            until: now + LISTENERS_WITHIN,
            bootstrap: members,
            dials: Vec::new(),
        });
        self.release_dials(now);
        self.reserve_due(now);
    }

    /// Whether dials still wait for the listeners (see [`Held`]).
    pub(super) fn dials_held(&self) -> bool {
        self.held.is_some()
    }

    /// Lets the first dials leave once every listener has reported, or the wait is over (called
    /// from the housekeeping tick, which then dials the members due and asks for reservations).
    pub(super) fn release_dials(&mut self, now: Instant) {
        match &self.held {
            Some(h) if self.pending_listeners.is_empty() || h.until <= now => {}
            _ => return,
        }
        if let Some(held) = self.held.take() {
            for (peer, addr) in held.bootstrap {
                self.dial_peer(peer, vec![addr]);
            }
            for (addr, reply) in held.dials {
                let _ = reply.send(self.on_dial(addr));
            }
        }
    }

    /// Runs until shutdown or until every [`super::Client`] is dropped; then drops the swarm.
    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ack = loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if let ControlFlow::Break(ack) = self.on_command(command) {
                            break Some(ack);
                        }
                    }
                    None => break None,
                },
                Some((id, frame)) = self.replies.next(), if !self.replies.is_empty() => {
                    self.on_reply(id, frame);
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.on_tick(),
            }
        };
        tracing::info!(
            dropped_events = self.dropped_events,
            "network event loop stopped"
        );
        drop(self);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    fn on_command(&mut self, command: Command) -> ControlFlow<oneshot::Sender<()>> {
        match command {
            Command::Request {
                peer,
                protocol,
                frame,
                reply,
            } => self.on_request(peer, protocol, frame, reply),
            Command::Dial { addr, reply } => match &mut self.held {
                Some(held) if held.dials.len() < HELD_DIALS_CAP => held.dials.push((addr, reply)),
                _ => {
                    let _ = reply.send(self.on_dial(addr));
                }
            },
            // A new member, or a new address of a member that is down, is due for a dial at
            // once: dial now rather than at the next tick, up to HOUSEKEEPING_INTERVAL later (a
            // restarted node would otherwise wait that long for its first catch-up).
            Command::AddAddress { peer, addr, reply } => {
                let fresh = self.remember(peer, addr);
                self.dial_new_addresses(peer, fresh);
                self.redial_due(Instant::now());
                let _ = reply.send(());
            }
            Command::SetMembers { members, reply } => {
                self.on_set_members(members);
                self.redial_due(Instant::now());
                self.reserve_due(Instant::now());
                let _ = reply.send(());
            }
            Command::Disconnect { peer, reply } => {
                let _ = self.swarm.disconnect_peer_id(peer);
                let _ = reply.send(());
            }
            Command::Ban { peers, reply } => {
                for peer in peers.iter().filter(|p| self.table.is_up(p)) {
                    tracing::warn!(%peer, "removed from the mesh; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(*peer);
                }
                self.banned = peers;
                let _ = reply.send(());
            }
            Command::AcceptStrangers { until, reply } => {
                self.strangers_until = self.strangers_until.max(Some(until));
                let _ = reply.send(());
            }
            Command::ListenAddrs { reply } => self.on_listen_addrs(reply),
            Command::Peers { reply } => {
                let mut infos = self.table.infos(Instant::now(), SystemTime::now());
                for info in &mut infos {
                    info.connection = info
                        .peer
                        .parse()
                        .ok()
                        .and_then(|p| self.reach.connection(&p));
                }
                let _ = reply.send(infos);
            }
            Command::Reachability { reply } => {
                let _ = reply.send(self.reach.reachability());
            }
            Command::ReportBad {
                peer,
                detail,
                reply,
            } => {
                self.bad_input(peer, None, detail);
                let _ = reply.send(());
            }
            Command::Shutdown { reply } => return ControlFlow::Break(reply),
        }
        ControlFlow::Continue(())
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        frame: Frame,
        reply: oneshot::Sender<Result<Frame, Error>>,
    ) {
        if self.outbound.len() >= PENDING_REQUESTS_CAP {
            let _ = reply.send(Err(Error::Busy));
            return;
        }
        let addrs = self.dialable(peer, self.table.addrs(&peer));
        let id = self
            .swarm
            .behaviour_mut()
            .frames_mut(protocol)
            .send_request_with_addresses(&peer, Wire::Frame(frame), addrs);
        self.outbound.insert((protocol, id), reply);
    }

    fn on_dial(&mut self, addr: Multiaddr) -> Result<(), Error> {
        let opts = match split_p2p(&addr) {
            (Some(peer), bare) => {
                self.remember(peer, bare.clone());
                DialOpts::peer_id(peer)
                    .addresses(qualified(peer, vec![bare]))
                    .build()
            }
            (None, _) => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => Ok(()),
            Err(e) => Err(Error::Dial {
                addr,
                reason: e.to_string(),
            }),
        }
    }

    /// Records an address the mesh layer vouches for: peer table and swarm.
    /// Returns the address if it was not known.
    pub(super) fn remember(&mut self, peer: PeerId, addr: Multiaddr) -> Vec<Multiaddr> {
        let addr = split_p2p(&addr).1;
        let fresh = self.table.add_addrs(peer, [addr.clone()], Instant::now());
        self.swarm.add_peer_address(peer, addr);
        fresh
    }

    fn on_set_members(&mut self, members: HashSet<PeerId>) {
        self.share_members(&members);
        let (added, removed) = self.table.set_members(members, Instant::now());
        for peer in removed.iter().filter(|p| self.table.is_up(p)) {
            tracing::warn!(%peer, "left the roster while connected; it will be disconnected");
        }
        tracing::info!(
            added = added.len(),
            removed = removed.len(),
            "roster updated"
        );
    }

    fn on_listen_addrs(&mut self, reply: oneshot::Sender<Vec<Multiaddr>>) {
        if self.pending_listeners.is_empty() || self.listen_waiters.len() >= LISTEN_WAITERS_CAP {
            let _ = reply.send(self.listen_addrs());
        } else {
            self.listen_waiters.push(reply);
        }
    }

    /// A listener from the start reported (or closed): once every one has, parked
    /// `listen_addrs` calls are answered. The first dials leave at the next housekeeping tick: a
    /// listener on every interface reports one address at a time, loopback's often first, and a
    /// TCP dial leaves from the listen port only once an address of its kind has been reported.
    pub(super) fn listener_reported(&mut self, listener: ListenerId) {
        self.pending_listeners.remove(&listener);
        if self.pending_listeners.is_empty() {
            let addrs = self.listen_addrs();
            for waiter in self.listen_waiters.drain(..) {
                let _ = waiter.send(addrs.clone());
            }
        }
    }

    /// The bound addresses, each ending in `/p2p/<local id>`. Of the relayed ones, only those
    /// at a configured relay's own address: a relay chooses the addresses it hands out, and
    /// these end in this node's signed roster entry.
    pub(super) fn listen_addrs(&self) -> Vec<Multiaddr> {
        let local = *self.swarm.local_peer_id();
        self.swarm
            .listeners()
            .filter(|a| self.reach.announces(a))
            .map(|a| a.clone().with_p2p(local).unwrap_or_else(|a| a))
            .collect()
    }

    /// Parks an inbound request's response channel and hands the request to the mesh layer.
    pub(super) fn deliver(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        (frame, held): (Frame, Option<super::codec::Held>),
        channel: ResponseChannel<Wire>,
    ) {
        if self.inbound.len() >= PENDING_REPLIES_CAP {
            tracing::warn!(%peer, %protocol, "too many requests awaiting replies; refusing");
            return;
        }
        let id = self.next_inbound;
        self.next_inbound = self.next_inbound.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        self.inbound.insert(id, Inbound { protocol, channel });
        self.replies.push(Box::pin(async move {
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
            (id, reply.ok().and_then(Result::ok))
        }));
        self.emit(Event::Request {
            peer,
            protocol,
            frame,
            reply: tx,
            held,
        });
    }

    /// Sends the mesh layer's reply, or drops the channel (closing the stream) if there is none.
    fn on_reply(&mut self, id: u64, frame: Option<Frame>) {
        let Some(Inbound { protocol, channel }) = self.inbound.remove(&id) else {
            return;
        };
        let Some(frame) = frame else {
            return;
        };
        let max = protocol.max_response_bytes();
        if frame.0.len() > max {
            tracing::error!(%protocol, len = frame.0.len(), max, "reply over the cap not sent");
            return;
        }
        let behaviour = self.swarm.behaviour_mut().frames_mut(protocol);
        if behaviour
            .send_response(channel, Wire::Frame(frame))
            .is_err()
        {
            tracing::debug!(%protocol, "reply too late: the stream is gone");
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        for peer in self.table.expired_non_members(now, self.join_window) {
            if self.swarm.disconnect_peer_id(peer).is_ok() {
                tracing::warn!(%peer, reason = "not on the roster after the join window", "disconnecting");
            }
        }
        self.release_dials(now);
        self.redial_due(now);
        self.reserve_due(now);
        self.punch_again_due(now);
        self.quic_to_relays_due(now);
    }

    /// Dials every member that is down and due for an attempt.
    fn redial_due(&mut self, now: Instant) {
        if self.dials_held() {
            return;
        }
        for (peer, addrs) in self.table.due_redials(now) {
            tracing::debug!(%peer, addrs = addrs.len(), "redialing member");
            self.dial_peer(peer, addrs);
        }
    }

    /// A member that is down, at addresses the mesh layer vouches for and this node did not
    /// know, is dialed there at once even while another dial of it goes on: that one may be
    /// stuck on addresses that time out (a NATed member's private ones) while these are its
    /// relayed one.
    fn dial_new_addresses(&mut self, peer: PeerId, fresh: Vec<Multiaddr>) {
        if !fresh.is_empty() && self.table.is_member(&peer) && !self.table.is_up(&peer) {
            self.dial_beside(peer, fresh);
        }
    }

    /// Dials `peer` at `addrs` unless it is connected, beside any dial of it under way; at most
    /// once per [`BESIDE_EVERY`] per peer for direct addresses and once for relayed ones (a
    /// relayed address must not wait for a dial of private ones to time out), so that address
    /// churn cannot stack dials.
    pub(super) fn dial_beside(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if self.dials_held() {
            return;
        }
        let now = Instant::now();
        self.beside.retain(|_, t| now < *t + BESIDE_EVERY);
        let (relayed, direct): (Vec<_>, Vec<_>) =
            addrs.into_iter().partition(|a| circuit_relay(a).is_some());
        for (is_relayed, addrs) in [(true, relayed), (false, direct)] {
            let addrs = self.dialable(peer, addrs);
            if addrs.is_empty() || self.beside.contains_key(&(peer, is_relayed)) {
                continue;
            }
            self.beside.insert((peer, is_relayed), now);
            self.dial_disconnected(peer, addrs);
        }
    }

    fn dial_disconnected(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Disconnected)
            .addresses(addrs)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    /// `addrs` in the form dials take, without relayed addresses through a relay that is not a
    /// member (a hostile member could otherwise send this node to any stranger), and with one
    /// relayed address per relay (identify hands out one per relay address; dialed at once,
    /// each would open its own circuit, and the extra connections are refused at the per-peer
    /// limit after spending the relay's circuits).
    pub(super) fn dialable(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let mut relays = HashSet::new();
        let keep = |a: &Multiaddr| match circuit_relay(a) {
            Some(relay) => self.table.is_member(&relay) && relays.insert(relay),
            None => true,
        };
        qualified(peer, addrs.into_iter().filter(keep).collect())
    }

    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(self.dialable(peer, addrs))
            .extend_addresses_through_behaviour()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    /// Counts a bad input against `peer`, reports it, and disconnects past the limit.
    pub(super) fn bad_input(&mut self, peer: PeerId, protocol: Option<Protocol>, detail: String) {
        let count = self.table.bad_input(peer, Instant::now());
        tracing::warn!(%peer, count, %detail, "bad input from peer");
        if let Some(protocol) = protocol {
            self.emit(Event::BadInput {
                peer,
                protocol,
                detail,
            });
        }
        if count >= BAD_INPUT_LIMIT && self.swarm.disconnect_peer_id(peer).is_ok() {
            tracing::warn!(%peer, count, reason = "too many bad inputs", "disconnecting");
        }
    }

    /// Hands `event` to the mesh layer without waiting; a full or closed channel drops it.
    pub(super) fn emit(&mut self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.dropped_events += 1;
                let dropped = self.dropped_events;
                tracing::warn!(
                    kind = kind(&event),
                    dropped,
                    "event channel full; event dropped"
                );
            }
            // Nobody listens any more: nothing worth a warning.
            Err(TrySendError::Closed(_)) => self.dropped_events += 1,
        }
    }
}

/// `addrs` ending in `/p2p/<peer>`, the form in which identify and request-response
/// hand the swarm their addresses. The swarm drops duplicate dial addresses only when they are
/// equal, and `/ip4/1.2.3.4/tcp/1` differs from `/ip4/1.2.3.4/tcp/1/p2p/<peer>`: the peer table's
/// bare addresses made every dial of a known peer open two TCP connections at once (one thrown
/// away after its handshake started).
fn qualified(peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .map(|a| a.with_p2p(peer).unwrap_or_else(|a| a))
        .collect()
}

/// The relay of a relayed address (the peer named before `/p2p-circuit`).
fn circuit_relay(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for part in addr.iter() {
        match part {
            libp2p::multiaddr::Protocol::P2p(p) => relay = Some(p),
            libp2p::multiaddr::Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// The name of an event's variant, for logs that must not dump frames.
fn kind(event: &Event) -> &'static str {
    match event {
        Event::Listening { .. } => "listening",
        Event::PeerUp { .. } => "peer-up",
        Event::PeerDown { .. } => "peer-down",
        Event::Discovered { .. } => "discovered",
        Event::Request { .. } => "request",
        Event::BadInput { .. } => "bad-input",
        Event::Refused { .. } => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::circuit_relay;

    #[test]
    fn the_relay_of_a_relayed_address_is_the_peer_before_the_circuit() {
        let relay = "12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4";
        let me = "12D3KooWGyyXDYqfE9PJ8Ttujk2wAPjGAGTZSk8sRuY5RzmCrkdF";
        let relayed = format!("/ip4/203.0.113.5/tcp/7071/p2p/{relay}/p2p-circuit/p2p/{me}");
        assert_eq!(
            circuit_relay(&relayed.parse().unwrap()),
            Some(relay.parse().unwrap())
        );
        let direct = format!("/ip4/203.0.113.5/tcp/7071/p2p/{me}");
        assert_eq!(circuit_relay(&direct.parse().unwrap()), None);
    }
}
