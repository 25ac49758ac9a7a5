//! Answers to peers: joins, catch-up requests and pushes. Every frame is decoded and capped before
//! it is used; what does not decode or verify is counted against the peer and refused.

use std::collections::HashMap;

use libp2p::PeerId;
use serde_bytes::ByteBuf;

use crate::audit;
use crate::envelope::Envelope;
use crate::identity::AuthorId;
use crate::naming::DatasetId;
use crate::net::{Frame, Protocol};
use crate::node::Delivery;
use crate::version::Frontier;

use super::catalog::{self, SignedMeta};
use super::error::{MeshError, MeshResult};
use super::proto::{self, JoinRequest, JoinResponse, Push, PushAck, SyncRequest, SyncResponse};
use super::roster::Roster;
use super::Mesh;

impl Mesh {
    /// The answer to one inbound request; `None` closes the stream without one.
    pub(crate) async fn answer(
        &self,
        peer: PeerId,
        protocol: Protocol,
        frame: Frame,
    ) -> Option<Frame> {
        let result = match protocol {
            Protocol::Join => self
                .on_join(peer, &frame.0)
                .await
                .map(|r| proto::encode(&r)),
            Protocol::Sync => self
                .on_sync(peer, &frame.0)
                .await
                .map(|r| proto::encode(&r)),
            Protocol::Push => self
                .on_push(peer, &frame.0)
                .await
                .map(|r| proto::encode(&r)),
            Protocol::Query => self
                .on_query(peer, &frame.0)
                .await
                .map(|r| proto::encode(&r)),
        };
        match result {
            Ok(bytes) => Some(Frame(bytes)),
            Err(e) if e.is_peers_fault() => {
                let detail = e.to_string();
                self.audit_bad(peer, protocol, &detail);
                self.count_bad(&peer, &detail);
                let _ = self.inner.net.report_bad(peer, detail).await;
                None
            }
            Err(e) => {
                // This node's failure (a full disk, a task): the peer asks again later and is
                // not held to blame.
                tracing::warn!(%peer, protocol = protocol.name(), error = %e, "a request failed here; no answer sent");
                None
            }
        }
    }

    async fn on_join(&self, peer: PeerId, bytes: &[u8]) -> MeshResult<JoinResponse> {
        let req: JoinRequest = proto::decode("join", bytes)?;
        let asked = audit::Event::ok(req.member.org.clone(), audit::Action::MemberAdmit)
            .detail(format!("peer {peer}"));
        Ok(match self.admit(peer, req).await {
            Ok(op) => {
                self.inner.node.audit(asked);
                JoinResponse::Admitted { op: Box::new(op) }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(%peer, %reason, "join refused");
                self.inner.node.audit(asked.refuse(&reason));
                JoinResponse::Refused { reason }
            }
        })
    }

    async fn on_sync(&self, peer: PeerId, bytes: &[u8]) -> MeshResult<SyncResponse> {
        let org = self
            .org_of(&peer)
            .ok_or_else(|| MeshError::refused("sync from a non-member"))?;
        let req: SyncRequest = proto::decode("sync", bytes)?;
        match req {
            SyncRequest::Hello {
                roster,
                datasets,
                access,
                after,
                more,
            } => {
                proto::cap("hello", datasets.len(), proto::MAX_DATASETS)?;
                proto::cap("hello access", access.len(), proto::MAX_DATASETS)?;
                let page = Page::of(after, more, &datasets);
                let answer = self.hello(&org, roster, &datasets, &access, &page);
                // The answer carries the roster, or the peer's is the same.
                self.inner.state.note_roster_served(peer);
                Ok(answer)
            }
            SyncRequest::Roster => {
                self.inner.state.note_roster_served(peer);
                Ok(SyncResponse::Roster(Roster::clone(
                    &self.inner.state.roster(),
                )))
            }
            SyncRequest::RosterChanged => {
                // Pulled, not pushed: the peer's roster is fetched in this node's own catch-up,
                // now unless one with that peer is running (then retried within a second), so a
                // flood of these starts at most one catch-up at a time.
                self.inner.state.mark_dirty(peer);
                if !self.inner.state.syncing(&peer) {
                    tokio::spawn(self.clone().sync_with(peer));
                }
                Ok(SyncResponse::Noted)
            }
            SyncRequest::Fetch {
                dataset,
                author,
                after,
                upto,
            } => {
                self.fetch_page(&org, &dataset, &author, (after, upto))
                    .await
            }
        }
    }

