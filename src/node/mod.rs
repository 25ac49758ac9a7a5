//! The `Node` handle: the one typed public service interface. The HTTP API, the CLI and (with the
//! mesh) the peer protocols are faces of it, never separate implementations.

mod access;
mod audit;
mod dataset;
mod flow;
mod grants;
pub mod home;
mod replica;
mod retention;
mod sequencer;
mod view;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::apps::{self, Action, App, Right};
use crate::config::Config;
use crate::dataset::{Meta, Spec};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::hlc::{self, Clock};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::naming::DatasetId;
use crate::record::{self, Record};
use crate::store::{Store, Table};
use crate::view::query::Query;

pub use access::MemberKeys;
pub use audit::AuditListing;
use dataset::Dataset;
pub use dataset::{Batch, Event, EVENTS_CAP};
pub use grants::{parse_ttl, GrantRequest, GrantView, MAX_GRANT_TTL_MS};
pub use retention::SWEEP_EVERY as RETENTION_SWEEP;
pub use view::{
    answer as aggregate_answer, AggregateAnswer, Match, Refusal, Source, MAX_SEARCH_MATCHES,
};

/// Local envelopes buffered for the mesh before it is told it lagged.
pub const OUTBOX_CAP: usize = 1024;

/// What `GET /v1/node` tells.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Organization.
    pub org: String,
    /// Mesh.
    pub mesh: String,
    /// libp2p PeerId (derived from the identity key).
    pub peer_id: String,
    /// Hex ed25519 public key: the author id on envelopes.
    pub author: String,
    /// Hex X25519 public key for key wrapping.
    pub agreement_key: String,
    /// HTTP API address.
    pub api: String,
    /// Configured libp2p listen addresses.
    pub listen: Vec<String>,
    /// fogmesh version.
    pub version: &'static str,
}

/// A dataset as listed: metadata plus counts.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// Metadata.
    #[serde(flatten)]
    pub meta: Meta,
    /// Records currently present.
    pub records: usize,
    /// Envelopes (write batches, all authors) held.
    pub envelopes: u64,
    /// Whether this node can open it: in clear, or sealed and a key reached it. A sealed
    /// dataset without a key is held as ciphertext only, to relay it.
    pub readable: bool,
}

/// A newly registered app and its token, shown once.
#[derive(Debug, Clone, Serialize)]
pub struct NewApp {
    /// The app.
    #[serde(flatten)]
    pub app: App,
    /// The bearer token; only its hash is kept.
    pub token: String,
}

struct Inner {
    config: Config,
    identity: Identity,
    peer_id: String,
    store: Store,
    clock: Clock,
    datasets: RwLock<HashMap<DatasetId, Arc<Dataset>>>,
    metrics: Metrics,
    /// Envelopes written here, once durable, for the mesh to push.
    outbox: broadcast::Sender<Arc<Envelope>>,
    /// Member nodes' keys, kept by the mesh.
    directory: RwLock<access::Directory>,
    /// Datasets whose access state changed, for the mesh to push.
    access_changes: broadcast::Sender<DatasetId>,
    /// Running computation flows.
    flows: flow::Flows,
    /// The hash-chained audit log.
    audit: crate::audit::Log,
}

/// Whether a subscriber may still read (its grant may be revoked or expire while it listens).
pub type StillAllowed = Arc<dyn Fn() -> bool + Send + Sync>;

/// A live event stream of one dataset, limited to the caller's name prefix if its grant has one,
/// and ended as soon as the caller may no longer read it.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: Option<String>,
    allowed: StillAllowed,
}

impl Subscription {
    /// The next event the caller may see; `Closed` once its right to read is gone.
    pub async fn recv(&mut self) -> std::result::Result<Arc<Event>, broadcast::error::RecvError> {
        loop {
            let ev = self.rx.recv().await?;
            if !(self.allowed)() {
                return Err(broadcast::error::RecvError::Closed);
            }
            if visible(&ev, self.prefix.as_deref()) {
                return Ok(ev);
            }
        }
    }

    /// The raw receiver, the prefix its events must be filtered by, and the check to run on
    /// each event.
    pub fn into_parts(
        self,
    ) -> (
        broadcast::Receiver<Arc<Event>>,
        Option<String>,
        StillAllowed,
    ) {
        (self.rx, self.prefix, self.allowed)
    }
}

