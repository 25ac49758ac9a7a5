//! Turns for storing a dataset's own envelopes. Each local write takes a ticket while it holds
//! the dataset's lock (so tickets follow sequence numbers), seals and signs its envelope with
//! the lock released, then stores it when its turn comes: concurrent writers overlap their
//! cryptography with the next writer's Automerge work, and the store still receives this
//! node's envelopes in sequence order.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::{Result, Unavailable};

/// Whose turn it is to store.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    turns: Mutex<Turns>,
    next: Condvar,
}

#[derive(Debug, Default)]
struct Turns {
    issued: u64,
    done: u64,
    /// A store failed: later turns fail too (their predecessor's envelope is missing).
    broken: bool,
}

impl Sequencer {
    fn lock(&self) -> MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for the next turn. Take it under the dataset's lock, right after the change is
    /// made, and always pass it to [`Self::in_turn`]: a ticket never used stalls later ones.
    pub(crate) fn ticket(&self) -> u64 {
        let mut t = self.lock();
        t.issued += 1;
        t.issued - 1
    }

    /// Waits for `ticket`'s turn, runs `f`, then lets the next ticket go (also if `f` panics).
    /// A failing `f` fails every later turn too, without running it. Blocking.
    pub(crate) fn in_turn<T>(&self, ticket: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut t = self.lock();
        while t.done != ticket && !t.broken {
            t = self.next.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        let broken = t.broken;
        drop(t);
        let mut turn = Turn {
            seq: self,
            ticket,
            ok: false,
        };
        if broken {
            return Err(Unavailable::EarlierWriteFailed.into());
        }
        let result = f();
        turn.ok = result.is_ok();
        result
    }

    /// How many tickets were taken: read under the dataset's lock, it counts the local changes
    /// the document holds.
    pub(crate) fn issued(&self) -> u64 {
        self.lock().issued
    }

    /// Waits until the turns of every ticket below `upto` are over; false if one failed (the
    /// store then lacks a change the document holds). Blocking.
    pub(crate) fn wait_stored(&self, upto: u64) -> bool {
        let mut t = self.lock();
        while t.done < upto && !t.broken {
            t = self.next.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        !t.broken
    }
}

/// Ends a turn when dropped: the next ticket may go; a turn that did not end well breaks the
/// sequence.
struct Turn<'a> {
    seq: &'a Sequencer,
    ticket: u64,
    ok: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut t = self.seq.lock();
        t.done = t.done.max(self.ticket + 1);
        t.broken |= !self.ok;
        drop(t);
        self.seq.next.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::sync::Arc;

    #[test]
    fn turns_run_in_ticket_order_whatever_order_the_threads_arrive_in() {
        let seq = Arc::new(Sequencer::default());
        let tickets: Vec<u64> = (0..8).map(|_| seq.ticket()).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = tickets
            .into_iter()
            .rev()
            .map(|t| {
                let (seq, order) = (seq.clone(), order.clone());
                std::thread::spawn(move || {
                    seq.in_turn(t, || {
                        order.lock().expect("lock").push(t);
                        Ok(())
                    })
                })
            })
            .collect();
        for th in threads {
            th.join().expect("join").expect("turn");
        }
        assert_eq!(*order.lock().expect("lock"), (0..8).collect::<Vec<_>>());
        assert!(seq.wait_stored(seq.issued()));
    }

    #[test]
    fn a_failed_turn_fails_the_later_ones_without_running_them() {
        let seq = Sequencer::default();
        let (a, b) = (seq.ticket(), seq.ticket());
        let failed: Result<()> = seq.in_turn(a, || Err(Error::Internal("disk".into())));
        assert!(failed.is_err());
        let ran = std::cell::Cell::new(false);
        let later = seq.in_turn(b, || {
            ran.set(true);
            Ok(())
        });
        assert!(matches!(later, Err(Error::Unavailable(_))));
        assert!(!ran.get());
        assert!(!seq.wait_stored(seq.issued()));
    }

    #[test]
    fn a_turn_that_panics_lets_the_next_one_go_and_breaks_the_sequence() {
        let seq = Arc::new(Sequencer::default());
        let (a, b) = (seq.ticket(), seq.ticket());
        let s2 = seq.clone();
        let panicked =
            std::thread::spawn(move || s2.in_turn(a, || -> Result<()> { panic!("boom") }));
        assert!(panicked.join().is_err());
        assert!(matches!(
            seq.in_turn(b, || Ok(())),
            Err(Error::Unavailable(_))
        ));
        assert!(
            !seq.wait_stored(seq.issued()),
            "the sequence is broken, not hung"
        );
    }
}
