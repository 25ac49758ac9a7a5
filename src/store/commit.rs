//! Group commit: writers insert into sled, then wait here for a flush that covers their insert.
//!
//! One thread does every flush. It takes the first waiter, then everyone else already queued, and
//! flushes once for all of them; those who arrive during that flush ride the next one. The group size
//! grows with the load by itself, with no fixed window to add latency when the node is idle.

use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::Error;

/// Most writers that may wait for a flush at once; more wait for a place in the queue.
pub const FLUSH_QUEUE_CAP: usize = 4096;

type Waiter = oneshot::Sender<Result<Duration, String>>;

/// Handle to the flusher thread. The thread ends when every handle is dropped.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Waiter>,
}

impl Flusher {
    /// Starts the flusher thread for `db`.
    pub fn spawn(db: sled::Db) -> Self {
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_CAP);
        let spawned = thread::Builder::new()
            .name("fogmesh-flush".into())
            .spawn(move || run(db, rx));
        if let Err(e) = spawned {
            // Without the thread every durable() reports Closed: loud, not silent.
            tracing::error!(error = %e, "could not start the flusher thread");
        }
        Self { tx }
    }

    /// Resolves once a flush that began after this call has completed; returns its duration.
    pub async fn durable(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| Error::Closed)?;
        match rx.await {
            Ok(Ok(took)) => Ok(took),
            Ok(Err(msg)) => Err(Error::Flush(msg)),
            Err(_) => Err(Error::Closed),
        }
    }
}

fn run(db: sled::Db, mut rx: mpsc::Receiver<Waiter>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while let Ok(w) = rx.try_recv() {
            group.push(w);
        }
        let start = Instant::now();
        let result = db
            .flush()
            .map(|_| start.elapsed())
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "flush failed; writes in this group are not acknowledged");
        }
        for w in group {
            let _ = w.send(result.clone());
        }
    }
}
