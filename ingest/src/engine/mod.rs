//! The engine: one worker thread per shard, each the single writer of its accounts. A
//! worker restores its shard from the last snapshot, replays the log after it, then applies
//! each new log record as one batch, writes the effects' rows, answers waiting writers, and
//! hands recharge commands to the recharger. Everything durable goes through the log first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use refill_ledger::effects::{Effects, Outcome, RechargeCommand};
use refill_ledger::{Credits, Input, Shard, ShardConfig, TimestampMs};
use refill_store::{Log, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::rows::{self, AttemptRow, EntryRow};

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
    /// A stored record or snapshot does not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// Settings of the engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Shards (= log partitions).
    pub shards: u32,
    /// The shards' settings.
    pub shard: ShardConfig,
    /// A snapshot is taken at most this often.
    pub snapshot_interval_ms: u64,
    /// Without traffic, a tick is logged this often so expiries and period ends happen.
    pub tick_interval_ms: u64,
    /// Log records read per worker pass.
    pub read_batch_max: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 2,
            shard: ShardConfig::default(),
            snapshot_interval_ms: 30_000,
            tick_interval_ms: 5_000,
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
}

/// The result of one applied log record, for the writer waiting on it.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Outcomes of inputs other than plainly applied usage, by input index.
    pub outcomes: Vec<(u32, Outcome)>,
}

type ReadJob = Box<dyn FnOnce(&Shard) + Send>;

enum Wake {
    Appended,
    Read(ReadJob),
    Stop,
}

struct ShardLane {
    wake: Sender<Wake>,
    waiters: Mutex<BTreeMap<u64, oneshot::Sender<Applied>>>,
    applied_through: AtomicU64,
}

/// Balances readable without locks by API threads; updated by the owning worker.
pub type BalanceTable = DashMap<(String, String), Arc<std::sync::atomic::AtomicI64>>;

/// A handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn Log>,
    store: Arc<dyn Store>,
    config: EngineConfig,
    lanes: Vec<ShardLane>,
    balances: BalanceTable,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
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
        config: EngineConfig,
        commands: tokio::sync::mpsc::UnboundedSender<RechargeCommand>,
    ) -> Result<Engine, EngineError> {
        assert_eq!(
            log.partitions(),
            config.shards,
            "one log partition per shard"
        );
        let mut receivers = Vec::new();
        let lanes = (0..config.shards)
            .map(|_| {
                let (wake, receiver) = crossbeam_channel::unbounded();
                receivers.push(receiver);
                ShardLane {
                    wake,
                    waiters: Mutex::new(BTreeMap::new()),
                    applied_through: AtomicU64::new(0),
                }
            })
            .collect();
        let engine = Engine {
            inner: Arc::new(Inner {
                log,
                store,
                config,
                lanes,
                balances: DashMap::new(),
                workers: Mutex::new(Vec::new()),
            }),
        };
        for (shard, receiver) in (0_u32..).zip(receivers) {
            let mut worker = Worker::open(engine.clone(), shard, commands.clone())?;
            let handle = std::thread::Builder::new()
                .name(format!("shard-{shard}"))
                .spawn(move || worker.run(&receiver))
                .map_err(|error| {
                    EngineError::Corrupt(format!("cannot start a worker thread: {error}"))
                })?;
            engine
                .inner
                .workers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push(handle);
        }
        Ok(engine)
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.inner.config.shards
    }

    /// The shard that owns a customer.
    pub fn shard_of(&self, customer: &str) -> u32 {
        let hash = xxhash_rust::xxh3::xxh3_64(customer.as_bytes());
        u32::try_from(hash % u64::from(self.inner.config.shards)).expect("below the shard count")
    }

    /// Appends a batch to a shard's log (durable when this returns) and returns its offset.
    pub fn append(&self, shard: u32, inputs: Vec<Input>) -> Result<u64, EngineError> {
        let record = postcard::to_stdvec(&LogBatch { at: now(), inputs })
            .expect("serializing to memory cannot fail");
        let lane = &self.inner.lanes[shard as usize];
        let offset = self.inner.log.append(shard, &[&record])?;
        metrics::counter!("refill_ingest_log_appends_total").increment(1);
        lane.wake
            .send(Wake::Appended)
            .map_err(|_| EngineError::Stopped { shard })?;
        Ok(offset)
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
        let (sender, receiver) = oneshot::channel();
        let wrapped: ReadJob = Box::new(move |state: &Shard| {
            let _ = sender.send(job(state));
        });
        self.inner.lanes[shard as usize]
            .wake
            .send(Wake::Read(wrapped))
            .map_err(|_| EngineError::Stopped { shard })?;
        receiver.await.map_err(|_| EngineError::Stopped { shard })
    }

    /// The balance of (customer, credit type) from the lock-free table.
    pub fn balance(&self, customer: &str, credit_type: &str) -> Option<Credits> {
        self.inner
            .balances
            .get(&(customer.to_owned(), credit_type.to_owned()))
            .map(|cell| Credits::from_micros(cell.load(Ordering::Acquire)))
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
        for lane in &self.inner.lanes {
            let _ = lane.wake.send(Wake::Stop);
        }
        let workers = std::mem::take(
            &mut *self
                .inner
                .workers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for worker in workers {
            let _ = worker.join();
        }
    }
}

