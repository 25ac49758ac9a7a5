//! A disk that fails the store (full, or an I/O error): how the node tells, and when it may
//! start again. The store itself refuses every write from the first failure on
//! ([`crate::store::Failure`]); what reached the disk before is kept, and a store opened again
//! writes once there is space.

use std::time::Duration;

use super::Node;

/// Free space the failed disk must take again (written, synced and removed) before the node
/// starts again on it: room for the store's next log segments and the snapshot it writes as it
/// opens.
pub const SPACE_TO_RESTART: usize = 16 << 20;

/// How often the node looks at its disk: for a failure, then, once failed, for space.
pub const DISK_CHECK: Duration = Duration::from_secs(5);

impl Node {
    /// Why the disk failed this node's store, once it did: from then on writes are refused and
    /// nothing more is acknowledged or served to peers; reads go on.
    pub fn disk_failed(&self) -> Option<String> {
        self.inner.store.failure()
    }

    /// Resolves once the disk failed this node's store and then takes [`SPACE_TO_RESTART`]
    /// bytes again: the node should be started again (the `fogmesh` binary restarts itself in
    /// place). Never resolves while the disk works.
    pub async fn disk_back(&self) {
        loop {
            tokio::time::sleep(DISK_CHECK).await;
            if self.disk_failed().is_none() {
                continue;
            }
            let store = self.inner.store.clone();
            let back = tokio::task::spawn_blocking(move || store.disk_takes(SPACE_TO_RESTART));
            if back.await.unwrap_or(false) {
                tracing::info!("the disk takes writes again: restarting the node on it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::naming::DatasetId;
    use crate::node::{home, Batch, Node};

    fn batch(id: &str) -> Batch {
        let records = json!([{"id": id, "name": "ward/a", "data": {"n": 1}}]);
        serde_json::from_value(json!({ "records": records })).expect("batch")
    }

    /// How far the node tells peers its own history of `id` goes, and how many of its own
    /// envelopes it serves.
    fn told(node: &Node, id: &DatasetId) -> (u64, usize) {
        let me = node.inner.identity.author();
        let (_, frontier) = node
            .frontiers()
            .into_iter()
            .find(|(m, _)| m.id == *id)
            .expect("held");
        let (served, _) = node
            .envelopes_between(id, &me, (0, 100), (1 << 20, 100))
            .expect("served");
        (frontier.vv.get(&me), served.len())
    }

    #[tokio::test]
    async fn a_change_not_yet_on_disk_is_neither_told_of_nor_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = home::for_tests(dir.path()).await;
        let node = Node::open_home(dir.path(), config).expect("open");
        let admin = node
            .authenticate(&home::admin_token(dir.path()).expect("token"))
            .expect("admin");
        let spec = serde_json::from_value(json!({"name": "flu"})).expect("spec");
        let id = node.create_dataset(&admin, spec).await.expect("create").id;
        node.publish(&admin, &id, batch("a"))
            .await
            .expect("publish");
        assert_eq!(told(&node, &id), (1, 1));

        // Stored, its flush not yet done: as a write stands until its flush returns.
        let ds = node.held(&id).expect("held");
        let i = &node.inner;
        let hlc = i.clock.tick().0;
        ds.write_local(&i.identity, &i.store, hlc, batch("b"), 1_000)
            .expect("write");
        assert_eq!(ds.lock().vv.get(&i.identity.author()), 2);
        assert_eq!(told(&node, &id), (1, 1));

        let pending = ds.pending();
        i.store.durable().await.expect("flush");
        ds.settle(&pending);
        assert_eq!(told(&node, &id), (2, 2));
    }
}
