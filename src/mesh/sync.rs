//! Catch-up with one member: Hello, then the missing ranges fetched page by page.

use libp2p::PeerId;
use serde_bytes::ByteBuf;

use crate::envelope::Envelope;
use crate::net::{Frame, Protocol};
use crate::node::Delivery;
use crate::version::Frontier;

use super::error::{MeshError, MeshResult};
use super::plan::{self, Catchup, Page, Range};
use super::proto::{self, SyncRequest, SyncResponse};
use super::serve::frontier;
use super::Mesh;

/// Rounds of Hello in one catch-up: a round that adopts new datasets asks again for their vectors.
const HELLO_ROUNDS: usize = 3;

impl Mesh {
    /// Catches up with `peer` (one catch-up per peer at a time).
    pub(crate) async fn sync_with(self, peer: PeerId) {
        if !self.inner.state.begin_sync(peer) {
            return;
        }
        let started = std::time::Instant::now();
        match self.catch_up(peer).await {
            Ok(()) => {
                self.inner.state.mark_clean(&peer);
                tracing::debug!(%peer, ms = started.elapsed().as_millis() as u64, "caught up");
            }
            Err(e) => {
                self.inner.state.mark_dirty(peer);
                tracing::info!(%peer, error = %e, "catch-up stopped; it will be retried");
            }
        }
        self.inner.state.end_sync(&peer);
    }