/// One shard's single writer.
struct Worker {
    engine: Engine,
    shard_index: u32,
    shard: Shard,
    next_offset: u64,
    commands: tokio::sync::mpsc::UnboundedSender<RechargeCommand>,
    effects: Effects,
    last_snapshot: Instant,
    snapshot_offset: u64,
    last_activity: Instant,
}

impl Worker {
    fn open(
        engine: Engine,
        shard_index: u32,
        commands: tokio::sync::mpsc::UnboundedSender<RechargeCommand>,
    ) -> Result<Worker, EngineError> {
        let inner = &engine.inner;
        let (shard, next_offset) = match inner
            .store
            .get(rows::SNAPSHOTS, &shard_index.to_be_bytes())?
        {
            Some(bytes) if bytes.len() >= 8 => {
                let (offset, body) = bytes.split_at(8);
                let offset = u64::from_be_bytes(offset.try_into().expect("eight bytes"));
                let shard = Shard::restore(body).map_err(|error| {
                    EngineError::Corrupt(format!("snapshot of shard {shard_index}: {error}"))
                })?;
                (shard, offset)
            }
            Some(_) => {
                return Err(EngineError::Corrupt(format!(
                    "snapshot of shard {shard_index} is truncated"
                )));
            }
            None => (Shard::new(inner.config.shard, now()), 0),
        };
        let mut worker = Worker {
            shard_index,
            shard,
            next_offset,
            commands,
            effects: Effects::default(),
            last_snapshot: Instant::now(),
            snapshot_offset: next_offset,
            last_activity: Instant::now(),
            engine,
        };
        let started = Instant::now();
        let mut replayed = 0_u64;
        while worker.apply_available()? > 0 {
            replayed += 1;
        }
        // Commands in flight at the crash are published again; the recharger applies each id once.
        for command in worker.shard.in_flight_commands() {
            let _ = worker.commands.send(command);
        }
        metrics::histogram!("refill_ingest_restore_seconds")
            .record(started.elapsed().as_secs_f64());
        let _ = replayed;
        Ok(worker)
    }

