//! The engine: one worker thread per owned shard, each the single writer of its accounts.
//! A worker restores its shard from the last snapshot, replays the log after it, then
//! applies each new log record as one batch, writes the effects' rows, answers waiting
//! writers, and hands recharge commands to the recharger. Everything durable goes through
//! the log first.
//!
//! Ownership: on one machine the engine owns every shard from the start
//! ([`Engine::start`]). Scaled out over Kafka, it owns the shards whose `refill.usage`
//! partitions the consumer group gave it ([`Engine::create`], then [`Engine::acquire`] and
//! [`Engine::release`] as partitions come and go); writes to a shard it does not own are
//! refused with [`EngineError::NotOwner`].

mod balances;
mod flusher;
mod partition;
mod worker;

pub use balances::Balances;

pub use partition::kafka_partition_of;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use refill_ledger::effects::{LedgerEntry, RechargeAttempt};
use refill_ledger::effects::{Outcome, RechargeCommand};
use refill_ledger::{Credits, Input, Shard, ShardConfig, TimestampMs};
use refill_store::{AccountStore, Log, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use worker::Worker;

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The log or the store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The write is durable but was not applied in time; it will still apply once.
    #[error("applied later than {timeout_ms} ms; the write is durable and applies once")]
    Timeout {
        /// The wait.
        timeout_ms: u64,
    },
    /// The shard's worker stopped.
    #[error("shard {shard} is not running")]
    Stopped {
        /// The shard.
        shard: u32,
    },
    /// Another worker of the consumer group owns the shard (scale-out over Kafka).
    #[error("expected a shard this worker owns, found shard {shard} owned by another worker")]
    NotOwner {
        /// The shard.
        shard: u32,
    },
    /// A stored record or snapshot does not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The shard's queue of reads is full: the shard is behind; send the request again.
    #[error(
        "expected room in shard {shard}'s queue of {WAKE_QUEUE_MAX} requests, found it full \
         (the shard is behind); retry shortly"
    )]
    Busy {
        /// The shard.
        shard: u32,
    },
}

/// Recharge commands waiting for the recharger (or the Kafka sink) across all shards. A
/// shard whose new commands do not fit keeps them and applies nothing more until they do,
/// so a recharger that falls behind slows the intake instead of growing a queue.
pub const RECHARGE_COMMANDS_MAX: usize = 65_536;

/// Where the shards send their recharge commands (bounded by [`RECHARGE_COMMANDS_MAX`]).
pub type CommandSender = tokio::sync::mpsc::Sender<RechargeCommand>;

/// The channel of recharge commands, with its bound.
pub fn command_channel() -> (CommandSender, tokio::sync::mpsc::Receiver<RechargeCommand>) {
    tokio::sync::mpsc::channel(RECHARGE_COMMANDS_MAX)
}

/// Messages (reads, wake-ups) waiting for one shard's worker. A full queue refuses reads
/// with [`EngineError::Busy`] (HTTP 503 with `Retry-After`) and drops wake-ups (the worker
/// already has one pending, and applies everything durable when it wakes).
pub const WAKE_QUEUE_MAX: usize = 1_024;

/// Settings of the engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Shards (= log partitions).
    pub shards: u32,
    /// The shards' settings.
    pub shard: ShardConfig,
    /// A shard that changed writes what changed to the account store this often.
    pub flush_interval_ms: u64,
    /// Tries of one flush before the shard stops (crash-only).
    pub flush_attempts_max: u32,
    /// Wait before the first retry of a flush (doubled each time).
    pub flush_retry_backoff_ms: u64,
    /// How long the store may stay unavailable (the shard keeps applying and retries its
    /// flush) before the shard stops.
    pub flush_outage_max_ms: u64,
    /// Rows (entries and attempts) a shard keeps waiting for an unavailable store before
    /// it stops applying (the log keeps accepting events meanwhile).
    pub unflushed_rows_max: usize,
    /// A due timer (expiry, period end) is logged as a tick at most this often.
    pub tick_interval_ms: u64,
    /// Log records read per worker pass.
    pub read_batch_max: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 2,
            shard: ShardConfig::default(),
            flush_interval_ms: 1_000,
            flush_attempts_max: 3,
            flush_retry_backoff_ms: 100,
            flush_outage_max_ms: 600_000,
            unflushed_rows_max: 4_000_000,
            tick_interval_ms: 1_000,
            read_batch_max: 256,
        }
    }
}