    /// Hello: the roster if it differs; for the datasets in the requester's page, the catalog it
    /// lacks, the vectors and access states that differ.
    fn hello(
        &self,
        org: &str,
        roster: [u8; 32],
        listed: &[(String, [u8; 32])],
        access: &[(String, [u8; 32])],
        page: &Page,
    ) -> SyncResponse {
        let state = &self.inner.state;
        let roster = (state.roster_digest() != roster).then(|| Roster::clone(&state.roster()));
        let (mut catalog, mut vectors, mut bundles) = (Vec::new(), Vec::new(), Vec::new());
        let mut budget = proto::HELLO_ACCESS_BYTES;
        let node = &self.inner.node;
        let listed: HashMap<&str, &[u8; 32]> =
            listed.iter().map(|(d, h)| (d.as_str(), h)).collect();
        let access: HashMap<&str, &[u8; 32]> =
            access.iter().map(|(d, h)| (d.as_str(), h)).collect();
        for (meta, frontier) in node.frontiers() {
            let id = meta.id.to_string();
            if !catalog::entitled(&meta, org) || !page.covers(&id) {
                continue;
            }
            let theirs = access.get(id.as_str()).map(|h| **h);
            // Access sets up to a byte budget per answer; the rest differ again next round.
            if node.access_digest(&meta.id) != theirs && budget > 0 {
                if let Some(b) = node.access_bundle(&meta.id) {
                    let size: usize = b.grants.iter().chain(&b.wraps).map(|x| x.len() + 4).sum();
                    budget = budget.saturating_sub(size);
                    bundles.push((id.clone(), b));
                }
            }
            match listed.get(id.as_str()) {
                None if meta.id.owner() != org => catalog.extend(self.signed(&meta)),
                Some(digest) if **digest != frontier.digest() => {
                    vectors.push((id, ByteBuf::from(frontier.encode())));
                }
                _ => {}
            }
        }
        SyncResponse::Hello {
            roster,
            catalog,
            vectors,
            access: bundles,
        }
    }

    /// The signed description of a dataset this node holds: signed now if it owns it.
    pub(crate) fn signed(&self, meta: &crate::dataset::Meta) -> Option<SignedMeta> {
        if meta.id.owner() == self.inner.node.config().org {
            return Some(SignedMeta::sign(meta.clone(), self.inner.node.identity()));
        }
        self.inner.state.signed_meta(&meta.id)
    }

    async fn fetch_page(
        &self,
        org: &str,
        dataset: &str,
        author: &str,
        range: (u64, u64),
    ) -> MeshResult<SyncResponse> {
        let id = DatasetId::parse(dataset)?;
        let author = AuthorId::from_hex(author)
            .ok_or_else(|| MeshError::refused("fetch: bad author key"))?;
        let meta = self.held_meta(&id);
        let Some(meta) = meta.filter(|m| catalog::entitled(m, org)) else {
            let reason = format!("dataset {id} is not shared with {org}");
            let ev = audit::Event::refused(org, audit::Action::Fetch, &reason).dataset(&id);
            self.inner.node.audit(ev);
            return Ok(SyncResponse::Refused(reason));
        };
        let limits = (proto::PAGE_BYTES, proto::MAX_ENVELOPES);
        let got = self
            .inner
            .node
            .serve_envelopes(&meta.id, &author, range, limits);
        let (envs, more) = got.await?;
        self.audit_fetch(org, &meta, &author, range.0, envs.len());
        self.inner.node.metrics().pages_served.inc();
        Ok(SyncResponse::Envelopes {
            envelopes: envs.into_iter().map(ByteBuf::from).collect(),
            more,
        })
    }

