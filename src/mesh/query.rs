//! Compute-to-data over the mesh: federated aggregates (each dataset's owner computes partial
//! aggregates over its own rows and signs them; the requester merges them) and pushed-down
//! searches (each target returns only where and when of its matches, as they arrive). Raw rows
//! never leave their owner.

use std::time::Duration;

use libp2p::PeerId;
use serde::Serialize;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::apps::App;
use crate::audit;
use crate::error::{Error, Result};
use crate::identity::AuthorId;
use crate::naming::DatasetId;
use crate::net::{Frame, Protocol};
use crate::node::{self, AggregateAnswer, Match, Source};
use crate::view::aggregate::{self, Aggregation, Groups};
use crate::view::plan::{FilterSpec, Plan, Shape};

use super::error::{MeshError, MeshResult};
use super::proto::{self, Answer, QueryRequest, QueryResponse, ANSWER_DOMAIN};
use super::Mesh;

/// Most targets one search may name.
pub const MAX_TARGETS: usize = 1024;

/// A pushed-down search, as a caller asks it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// Dataset name searched within each target organization, e.g. `sightings`.
    pub dataset: String,
    /// Organizations asked; empty: every other member.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Which records match.
    #[serde(default)]
    pub filter: FilterSpec,
    /// The name segment reported as the location (default 0, the first).
    #[serde(default)]
    pub location_segment: u32,
    /// Most matches per target (default 100, at most 1,000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// How long to wait for answers, ms (default 5,000, at most 60,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What a search reports, as it happens.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SearchEvent {
    /// One target's matches.
    Answered {
        /// The target organization.
        from: String,
        /// Its matches.
        matches: Vec<Match>,
    },
    /// A target refused (no `query` grant, no such dataset).
    Refused {
        /// The target.
        from: String,
        /// Why.
        reason: String,
    },
    /// A target did not answer in time or could not be reached.
    TimedOut {
        /// The target.
        from: String,
    },
    /// Last: who answered.
    Summary {
        /// Targets that answered.
        answered: Vec<String>,
        /// Targets that refused.
        refused: Vec<String>,
        /// Targets that did not answer in time.
        timed_out: Vec<String>,
        /// Matches in all.
        matches: usize,
    },
}

/// The outcome of one request to an owner.
enum Reply {
    Answer(Answer),
    Refused(String),
    TimedOut,
}

fn digest(req: &QueryRequest) -> [u8; 32] {
    Sha256::digest(proto::encode(req)).into()
}

