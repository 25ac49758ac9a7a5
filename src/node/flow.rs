//! Running computation flows: one task per flow follows its source dataset's events and keeps the
//! target's records equal to what the flow computes from the source, touching only the records
//! and groups a change affects. Flows are stored, so a restarted node resumes them
//! ([`Node::resume_flows`]). A flow owns its target's records: anything else written there is
//! replaced or deleted at the next full pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::apps::App;
use crate::audit;
use crate::error::{Error, Result};
use crate::record::{Input, Record, BATCH_MAX_RECORDS};
use crate::store::Table;
use crate::view::aggregate::GroupKey;
use crate::view::doc;
use crate::view::flow::{Flow, FlowSpec, Targets, MAX_FLOWS};

use super::dataset::{Dataset, Event};
use super::{Batch, Node};

const KEY_PREFIX: &str = "flow/";

/// Running flows by name.
#[derive(Default)]
pub(crate) struct Flows(std::sync::Mutex<BTreeMap<String, (FlowSpec, tokio::task::AbortHandle)>>);

impl Flows {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (FlowSpec, tokio::task::AbortHandle)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which source records make up each group (aggregate flows).
#[derive(Default)]
struct Index {
    of: HashMap<String, GroupKey>,
    members: HashMap<GroupKey, BTreeSet<String>>,
}

impl Index {
    fn set(&mut self, id: &str, key: Option<GroupKey>) -> Option<GroupKey> {
        let old = self.of.remove(id);
        if let Some(k) = &old {
            if let Some(m) = self.members.get_mut(k) {
                m.remove(id);
                if m.is_empty() {
                    self.members.remove(k);
                }
            }
        }
        if let Some(k) = key {
            self.members
                .entry(k.clone())
                .or_default()
                .insert(id.to_owned());
            self.of.insert(id.to_owned(), k);
        }
        old
    }
}

impl Node {
    /// Declares a flow (admin only; source and target owned here) and starts it: the target is
    /// filled from the source's current records, then kept up to date.
    pub async fn add_flow(&self, caller: &App, spec: FlowSpec) -> Result<FlowSpec> {
        Self::require_admin(caller, "declaring a flow")?;
        // The flows stored here are resumed (and so checked against) once the node started.
        self.started("flows are declared")?;
        let flow = spec.check().map_err(|e| {
            // A conflict between two fields, which the contract's schema cannot state.
            if spec.source == spec.target {
                Error::Conflict(e)
            } else {
                Error::Invalid(e)
            }
        })?;
        self.flow_datasets(&flow)?;
        self.flow_fits(&spec)?;
        let key = format!("{KEY_PREFIX}{}", spec.name);
        if !self
            .inner
            .store
            .insert_new_json(Table::Meta, key.as_bytes(), &spec)?
        {
            return Err(Error::Conflict(format!(
                "a flow named {} exists",
                spec.name
            )));
        }
        self.inner.store.durable().await?;
        self.start_flow(flow)?;
        tracing::info!(flow = %spec.name, source = %spec.source, target = %spec.target, "flow started");
        let detail = format!("flow {} into {}", spec.name, spec.target);
        let ev = audit::Event::ok(self.actor(caller), audit::Action::FlowAdd).dataset(&spec.source);
        self.audit(ev.detail(detail));
        Ok(spec)
    }

    /// Stops and forgets a flow (admin only). Its target keeps what it holds.
    pub async fn remove_flow(&self, caller: &App, name: &str) -> Result<()> {
        Self::require_admin(caller, "removing a flow")?;
        self.started("flows are removed")?;
        let running = self.inner.flows.lock().remove(name);
        let (_, task) = running.ok_or_else(|| Error::NotFound(format!("flow {name} not found")))?;
        task.abort();
        let key = format!("{KEY_PREFIX}{name}");
        self.inner.store.remove(Table::Meta, key.as_bytes())?;
        self.inner.store.durable().await?;
        tracing::info!(flow = %name, "flow removed");
        let ev = audit::Event::ok(self.actor(caller), audit::Action::FlowRemove);
        self.audit(ev.detail(format!("flow {name}")));
        Ok(())
    }

    /// The flows declared here (admin only).
    pub fn flows(&self, caller: &App) -> Result<Vec<FlowSpec>> {
        Self::require_admin(caller, "listing flows")?;
        self.started("flows are listed")?;
        Ok(self
            .inner
            .flows
            .lock()
            .values()
            .map(|(s, _)| s.clone())
            .collect())
    }

