//! The peer table: who is a member, who is up, since when, how fast, at which addresses, how
//! misbehaved, and when to redial. Pure: every method takes the time it runs at.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// How long a peer must send nothing bad for its count to start again from zero.
pub const BAD_INPUT_FORGET: Duration = Duration::from_secs(600);
/// Bad inputs after which a peer is disconnected (see [`BAD_INPUT_FORGET`]).
pub const BAD_INPUT_LIMIT: u64 = 3;
/// First redial delay after a member goes down.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest redial delay; also the delay after a disconnect for bad input.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the redial backoff when it closes; a shorter one
/// (a peer that accepts and at once closes, such as a member that removed this node) does not,
/// so such redials slow down to one every [`BACKOFF_MAX`].
pub(crate) const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Addresses remembered per peer, newest first.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;
/// Entries kept for peers that are neither members nor connected (address hints, bad counts).
pub(crate) const MAX_PEERS: usize = 4096;

/// What [`super::Client::peers`] reports about one peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    /// The PeerId, base58.
    pub peer: String,
    /// On the roster.
    pub member: bool,
    /// At least one connection is established.
    pub up: bool,
    /// When it was last heard from, in unix milliseconds.
    pub last_seen_ms: Option<u64>,
    /// The last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Known addresses, newest first.
    pub addrs: Vec<String>,
    /// Bad inputs counted against it.
    pub bad_inputs: u64,
    /// How it is connected now (`None` when it is not): a direct connection is named before a
    /// relayed one.
    pub connection: Option<super::Connection>,
}

/// Exponential redial backoff: `delay` doubles after every attempt up to [`BACKOFF_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    delay: Duration,
    due: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: BACKOFF_MIN,
            due: None,
        }
    }
}

impl Backoff {
    /// Connected: nothing to redial, and the next outage starts from the minimum delay.
    fn reset(&mut self) {
        *self = Self::default();
    }

    /// Down: the first attempt after the current delay.
    fn schedule(&mut self, now: Instant) {
        self.due = Some(now + self.delay);
    }

    /// New hope (new member, new address): try at once.
    fn schedule_now(&mut self, now: Instant) {
        self.due = Some(now);
    }

    /// Misbehaved: wait the longest delay.
    fn penalize(&mut self, now: Instant) {
        self.delay = BACKOFF_MAX;
        self.schedule(now);
    }

    /// If an attempt is due, books the next one after a doubled delay and says yes.
    fn take_due(&mut self, now: Instant) -> bool {
        match self.due {
            Some(due) if due <= now => {
                self.delay = (self.delay * 2).min(BACKOFF_MAX);
                self.due = Some(now + self.delay);
                true
            }
            _ => false,
        }
    }

    fn cancel(&mut self) {
        self.due = None;
    }
}

#[derive(Clone, Debug, Default)]
struct Entry {
    connected_since: Option<Instant>,
    last_seen: Option<Instant>,
    rtt: Option<Duration>,
    addrs: VecDeque<Multiaddr>,
    bad_inputs: u64,
    last_bad: Option<Instant>,
    backoff: Backoff,
}

/// Every peer the loop knows of, and the roster.
#[derive(Debug)]
pub(crate) struct PeerTable {
    local: PeerId,
    members: HashSet<PeerId>,
    entries: HashMap<PeerId, Entry>,
    connected: Connected,
}

/// The peers connected now, kept by the event loop and read by every [`super::Client`] without
/// a round trip to the loop.
#[derive(Clone, Debug, Default)]
pub(crate) struct Connected(Arc<RwLock<Arc<HashSet<PeerId>>>>);

impl Connected {
    /// The peers connected now.
    pub(crate) fn now(&self) -> Arc<HashSet<PeerId>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, peer: PeerId, up: bool) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        if guard.contains(&peer) != up {
            let set = Arc::make_mut(&mut guard);
            match up {
                true => set.insert(peer),
                false => set.remove(&peer),
            };
        }
    }
}

impl PeerTable {
    /// An empty table for the node `local` (never listed, never redialed).
    pub(crate) fn new(local: PeerId) -> Self {
        Self {
            local,
            members: HashSet::new(),
            entries: HashMap::new(),
            connected: Connected::default(),
        }
    }

    /// The set of connected peers this table keeps up to date.
    pub(crate) fn connected_set(&self) -> Connected {
        self.connected.clone()
    }

