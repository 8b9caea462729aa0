//! A shard's flush writer: one thread that writes the rows of one flush at a time to the
//! account store, with a few quick retries, so the shard's worker goes on applying while
//! its flush is written (before, a shard applied nothing for the 0.5–1.5 s a 100 k-account
//! flush took).
//!
//! At most one flush of a shard is in flight: the worker closes the next one only once this
//! one has answered. Under load a flush therefore covers more time, and as an account's
//! usage in one flush is rolled up into one entry, its rows per event fall instead of
//! piling up. Slots stay right because flushes land in order: the worker takes a flush's
//! slots as written only when its answer says so, and builds the next after that.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use refill_store::{AccountStore, Flush, StoreError};

/// What the writer answers for one flush.
pub(super) struct Written {
    /// The flush, handed back (its rows are the worker's bookkeeping once it landed, or
    /// the failed flush it keeps for later).
    pub flush: Flush,
    /// When the writer took it.
    pub started: Instant,
    /// `Ok` once durable; else the last error after the quick retries.
    pub result: Result<(), StoreError>,
}

/// The quick retries of one flush before the writer answers with the error.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retries {
    /// Tries in all (at least 1).
    pub attempts_max: u32,
    /// Wait before the first retry (doubled each time, at most 1 s).
    pub backoff: Duration,
}

/// The handle of a shard's writer thread. Dropping it lets the thread finish the flush it
/// holds and joins it.
pub(super) struct FlushWriter {
    /// Bound 1: the worker sends only when nothing is in flight, so a send never waits.
    jobs: Option<Sender<Flush>>,
    answers: Receiver<Written>,
    thread: Option<JoinHandle<()>>,
}

impl FlushWriter {
    /// Starts the writer of shard `shard_index`.
    pub(super) fn start(
        shard_index: u32,
        accounts: Arc<dyn AccountStore>,
        retries: Retries,
    ) -> std::io::Result<Self> {
        let (jobs, receive_jobs) = bounded::<Flush>(1);
        // Bound 1: one flush in flight, so at most one answer waits.
        let (send_answers, answers) = bounded::<Written>(1);
        let thread = std::thread::Builder::new()
            .name(format!("flush-{shard_index}"))
            .spawn(move || {
                for flush in receive_jobs {
                    let started = Instant::now();
                    let result = write_with_retries(shard_index, &*accounts, &flush, retries);
                    if send_answers
                        .send(Written {
                            flush,
                            started,
                            result,
                        })
                        .is_err()
                    {
                        // The worker is gone; what it did not take back is in the log.
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            answers,
            thread: Some(thread),
        })
    }

    /// Hands `flush` to the writer. The caller has nothing else in flight.
    pub(super) fn send(&self, flush: Flush) {
        let jobs = self.jobs.as_ref().expect("jobs is only taken by drop");
        // The thread ends only when `jobs` closes (drop) or the answers' receiver is gone
        // (also drop), so it is running here.
        let sent = jobs.send(flush);
        debug_assert!(sent.is_ok(), "the flush writer runs while its handle lives");
    }

    /// The writer's answers, one per flush sent.
    pub(super) fn answers(&self) -> &Receiver<Written> {
        &self.answers
    }
}

impl Drop for FlushWriter {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `flush`, retrying what may be transient (the store unavailable) a few times.
fn write_with_retries(
    shard_index: u32,
    accounts: &dyn AccountStore,
    flush: &Flush,
    retries: Retries,
) -> Result<(), StoreError> {
    let mut backoff = retries.backoff;
    let mut attempt = 1;
    loop {
        match accounts.flush(flush) {
            Ok(()) => return Ok(()),
            Err(error @ StoreError::Backend(_)) if attempt < retries.attempts_max => {
                eprintln!(
                    "shard {shard_index}: flush failed (attempt {attempt} of {}), retrying: {error}",
                    retries.attempts_max
                );
                metrics::counter!("refill_store_flush_retries_total").increment(1);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
