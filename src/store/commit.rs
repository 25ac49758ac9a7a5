//! Group commit: writers insert into sled, then wait here for a flush that covers their insert.
//!
//! One thread does every flush. It takes the first waiter, then everyone else already queued, and
//! flushes once for all of them; those who arrive during that flush ride the next one. The group size
//! grows with the load by itself, with no fixed window to add latency when the node is idle.

use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Error, Failure};

/// Most writers that may wait for a flush at once; more wait for a place in the queue.
pub const FLUSH_QUEUE_CAP: usize = 4096;

/// How long a writer waits for its flush before the disk counts as failed. A disk that fills can
/// leave sled's flush waiting for good (seen in the nemesis soak once sled's own background
/// flusher had failed for lack of space), and a write must not wait for ever.
pub const FLUSH_STALL: Duration = Duration::from_secs(30);

type Waiter = oneshot::Sender<Result<Duration, String>>;

/// Handle to the flusher thread. When the last handle is dropped the thread is told to stop and
/// joined, so that its database handle is released before the drop returns (a store reopened right
/// after must not find the directory still locked).
#[derive(Clone)]
pub struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Waiter>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Receives once the thread has released its database handle.
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    failure: Failure,
}

/// How long dropping the last handle waits for the thread to release the database. sled 0.34 has
/// been seen to hang in the flush it does when its last handle drops (two stores closing at once in
/// one process); the node flushes explicitly before it closes, so giving up here loses nothing.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if self.failure.get().is_some() {
            // sled 0.34 hangs for good in the closing flush of a store its disk failed: the
            // thread keeps the database (and its lock) until the process ends or executes anew.
            tracing::warn!("the disk failed this store: leaving it without a closing flush");
            return;
        }
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        let released = done.is_some_and(|d| d.recv_timeout(CLOSE_WAIT).is_ok());
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        let Some(h) = handle else { return };
        if !released {
            tracing::warn!("the store did not close within {CLOSE_WAIT:?}; leaving it");
        } else if h.join().is_err() {
            tracing::error!("the flusher thread panicked");
        }
    }
}

impl Flusher {
    /// Starts the flusher thread for `db`; a flush that fails is recorded in `failure`.
    pub fn spawn(db: sled::Db, failure: Failure) -> Self {
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_CAP);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let failed = failure.clone();
        let spawned = thread::Builder::new()
            .name("fogmesh-flush".into())
            .spawn(move || {
                run(&db, rx, &failed);
                // Released before saying so: the closing flush sled does here may hang.
                drop(db);
                let _ = done_tx.send(());
            });
        let thread = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                // Without the thread every durable() reports Closed: loud, not silent.
                tracing::error!(error = %e, "could not start the flusher thread");
                None
            }
        };
        let inner = Inner {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
            done: Mutex::new(Some(done_rx)),
            failure,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Resolves once a flush that began after this call has completed; returns its duration.
    /// Fails at once once a flush has failed: the store takes nothing more (see [`Failure`]).
    /// A flush that does not finish within [`FLUSH_STALL`] marks the disk failed.
    pub async fn durable(&self) -> Result<Duration, Error> {
        if let Some(why) = self.inner.failure.get() {
            return Err(Error::DiskFailed(why));
        }
        let (tx, rx) = oneshot::channel();
        let queue = self.inner.tx.lock().ok().and_then(|q| q.clone());
        let queue = queue.ok_or(Error::Closed)?;
        let waited = tokio::time::timeout(FLUSH_STALL, async move {
            queue.send(tx).await.map_err(|_| Error::Closed)?;
            match rx.await {
                Ok(Ok(took)) => Ok(took),
                Ok(Err(msg)) => Err(Error::DiskFailed(msg)),
                Err(_) => Err(Error::Closed),
            }
        });
        match waited.await {
            Ok(result) => result,
            Err(_) => {
                let why = format!("a flush did not finish within {FLUSH_STALL:?}");
                Err(Error::DiskFailed(self.inner.failure.set(&why)))
            }
        }
    }
}

fn run(db: &sled::Db, mut rx: mpsc::Receiver<Waiter>, failure: &Failure) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while let Ok(w) = rx.try_recv() {
            group.push(w);
        }
        let result = match failure.get() {
            Some(why) => Err(why),
            None => flush(db, failure),
        };
        for w in group {
            let _ = w.send(result.clone());
        }
    }
}

/// One flush; a failure is recorded (the first one wins: sled's own error stays too).
fn flush(db: &sled::Db, failure: &Failure) -> Result<Duration, String> {
    let start = Instant::now();
    db.flush()
        .map(|_| start.elapsed())
        .map_err(|e| failure.set(&format!("flush failed: {e}")))
}