    /// Replaces the roster; members not connected are due for a dial at once.
    /// Returns the peers that joined and those that left the roster.
    pub(crate) fn set_members(
        &mut self,
        mut members: HashSet<PeerId>,
        now: Instant,
    ) -> (Vec<PeerId>, Vec<PeerId>) {
        members.remove(&self.local);
        let added: Vec<PeerId> = members.difference(&self.members).copied().collect();
        let removed: Vec<PeerId> = self.members.difference(&members).copied().collect();
        self.members = members;
        for peer in &added {
            let entry = self.entry(*peer);
            if entry.connected_since.is_none() {
                entry.backoff.schedule_now(now);
            }
        }
        for peer in &removed {
            if let Some(entry) = self.entries.get_mut(peer) {
                entry.backoff.cancel();
            }
        }
        (added, removed)
    }

    /// Whether `peer` is on the roster.
    pub(crate) fn is_member(&self, peer: &PeerId) -> bool {
        self.members.contains(peer)
    }

    /// Whether at least one connection to `peer` is established.
    pub(crate) fn is_up(&self, peer: &PeerId) -> bool {
        self.entries
            .get(peer)
            .is_some_and(|e| e.connected_since.is_some())
    }

    /// The first connection to `peer` was established (`dialed` is the address, if we dialed).
    pub(crate) fn connected(&mut self, peer: PeerId, dialed: Option<Multiaddr>, now: Instant) {
        self.connected.set(peer, true);
        let entry = self.entry(peer);
        entry.connected_since = Some(now);
        entry.last_seen = Some(now);
        entry.backoff.cancel();
        if let Some(addr) = dialed {
            push_addr(entry, addr);
        }
    }

    /// The last connection to `peer` closed; a member is scheduled for redial.
    pub(crate) fn disconnected(&mut self, peer: PeerId, now: Instant) {
        self.connected.set(peer, false);
        let member = self.is_member(&peer);
        let Some(entry) = self.entries.get_mut(&peer) else {
            return;
        };
        let lasted = entry
            .connected_since
            .map(|t| now.saturating_duration_since(t));
        if lasted.is_some_and(|d| d >= STABLE_CONNECTION) {
            entry.backoff.reset();
        }
        entry.connected_since = None;
        entry.last_seen = Some(now);
        if !member {
            entry.backoff.cancel();
        } else if entry.bad_inputs >= BAD_INPUT_LIMIT {
            entry.backoff.penalize(now);
        } else {
            entry.backoff.schedule(now);
        }
    }

    /// `peer` was heard from.
    pub(crate) fn seen(&mut self, peer: &PeerId, now: Instant) {
        if let Some(entry) = self.entries.get_mut(peer) {
            entry.last_seen = Some(now);
        }
    }

    /// A ping to `peer` took `rtt`.
    pub(crate) fn record_rtt(&mut self, peer: &PeerId, rtt: Duration, now: Instant) {
        if let Some(entry) = self.entries.get_mut(peer) {
            entry.rtt = Some(rtt);
            entry.last_seen = Some(now);
        }
    }

