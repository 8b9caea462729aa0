//! One shard's single writer: restores the shard, replays the log after the snapshot, then
//! applies each new record as one batch, writes the read side's rows and the lock-free
//! balances, answers waiting writers and hands recharge commands on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use refill_ledger::effects::{Effects, Outcome, RechargeCommand};
use refill_ledger::{Input, Shard};
use refill_store::Write;

use super::{Applied, Engine, EngineError, LogBatch, SourceMarks, Wake, now, snapshot_row};
use crate::rows::{self, AttemptRow, EntryRow};

/// One shard's single writer.
pub(super) struct Worker {
    engine: Engine,
    shard_index: u32,
    shard: Shard,
    next_offset: u64,
    commands: tokio::sync::mpsc::UnboundedSender<RechargeCommand>,
    effects: Effects,
    last_snapshot: Instant,
    snapshot_offset: u64,
    last_activity: Instant,
    sources: Option<SourceMarks>,
}

impl Worker {
    pub(super) fn open(
        engine: Engine,
        shard_index: u32,
        commands: tokio::sync::mpsc::UnboundedSender<RechargeCommand>,
    ) -> Result<Worker, EngineError> {
        let inner = &engine.inner;
        let (shard, next_offset, sources) = match inner
            .store
            .get(rows::SNAPSHOTS, &shard_index.to_be_bytes())?
        {
            Some(bytes) => {
                let row = snapshot_row::decode(&bytes).ok_or_else(|| {
                    EngineError::Corrupt(format!(
                        "expected a snapshot row of shard {shard_index} (a header of {} bytes \
                         with a marks flag of 0 or 1), found {} bytes",
                        snapshot_row::HEADER_BYTES,
                        bytes.len()
                    ))
                })?;
                let shard = Shard::restore(row.shard).map_err(|error| {
                    EngineError::Corrupt(format!("snapshot of shard {shard_index}: {error}"))
                })?;
                (shard, row.next_offset, row.sources)
            }
            None => (Shard::new(inner.config.shard, now()), 0, None),
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
            sources,
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

    /// Where the shard's Kafka sources continue after what it applied.
    pub(super) fn sources(&self) -> SourceMarks {
        self.sources.unwrap_or_default()
    }

    /// The next log offset to apply.
    pub(super) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub(super) fn run(&mut self, wake: &Receiver<Wake>) {
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
                    job(&self.shard, self.sources());
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
            if let Some(sources) = batch.sources {
                debug_assert!(
                    self.sources
                        .is_none_or(|before| before.usage_next <= sources.usage_next
                            && before.commands_next <= sources.commands_next),
                    "source marks only move forward"
                );
                self.sources = Some(sources);
            }
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
        let value = snapshot_row::encode(self.next_offset, self.sources, &self.shard.snapshot());
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
