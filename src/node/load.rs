//! Loading the datasets a node holds when it starts, after it answers: one at a time, the most
//! urgent first, each refused with `loading` until it is in memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Result, Unavailable};
use crate::hlc;

use super::dataset::Dataset;
use super::Node;

/// How far the datasets held at the start are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Loading {
    /// Datasets loaded.
    pub loaded: usize,
    /// Datasets held at the start.
    pub total: usize,
}

impl Node {
    /// Loads every dataset not loaded yet (blocking): high priority first, then normal, then
    /// low; within one priority by name. Each answers as soon as it is loaded. Returns how many
    /// it loaded. A dataset that does not load stops the loading with its error.
    pub fn load_datasets(&self) -> Result<usize> {
        let waiting = self.load_order();
        let started = Instant::now();
        for ds in &waiting {
            if self.inner.load_stopped.load(Ordering::Relaxed) {
                return Ok(0);
            }
            let at = Instant::now();
            let clock = &self.inner.clock;
            ds.load(&self.inner.store, &self.inner.identity, |max| {
                clock.observe(hlc::Timestamp(max));
            })?;
            self.inner.loaded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(dataset = %ds.meta.id, seconds = at.elapsed().as_secs_f64(), "dataset loaded");
        }
        // Every one is loaded now, also any loaded by another caller meanwhile.
        let total = self.inner.held_at_start;
        self.inner.loaded.store(total, Ordering::Relaxed);
        if !waiting.is_empty() {
            tracing::info!(
                datasets = waiting.len(),
                seconds = started.elapsed().as_secs_f64(),
                "datasets loaded"
            );
        }
        Ok(waiting.len())
    }

    /// Stops [`Self::load_datasets`] before its next dataset (the node is stopping).
    pub fn stop_loading(&self) {
        self.inner.load_stopped.store(true, Ordering::Relaxed);
    }

    /// The datasets not loaded yet, in the order they load.
    fn load_order(&self) -> Vec<Arc<Dataset>> {
        let mut waiting: Vec<Arc<Dataset>> = self
            .all_datasets()
            .into_iter()
            .filter(|d| !d.is_loaded())
            .collect();
        waiting.sort_by_cached_key(|d| {
            crate::dataset::service_order(d.meta.priority, d.meta.id.to_string())
        });
        waiting
    }

    /// How far the loading after the start is; `None` once the node has started whole (every
    /// dataset loaded, the mesh running: [`Self::mark_started`]).
    pub fn loading(&self) -> Option<Loading> {
        let l = Loading {
            loaded: self.inner.loaded.load(Ordering::Relaxed),
            total: self.inner.held_at_start,
        };
        (!self.inner.started.load(Ordering::Acquire)).then_some(l)
    }

    /// Dataset `id` if held and loaded: `not_found` if not held, `loading` while it loads.
    pub(super) fn held_loaded(
        &self,
        id: &crate::naming::DatasetId,
        not_found: impl FnOnce() -> crate::error::Error,
    ) -> Result<Arc<Dataset>> {
        let ds = self.held(id).ok_or_else(not_found)?;
        self.ready(&ds).map(|()| ds)
    }

    /// Fails with `loading` while `ds` is not loaded yet.
    pub(super) fn ready(&self, ds: &Dataset) -> Result<()> {
        if ds.is_loaded() {
            return Ok(());
        }
        Err(Unavailable::Loading(ds.meta.id.clone()).into())
    }

    /// Marks the node started: every dataset loaded, the mesh told the node who the members are
    /// (grants state cuts from their keys), the flows resumed and expired grants revoked. Until
    /// then grants, flows and writes to sealed shared datasets answer `starting`.
    pub fn mark_started(&self) {
        self.inner.started.store(true, Ordering::Release);
    }

