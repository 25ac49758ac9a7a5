//! Push: each envelope this node writes goes to the first members of its tree
//! ([`super::tree`]), each envelope it receives by push goes on to the next ones, and changes of
//! access state go to every member. A push that fails, or finds its member busy, is taken over:
//! the envelope goes to that member's children instead, and the member is caught up with when it
//! answers again. Whatever a push misses, catch-up brings ([`super::gaps`] notices what a push
//! left out).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::config::PushMode;
use crate::envelope::Envelope;
use crate::naming::DatasetId;
use crate::net::{Frame, Protocol};

use super::catalog;
use super::gaps::Gap;
use super::proto::{self, Push, PushAck};
use super::tree::{Tree, FANOUT};
use super::Mesh;

/// Envelopes waiting to be passed on; past it they are dropped (counted) and catch-up brings
/// them to the members that miss them.
pub(crate) const FORWARD_QUEUE: usize = 4096;
/// Bytes of envelopes waiting to be passed on, at most.
pub(crate) const FORWARD_BYTES: usize = 64 * 1024 * 1024;
/// Larger envelopes (a large batch) do not travel along trees: the writer pushes them to every
/// member, so no member passes on more than this per envelope.
pub(crate) const PASS_MAX_BYTES: usize = 256 * 1024;
/// Envelopes written longer ago than this are not passed on: a member replaying old envelopes
/// cannot make the others pass them along again once they are forgotten (see `super::seen`).
pub(crate) const PASS_WINDOW_MS: u64 = 10 * 60 * 1000;

/// A push along a tree not answered within this is taken over: the envelope goes to the
/// members below the one pushed to, as if the push had failed. A push of at most
/// [`PASS_MAX_BYTES`] takes milliseconds; a member that does not answer (hung, or withholding)
/// would otherwise hold its subtree back for the whole request timeout.
pub(crate) const TAKEOVER: std::time::Duration = std::time::Duration::from_secs(5);

/// One envelope to pass on along its tree.
pub(crate) struct Spread {
    env: Arc<Envelope>,
    /// The envelope as it travels, encoded once (by the writer, or as the push brought it).
    encoded: Arc<ByteBuf>,
    /// Its digest (the seed of its tree), or zeros for a flat tree.
    digest: [u8; 32],
    /// Along a tree (`FANOUT`), or flat (the writer to every member).
    tree: bool,
    /// Written by this node.
    own: bool,
    /// To whom: `None` for this node's children in the tree; `Some` for the children of a
    /// member a push to which failed.
    to: Option<Vec<PeerId>>,
    /// Bytes it holds of the queue's budget, given back once it is sent.
    queued: usize,
}

/// The queue of envelopes to pass on, and the task that drains it.
pub(crate) fn forward_queue() -> (mpsc::Sender<Spread>, mpsc::Receiver<Spread>) {
    mpsc::channel(FORWARD_QUEUE)
}

/// Bytes of envelopes queued to be passed on.
#[derive(Default)]
pub(crate) struct Queued(AtomicUsize);