    /// Remembers address hints for `peer`; returns those not known before. A down member with a
    /// new address is due for a dial at once.
    pub(crate) fn add_addrs(
        &mut self,
        peer: PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
        now: Instant,
    ) -> Vec<Multiaddr> {
        if peer == self.local {
            return Vec::new();
        }
        let member = self.members.contains(&peer);
        let entry = self.entry(peer);
        let mut fresh = Vec::new();
        for addr in addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
            let addr = split_p2p(&addr).1;
            if !entry.addrs.contains(&addr) {
                fresh.push(addr.clone());
                push_addr(entry, addr);
            }
        }
        if member && !fresh.is_empty() && entry.connected_since.is_none() {
            entry.backoff.schedule_now(now);
        }
        fresh
    }

    /// The known addresses of `peer`, newest first.
    pub(crate) fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.entries
            .get(peer)
            .map(|e| e.addrs.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Counts a bad input against `peer`; returns its count. A peer quiet for
    /// [`BAD_INPUT_FORGET`] starts again from zero, so a member is not disconnected for three
    /// stray inputs spread over days.
    pub(crate) fn bad_input(&mut self, peer: PeerId, now: Instant) -> u64 {
        let entry = self.entry(peer);
        if entry
            .last_bad
            .is_some_and(|t| now.saturating_duration_since(t) >= BAD_INPUT_FORGET)
        {
            entry.bad_inputs = 0;
        }
        entry.last_bad = Some(now);
        entry.bad_inputs = entry.bad_inputs.saturating_add(1);
        entry.bad_inputs
    }

    /// Down members whose redial is due, with their addresses; books each one's next attempt.
    /// The members that are down, with their addresses.
    pub(crate) fn down_members(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.members
            .iter()
            .filter_map(|p| Some((p, self.entries.get(p)?)))
            .filter(|(_, e)| e.connected_since.is_none() && !e.addrs.is_empty())
            .map(|(p, e)| (*p, e.addrs.iter().cloned().collect()))
            .collect()
    }

    pub(crate) fn due_redials(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut due = Vec::new();
        for peer in &self.members {
            if let Some(entry) = self.entries.get_mut(peer) {
                if entry.connected_since.is_none() && entry.backoff.take_due(now) {
                    due.push((*peer, entry.addrs.iter().cloned().collect()));
                }
            }
        }
        due
    }

    /// Connected non-members that have been connected for at least `window`.
    pub(crate) fn expired_non_members(&self, now: Instant, window: Duration) -> Vec<PeerId> {
        self.entries
            .iter()
            .filter(|(peer, _)| !self.members.contains(peer))
            .filter(|(_, e)| e.connected_since.is_some_and(|t| now >= t + window))
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Every member and every connected peer, sorted by PeerId.
    pub(crate) fn infos(&self, now: Instant, wall: SystemTime) -> Vec<PeerInfo> {
        let mut infos: Vec<PeerInfo> = self
            .members
            .iter()
            .chain(self.entries.keys().filter(|p| !self.members.contains(p)))
            .filter_map(|peer| self.info(peer, now, wall))
            .collect();
        infos.sort_by(|a, b| a.peer.cmp(&b.peer));
        infos
    }

    fn info(&self, peer: &PeerId, now: Instant, wall: SystemTime) -> Option<PeerInfo> {
        let member = self.members.contains(peer);
        let entry = self.entries.get(peer);
        let up = entry.is_some_and(|e| e.connected_since.is_some());
        if !member && !up {
            return None;
        }
        Some(PeerInfo {
            peer: peer.to_base58(),
            member,
            up,
            last_seen_ms: entry
                .and_then(|e| e.last_seen)
                .and_then(|t| unix_ms(t, now, wall)),
            rtt_ms: entry.and_then(|e| e.rtt).map(|d| d.as_secs_f64() * 1000.0),
            addrs: entry
                .map(|e| e.addrs.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            bad_inputs: entry.map_or(0, |e| e.bad_inputs),
            connection: None,
        })
    }

    /// The entry of `peer`, created if needed. When the table is full, one stranger (a peer
    /// neither on the roster nor connected) is evicted first, so strangers cannot grow it without
    /// bound; members and connected peers (capped by the connection limits) are never evicted.
    fn entry(&mut self, peer: PeerId) -> &mut Entry {
        if !self.entries.contains_key(&peer) && self.entries.len() >= MAX_PEERS {
            let stranger = self
                .entries
                .iter()
                .find(|(p, e)| !self.members.contains(p) && e.connected_since.is_none())
                .map(|(p, _)| *p);
            if let Some(stranger) = stranger {
                self.entries.remove(&stranger);
            }
        }
        self.entries.entry(peer).or_default()
    }
}

fn push_addr(entry: &mut Entry, addr: Multiaddr) {
    entry.addrs.retain(|a| a != &addr);
    entry.addrs.push_front(addr);
    entry.addrs.truncate(MAX_ADDRS_PER_PEER);
}

/// The wall-clock time, in unix milliseconds, of the monotonic instant `at`.
fn unix_ms(at: Instant, now: Instant, wall: SystemTime) -> Option<u64> {
    let then = wall.checked_sub(now.saturating_duration_since(at))?;
    let ms = then.duration_since(UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok()
}

/// Splits a trailing `/p2p/<peer id>` off `addr`.
pub(crate) fn split_p2p(addr: &Multiaddr) -> (Option<PeerId>, Multiaddr) {
    let mut bare = addr.clone();
    match bare.pop() {
        Some(AddrPart::P2p(peer)) => (Some(peer), bare),
        _ => (None, addr.clone()),
    }
}

#[cfg(test)]
mod tests;