/// One log record: a batch of inputs stamped with the time it was accepted. The shard
/// applies it as one batch at that time, so a replay is exact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogBatch {
    /// Accepted at (ms since the epoch).
    pub at: TimestampMs,
    /// The inputs.
    pub inputs: Vec<Input>,
    /// For a batch read from Kafka, where its sources continue after it; `None` for
    /// writes of the HTTP API and ticks.
    pub sources: Option<SourceMarks>,
}

/// How far a shard's journal has taken its Kafka sources: the next offset to read in the
/// shard's partition of `refill.usage` and of `refill.account-commands`. Kept in the
/// journal batch that consumed them and in snapshots, so a worker taking the shard over
/// resumes exactly after the last applied record: each record is applied once, whatever
/// the consumer group committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMarks {
    /// Next offset of the shard's `refill.usage` partition.
    pub usage_next: u64,
    /// Next offset of the shard's `refill.account-commands` partition.
    pub commands_next: u64,
}

/// The result of one applied log record, for the writer waiting on it.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Outcomes of inputs other than plainly applied usage, by input index.
    pub outcomes: Vec<(u32, Outcome)>,
}

/// What a read job sees on the worker, between batches: the shard, where its sources
/// stand, and what it applied but has not flushed yet.
pub struct ShardView<'a> {
    /// The shard.
    pub shard: &'a Shard,
    /// Where its Kafka sources continue.
    pub marks: SourceMarks,
    /// Ledger entries since the last flush (not in the store yet).
    pub unflushed_entries: &'a [LedgerEntry],
    /// Recharge attempts since the last flush (not in the store yet).
    pub unflushed_attempts: &'a [RechargeAttempt],
    /// Shard batch → log offset, for the references of unflushed usage.
    pub offsets: crate::rows::BatchOffsets,
}

type ReadJob = Box<dyn FnOnce(&ShardView<'_>) + Send>;

enum Wake {
    Appended,
    Read(ReadJob),
    Stop,
}

impl ShardLane {
    /// Queues a read for the worker, or refuses it when the queue is full.
    fn queue_read(&self, shard: u32, job: ReadJob) -> Result<(), EngineError> {
        self.wake
            .try_send(Wake::Read(job))
            .map_err(|error| match error {
                crossbeam_channel::TrySendError::Full(_) => {
                    metrics::counter!("refill_ingest_reads_refused_total").increment(1);
                    EngineError::Busy { shard }
                }
                crossbeam_channel::TrySendError::Disconnected(_) => EngineError::Stopped { shard },
            })
    }
}

struct ShardLane {
    wake: Sender<Wake>,
    wake_receiver: Receiver<Wake>,
    waiters: Mutex<BTreeMap<u64, oneshot::Sender<Applied>>>,
    applied_through: AtomicU64,
    owned: AtomicBool,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why the worker stopped, if it failed (readiness reports it).
    failure: Mutex<Option<String>>,
}

/// A handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn Log>,
    store: Arc<dyn Store>,
    accounts: Arc<dyn AccountStore>,
    config: EngineConfig,
    lanes: Vec<ShardLane>,
    balances: Balances,
    commands: CommandSender,
}