    fn run(&mut self, wake: &Receiver<Wake>) {
        let tick = Duration::from_millis(self.engine.inner.config.tick_interval_ms);
        loop {
            match wake.recv_timeout(tick.min(Duration::from_millis(500))) {
                Ok(Wake::Stop) => {
                    let _ = self.apply_all();
                    let _ = self.snapshot();
                    return;
                }
                Ok(Wake::Read(job)) => {
                    // Apply what is durable first, so a client reads its own writes.
                    if let Err(error) = self.apply_all() {
                        eprintln!("shard {}: apply failed: {error}", self.shard_index);
                    }
                    job(&self.shard);
                }
                Ok(Wake::Appended) => {
                    if let Err(error) = self.apply_all() {
                        eprintln!("shard {}: apply failed: {error}", self.shard_index);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Err(error) = self.apply_all() {
                        eprintln!("shard {}: apply failed: {error}", self.shard_index);
                    }
                    if self.last_activity.elapsed() >= tick {
                        // Time passes even without traffic: log a tick so expiries and
                        // period ends apply (and replay identically).
                        self.last_activity = Instant::now();
                        let _ = self.engine.append(self.shard_index, vec![Input::Tick]);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            if self.last_snapshot.elapsed()
                >= Duration::from_millis(self.engine.inner.config.snapshot_interval_ms)
                && self.next_offset > self.snapshot_offset
                && let Err(error) = self.snapshot()
            {
                eprintln!("shard {}: snapshot failed: {error}", self.shard_index);
            }
        }
    }

    fn apply_all(&mut self) -> Result<(), EngineError> {
        while self.apply_available()? > 0 {}
        Ok(())
    }

    /// Applies the records available now; returns how many.
    fn apply_available(&mut self) -> Result<usize, EngineError> {
        let inner = Arc::clone(&self.engine.inner);
        let records = inner.log.read(
            self.shard_index,
            self.next_offset,
            inner.config.read_batch_max,
        )?;
        if records.is_empty() {
            return Ok(0);
        }
        let mut writes = Vec::new();
        let mut finished = Vec::with_capacity(records.len());
        for record in &records {
            let batch: LogBatch = postcard::from_bytes(&record.bytes).map_err(|error| {
                EngineError::Corrupt(format!(
                    "log record {}:{}: {error}",
                    self.shard_index, record.offset
                ))
            })?;
            let started = Instant::now();
            self.shard
                .apply_into(batch.at, &batch.inputs, &mut self.effects);
            metrics::histogram!("refill_ingest_apply_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("refill_ingest_events_applied_total")
                .increment(self.effects.events_applied);
            metrics::counter!("refill_ingest_dedup_hits_total")
                .increment(self.effects.events_duplicate);
            metrics::counter!("refill_ingest_inputs_rejected_total")
                .increment(self.effects.inputs_rejected);
            for (_, outcome) in &self.effects.outcomes {
                if let Outcome::Rejected(rejection) = outcome {
                    metrics::counter!("refill_ingest_inputs_rejected_by_reason_total", "reason" => rejection.code()).increment(1);
                }
            }
            for notification in &self.effects.notifications {
                metrics::counter!("refill_ingest_notifications_total", "kind" => notification_kind(&notification.kind)).increment(1);
            }
            self.collect_rows(record.offset, &mut writes);
            for command in &self.effects.commands {
                let _ = self.commands.send(command.clone());
            }
            finished.push((
                record.offset,
                Applied {
                    outcomes: std::mem::take(&mut self.effects.outcomes),
                },
            ));
            self.next_offset = record.offset + 1;
        }
        if !writes.is_empty() {
            let started = Instant::now();
            inner.store.write(writes)?;
            metrics::histogram!("refill_ingest_flush_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        let lane = &inner.lanes[self.shard_index as usize];
        lane.applied_through
            .store(self.next_offset, Ordering::Release);
        let mut waiters = lane
            .waiters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for (offset, applied) in finished {
            if let Some(waiter) = waiters.remove(&offset) {
                let _ = waiter.send(applied);
            }
        }
        self.last_activity = Instant::now();
        Ok(records.len())
    }

    /// Rows for the read side, and the lock-free balances of the changed accounts.
    fn collect_rows(&mut self, offset: u64, writes: &mut Vec<Write>) {
        let shard = &self.shard;
        for entry in &self.effects.entries {
            let customer = shard.customer_of(entry.account).id.as_str();
            let credit_type = shard.credit_type_of(entry.account).as_str();
            let row = EntryRow::from_entry(entry, self.shard_index, offset);
            writes.push(Write::Put {
                table: rows::LEDGER,
                key: rows::row_key(customer, credit_type, entry.seq),
                value: postcard::to_stdvec(&row).expect("serializing to memory cannot fail"),
            });
        }
        for attempt in &self.effects.attempts {
            let row = AttemptRow::from_attempt(attempt);
            writes.push(Write::Put {
                table: rows::ATTEMPTS,
                key: rows::row_key(
                    attempt.id.customer.as_str(),
                    attempt.id.credit_type.as_str(),
                    attempt.id.seq,
                ),
                value: postcard::to_stdvec(&row).expect("serializing to memory cannot fail"),
            });
        }
        let balances = &self.engine.inner.balances;
        for &handle in &self.effects.changed {
            let key = (
                shard.customer_of(handle).id.to_string(),
                shard.credit_type_of(handle).to_string(),
            );
            let micros = shard.account(handle).balance().micros();
            match balances.get(&key) {
                // Release pairs with the readers' Acquire: a reader sees a balance no older
                // than the batch that wrote it.
                Some(cell) => cell.store(micros, Ordering::Release),
                None => {
                    balances.insert(key, Arc::new(std::sync::atomic::AtomicI64::new(micros)));
                }
            }
        }
    }

    fn snapshot(&mut self) -> Result<(), EngineError> {
        let mut value = self.next_offset.to_be_bytes().to_vec();
        value.extend(self.shard.snapshot());
        self.engine.inner.store.write(vec![Write::Put {
            table: rows::SNAPSHOTS,
            key: self.shard_index.to_be_bytes().to_vec(),
            value,
        }])?;
        self.snapshot_offset = self.next_offset;
        self.last_snapshot = Instant::now();
        // Between snapshots is often enough for a gauge that alerts page on.
        let paused = self
            .shard
            .accounts()
            .filter(|(_, account)| {
                account
                    .auto_recharge()
                    .is_some_and(|auto| auto.paused.is_some())
            })
            .count();
        metrics::gauge!("refill_ingest_paused_accounts", "shard" => self.shard_index.to_string())
            .set(paused as f64);
        metrics::gauge!("refill_ingest_accounts", "shard" => self.shard_index.to_string())
            .set(self.shard.account_count() as f64);
        metrics::counter!("refill_ingest_snapshots_total").increment(1);
        Ok(())
    }
}

fn notification_kind(kind: &refill_ledger::effects::NotificationKind) -> &'static str {
    use refill_ledger::effects::NotificationKind;
    match kind {
        NotificationKind::RechargeSucceeded { .. } => "recharge_succeeded",
        NotificationKind::RechargeFailed { .. } => "recharge_failed",
        NotificationKind::AutoRechargePaused { .. } => "auto_recharge_paused",
        NotificationKind::AutoRechargeResumed => "auto_recharge_resumed",
        NotificationKind::SpendLimitWarning { .. } => "spend_limit_warning",
    }
}