    async fn on_push(&self, peer: PeerId, bytes: &[u8]) -> MeshResult<PushAck> {
        self.org_of(&peer)
            .ok_or_else(|| MeshError::refused("push from a non-member"))?;
        let push: Push = proto::decode("push", bytes)?;
        proto::cap("push", push.envelopes.len(), proto::MAX_ENVELOPES)?;
        proto::cap("push catalog", push.catalog.len(), proto::MAX_DATASETS)?;
        proto::cap("push access", push.access.len(), proto::MAX_DATASETS)?;
        self.adopt_all(push.catalog).await;
        self.merge_access(&push.access).await?;
        self.take_pushed_evidence(&push.evidence).await?;
        let envs = decoded(&push.envelopes)?;
        // Passed on before it is applied here: each hop of the tree costs a check of the
        // signature and the author's authority, not an apply.
        let pass = self.passable(push.tree, &push.envelopes, &envs).await;
        self.forward(pass);
        let fresh = self.apply_decoded(peer, envs, Delivery::Push).await?;
        self.watch_gaps(peer, &fresh);
        Ok(PushAck {
            accepted: fresh.len() as u32,
        })
    }

    /// Adopts every description that verifies; one that does not is refused alone (logged),
    /// and the rest of the message still applies. Returns how many were new.
    pub(crate) async fn adopt_all(&self, catalog: Vec<SignedMeta>) -> usize {
        let mut adopted = 0;
        for sm in catalog {
            let id = sm.meta.id.to_string();
            match self.adopt(sm).await {
                Ok(fresh) => adopted += usize::from(fresh),
                Err(e) => tracing::warn!(dataset = %id, error = %e, "dataset description refused"),
            }
        }
        adopted
    }

    /// Adopts a remote dataset's description if it verifies and this node is entitled to it.
    pub(crate) async fn adopt(&self, sm: SignedMeta) -> MeshResult<bool> {
        let me = self.inner.node.config().org.clone();
        if sm.meta.id.owner() == me || !catalog::entitled(&sm.meta, &me) {
            return Ok(false);
        }
        let roster = self.inner.state.roster();
        sm.verify(&roster)
            .map_err(|e| MeshError::refused(e.to_string()))?;
        let node = &self.inner.node;
        let owner_key = roster
            .by_org(sm.meta.id.owner())
            .and_then(|m| m.author_id())
            .ok_or_else(|| MeshError::refused("dataset owner left the roster"))?;
        let fresh = node.adopt_dataset(sm.meta.clone(), owner_key).await?;
        self.inner.state.remember(node, sm).await?;
        Ok(fresh)
    }

    /// Decodes, verifies and applies envelopes; returns those that were new. Envelopes of datasets
    /// this node does not hold are skipped (catch-up brings them once the description arrives).
    /// `from` is the peer the envelopes came from: it is blamed only for envelopes it wrote.
    pub(crate) async fn apply_encoded(
        &self,
        from: PeerId,
        encoded: &[ByteBuf],
        delivery: Delivery,
    ) -> MeshResult<Vec<Envelope>> {
        self.apply_decoded(from, decoded(encoded)?, delivery).await
    }

    /// [`Self::apply_encoded`] of envelopes already decoded.
    pub(crate) async fn apply_decoded(
        &self,
        from: PeerId,
        envelopes: Vec<Envelope>,
        delivery: Delivery,
    ) -> MeshResult<Vec<Envelope>> {
        let sender = self
            .inner
            .state
            .seats()
            .iter()
            .find(|m| m.peer == from)
            .map(|m| m.author);
        let mut by_ds: std::collections::BTreeMap<DatasetId, Vec<Envelope>> = Default::default();
        for env in envelopes {
            // Signatures are checked by the node, off the async threads.
            by_ds.entry(env.dataset.clone()).or_default().push(env);
        }
        let mut new = Vec::new();
        for (id, envs) in by_ds {
            if self.held_meta(&id).is_none() {
                // Its description has not arrived: catch up with the sender soon, which brings
                // the description and these envelopes.
                self.inner.state.mark_dirty(from);
                continue;
            }
            let node = &self.inner.node;
            let (count, started) = (envs.len(), std::time::Instant::now());
            let (fresh, invalid) = node.apply_envelopes_checked(&id, envs, delivery).await?;
            let ms = started.elapsed().as_millis() as u64;
            let n = fresh.len();
            tracing::debug!(%from, dataset = %id, count, new = n, ms, "envelopes applied");
            node.metrics().envelopes_received.inc_by(n as u64);
            new.extend(fresh);
            // Bad input only when the sender wrote the bad envelope itself: a relay cannot
            // check what it holds without the key.
            if let Some(sender) = sender {
                if invalid.contains(&sender) {
                    return Err(MeshError::refused(format!(
                        "{id}: an envelope of its own does not open or apply"
                    )));
                }
            }
        }
        Ok(new)
    }