/// The current wall-clock time, the only clock reading of the engine.
pub fn now() -> TimestampMs {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    TimestampMs(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl Engine {
    /// Starts one worker per shard; each restores and replays before serving. Recharge
    /// commands (new ones, and those in flight at start) go to `commands`.
    pub fn start(
        log: Arc<dyn Log>,
        store: Arc<dyn Store>,
        accounts: Arc<dyn AccountStore>,
        config: EngineConfig,
        commands: CommandSender,
    ) -> Result<Engine, EngineError> {
        let engine = Engine::create(log, store, accounts, config, commands);
        for shard in 0..config.shards {
            engine.acquire(shard)?;
        }
        Ok(engine)
    }

    /// An engine that owns no shard yet: [`Engine::acquire`] starts each shard it is given.
    pub fn create(
        log: Arc<dyn Log>,
        store: Arc<dyn Store>,
        accounts: Arc<dyn AccountStore>,
        config: EngineConfig,
        commands: CommandSender,
    ) -> Engine {
        assert_eq!(
            log.partitions(),
            config.shards,
            "one log partition per shard"
        );
        let lanes = (0..config.shards)
            .map(|_| {
                let (wake, wake_receiver) = crossbeam_channel::bounded(WAKE_QUEUE_MAX);
                ShardLane {
                    wake,
                    wake_receiver,
                    waiters: Mutex::new(BTreeMap::new()),
                    applied_through: AtomicU64::new(0),
                    owned: AtomicBool::new(false),
                    worker: Mutex::new(None),
                    failure: Mutex::new(None),
                }
            })
            .collect();
        Engine {
            inner: Arc::new(Inner {
                log,
                store,
                accounts,
                config,
                lanes,
                balances: Balances::new(),
                commands,
            }),
        }
    }

    /// Takes a shard: restores it from its last snapshot, replays its log after it, and
    /// starts its worker. Returns where its Kafka sources continue (zeros when the journal
    /// holds no batch from Kafka). Taking a shard already owned changes nothing.
    pub fn acquire(&self, shard: u32) -> Result<SourceMarks, EngineError> {
        let lane = self.lane(shard)?;
        let mut slot = lane
            .worker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if slot.is_some() {
            return self.read_marks_blocking(shard);
        }
        let mut worker = Worker::open(self.clone(), shard, self.inner.commands.clone())?;
        let marks = worker.sources();
        lane.applied_through
            .store(worker.next_offset(), Ordering::Release);
        let receiver = lane.wake_receiver.clone();
        let handle = std::thread::Builder::new()
            .name(format!("shard-{shard}"))
            .spawn(move || worker.run(&receiver))
            .map_err(|error| {
                EngineError::Corrupt(format!("cannot start a worker thread: {error}"))
            })?;
        *slot = Some(handle);
        lane.owned.store(true, Ordering::Release);
        metrics::gauge!("refill_ingest_shards_owned").increment(1.0);
        Ok(marks)
    }

    /// Gives a shard up: its worker applies what is logged, writes a snapshot (so the next
    /// owner restores fast) and stops; its balances leave the table. Releasing a shard not
    /// owned changes nothing.
    pub fn release(&self, shard: u32) -> Result<(), EngineError> {
        let lane = self.lane(shard)?;
        let mut slot = lane
            .worker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(handle) = slot.take() else {
            return Ok(());
        };
        // Refuse new writes first: nothing may be appended after the final snapshot.
        lane.owned.store(false, Ordering::Release);
        let _ = lane.wake.send(Wake::Stop);
        let _ = handle.join();
        self.inner.balances.release_shard(shard);
        metrics::gauge!("refill_ingest_shards_owned").decrement(1.0);
        Ok(())
    }

    /// Whether this engine owns the shard now.
    pub fn owns(&self, shard: u32) -> bool {
        self.lane(shard)
            .is_ok_and(|lane| lane.owned.load(Ordering::Acquire))
    }

    /// The shards this engine owns now.
    pub fn owned_shards(&self) -> Vec<u32> {
        (0..self.shards())
            .filter(|&shard| self.owns(shard))
            .collect()
    }

    fn lane(&self, shard: u32) -> Result<&ShardLane, EngineError> {
        self.inner
            .lanes
            .get(shard as usize)
            .ok_or(EngineError::Stopped { shard })
    }

    /// Where an owned shard's Kafka sources stand after what it applied (blocking: asks the
    /// worker between batches, after it applied what is durable).
    pub fn source_marks(&self, shard: u32) -> Result<SourceMarks, EngineError> {
        if !self.owns(shard) {
            return Err(EngineError::NotOwner { shard });
        }
        self.read_marks_blocking(shard)
    }

    fn read_marks_blocking(&self, shard: u32) -> Result<SourceMarks, EngineError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let job: ReadJob = Box::new(move |view: &ShardView<'_>| {
            let _ = sender.send(view.marks);
        });
        self.lane(shard)?
            .wake
            .send(Wake::Read(job))
            .map_err(|_| EngineError::Stopped { shard })?;
        receiver.recv().map_err(|_| EngineError::Stopped { shard })
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.inner.config.shards
    }

    /// The shard that owns a customer: the partition Kafka's default partitioner gives the
    /// customer id as a key, so usage produced to `refill.usage` lands on its shard.
    pub fn shard_of(&self, customer: &str) -> u32 {
        kafka_partition_of(customer.as_bytes(), self.inner.config.shards)
    }

    /// Appends a batch to a shard's log (durable when this returns) and returns its offset.
    pub fn append(&self, shard: u32, inputs: Vec<Input>) -> Result<u64, EngineError> {
        self.append_batch(
            shard,
            &LogBatch {
                at: now(),
                inputs,
                sources: None,
            },
        )
    }

    /// Appends a batch read from Kafka with the marks it takes its sources to.
    pub fn append_from_sources(
        &self,
        shard: u32,
        inputs: Vec<Input>,
        sources: SourceMarks,
    ) -> Result<u64, EngineError> {
        self.append_batch(
            shard,
            &LogBatch {
                at: now(),
                inputs,
                sources: Some(sources),
            },
        )
    }

    fn append_batch(&self, shard: u32, batch: &LogBatch) -> Result<u64, EngineError> {
        let lane = self.lane(shard)?;
        if !lane.owned.load(Ordering::Acquire) {
            return Err(EngineError::NotOwner { shard });
        }
        let record = postcard::to_stdvec(batch).expect("serializing to memory cannot fail");
        let offset = self.inner.log.append(shard, &[&record])?;
        metrics::counter!("refill_ingest_log_appends_total").increment(1);
        match lane.wake.try_send(Wake::Appended) {
            // Full: a wake-up is already pending, and it applies this record too.
            Ok(()) | Err(crossbeam_channel::TrySendError::Full(_)) => Ok(offset),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                Err(EngineError::Stopped { shard })
            }
        }
    }

    /// Appends a batch and waits until the shard applied it.
    pub async fn append_and_wait(
        &self,
        shard: u32,
        inputs: Vec<Input>,
        timeout: Duration,
    ) -> Result<Applied, EngineError> {
        let (sender, receiver) = oneshot::channel();
        let engine = self.clone();
        // The waiter is registered under the offset before the worker can apply it: the
        // worker only reads records after `append` made them durable and visible.
        let lane_index = shard as usize;
        self.lane(shard)?;
        let offset = tokio::task::spawn_blocking(move || {
            let lane = &engine.inner.lanes[lane_index];
            let mut waiters = lane
                .waiters
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let offset = engine.append(shard, inputs)?;
            waiters.insert(offset, sender);
            Ok::<u64, EngineError>(offset)
        })
        .await
        .map_err(|_| EngineError::Stopped { shard })??;
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(EngineError::Stopped { shard }),
            Err(_) => {
                let lane = &self.inner.lanes[lane_index];
                lane.waiters
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .remove(&offset);
                Err(EngineError::Timeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// Runs `job` on the shard's worker between batches and returns its answer.
    pub async fn read<T: Send + 'static>(
        &self,
        shard: u32,
        job: impl FnOnce(&Shard) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        if !self.owns(shard) {
            return Err(EngineError::NotOwner { shard });
        }
        let (sender, receiver) = oneshot::channel();
        let wrapped: ReadJob = Box::new(move |view: &ShardView<'_>| {
            let _ = sender.send(job(view.shard));
        });
        self.lane(shard)?.queue_read(shard, wrapped)?;
        receiver.await.map_err(|_| EngineError::Stopped { shard })
    }

    /// Runs `job` on the shard's worker between batches with what it has not flushed yet.
    pub async fn read_view<T: Send + 'static>(
        &self,
        shard: u32,
        job: impl FnOnce(&ShardView<'_>) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        if !self.owns(shard) {
            return Err(EngineError::NotOwner { shard });
        }
        let (sender, receiver) = oneshot::channel();
        let wrapped: ReadJob = Box::new(move |view: &ShardView<'_>| {
            let _ = sender.send(job(view));
        });
        self.lane(shard)?.queue_read(shard, wrapped)?;
        receiver.await.map_err(|_| EngineError::Stopped { shard })
    }

    /// The account store (balances, ledger entries, attempts as flushed).
    pub fn accounts(&self) -> &Arc<dyn AccountStore> {
        &self.inner.accounts
    }

    /// Shards whose worker stopped on an error, with the reason.
    pub fn failures(&self) -> Vec<(u32, String)> {
        (0_u32..)
            .zip(&self.inner.lanes)
            .filter_map(|(shard, lane)| {
                lane.failure
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .clone()
                    .map(|reason| (shard, reason))
            })
            .collect()
    }

    /// The balance of (customer, credit type) from the lock-free table.
    pub fn balance(&self, customer: &str, credit_type: &str) -> Option<Credits> {
        self.inner.balances.get(customer, credit_type)
    }

    /// The store, for the read side.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Log offsets applied by each shard (for readiness and metrics).
    pub fn applied_offsets(&self) -> Vec<u64> {
        self.inner
            .lanes
            .iter()
            .map(|lane| lane.applied_through.load(Ordering::Acquire))
            .collect()
    }

    /// Stops the workers after they applied what is in the log and flushed a snapshot.
    pub fn stop(&self) {
        for shard in 0..self.shards() {
            let _ = self.release(shard);
        }
    }
}
