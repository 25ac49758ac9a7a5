//! The `Node` handle: the one typed public service interface. The HTTP API, the CLI and (with the
//! mesh) the peer protocols are faces of it, never separate implementations.

mod access;
mod apps;
mod audit;
mod background;
mod dataset;
mod disk;
mod flow;
mod forks;
mod grants;
pub mod home;
mod info;
mod lanes;
#[cfg(test)]
mod lanes_tests;
mod load;
mod observe;
mod quarantine;
mod replica;
mod retention;
mod rotate;
mod sequencer;
mod snapshot;
mod subscription;
mod view;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};

use crate::apps::{Action, App};
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

pub use access::{MemberKeys, RetiredKey};
pub use apps::{NewApp, RotatedAdmin};
pub use audit::AuditListing;
use dataset::Dataset;
pub use dataset::{Batch, Event, EVENTS_CAP};
pub use disk::{DISK_CHECK, SPACE_TO_RESTART};
pub use forks::Equivocation;
pub use grants::{parse_ttl, GrantRequest, GrantView, MAX_GRANT_TTL_MS};
pub use info::{DatasetInfo, Info};
pub use lanes::Delivery;
pub use load::Loading;
pub use quarantine::{MAX_HELD_BYTES_PER_AUTHOR, MAX_HELD_PER_AUTHOR, MAX_HELD_PER_DATASET};
pub use retention::SWEEP_EVERY as RETENTION_SWEEP;
pub use rotate::Begun;
pub use subscription::Subscription;
pub use view::{
    answer as aggregate_answer, AggregateAnswer, Match, Refusal, Source, MAX_SEARCH_MATCHES,
};

/// Local envelopes buffered for the mesh before it is told it lagged.
pub const OUTBOX_CAP: usize = 1024;

/// Which threads run a dataset's blocking work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    /// The runtime's blocking pool, at normal priority.
    Blocking,
    /// The bulk threads, at lower priority ([`background`]).
    Bulk,
}

struct Inner {
    config: Config,
    identity: Identity,
    peer_id: String,
    store: Store,
    clock: Clock,
    datasets: RwLock<HashMap<DatasetId, Arc<Dataset>>>,
    /// How many datasets were held at the start, and how many of them are loaded
    /// ([`Node::load_datasets`]).
    held_at_start: usize,
    loaded: std::sync::atomic::AtomicUsize,
    /// Set when the node stops before every dataset is loaded: the loading stops too.
    load_stopped: std::sync::atomic::AtomicBool,
    /// Set once the node has started whole ([`Node::mark_started`]); a node opened with its
    /// datasets loaded starts so.
    started: std::sync::atomic::AtomicBool,
    metrics: Metrics,
    /// Live applies under way per priority, which catch-ups make way for.
    lanes: lanes::Lanes,
    /// Threads of lower priority for catch-up applies below `high`.
    background: background::Background,
    /// Envelopes written here, once durable, for the mesh to push.
    outbox: broadcast::Sender<Arc<Envelope>>,
    /// Member nodes' keys, kept by the mesh.
    directory: RwLock<access::Directory>,
    /// Datasets whose access state changed, for the mesh to push.
    access_changes: broadcast::Sender<DatasetId>,
    /// Forks newly proven here (dataset, author), for the mesh to pass the evidence on.
    forks_found: broadcast::Sender<(DatasetId, crate::identity::AuthorId)>,
    /// Running computation flows.
    flows: flow::Flows,
    /// The home directory, for a node opened from one (the admin token file lives there).
    home: Option<PathBuf>,
    /// Registered apps, by token hash and name.
    apps: RwLock<apps::Registry>,
    /// Held through an admin token rotation, so that two never interleave.
    admin_rotation: tokio::sync::Mutex<()>,
    /// True once a key rotation stopped signing with the current key (held for writing while
    /// it does, for reading by every write).
    signing_stopped: tokio::sync::RwLock<bool>,
    /// Set when the node must restart (its keys changed).
    restart: watch::Sender<bool>,
    /// The signed rotations of the keys this node rotated away.
    rotations: Vec<Vec<u8>>,
    /// Bumped whenever what an app may read can have changed (an app removed, rotated or given
    /// other rights; a grant issued, revoked or received): open event streams check again at
    /// once instead of at their next event.
    access_epoch: watch::Sender<u64>,
    /// The hash-chained audit log.
    audit: crate::audit::Log,
}