impl Mesh {
    /// Sends `req` to `org`'s node and checks the signed answer (signature by that node, bound
    /// to this request).
    async fn ask(&self, org: &str, req: &QueryRequest, timeout: Duration) -> Reply {
        let roster = self.inner.state.roster();
        let Some(member) = roster.by_org(org) else {
            return Reply::Refused(format!("{org} is not a member of the mesh"));
        };
        let (Ok(peer), Some(key)) = (member.peer_id.parse::<PeerId>(), member.author_id()) else {
            return Reply::Refused(format!("{org}: malformed roster entry"));
        };
        let frame = Frame(proto::encode(req));
        let sent = self.inner.net.request(peer, Protocol::Query, frame);
        let got = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::info!(%org, error = %e, "query not answered");
                return Reply::TimedOut;
            }
            Err(_) => return Reply::TimedOut,
        };
        match proto::decode::<QueryResponse>("query answer", &got.0) {
            Ok(QueryResponse::Refused(r)) => Reply::Refused(r),
            Ok(QueryResponse::Answer { body, signature }) => verify(&key, req, &body, &signature)
                .map_or_else(
                    |e| Reply::Refused(format!("bad answer: {e}")),
                    Reply::Answer,
                ),
            Err(e) => {
                self.count_bad(&peer, &e.to_string());
                Reply::Refused(format!("malformed answer: {e}"))
            }
        }
    }

    /// Runs an aggregate view query with `federated: true`: each dataset's owner computes over
    /// its own data (this node for its own datasets); partial results merge into one answer
    /// that says which owners answered, timed out or refused.
    pub async fn federated(&self, caller: &App, plan: &Plan) -> Result<AggregateAnswer> {
        let Shape::Aggregate { aggregation, limit } = &plan.shape else {
            return Err(Error::Invalid("federated queries are aggregates".into()));
        };
        let asks = plan
            .datasets
            .iter()
            .map(|id| self.one_source(caller, id, plan, aggregation));
        let results = futures::future::join_all(asks).await;
        let mut parts = Vec::new();
        let mut sources = Vec::new();
        for (groups, source) in results {
            parts.extend(groups);
            sources.push(source);
        }
        let merged = aggregate::merge_all(parts.iter());
        Ok(node::aggregate_answer(
            aggregation,
            &merged,
            sources,
            *limit,
        ))
    }

    async fn one_source(
        &self,
        caller: &App,
        id: &DatasetId,
        plan: &Plan,
        agg: &Aggregation,
    ) -> (Option<Groups>, Source) {
        let owner = id.owner().to_owned();
        let mut source = Source {
            dataset: id.to_string(),
            owner: owner.clone(),
            status: String::new(),
            reason: None,
        };
        let node = &self.inner.node;
        if owner == node.config().org {
            source.status = "local".into();
            let (node, app, id, filter, agg) = (
                node.clone(),
                caller.clone(),
                id.clone(),
                plan.filter.clone(),
                agg.clone(),
            );
            let local =
                tokio::task::spawn_blocking(move || node.aggregate_held(&app, &id, &filter, &agg))
                    .await
                    .unwrap_or_else(|e| Err(Error::Internal(e.to_string())));
            return match local {
                Ok(g) => (Some(g), source),
                Err(e) => {
                    source.status = "refused".into();
                    source.reason = Some(e.to_string());
                    (None, source)
                }
            };
        }
        let req = QueryRequest::Aggregate {
            app: caller.name.clone(),
            dataset: id.to_string(),
            filter: plan.filter_spec.clone(),
            group_by: agg.dims.iter().map(ToString::to_string).collect(),
            aggregates: agg.measures.iter().map(ToString::to_string).collect(),
        };
        match self.ask(&owner, &req, plan.timeout).await {
            Reply::Answer(Answer::Groups { groups, .. }) => {
                if let Some((k, _)) = groups.iter().find(|(k, p)| !agg.fits(k, p)) {
                    source.status = "refused".into();
                    source.reason = Some(format!("malformed group {}", k.0));
                    return (None, source);
                }
                source.status = "answered".into();
                (Some(groups.into_iter().collect()), source)
            }
            Reply::Answer(_) => {
                source.status = "refused".into();
                source.reason = Some("answer of the wrong kind".into());
                (None, source)
            }
            Reply::Refused(r) => {
                source.status = "refused".into();
                source.reason = Some(r);
                (None, source)
            }
            Reply::TimedOut => {
                source.status = "timed_out".into();
                (None, source)
            }
        }
    }

    /// Starts a pushed-down search: every target gets the question at once; its answer (or its
    /// refusal, or its silence) is sent on the returned channel as it comes, then a summary.
    pub fn search(&self, caller: &App, spec: SearchSpec) -> Result<mpsc::Receiver<SearchEvent>> {
        crate::naming::validate_ident("dataset name", &spec.dataset)?;
        spec.filter
            .compile()
            .map_err(|e| Error::Invalid(format!("filter.{e}")))?;
        let limit = spec.limit.unwrap_or(100);
        if limit == 0 || limit as usize > node::MAX_SEARCH_MATCHES {
            return Err(Error::Invalid(format!(
                "limit: 1 to {} matches per target",
                node::MAX_SEARCH_MATCHES
            )));
        }
        let timeout = match spec.timeout_ms {
            None => Duration::from_secs(5),
            Some(ms) if (1..=crate::net::REQUEST_TIMEOUT.as_millis() as u64).contains(&ms) => {
                Duration::from_millis(ms)
            }
            Some(ms) => {
                let max = crate::net::REQUEST_TIMEOUT.as_millis();
                return Err(Error::Invalid(format!("timeout_ms: 1 to {max}, got {ms}")));
            }
        };
        let targets = self.targets(&spec.targets)?;
        let req = QueryRequest::Search {
            app: caller.name.clone(),
            dataset: spec.dataset,
            filter: spec.filter,
            location_segment: spec.location_segment,
            limit,
        };
        let (tx, rx) = mpsc::channel(targets.len() + 1);
        let mesh = self.clone();
        tokio::spawn(async move { mesh.run_search(targets, req, timeout, tx).await });
        Ok(rx)
    }

    /// The organizations a search goes to: those named or every other member. A named one that
    /// is not a member is asked nothing and refused alone (`ask` answers for it).
    fn targets(&self, named: &[String]) -> Result<Vec<String>> {
        let roster = self.inner.state.roster();
        let me = &self.inner.node.config().org;
        if named.len() > MAX_TARGETS {
            return Err(Error::Invalid(format!("at most {MAX_TARGETS} targets")));
        }
        for org in named {
            crate::naming::validate_ident("target", org)?;
        }
        let all: Vec<String> = if named.is_empty() {
            roster.orgs()
        } else {
            named.to_vec()
        };
        // Each organization once; never this node itself (its own data needs no search).
        let mut out: Vec<String> = Vec::new();
        for o in all {
            if o != *me && !out.contains(&o) {
                out.push(o);
            }
        }
        Ok(out)
    }

    async fn run_search(
        self,
        targets: Vec<String>,
        req: QueryRequest,
        timeout: Duration,
        tx: mpsc::Sender<SearchEvent>,
    ) {
        let mut pending = futures::stream::FuturesUnordered::new();
        for org in targets {
            let (mesh, req) = (self.clone(), req.clone());
            pending.push(async move {
                let reply = mesh.ask(&org, &req, timeout).await;
                (org, reply)
            });
        }
        let (mut answered, mut refused, mut timed_out, mut total) = (vec![], vec![], vec![], 0);
        while let Some((from, reply)) = futures::StreamExt::next(&mut pending).await {
            let ev = match reply {
                Reply::Answer(Answer::Matches { matches, .. }) => {
                    answered.push(from.clone());
                    total += matches.len();
                    SearchEvent::Answered { from, matches }
                }
                Reply::Answer(_) => {
                    refused.push(from.clone());
                    SearchEvent::Refused {
                        from,
                        reason: "answer of the wrong kind".into(),
                    }
                }
                Reply::Refused(reason) => {
                    refused.push(from.clone());
                    SearchEvent::Refused { from, reason }
                }
                Reply::TimedOut => {
                    timed_out.push(from.clone());
                    SearchEvent::TimedOut { from }
                }
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(SearchEvent::Summary {
                answered,
                refused,
                timed_out,
                matches: total,
            })
            .await;
    }

    /// The owner's side: answers one question from a member's app over this node's own data.
    pub(crate) async fn on_query(&self, peer: PeerId, bytes: &[u8]) -> MeshResult<QueryResponse> {
        let org = self
            .org_of(&peer)
            .ok_or_else(|| MeshError::refused("query from a non-member"))?;
        let req: QueryRequest = proto::decode("query", bytes)?;
        let asked = asked(&org, &req, &self.inner.node.config().org);
        let node = self.inner.node.clone();
        let request: [u8; 32] = Sha256::digest(bytes).into();
        // At most a few questions are evaluated at once; the others wait their turn.
        let _turn = self
            .inner
            .queries
            .acquire()
            .await
            .map_err(|e| crate::Error::Internal(e.to_string()))?;
        let answered = tokio::task::spawn_blocking(move || evaluate(&node, &org, &req, request))
            .await
            .map_err(|e| crate::Error::Internal(e.to_string()))?;
        let response = self.respond(answered);
        let kind = match asked.action {
            audit::Action::Search => "search",
            _ => "aggregate",
        };
        let outcome = match &response.0 {
            QueryResponse::Refused(_) => "refused",
            _ => "answered",
        };
        let labels = vec![
            ("kind".to_owned(), kind.to_owned()),
            ("outcome".to_owned(), outcome.to_owned()),
        ];
        self.inner
            .node
            .metrics()
            .questions
            .get_or_create(&labels)
            .inc();
        let ev = match &response {
            (QueryResponse::Refused(reason), _) => asked.refuse(reason),
            (_, n) if asked.action == audit::Action::Search => asked.detail(format!("{n} matches")),
            (_, n) => {
                let detail = format!("{}; {n} groups", asked.detail);
                asked.detail(detail)
            }
        };
        self.inner.node.audit(ev);
        Ok(response.0)
    }

    /// The signed response to an evaluated question, and how many groups or matches it carries.
    fn respond(
        &self,
        answered: std::result::Result<Answer, node::Refusal>,
    ) -> (QueryResponse, usize) {
        let answer = match answered {
            Ok(answer) => answer,
            Err(node::Refusal(reason)) => return (QueryResponse::Refused(reason), 0),
        };
        let n = match &answer {
            Answer::Groups { groups, .. } => groups.len(),
            Answer::Matches { matches, .. } => matches.len(),
        };
        let body = proto::encode(&answer);
        if body.len() > crate::net::MAX_QUERY_RESPONSE_BYTES - 1024 {
            let reason = format!(
                "the answer would be {} bytes; group more coarsely or filter more",
                body.len()
            );
            return (QueryResponse::Refused(reason), 0);
        }
        let msg = [ANSWER_DOMAIN, &body].concat();
        let signature = self.inner.node.identity().sign(&msg);
        let response = QueryResponse::Answer {
            body: ByteBuf::from(body),
            signature: ByteBuf::from(signature.to_vec()),
        };
        (response, n)
    }
}

/// The audit entry of a question from a member organization `org`, before it is answered.
fn asked(org: &str, req: &QueryRequest, me: &str) -> audit::Event {
    match req {
        QueryRequest::Aggregate {
            app,
            dataset,
            group_by,
            aggregates,
            ..
        } => audit::Event::ok(format!("{org}/{app}"), audit::Action::FederatedAggregate)
            .dataset(dataset)
            .detail(format!(
                "group by [{}], aggregates [{}]",
                group_by.join(", "),
                aggregates.join(", ")
            )),
        QueryRequest::Search { app, dataset, .. } => {
            audit::Event::ok(format!("{org}/{app}"), audit::Action::Search)
                .dataset(format!("{me}/{dataset}"))
        }
    }
}

/// Evaluates a member's question over this node's own data.
fn evaluate(
    node: &crate::Node,
    org: &str,
    req: &QueryRequest,
    request: [u8; 32],
) -> std::result::Result<Answer, node::Refusal> {
    let refuse = |e: &dyn std::fmt::Display| node::Refusal(e.to_string());
    match req {
        QueryRequest::Aggregate {
            app,
            dataset,
            filter,
            group_by,
            aggregates,
        } => {
            crate::naming::validate_ident("app", app).map_err(|e| refuse(&e))?;
            let id = DatasetId::parse(dataset).map_err(|e| refuse(&e))?;
            let filter = filter.compile().map_err(|e| refuse(&e))?;
            let agg = Aggregation::parse(group_by, aggregates)
                .map_err(|(at, e)| refuse(&format!("{at}: {e}")))?;
            let groups = node.answer_aggregate(org, app, &id, &filter, &agg)?;
            Ok(Answer::Groups {
                request,
                groups: groups.into_iter().collect(),
            })
        }
        QueryRequest::Search {
            app,
            dataset,
            filter,
            location_segment,
            limit,
        } => {
            crate::naming::validate_ident("app", app).map_err(|e| refuse(&e))?;
            let filter = filter.compile().map_err(|e| refuse(&e))?;
            let matches = node.answer_search(
                org,
                app,
                dataset,
                &filter,
                *location_segment as usize,
                *limit as usize,
            )?;
            Ok(Answer::Matches { request, matches })
        }
    }
}

/// Checks an owner's signed answer: its signature by `key` and its binding to `req`.
fn verify(key: &AuthorId, req: &QueryRequest, body: &[u8], signature: &[u8]) -> MeshResult<Answer> {
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| MeshError::refused("signature length"))?;
    if !key.verify(&[ANSWER_DOMAIN, body].concat(), &sig) {
        return Err(MeshError::refused("signature does not verify"));
    }
    let answer: Answer = proto::decode("answer", body)?;
    let bound = match &answer {
        Answer::Groups {
            request, groups, ..
        } => {
            proto::cap("answer groups", groups.len(), aggregate::MAX_GROUPS)?;
            request
        }
        Answer::Matches { request, matches } => {
            proto::cap("answer matches", matches.len(), node::MAX_SEARCH_MATCHES)?;
            request
        }
    };
    if *bound != digest(req) {
        return Err(MeshError::refused("answer to another question"));
    }
    Ok(answer)
}