    /// Fails with `starting` (naming `what`) until [`Self::mark_started`].
    pub(super) fn started(&self, what: &'static str) -> Result<()> {
        match self.inner.started.load(Ordering::Acquire) {
            true => Ok(()),
            false => Err(Unavailable::Starting(what).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::Error;
    use crate::node::{home, Batch};
    use crate::view::query::Query;

    fn batch(name: &str) -> Batch {
        serde_json::from_value(json!({"records": [{"name": name, "data": {"n": 1}}]}))
            .expect("batch")
    }

    #[tokio::test]
    async fn a_started_node_answers_and_refuses_each_dataset_until_it_is_loaded_urgent_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = home::for_tests(dir.path()).await;
        let token = home::admin_token(dir.path()).expect("token");
        let mut ids = Vec::new();
        {
            let node = Node::open_home(dir.path(), config.clone()).expect("open");
            let admin = node.authenticate(&token).expect("admin");
            for (name, priority) in [
                ("b-low", "low"),
                ("a-normal", "normal"),
                ("c-high", "high"),
                ("d-high", "high"),
            ] {
                let spec = serde_json::from_value(json!({"name": name, "priority": priority}))
                    .expect("spec");
                let id = node.create_dataset(&admin, spec).await.expect("create").id;
                node.publish(&admin, &id, batch("ward-1"))
                    .await
                    .expect("publish");
                ids.push(id);
            }
            node.shutdown().await.expect("shutdown");
        }

        let node = Node::start_home(dir.path(), config).expect("start");
        let admin = node.authenticate(&token).expect("admin");
        assert_eq!(
            node.loading(),
            Some(Loading {
                loaded: 0,
                total: 4
            })
        );
        assert_eq!(
            node.info().loading,
            Some(Loading {
                loaded: 0,
                total: 4
            })
        );
        let order: Vec<String> = node
            .load_order()
            .iter()
            .map(|d| d.meta.id.to_string())
            .collect();
        assert_eq!(
            order,
            [
                "hospital/c-high",
                "hospital/d-high",
                "hospital/a-normal",
                "hospital/b-low"
            ]
        );
        for id in &ids {
            let refused = node.query(&admin, id, &Query::default());
            assert!(
                matches!(refused, Err(Error::Unavailable(Unavailable::Loading(_)))),
                "{id}: {refused:?}"
            );
            let write = node.publish(&admin, id, batch("ward-2")).await;
            assert!(
                matches!(write, Err(Error::Unavailable(Unavailable::Loading(_)))),
                "{write:?}"
            );
        }
        let listed = node.datasets(&admin);
        assert!(
            listed.iter().all(|d| d.loading && d.records == 0),
            "{listed:?}"
        );

        // One dataset loaded answers while the others still load.
        let first = node.load_order().remove(0);
        first
            .load(&node.inner.store, &node.inner.identity, |_| {})
            .expect("load");
        assert_eq!(
            node.query(&admin, &first.meta.id, &Query::default())
                .expect("query")
                .len(),
            1
        );

        assert_eq!(node.load_datasets().expect("load"), 3);
        assert_eq!(
            node.loading(),
            Some(Loading {
                loaded: 4,
                total: 4
            })
        );
        // Flows and grants wait for the start to finish (the mesh tells the members' keys).
        let starting =
            |r: Result<()>| matches!(r, Err(Error::Unavailable(Unavailable::Starting(_))));
        assert!(starting(node.flows(&admin).map(|_| ())));
        let grant = serde_json::from_value(
            json!({"dataset": ids[0].to_string(), "to": "pharmacy/*", "rights": ["read"]}),
        )
        .expect("grant request");
        assert!(starting(node.grant(&admin, grant).await.map(|_| ())));
        node.mark_started();
        assert_eq!(node.loading(), None);
        assert_eq!(node.flows(&admin).expect("flows").len(), 0);
        for id in &ids {
            assert_eq!(
                node.query(&admin, id, &Query::default())
                    .expect("query")
                    .len(),
                1
            );
            node.publish(&admin, id, batch("ward-2"))
                .await
                .expect("write once loaded");
        }
        assert!(node
            .datasets(&admin)
            .iter()
            .all(|d| !d.loading && d.records == 2));
    }
}