    /// Merges access states (grants, wrapped keys) of datasets held here.
    pub(crate) async fn merge_access(
        &self,
        bundles: &[(String, crate::access::Bundle)],
    ) -> MeshResult<()> {
        for (id, bundle) in bundles {
            let id = DatasetId::parse(id)?;
            if self.held_meta(&id).is_none() {
                continue;
            }
            let merged = self.inner.node.merge_access(&id, bundle).await;
            merged?;
        }
        Ok(())
    }

    /// Records a page of a sealed dataset served to a member organization that holds its keys
    /// (relaying ciphertext to the others discloses nothing).
    fn audit_fetch(
        &self,
        org: &str,
        meta: &crate::dataset::Meta,
        author: &AuthorId,
        after: u64,
        n: usize,
    ) {
        let node = &self.inner.node;
        if !meta.encrypted || !node.holds_keys(&meta.id, org) {
            return;
        }
        let detail = format!(
            "{n} envelopes of author {}, seq {} to {}",
            node.author_name(author),
            after.saturating_add(1),
            after.saturating_add(n as u64)
        );
        let ev = audit::Event::ok(org, audit::Action::Fetch).dataset(&meta.id);
        node.audit(ev.detail(detail));
    }

    /// Records a request refused as bad input: its protocol, and the peer's organization (or its
    /// peer id when it is no member).
    fn audit_bad(&self, peer: PeerId, protocol: Protocol, detail: &str) {
        let action = match protocol {
            Protocol::Join => audit::Action::MemberAdmit,
            Protocol::Sync => audit::Action::Sync,
            Protocol::Push => audit::Action::Push,
            Protocol::Query => audit::Action::Query,
        };
        let actor = self.org_of(&peer).unwrap_or_else(|| peer.to_string());
        self.inner
            .node
            .audit(audit::Event::refused(actor, action, detail));
    }

    pub(crate) fn held_meta(&self, id: &DatasetId) -> Option<std::sync::Arc<crate::dataset::Meta>> {
        self.inner.node.meta(id)
    }
}

/// Decodes encoded envelopes (signatures unchecked); one that does not decode refuses them all.
pub(crate) fn decoded(encoded: &[ByteBuf]) -> MeshResult<Vec<Envelope>> {
    Ok(encoded
        .iter()
        .map(|b| Envelope::decode(b))
        .collect::<Result<_, _>>()?)
}

/// Decodes a peer's frontier.
pub(crate) fn frontier(bytes: &[u8]) -> MeshResult<Frontier> {
    Ok(Frontier::decode(bytes)?)
}

/// The range of dataset ids one Hello covers: after `after` (from the start without it), up to
/// the last id it lists when more pages follow, to the end otherwise.
pub(crate) struct Page {
    after: Option<String>,
    upto: Option<String>,
}

impl Page {
    fn of(after: Option<String>, more: bool, listed: &[(String, [u8; 32])]) -> Self {
        let upto = if more {
            listed.iter().map(|(d, _)| d).max().cloned()
        } else {
            None
        };
        Self { after, upto }
    }

    fn covers(&self, id: &str) -> bool {
        self.after.as_deref().is_none_or(|a| id > a) && self.upto.as_deref().is_none_or(|u| id <= u)
    }
}