    /// Starts every stored flow (the daemon calls this once the node is open). Returns how many.
    pub fn resume_flows(&self) -> Result<usize> {
        let specs: Vec<FlowSpec> = self
            .inner
            .store
            .list_json_prefix(Table::Meta, KEY_PREFIX.as_bytes())?;
        let mut n = 0;
        for spec in specs {
            match spec
                .check()
                .map_err(Error::Invalid)
                .and_then(|f| self.start_flow(f))
            {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(flow = %spec.name, error = %e, "stored flow not started"),
            }
        }
        Ok(n)
    }

    /// Refuses a flow that would share a target with another flow, or close a cycle.
    fn flow_fits(&self, spec: &FlowSpec) -> Result<()> {
        let flows = self.inner.flows.lock();
        if flows.len() >= MAX_FLOWS {
            return Err(Error::Conflict(format!(
                "at most {MAX_FLOWS} flows per node"
            )));
        }
        if flows.contains_key(&spec.name) {
            return Err(Error::Conflict(format!(
                "a flow named {} exists",
                spec.name
            )));
        }
        if let Some((other, _)) = flows.values().find(|(f, _)| f.target == spec.target) {
            return Err(Error::Conflict(format!(
                "flow {} already writes {}; a flow owns its target's records",
                other.name, spec.target
            )));
        }
        // Follow flows downstream from the new target: reaching the new source is a cycle.
        let mut frontier = vec![spec.target.clone()];
        let mut seen = BTreeSet::new();
        while let Some(ds) = frontier.pop() {
            if ds == spec.source {
                return Err(Error::Conflict(format!(
                    "flow {} would close a cycle through {}",
                    spec.name, spec.source
                )));
            }
            if seen.insert(ds.clone()) {
                let next = flows.values().filter(|(f, _)| f.source == ds);
                frontier.extend(next.map(|(f, _)| f.target.clone()));
            }
        }
        Ok(())
    }

    fn flow_datasets(&self, flow: &Flow) -> Result<(Arc<Dataset>, Arc<Dataset>)> {
        let org = &self.inner.config.org;
        let get = |id: &crate::naming::DatasetId, what: &str| {
            if id.owner() != org {
                // Like a grant on another's dataset: not this node's to do.
                return Err(Error::Forbidden(format!(
                    "{what} {id}: a flow runs where its data lives; both datasets must be owned by {org}"
                )));
            }
            self.held_loaded(id, || {
                Error::NotFound(format!("{what} dataset {id} not found"))
            })
        };
        Ok((get(&flow.source, "source")?, get(&flow.target, "target")?))
    }

    fn start_flow(&self, flow: Flow) -> Result<()> {
        let (src, tgt) = self.flow_datasets(&flow)?;
        let name = flow.spec.name.clone();
        let spec = flow.spec.clone();
        let node = self.clone();
        let rx = src.subscribe();
        let task = tokio::spawn(run(node, Arc::new(flow), src, tgt, rx)).abort_handle();
        if let Some((_, old)) = self.inner.flows.lock().insert(name, (spec, task)) {
            old.abort();
        }
        Ok(())
    }