    async fn catch_up(&self, peer: PeerId) -> MeshResult<()> {
        for _ in 0..HELLO_ROUNDS {
            let adopted = self.hello_round(peer).await?;
            if adopted == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One round of Hellos, a page of this node's shared datasets each: merges the roster,
    /// adopts the catalog, fetches what the vectors say is missing. Returns how many datasets
    /// were newly adopted.
    async fn hello_round(&self, peer: PeerId) -> MeshResult<usize> {
        let mut shared: Vec<_> = self
            .inner
            .node
            .frontiers()
            .into_iter()
            .filter(|(m, _)| m.visibility == crate::dataset::Visibility::Shared)
            .map(|(m, f)| (m.id.to_string(), m, f))
            .collect();
        shared.sort_by(|a, b| a.0.cmp(&b.0));
        let pages: Vec<_> = shared.chunks(proto::HELLO_PAGE).collect();
        let mut after = None;
        let (mut adopted, mut behind) = (0, Vec::new());
        for (i, page) in pages.iter().enumerate() {
            let more = i + 1 < pages.len();
            adopted += self
                .hello_page(peer, page, after.take(), more, &mut behind)
                .await?;
            after = page.last().map(|(id, _, _)| id.clone());
        }
        if pages.is_empty() {
            adopted += self.hello_page(peer, &[], None, false, &mut behind).await?;
        }
        // The most urgent datasets first, whichever page named them.
        let node = &self.inner.node;
        plan::by_priority(&mut behind, |id| {
            crate::naming::DatasetId::parse(id)
                .ok()
                .and_then(|id| node.priority(&id))
                .unwrap_or_default()
        });
        for (id, bytes) in behind {
            self.fetch_missing(peer, &id, &frontier(&bytes)?).await?;
        }
        Ok(adopted)
    }

    /// One Hello for `page` of this node's shared datasets (see `SyncRequest::Hello`); adds
    /// the frontiers of the datasets the peer holds more of to `behind`.
    async fn hello_page(
        &self,
        peer: PeerId,
        page: &[(String, std::sync::Arc<crate::dataset::Meta>, Frontier)],
        after: Option<String>,
        more: bool,
        behind: &mut Vec<(String, ByteBuf)>,
    ) -> MeshResult<usize> {
        let node = &self.inner.node;
        let datasets = page
            .iter()
            .map(|(id, _, f)| (id.clone(), f.digest()))
            .collect();
        let access = page
            .iter()
            .filter_map(|(id, m, _)| Some((id.clone(), node.access_digest(&m.id)?)))
            .collect();
        let hello = SyncRequest::Hello {
            roster: self.inner.state.roster_digest(),
            datasets,
            access,
            after,
            more,
        };
        let SyncResponse::Hello {
            roster,
            catalog,
            vectors,
            access,
        } = self.sync_request(peer, &hello).await?
        else {
            return Err(MeshError::Answer("unexpected answer to hello".into()));
        };
        if let Some(r) = roster {
            self.reconcile_roster(peer, &r).await?;
        }
        let adopted = self.adopt_all(catalog).await;
        self.merge_access(&access).await?;
        behind.extend(vectors);
        Ok(adopted)
    }

    /// Merges a peer's roster; if ours still differs, asks the peer to pull ours (a push of a
    /// large roster would not fit a request).
    async fn reconcile_roster(
        &self,
        peer: PeerId,
        theirs: &super::roster::Roster,
    ) -> MeshResult<()> {
        let state = &self.inner.state;
        let before = state.roster();
        let changed = state.merge_roster(&self.inner.node, theirs).await;
        if changed? > 0 {
            self.audit_learnt_removals(&before, &state.roster());
            self.refresh_members().await?;
            // Pass it on within a second (RETRY_EVERY), not at the next periodic round: after a
            // partition heals, the authors of what changed may be banned by the other side and
            // cannot carry it themselves.
            self.mark_members_dirty(Some(peer));
        }
        let mine = state.roster_digest();
        // Once per pair of rosters: two that cannot agree (an item one side refuses) must not
        // make the two nodes ask each other to pull for ever.
        if mine != theirs.digest() && state.first_nudge(peer, mine, theirs.digest()) {
            if let Err(e) = self.sync_request(peer, &SyncRequest::RosterChanged).await {
                // Not asked after all: ask again in the retry, or the peer would learn the
                // change only in its next periodic round.
                state.forget_nudge(&peer);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Fetches every envelope `remote` holds of dataset `id` that this node lacks, short of
    /// the forks kept here (whose evidence the peer is sent instead), and the envelopes before
    /// tips that differ: the plan is [`Catchup`]'s, this drives it over the network.
    async fn fetch_missing(&self, peer: PeerId, id: &str, remote: &Frontier) -> MeshResult<()> {
        let ds = crate::naming::DatasetId::parse(id)?;
        let node = &self.inner.node;
        let Some(local) = node.frontier(&ds) else {
            return Ok(());
        };
        let fork_of = |a: &crate::identity::AuthorId| node.fork_of(&ds, a);
        for author in plan::past_forks(remote, fork_of) {
            self.push_evidence(&ds, &author, Some(peer)).await;
        }
        let mut plan = Catchup::new(&local, remote, fork_of);
        let mut asked = plan.next();
        // One page is applied while the next is on its way.
        let mut page = match asked {
            Some(r) => Some(self.request_page(peer, id, r).await?),
            None => None,
        };
        while let (Some(range), Some((envelopes, summary))) = (asked, page.take()) {
            asked = plan.on_page(&range, summary);
            let fetch_next = async {
                match asked {
                    Some(r) => self.request_page(peer, id, r).await.map(Some),
                    None => Ok(None),
                }
            };
            let (applied, fetched) = tokio::join!(
                self.apply_encoded(peer, &envelopes, Delivery::CatchUp),
                fetch_next
            );
            applied?;
            let (fetched_n, missing) = plan.progress();
            self.inner.state.set_progress(super::Progress {
                dataset: id.to_owned(),
                from: peer.to_string(),
                fetched: fetched_n,
                missing,
            });
            page = fetched?;
        }
        let (fetched, _) = plan.progress();
        if fetched > 0 {
            tracing::debug!(%peer, dataset = id, fetched, "fetched missing envelopes");
        }
        Ok(())
    }

    /// One page of the envelopes of `range` of dataset `id`, and what it answered.
    async fn request_page(
        &self,
        peer: PeerId,
        id: &str,
        range: Range,
    ) -> MeshResult<(Vec<ByteBuf>, Page)> {
        let req = SyncRequest::Fetch {
            dataset: id.to_owned(),
            author: range.author.to_string(),
            after: range.after,
            upto: range.upto,
        };
        let SyncResponse::Envelopes { envelopes, more } = self.sync_request(peer, &req).await?
        else {
            return Err(MeshError::Answer(format!("fetch of {id} refused")));
        };
        proto::cap("fetch page", envelopes.len(), proto::MAX_ENVELOPES)?;
        // Paging goes on only from an envelope of the range asked for.
        let last = envelopes.last().and_then(|b| Envelope::decode(b).ok());
        let last = last.filter(|e| e.author == range.author && e.dataset.to_string() == id);
        let summary = Page {
            count: envelopes.len(),
            last: last.map(|e| e.seq),
            more,
        };
        Ok((envelopes, summary))
    }

    pub(super) async fn sync_request(
        &self,
        peer: PeerId,
        req: &SyncRequest,
    ) -> MeshResult<SyncResponse> {
        let frame = Frame(proto::encode(req));
        let answer = self.inner.net.request(peer, Protocol::Sync, frame).await;
        let answer = answer?;
        proto::decode("sync answer", &answer.0).map_err(|e| {
            self.count_bad(&peer, &e.to_string());
            e.into()
        })
    }
}