impl Queued {
    fn take(&self, n: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= FORWARD_BYTES).then_some(q + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Mesh {
    /// Pushes every envelope this node writes, as it becomes durable.
    pub(crate) async fn run_outbox(self) {
        let mut rx = self.inner.node.subscribe_envelopes();
        let mode = self.inner.node.config().push;
        loop {
            match rx.recv().await {
                Ok(env) => {
                    let encoded = Arc::new(ByteBuf::from(env.encode()));
                    let tree = mode == PushMode::Tree && encoded.len() <= PASS_MAX_BYTES;
                    let digest = if tree { env.digest() } else { [0; 32] };
                    if tree {
                        // Its own envelope pushed back to it is not passed on again.
                        self.inner.passed.first(digest);
                    }
                    let s = Spread {
                        env,
                        encoded,
                        digest,
                        tree,
                        own: true,
                        to: None,
                        queued: 0,
                    };
                    self.spread(s).await
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "push queue lagged; catching up with every member"
                    );
                    self.sync_all().await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Passes on the envelopes queued by [`Self::forward`] and by failed pushes.
    pub(crate) async fn run_forwards(self, mut rx: mpsc::Receiver<Spread>) {
        while let Some(s) = rx.recv().await {
            let queued = s.queued;
            self.spread(s).await;
            self.inner.queued.give(queued);
        }
    }

    /// Queues `s` to be passed on, within the queue's count and bytes; false when it is full
    /// (counted: catch-up brings the envelope instead).
    fn enqueue(&self, mut s: Spread) -> bool {
        let size = s.env.payload.len();
        let queued = self.inner.queued.take(size);
        if queued {
            s.queued = size;
            if self.inner.forwards.try_send(s).is_ok() {
                return true;
            }
            self.inner.queued.give(size);
        }
        self.inner.node.metrics().forwards_dropped.inc();
        false
    }

    /// Queues the envelope of a push to be passed on along its tree (see [`Self::passable`]).
    pub(crate) fn forward(&self, pass: Option<Spread>) {
        let Some(s) = pass else {
            return;
        };
        let digest = s.digest;
        match self.enqueue(s) {
            true => {
                self.inner.node.metrics().envelopes_forwarded.inc();
            }
            // Not passed on after all: a takeover may bring it again.
            false => self.inner.passed.forget(&digest),
        }
    }

    /// The envelope of a push (`tree`: it asks for passing on; `encoded` and `envs`: what it
    /// carries), ready to be passed on, if it is to be passed on now, before it is applied here: the
    /// push asks for it and carries this one envelope, at most
    /// [`PASS_MAX_BYTES`], written in the last [`PASS_WINDOW_MS`], which the node would take
    /// (see `Node::may_pass_on`), signed by its author (checked off the async threads), and not
    /// passed on before. An envelope with a bad signature is never remembered as passed, so a
    /// forged copy cannot stop the real one.
    pub(crate) async fn passable(
        &self,
        tree: bool,
        encoded: &[ByteBuf],
        envs: &[Envelope],
    ) -> Option<Spread> {
        let ([bytes], [env]) = (encoded, envs) else {
            return None;
        };
        let since = crate::hlc::wall_millis().saturating_sub(PASS_WINDOW_MS);
        let recent = crate::hlc::Timestamp(env.hlc).millis() >= since;
        if !tree || bytes.len() > PASS_MAX_BYTES || !recent {
            return None;
        }
        if !self.inner.node.may_pass_on(env) {
            return None;
        }
        let env = env.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let digest = env.digest();
            env.verify().is_ok().then_some((env, digest))
        })
        .await
        .ok()
        .flatten()?;
        let (env, digest) = checked;
        self.inner.passed.first(digest).then(|| Spread {
            env: Arc::new(env),
            encoded: Arc::new(bytes.clone()),
            digest,
            tree: true,
            own: false,
            to: None,
            queued: 0,
        })
    }

    /// Notes, for the envelopes a push from `from` brought, the authors whose earlier envelopes
    /// are still missing here (see [`super::gaps`]).
    pub(crate) fn watch_gaps(&self, from: PeerId, fresh: &[Envelope]) {
        let now = Instant::now();
        let seats = self.inner.state.seats();
        let mut vv: Option<(DatasetId, crate::version::VersionVector)> = None;
        for env in fresh {
            if vv.as_ref().is_none_or(|(id, _)| *id != env.dataset) {
                vv = self
                    .inner
                    .node
                    .replica(&env.dataset)
                    .map(|(_, v)| (env.dataset.clone(), v));
            }
            let Some((_, v)) = &vv else { continue };
            if v.get(&env.author) < env.seq {
                let gap = Gap {
                    dataset: env.dataset.clone(),
                    author: env.author,
                    seq: env.seq,
                    from,
                    writer: seats
                        .iter()
                        .find(|m| m.author == env.author)
                        .map(|m| m.peer),
                };
                self.inner.gaps.note(gap, now);
            }
        }
    }

    /// Catches up with the pushers, and the writers, of gaps still open after their grace.
    pub(crate) fn repair_gaps(&self) {
        for gap in self.inner.gaps.due(Instant::now()) {
            let held = self.inner.node.replica(&gap.dataset);
            if held.is_some_and(|(_, v)| v.get(&gap.author) < gap.seq) {
                tracing::debug!(dataset = %gap.dataset, author = %gap.author, seq = gap.seq, from = %gap.from, "a push left a gap; catching up");
                self.inner.state.mark_dirty(gap.from);
                if let Some(writer) = gap.writer {
                    self.inner.state.mark_dirty(writer);
                }
            }
        }
    }

    /// Sends `s.env` to the members it is for, each connected one once; the children of one that
    /// is down or busy are sent to instead.
    async fn spread(&self, s: Spread) {
        let Some(meta) = self.held_meta(&s.env.dataset) else {
            return;
        };
        let me = self.inner.net.local_peer_id();
        let seats = self.inner.state.seats();
        let writer = match s.own {
            true => me,
            false => match seats.iter().find(|m| m.author == s.env.author) {
                Some(m) => m.peer,
                // Its author left the roster (or wrote with a key since rotated away): nothing
                // of it is passed on; catch-up brings it.
                None => return,
            },
        };
        let entitled = seats
            .iter()
            .filter(|m| catalog::entitled(&meta, &m.org))
            .map(|m| m.peer);
        let k = if s.tree { FANOUT } else { 0 };
        let tree = Tree::new(writer, entitled, &s.digest, k);
        let mut next: VecDeque<PeerId> = match &s.to {
            Some(to) => to.iter().copied().collect(),
            None => tree.children(&me).iter().copied().collect(),
        };
        if next.is_empty() {
            return;
        }
        let up = self.inner.net.connected();
        let mut seen = HashSet::new();
        while let Some(peer) = next.pop_front() {
            if peer == me || !seen.insert(peer) {
                continue;
            }
            let children = tree.children(&peer);
            if !up.contains(&peer) {
                // Caught up with once connected (a connection being replaced can look down for
                // a moment: nothing else would bring it the envelope until a later one).
                self.inner.state.mark_dirty(peer);
                next.extend(children);
                continue;
            }
            // Never waits for a member's slot: one that holds its pushes unanswered must not
            // stall what is owed to the others. Taken before the push is built, so nothing is
            // marked announced to a member that is not sent anything.
            let Some(slot) = self.slot(peer) else {
                self.inner.state.mark_dirty(peer);
                next.extend(children);
                continue;
            };
            let push = match s.own {
                true => self.push_of(peer, &meta, s.env.epoch, (*s.encoded).clone(), s.tree),
                false => Push::of((*s.encoded).clone(), true),
            };
            let fallback = (!children.is_empty()).then(|| Spread {
                env: s.env.clone(),
                encoded: s.encoded.clone(),
                digest: s.digest,
                tree: s.tree,
                own: s.own,
                to: Some(children.to_vec()),
                queued: 0,
            });
            // The writer's first pushes may wait for a node-wide slot; the queue of envelopes
            // to pass on (takeovers of its own pushes among them) never does.
            let wait = s.own && s.to.is_none();
            let sent = self.spawn_push(peer, slot, push, fallback, wait).await;
            if !sent {
                if s.own {
                    // What the push was to announce (description, access set) goes with the next.
                    self.inner.state.forget_peer(&peer);
                }
                self.inner.state.mark_dirty(peer);
                next.extend(children);
            } else if !s.own {
                self.inner.node.metrics().pushes_forwarded.inc();
            }
        }
    }

    /// A push of one encoded envelope of this node's to `peer`, with the dataset's description
    /// and access state when `peer` has not been sent them (or not for this epoch). Members
    /// passing an envelope on send it alone: the writer announces its datasets to every member
    /// (here, and when access changes), and a member that lacks a description catches up with
    /// the sender. Were every member to announce to every other, each pair would carry the
    /// access state (which grows with the mesh) once: cubic in the mesh size.
    fn push_of(
        &self,
        peer: PeerId,
        meta: &crate::dataset::Meta,
        epoch: u64,
        encoded: ByteBuf,
        tree: bool,
    ) -> Push {
        let (describe, access) = self.inner.state.announce(peer, &meta.id, epoch);
        let catalog = match describe {
            true => self.signed(meta).into_iter().collect(),
            false => Vec::new(),
        };
        let access = match access {
            true => self.inner.node.access_bundle(&meta.id),
            false => None,
        };
        Push {
            catalog,
            access: access
                .map(|b| (meta.id.to_string(), b))
                .into_iter()
                .collect(),
            ..Push::of(encoded, tree)
        }
    }

    /// Pushes every change of a held dataset's access state (grants, wrapped keys) to the
    /// connected members.
    pub(crate) async fn run_access(self) {
        let mut rx = self.inner.node.subscribe_access();
        loop {
            match rx.recv().await {
                Ok(id) => self.push_access(&id).await,
                Err(RecvError::Lagged(_)) => self.sync_all().await,
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn push_access(&self, id: &DatasetId) {
        let (Some(meta), Some(bundle)) = (self.held_meta(id), self.inner.node.access_bundle(id))
        else {
            return;
        };
        let Ok(peers) = self.inner.net.peers().await else {
            return;
        };
        for p in peers.into_iter().filter(|p| p.up && p.member) {
            let Ok(peer) = p.peer.parse::<PeerId>() else {
                continue;
            };
            if !self
                .org_of(&peer)
                .is_some_and(|org| catalog::entitled(&meta, &org))
            {
                continue;
            }
            let push = Push {
                catalog: self.signed(&meta).into_iter().collect(),
                access: vec![(id.to_string(), bundle.clone())],
                envelopes: vec![],
                evidence: Vec::new(),
                tree: false,
            };
            self.push_unless_busy(peer, push).await;
        }
    }

    /// Sends `push` (no envelope to pass on) to `peer`, or, when [`Self::slot`] finds it busy,
    /// marks it for a catch-up, which carries the same.
    pub(super) async fn push_unless_busy(&self, peer: PeerId, push: Push) {
        match self.slot(peer) {
            Some(slot) => {
                self.spawn_push(peer, slot, push, None, true).await;
            }
            None => self.inner.state.mark_dirty(peer),
        }
    }

    /// One of the [`super::PEER_PUSH_CAP`] pushes that may be in flight to `peer`, if one is
    /// free.
    fn slot(&self, peer: PeerId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut map = self
            .inner
            .peer_pushes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(peer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(super::PEER_PUSH_CAP)))
            .clone()
            .try_acquire_owned()
            .ok()
    }

    /// Sends `push` to `peer` in a task of its own, holding `slot` ([`Self::slot`]), once one of
    /// the node's [`super::PUSH_INFLIGHT_CAP`] is free (with `wait`; without, only if one is
    /// free now). Returns false when it was not sent. If the push fails or is slow
    /// ([`TAKEOVER`]), `fallback` (the envelope for the members `peer` would have passed it to)
    /// is queued.
    async fn spawn_push(
        &self,
        peer: PeerId,
        slot: tokio::sync::OwnedSemaphorePermit,
        push: Push,
        fallback: Option<Spread>,
        wait: bool,
    ) -> bool {
        let pushes = self.inner.pushes.clone();
        let permit = match wait {
            true => pushes.acquire_owned().await.ok(),
            false => pushes.try_acquire_owned().ok(),
        };
        let Some(permit) = permit else {
            return false;
        };
        let mesh = self.clone();
        tokio::spawn(async move {
            let metrics = mesh.inner.node.metrics();
            metrics.pushes.inc();
            let request = mesh
                .inner
                .net
                .request(peer, Protocol::Push, Frame(proto::encode(&push)));
            let (answer, fallback) = mesh.answer_or_take_over(request, fallback).await;
            drop((permit, slot));
            let failed = match answer.map(|f| proto::decode::<PushAck>("push ack", &f.0)) {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            metrics.push_failures.inc();
            // It may have restarted without the description; send it again next time, and
            // catch it up as soon as it answers again.
            mesh.inner.state.forget_peer(&peer);
            mesh.inner.state.mark_dirty(peer);
            tracing::debug!(%peer, error = %failed, "push failed; catch-up will cover it");
            if let Some(f) = fallback {
                mesh.enqueue(f);
            }
        });
        true
    }

    /// Waits for a push's answer; if it takes longer than [`TAKEOVER`] and the push carries an
    /// envelope along a tree, the members below `peer` get it now (the answer is still awaited,
    /// holding the push's slot, so a member that never answers soon counts as busy). Returns the
    /// answer and the fallback, unless it was used.
    async fn answer_or_take_over<T>(
        &self,
        request: impl std::future::Future<Output = T>,
        fallback: Option<Spread>,
    ) -> (T, Option<Spread>) {
        tokio::pin!(request);
        let Some(f) = fallback else {
            return (request.await, None);
        };
        match tokio::time::timeout(TAKEOVER, &mut request).await {
            Ok(answer) => (answer, Some(f)),
            Err(_) => {
                self.inner.node.metrics().pushes_taken_over.inc();
                self.enqueue(f);
                (request.await, None)
            }
        }
    }
}