    /// Writes `want` (target records by id) where they differ from the target, and deletes
    /// `gone` ids the target holds.
    async fn flow_write(&self, tgt: &Arc<Dataset>, want: Targets, gone: Vec<String>) -> Result<()> {
        let (ups, dels) = tgt.with_records(|have| {
            let ups: Vec<Input> = want
                .into_values()
                .filter(|i| !same(have.get(i.id.as_deref().unwrap_or_default()), i))
                .collect();
            let dels: Vec<String> = gone
                .into_iter()
                .filter(|id| have.contains_key(id))
                .collect();
            (ups, dels)
        });
        self.flow_upsert(tgt, ups).await?;
        for chunk in dels.chunks(BATCH_MAX_RECORDS) {
            self.write(
                tgt.clone(),
                Batch {
                    records: vec![],
                    delete: chunk.to_vec(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Writes `records` to `tgt` in batches of at most [`BATCH_MAX_RECORDS`]; a batch whose
    /// change would hold more operations than members take is written in halves (one record
    /// always fits: its data is capped).
    async fn flow_upsert(&self, tgt: &Arc<Dataset>, records: Vec<Input>) -> Result<()> {
        let mut todo: Vec<Vec<Input>> = records
            .chunks(BATCH_MAX_RECORDS)
            .rev()
            .map(<[Input]>::to_vec)
            .collect();
        while let Some(chunk) = todo.pop() {
            let batch = Batch {
                records: chunk.clone(),
                delete: vec![],
            };
            match self.write(tgt.clone(), batch).await {
                Err(Error::Doc(doc::Error::TooManyOps(_))) if chunk.len() > 1 => {
                    let (first, rest) = chunk.split_at(chunk.len() / 2);
                    todo.extend([rest.to_vec(), first.to_vec()]);
                }
                done => {
                    done?;
                }
            }
        }
        Ok(())
    }
}

fn same(have: Option<&Record>, want: &Input) -> bool {
    have.is_some_and(|r| {
        r.name == want.name
            && Some(r.time) == want.time
            && serde_json::Value::Object(r.data.clone()) == want.data
    })
}

async fn run(
    node: Node,
    flow: Arc<Flow>,
    src: Arc<Dataset>,
    tgt: Arc<Dataset>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
) {
    let mut index = Index::default();
    let name = flow.spec.name.clone();
    if let Err(e) = full_pass(&node, &flow, &src, &tgt, &mut index).await {
        tracing::warn!(flow = %name, error = %e, "flow pass failed");
    }
    loop {
        let mut events = match rx.recv().await {
            Ok(ev) => vec![ev],
            Err(RecvError::Lagged(_)) => {
                if let Err(e) = full_pass(&node, &flow, &src, &tgt, &mut index).await {
                    tracing::warn!(flow = %name, error = %e, "flow pass failed");
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        while let Ok(ev) = rx.try_recv() {
            events.push(ev);
        }
        if let Err(e) = step(&node, &flow, &src, &tgt, &mut index, &events).await {
            tracing::warn!(flow = %name, error = %e, "flow update failed; recomputing");
            let _ = full_pass(&node, &flow, &src, &tgt, &mut index).await;
        }
    }
}

/// Recomputes the whole target from the source.
async fn full_pass(
    node: &Node,
    flow: &Flow,
    src: &Dataset,
    tgt: &Arc<Dataset>,
    index: &mut Index,
) -> Result<()> {
    let want = src.with_records(|recs| {
        *index = Index::default();
        for r in recs.values() {
            if let Some(k) = flow.group_of(r) {
                index.set(&r.id, Some(k));
            }
        }
        flow.compute(recs.values())
    });
    let want = want.map_err(Error::Invalid)?;
    let gone = tgt.with_records(|have| {
        have.keys()
            .filter(|id| !want.contains_key(*id))
            .cloned()
            .collect()
    });
    node.flow_write(tgt, want, gone).await
}

/// Applies a run of source events: only the records (record mode) or groups (aggregate mode)
/// they touch are recomputed.
async fn step(
    node: &Node,
    flow: &Flow,
    src: &Dataset,
    tgt: &Arc<Dataset>,
    index: &mut Index,
    events: &[Arc<Event>],
) -> Result<()> {
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| match e.as_ref() {
            Event::Upsert { record } => record.id.as_str(),
            Event::Delete { id, .. } => id.as_str(),
        })
        .collect();
    let (want, gone) = src
        .with_records(|recs| {
            if flow.aggregation.is_none() {
                let present: Vec<&Record> = ids.iter().filter_map(|id| recs.get(*id)).collect();
                let want = flow.compute(present.into_iter())?;
                let gone: Vec<String> = ids
                    .iter()
                    .filter(|id| !want.contains_key(**id))
                    .map(|id| (*id).to_owned())
                    .collect();
                return Ok((want, gone));
            }
            let mut touched: BTreeSet<GroupKey> = BTreeSet::new();
            for id in &ids {
                let now = recs.get(*id).and_then(|r| flow.group_of(r));
                touched.extend(now.clone());
                touched.extend(index.set(id, now));
            }
            let rows: Vec<&Record> = touched
                .iter()
                .filter_map(|k| index.members.get(k))
                .flatten()
                .filter_map(|id| recs.get(id))
                .collect();
            // Only rows still in a touched group count (the index may name a row whose group
            // an event of this run has not updated yet).
            let rows: Vec<&Record> = rows
                .into_iter()
                .filter(|r| flow.group_of(r).is_some_and(|k| touched.contains(&k)))
                .collect();
            let want = flow.compute(rows.into_iter())?;
            // Groups now empty, or under the flow's minimum, leave the target.
            let gone = touched
                .iter()
                .map(|k| flow.group_id(k))
                .filter(|id| !want.contains_key(id))
                .collect();
            Ok::<_, String>((want, gone))
        })
        .map_err(Error::Invalid)?;
    node.flow_write(tgt, want, gone).await
}