/// Handle to a running node. Clone it freely; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// Opens the node whose home directory is `home` (created by [`home::init`]), every dataset
    /// loaded.
    pub fn open_home(home: &Path, config: Config) -> Result<Self> {
        let node = Self::start_home(home, config)?;
        node.load_datasets()?;
        node.mark_started();
        Ok(node)
    }

    /// Opens the node whose home directory is `home` without loading its datasets: it answers
    /// at once, refusing a dataset still loading (`loading`) until [`Self::load_datasets`]
    /// has loaded it, and grants, flows and writes to sealed shared datasets (`starting`) until
    /// [`Self::mark_started`].
    pub fn start_home(home: &Path, config: Config) -> Result<Self> {
        let loaded = crate::identity::rotation::load(home)?;
        let mut node = Self::open_in(
            loaded.identity,
            config,
            &home.join(home::DATA_DIR),
            Some(home),
        )?;
        if let Some(inner) = Arc::get_mut(&mut node.inner) {
            inner.rotations = loaded.rotations;
        }
        Ok(node)
    }

    /// Opens a node with explicit parts: restores every dataset from `data_dir`.
    pub fn open(identity: Identity, config: Config, data_dir: &Path) -> Result<Self> {
        let node = Self::open_in(identity, config, data_dir, None)?;
        node.load_datasets()?;
        node.mark_started();
        Ok(node)
    }

    fn open_in(
        identity: Identity,
        config: Config,
        data_dir: &Path,
        home: Option<&Path>,
    ) -> Result<Self> {
        config.validate()?;
        let store = Store::open(data_dir)?;
        let audit = crate::audit::Log::open(&store, config.audit_limits())?;
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
            datasets.insert(id, Arc::new(Dataset::stored(meta, stored)?));
        }
        tracing::info!(datasets = datasets.len(), "store opened");
        let apps = apps::Registry::load(&store)?;
        let peer_id = identity.peer_id()?.to_string();
        let total = datasets.len();
        let metrics = Metrics::new();
        let inner = Inner {
            config,
            identity,
            peer_id,
            store,
            clock: Clock::new(),
            datasets: RwLock::new(datasets),
            held_at_start: total,
            loaded: std::sync::atomic::AtomicUsize::new(0),
            load_stopped: std::sync::atomic::AtomicBool::new(false),
            started: std::sync::atomic::AtomicBool::new(false),
            lanes: lanes::Lanes::new(metrics.catchup_yields.clone()),
            metrics,
            background: background::Background::spawn(),
            outbox: broadcast::channel(OUTBOX_CAP).0,
            directory: RwLock::default(),
            access_changes: broadcast::channel(OUTBOX_CAP).0,
            forks_found: broadcast::channel(OUTBOX_CAP).0,
            flows: flow::Flows::default(),
            home: home.map(Path::to_owned),
            apps: RwLock::new(apps),
            admin_rotation: tokio::sync::Mutex::new(()),
            signing_stopped: tokio::sync::RwLock::new(false),
            restart: watch::channel(false).0,
            rotations: Vec::new(),
            access_epoch: watch::channel(0).0,
            audit,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
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

    /// Whether this node holds dataset `id`.
    pub fn holds(&self, id: &DatasetId) -> bool {
        self.held(id).is_some()
    }

    /// Whether `caller` holds any right on dataset `id` held here (an app that does not may not
    /// learn that it exists).
    pub fn may_see(&self, caller: &App, id: &DatasetId) -> bool {
        self.held(id).is_some_and(|d| self.sees(caller, &d))
    }

    fn sees(&self, caller: &App, d: &Dataset) -> bool {
        [Action::Read, Action::Write, Action::Query]
            .iter()
            .any(|a| self.authorize(caller, *a, d).is_ok())
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
            Ok(prefix) => self.ready(&ds).map(|()| (ds, prefix)),
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
        if ds.meta.encrypted {
            // Sealed under the newest key: not before expired grants lost theirs.
            self.started("writes to a sealed shared dataset resume")?;
        }
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
        self.inner.store.writable()?;
        let count = (batch.records.len() + batch.delete.len()) as u64;
        let _signing = self.signing().await?;
        let hlc = self.inner.clock.tick().0;
        let (written, took) = self
            .store_and_settle(&ds, Worker::Blocking, move |node, ds| {
                let i = &node.inner;
                let written =
                    ds.write_local(&i.identity, &i.store, hlc, batch, i.config.snapshot_every)?;
                Ok((written, true))
            })
            .await?;
        let took = took.unwrap_or_default();
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

    /// Runs `store` (blocking; it stores into `ds` and says whether it stored anything), then,
    /// if it did, waits for a flush that covers it and tells peers of it ([`Dataset::settle`]);
    /// returns what `store` gave and the flush's duration. All in one task of its own: a caller
    /// that goes away (a client that disconnects) must not leave a stored change untold.
    /// `worker` says which threads run `store`.
    async fn store_and_settle<T: Send + 'static>(
        &self,
        ds: &Arc<Dataset>,
        worker: Worker,
        store: impl FnOnce(&Node, &Dataset) -> Result<(T, bool)> + Send + 'static,
    ) -> Result<(T, Option<std::time::Duration>)> {
        let (node, ds) = (self.clone(), ds.clone());
        let task = tokio::spawn(async move {
            let (n, d) = (node.clone(), ds.clone());
            let (out, stored) = node.run_on(worker, move || store(&n, &d)).await??;
            if !stored {
                return Ok((out, None));
            }
            let pending = ds.pending();
            let took = node.inner.store.durable().await?;
            ds.settle(&pending);
            Ok((out, Some(took)))
        });
        task.await.map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Runs blocking `f` on `worker`'s threads and returns what it gave.
    async fn run_on<T: Send + 'static>(
        &self,
        worker: Worker,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        match worker {
            Worker::Blocking => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| Error::Internal(e.to_string())),
            Worker::Bulk => self.inner.background.run(f).await,
        }
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

    /// Live events of one dataset, from now on, for as long as the caller may read it (see
    /// [`Subscription`]). The caller must be a registered app holding its current token.
    pub fn subscribe(&self, caller: &App, id: &DatasetId) -> Result<Subscription> {
        // Watched from before the check: a change after it wakes the stream.
        let access = self.inner.access_epoch.subscribe();
        let app = self.current_app(caller).ok_or(Error::Unauthorized)?;
        let (ds, prefix) = self.dataset_for(&app, Action::Read, id)?;
        Ok(Subscription::new(self.clone(), app, ds, prefix, access))
    }

    /// Wakes every open event stream to check whether its app may still read.
    pub(crate) fn access_may_have_changed(&self) {
        self.inner
            .access_epoch
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Snapshots every dataset and flushes: call before exit so the next start replays nothing.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(why) = self.disk_failed() {
            // Nothing can be written: what reached the disk is what the next start finds.
            tracing::warn!(%why, "the disk failed: shutting down without a snapshot or a flush");
            return Ok(());
        }
        let node = self.clone();
        let closing = tokio::task::spawn_blocking(move || {
            // One still loading holds nothing its store lacks.
            for ds in node.all_datasets().into_iter().filter(|d| d.is_loaded()) {
                ds.snapshot(&node.inner.store)?;
            }
            node.inner.store.flush_blocking().map_err(Error::from)
        });
        // A disk that stopped taking writes can leave sled's flush waiting for good.
        let Ok(closed) = tokio::time::timeout(crate::store::FLUSH_STALL, closing).await else {
            let why = format!(
                "the closing snapshot and flush did not finish within {:?}",
                crate::store::FLUSH_STALL
            );
            self.inner.store.mark_failed(&why);
            tracing::warn!(%why, "shutting down without them: what reached the disk is what the next start finds");
            return Ok(());
        };
        closed.map_err(|e| Error::Internal(e.to_string()))??;
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
