//! Threads at a lower scheduling priority for bulk work that can wait: the catch-up applies of
//! datasets below `high` priority. The kernel then gives the cores to live work first (pushes,
//! local writes, queries) whenever both want them, preempting the bulk work mid-chunk, which
//! no cooperative yield can do. On Linux each thread lowers its own nice value by
//! [`NICE`] when it starts (a thread may always lower its priority; raising it back would need
//! a privilege, hence threads of their own rather than the runtime's blocking pool). Elsewhere
//! the threads run at normal priority and only the lanes order the work.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// How much lower than the node's other threads the bulk threads run (Linux nice units; 10
/// gives a thread about a tenth of the share of a thread at the default when both are ready).
pub const NICE: i32 = 10;

/// Most jobs waiting for a bulk thread; more wait (as parked tasks, holding no thread) for a
/// place.
const QUEUE: usize = 64;

/// Most bulk threads.
const MAX_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// A pool of bulk threads. Dropping the last handle ends them once their jobs are done.
pub(crate) struct Background {
    tx: mpsc::Sender<Job>,
}

impl Background {
    /// Starts one bulk thread per core (at most [`MAX_THREADS`]).
    pub(crate) fn spawn() -> Self {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..cores.clamp(1, MAX_THREADS) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fogmesh-bulk-{i}"))
                .spawn(move || serve(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a bulk thread");
            }
        }
        Self { tx }
    }

    /// Runs `f` on a bulk thread, inside the caller's runtime, and returns its result. A job
    /// whose caller has gone by the time a thread takes it is skipped. Fails if no bulk thread
    /// runs (none could be started) or `f` panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        // The job may wait on the runtime (`Handle::block_on`), as a blocking thread may.
        let runtime = tokio::runtime::Handle::current();
        let job: Job = Box::new(move || {
            if done.is_closed() {
                return;
            }
            let _in_runtime = runtime.enter();
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(out);
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| Error::Internal("no bulk thread runs".into()))?;
        match result.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) => Err(Error::Internal("a bulk job panicked".into())),
            Err(_) => Err(Error::Internal("a bulk job was dropped".into())),
        }
    }
}

/// A bulk thread: lowers its priority, then runs jobs until the pool is dropped.
fn serve(rx: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        let job = match rx.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => return,
        };
        match job {
            Some(job) => job(),
            None => return,
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    use rustix::process::{getpriority_process, setpriority_process};
    // On Linux a nice value belongs to a thread, named by its thread id.
    let me = Some(rustix::thread::gettid());
    let lowered = getpriority_process(me)
        .and_then(|now| setpriority_process(me, now.saturating_add(NICE).min(19)));
    if let Err(e) = lowered {
        tracing::warn!(error = %e, "a bulk thread could not lower its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// This thread's nice value (Linux), for tests.
#[cfg(all(test, target_os = "linux"))]
fn nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("nice value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_threads_of_lower_priority_and_returns_their_results() {
        let bg = Background::spawn();
        let name = bg
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("fogmesh-bulk-")));
        #[cfg(target_os = "linux")]
        {
            let mine = nice();
            let theirs = bg.run(nice).await.unwrap();
            assert_eq!(
                theirs,
                (mine + NICE).min(19),
                "the bulk thread's nice value"
            );
        }
    }

    #[tokio::test]
    async fn a_job_that_panics_fails_its_caller_and_the_pool_goes_on() {
        let bg = Background::spawn();
        let failed = bg.run(|| panic!("boom")).await;
        assert!(matches!(failed, Err(Error::Internal(m)) if m.contains("panicked")));
        assert_eq!(bg.run(|| 7).await.unwrap(), 7);
    }
}
