//! A live event stream of one dataset for one app, ended as soon as the app may no longer read.
//!
//! What can end a reader's access: its grant revoked or expired, its local rights replaced, its
//! app removed, or its token rotated. Every change the node makes or receives to apps and grants
//! bumps the node's access epoch (a `watch` channel, one slot, so it cannot fill up); a stream
//! waits on it beside its events and checks again when it moves. Expiry moves no epoch, so each
//! event is checked too.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use crate::apps::{Action, App};
use crate::naming::DatasetId;

use super::dataset::{Dataset, Event};
use super::Node;

/// A live event stream of one dataset, limited to the name prefix the caller's grant allows, and
/// ended (`Closed`) once the caller may no longer read it.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: Option<String>,
    node: Node,
    /// The app as registered when last checked.
    app: App,
    dataset: DatasetId,
    /// Moves when access may have changed.
    access: watch::Receiver<u64>,
}

impl Subscription {
    pub(super) fn new(
        node: Node,
        app: App,
        ds: Arc<Dataset>,
        prefix: Option<String>,
        access: watch::Receiver<u64>,
    ) -> Self {
        Self {
            rx: ds.subscribe(),
            prefix,
            node,
            app,
            dataset: ds.meta.id.clone(),
            access,
        }
    }

    /// The next event the caller may see; `Lagged` when events were missed, `Closed` once its
    /// right to read is gone (at once, not at the next event).
    pub async fn recv(&mut self) -> Result<Arc<Event>, RecvError> {
        loop {
            tokio::select! {
                biased;
                changed = self.access.changed() => {
                    if changed.is_err() || !self.recheck() {
                        return Err(RecvError::Closed);
                    }
                }
                ev = self.rx.recv() => {
                    let ev = ev?;
                    if !self.still_allowed() {
                        return Err(RecvError::Closed);
                    }
                    if visible(&ev, self.prefix.as_deref()) {
                        return Ok(ev);
                    }
                }
            }
        }
    }

    /// Takes up the app as registered now; false once it is removed or its token rotated, or it
    /// may no longer read.
    fn recheck(&mut self) -> bool {
        match self.node.current_app(&self.app) {
            Some(app) => {
                self.app = app;
                self.still_allowed()
            }
            None => false,
        }
    }

    /// Whether the app may still read, keeping the prefix its standing grant allows.
    fn still_allowed(&mut self) -> bool {
        match self
            .node
            .dataset_for(&self.app, Action::Read, &self.dataset)
        {
            Ok((_, prefix)) => {
                self.prefix = prefix;
                true
            }
            Err(_) => false,
        }
    }
}

/// Whether an event lies under `prefix`.
fn visible(ev: &Event, prefix: Option<&str>) -> bool {
    let name = match ev {
        Event::Upsert { record } => &record.name,
        Event::Delete { name, .. } => name,
    };
    prefix.is_none_or(|p| crate::naming::is_under(name, p))
}