/// Whether an event lies under `prefix`.
pub fn visible(ev: &Event, prefix: Option<&str>) -> bool {
    let name = match ev {
        Event::Upsert { record } => &record.name,
        Event::Delete { name, .. } => name,
    };
    prefix.is_none_or(|p| crate::naming::is_under(name, p))
}

/// Handle to a running node. Clone it freely; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// Opens the node whose home directory is `home` (created by [`home::init`]).
    pub fn open_home(home: &Path, config: Config) -> Result<Self> {
        let identity = Identity::load(home)?;
        Self::open(identity, config, &home.join(home::DATA_DIR))
    }

    /// Opens a node with explicit parts: restores every dataset from `data_dir`.
    pub fn open(identity: Identity, config: Config, data_dir: &Path) -> Result<Self> {
        config.validate()?;
        let store = Store::open(data_dir)?;
        let audit = crate::audit::Log::open(&store, config.audit_limits())?;
        let clock = Clock::new();
        let mut datasets = HashMap::new();
        for meta in store.list_json::<Meta>(Table::Datasets)? {
            let id = meta.id.clone();
            let stored =
                store.get_json::<access::Stored>(Table::Access, id.to_string().as_bytes())?;
            let stored = match stored {
                Some(s) => s,
                // Created here, and the node stopped before its access state was stored.
                None if id.owner() == config.org => access::Stored::empty(identity.author()),
                None => return Err(Error::Internal(format!("{id}: no access state stored"))),
            };
            let (ds, max_hlc) = Dataset::restore(meta, &store, &identity, stored)?;
            clock.observe(hlc::Timestamp(max_hlc));
            datasets.insert(id, Arc::new(ds));
        }
        tracing::info!(datasets = datasets.len(), "store opened");
        let peer_id = identity.peer_id()?.to_string();
        let inner = Inner {
            config,
            identity,
            peer_id,
            store,
            clock,
            datasets: RwLock::new(datasets),
            metrics: Metrics::new(),
            outbox: broadcast::channel(OUTBOX_CAP).0,
            directory: RwLock::default(),
            access_changes: broadcast::channel(OUTBOX_CAP).0,
            flows: flow::Flows::default(),
            audit,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Identity and addresses.
    pub fn info(&self) -> Info {
        let i = &self.inner;
        Info {
            org: i.config.org.clone(),
            mesh: i.config.mesh.clone(),
            peer_id: i.peer_id.clone(),
            author: i.identity.author().to_string(),
            agreement_key: hex::encode(i.identity.agreement_public()),
            api: i.config.api.to_string(),
            listen: i.config.listen.clone(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Looks up the app a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Result<App> {
        self.inner
            .store
            .get_json::<App>(Table::Apps, &apps::token_hash(token))?
            .ok_or(Error::Unauthorized)
    }

    fn require_admin(caller: &App, what: &str) -> Result<()> {
        if caller.admin {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{what} needs the admin token; app {} is not admin",
                caller.name
            )))
        }
    }

    /// Registers an app (admin only) and returns its token, which is not stored.
    pub async fn add_app(&self, caller: &App, name: &str, rights: Vec<Right>) -> Result<NewApp> {
        Self::require_admin(caller, "registering an app")?;
        let app = App::new(name, rights, hlc::wall_millis())?;
        let new = self.register(app).await?;
        let rights: Vec<String> = new.app.rights.iter().map(ToString::to_string).collect();
        let detail = format!("app {} with rights [{}]", new.app.name, rights.join(", "));
        self.audit(
            crate::audit::Event::ok(self.actor(caller), crate::audit::Action::AppAdd)
                .detail(detail),
        );
        Ok(new)
    }

    /// Stores an app under a fresh token, refusing a name already taken.
    pub(crate) async fn register(&self, app: App) -> Result<NewApp> {
        let store = &self.inner.store;
        let name_key = format!("app-name/{}", app.name);
        if !store.insert_new_json(Table::Meta, name_key.as_bytes(), &app.name)? {
            return Err(Error::Conflict(format!(
                "an app named {} already exists",
                app.name
            )));
        }
        let token = apps::new_token();
        store.put_json(Table::Apps, &apps::token_hash(&token), &app)?;
        store.durable().await?;
        tracing::info!(app = %app.name, admin = app.admin, "app registered");
        Ok(NewApp { app, token })
    }

    /// Every registered app (admin only).
    pub fn apps(&self, caller: &App) -> Result<Vec<App>> {
        Self::require_admin(caller, "listing apps")?;
        let mut apps = self.inner.store.list_json::<App>(Table::Apps)?;
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(apps)
    }

    /// Creates a dataset owned by this node's organization (admin only).
    pub async fn create_dataset(&self, caller: &App, spec: Spec) -> Result<Meta> {
        Self::require_admin(caller, "creating a dataset")?;
        let meta = spec.into_meta(&self.inner.config.org, hlc::wall_millis())?;
        let key = meta.id.to_string();
        if !self
            .inner
            .store
            .insert_new_json(Table::Datasets, key.as_bytes(), &meta)?
        {
            return Err(Error::Conflict(format!("dataset {key} already exists")));
        }
        // No await between the two: a crash leaves at most a dataset without access state,
        // which `open` takes as empty for the node's own datasets.
        let me = self.inner.identity.author();
        self.inner
            .store
            .put_json(Table::Access, key.as_bytes(), &access::Stored::empty(me))?;
        self.inner.store.durable().await?;
        let ds = Arc::new(Dataset::create(meta.clone(), &me, me));
        self.write_datasets().insert(meta.id.clone(), ds.clone());
        let grants = self.init_access(&ds).await?;
        tracing::info!(dataset = %key, "dataset created");
        self.audit_created(caller, &meta, &grants);
        Ok(meta)
    }

    fn write_datasets(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<DatasetId, Arc<Dataset>>> {
        self.inner
            .datasets
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn all_datasets(&self) -> Vec<Arc<Dataset>> {
        let map = self
            .inner
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Datasets the caller holds any right on, with counts.
    pub fn datasets(&self, caller: &App) -> Vec<DatasetInfo> {
        let mut out: Vec<DatasetInfo> = self
            .all_datasets()
            .into_iter()
            .filter(|d| {
                [Action::Read, Action::Write, Action::Query]
                    .iter()
                    .any(|a| self.authorize(caller, *a, d).is_ok())
            })
            .map(|d| {
                let (records, envelopes) = d.stats();
                DatasetInfo {
                    meta: d.meta.clone(),
                    records,
                    envelopes,
                    readable: !d.meta.encrypted || !d.lock().keys.is_empty(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        out
    }

    /// The dataset `id`, if this node holds it.
    fn held(&self, id: &DatasetId) -> Option<Arc<Dataset>> {
        let map = self
            .inner
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.get(id).cloned()
    }

    /// The dataset `id` if `caller` may do `action` on it, with the name prefix it is limited
    /// to.
    fn dataset_for(
        &self,
        caller: &App,
        action: Action,
        id: &DatasetId,
    ) -> Result<(Arc<Dataset>, Option<String>)> {
        let not_found = || Error::NotFound(format!("dataset {id} not found"));
        let ds = self.held(id).ok_or_else(not_found)?;
        match self.authorize(caller, action, &ds) {
            Ok(prefix) => Ok((ds, prefix)),
            Err(false) => Err(not_found()),
            Err(true) => {
                let verb = format!("{action:?}").to_lowercase();
                Err(Error::Forbidden(format!(
                    "app {} has no {verb} right on {id}",
                    caller.name
                )))
            }
        }
    }

    /// Writes a batch (upserts and deletes) as one signed, durable change; returns the ids written:
    /// upserted ids in batch order, then the deleted ids.
    pub async fn publish(&self, caller: &App, id: &DatasetId, batch: Batch) -> Result<Vec<String>> {
        let (ds, prefix) = self.dataset_for(caller, Action::Write, id)?;
        record::validate_batch(&batch.records, &batch.delete)?;
        if let Some(p) = &prefix {
            within_prefix(&ds, &batch, p)?;
        }
        let ids = self.write(ds.clone(), batch).await?;
        if retention::over_count(&ds) {
            self.trim(ds).await?;
        }
        Ok(ids)
    }

    /// Writes a validated batch to `ds` as this node's author and waits until it is durable.
    async fn write(&self, ds: Arc<Dataset>, batch: Batch) -> Result<Vec<String>> {
        let count = (batch.records.len() + batch.delete.len()) as u64;
        let hlc = self.inner.clock.tick().0;
        let (node, ds2) = (self.clone(), ds.clone());
        let written = tokio::task::spawn_blocking(move || {
            let i = &node.inner;
            ds2.write_local(&i.identity, &i.store, hlc, batch, i.config.snapshot_every)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let took = self.inner.store.durable().await?;
        let m = &self.inner.metrics;
        m.flush_seconds.observe(took.as_secs_f64());
        m.records_written.inc_by(count);
        m.envelopes_stored.inc();
        m.write_batches.inc();
        ds.publish_events(written.events);
        if let Some(env) = written.envelope {
            // No mesh listening is not an error; a lagging one catches up by pulling.
            let _ = self.inner.outbox.send(Arc::new(env));
        }
        if written.snapshot_due {
            self.snapshot_in_background(ds);
        }
        Ok(written.ids)
    }

    fn snapshot_in_background(&self, ds: Arc<Dataset>) {
        let node = self.clone();
        tokio::task::spawn_blocking(move || match ds.snapshot(&node.inner.store) {
            Ok(true) => {
                node.inner.metrics.snapshots.inc();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(dataset = %ds.meta.id, error = %e, "snapshot failed"),
        });
    }

    /// Records of one dataset that match `query`.
    pub fn query(&self, caller: &App, id: &DatasetId, query: &Query) -> Result<Vec<Record>> {
        query.validate()?;
        let (ds, prefix) = self.dataset_for(caller, Action::Read, id)?;
        let p = prefix.as_deref();
        Ok(ds.with_records(|r| {
            query.run(
                r.values()
                    .filter(|r| p.is_none_or(|p| crate::naming::is_under(&r.name, p))),
            )
        }))
    }

    /// One record by id.
    pub fn get(&self, caller: &App, id: &DatasetId, record: &str) -> Result<Record> {
        let (ds, prefix) = self.dataset_for(caller, Action::Read, id)?;
        let p = prefix.as_deref();
        ds.with_records(|r| r.get(record).cloned())
            .filter(|r| p.is_none_or(|p| crate::naming::is_under(&r.name, p)))
            .ok_or_else(|| Error::NotFound(format!("record {record} not found in {id}")))
    }

    /// Live events of one dataset, from now on.
    pub fn subscribe(&self, caller: &App, id: &DatasetId) -> Result<Subscription> {
        let (ds, prefix) = self.dataset_for(caller, Action::Read, id)?;
        let (node, app, id) = (self.clone(), caller.clone(), id.clone());
        Ok(Subscription {
            rx: ds.subscribe(),
            prefix,
            allowed: Arc::new(move || node.dataset_for(&app, Action::Read, &id).is_ok()),
        })
    }

    /// Snapshots every dataset and flushes: call before exit so the next start replays nothing.
    pub async fn shutdown(&self) -> Result<()> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            for ds in node.all_datasets() {
                ds.snapshot(&node.inner.store)?;
            }
            node.inner.store.flush_blocking().map_err(Error::from)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        tracing::info!("node state flushed");
        Ok(())
    }
}

/// Fails unless every record a batch touches lies under `prefix`.
fn within_prefix(ds: &Dataset, batch: &Batch, prefix: &str) -> Result<()> {
    let outside = |name: &str| !crate::naming::is_under(name, prefix);
    if let Some(r) = batch.records.iter().find(|r| outside(&r.name)) {
        return Err(Error::Forbidden(format!(
            "record name {} is outside the prefix {prefix} this app's grant allows",
            r.name
        )));
    }
    // Updating an existing id renames it: the record being updated must be inside too.
    let moved_in = ds.with_records(|recs| {
        batch
            .records
            .iter()
            .filter_map(|r| recs.get(r.id.as_deref()?))
            .find(|r| outside(&r.name))
            .map(|r| r.id.clone())
    });
    if let Some(id) = moved_in {
        return Err(Error::Forbidden(format!(
            "record {id} is outside the prefix {prefix} this app's grant allows"
        )));
    }
    let deleted_outside = ds.with_records(|recs| {
        batch
            .delete
            .iter()
            .find(|id| recs.get(*id).is_some_and(|r| outside(&r.name)))
            .cloned()
    });
    match deleted_outside {
        Some(id) => Err(Error::Forbidden(format!(
            "record {id} is outside the prefix {prefix} this app's grant allows"
        ))),
        None => Ok(()),
    }
}
