//! One shard's single writer: restores the shard from its flushed rows and checkpoint,
//! replays the log after it, then applies each new record as one batch, publishes the
//! lock-free balances, answers waiting writers, hands recharge commands on, and every
//! `flush_interval_ms` logs a flush whose rows (what changed since the last one) its flush
//! writer (`flusher.rs`) writes to the account store, checkpoint last, while the worker goes
//! on applying. Crash-only: a flush the store refuses for longer than the outage allowance
//! stops the shard with the reason, and no checkpoint moves past it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use refill_ledger::effects::{
    AccountHandle, Effects, FlushSet, LedgerEntry, Outcome, RechargeAttempt, RechargeCommand,
};
use refill_ledger::{Input, Shard};
use refill_store::Flush;

use super::flusher::{FlushWriter, Retries, Written};
use super::{
    Applied, CommandSender, Engine, EngineError, LogBatch, ShardView, SourceMarks, Wake, now,
};
use crate::rows::{self, BatchOffsets};

/// One shard's single writer.
pub(super) struct Worker {
    engine: Engine,
    shard_index: u32,
    shard: Shard,
    next_offset: u64,
    commands: CommandSender,
    /// Commands the bounded channel had no room for yet, oldest first: the shard applies
    /// nothing more until they are sent.
    unsent_commands: std::collections::VecDeque<RechargeCommand>,
    effects: Effects,
    sources: Option<SourceMarks>,
    offsets: BatchOffsets,
    /// Entries and attempts made since the last flush, written by the next one.
    unflushed_entries: Vec<LedgerEntry>,
    unflushed_attempts: Vec<RechargeAttempt>,
    /// Per account handle, the slot (0 or 1) holding its newest flushed state; a flush
    /// writes the other one (see `refill_store::accounts`).
    account_slots: Vec<u8>,
    /// Likewise per customer index.
    customer_slots: Vec<u8>,
    last_flush: Instant,
    /// A flush record is in the log and not applied yet: do not log another.
    flush_logged: bool,
    last_tick: Instant,
    /// When the paused-accounts gauge was last counted (a pass over every account).
    last_census: Option<Instant>,
    /// A flush the store refused (unavailable): retried until it lands; the shard keeps
    /// applying meanwhile (bounded), and the next flush carries its rows.
    failed: Option<FailedFlush>,
    /// When the shard first changed after its last landed flush (the flush lag).
    dirty_since: Option<Instant>,
    /// Writes the flushes, one at a time, on its own thread.
    writer: FlushWriter,
    /// The flush the writer holds, if any.
    in_flight: Option<InFlight>,
}

/// What woke the worker.
enum Received {
    /// A message of the engine (`None`: the lane is gone).
    Wake(Option<Wake>),
    /// The writer's answer for the flush in flight (`None`: the writer is gone).
    Written(Option<Box<Written>>),
    /// Nothing within the poll interval.
    Timeout,
}

/// A flush handed to the writer and not answered yet.
struct InFlight {
    /// When its rows first failed to land, for a failed flush written again.
    failing_since: Option<Instant>,
    /// The backoff it had reached, likewise.
    backoff: Option<Duration>,
}

/// A flush whose write failed, kept whole (its checkpoint included) to write again.
struct FailedFlush {
    flush: Flush,
    /// When its first write failed.
    since: Instant,
    /// When to try again.
    retry_at: Instant,
    backoff: Duration,
}

impl Worker {
    pub(super) fn open(
        engine: Engine,
        shard_index: u32,
        commands: CommandSender,
    ) -> Result<Worker, EngineError> {
        let started = Instant::now();
        let inner = &engine.inner;
        let rows = inner.accounts.load_shard(shard_index)?;
        let (shard, next_offset, sources) = match &rows.checkpoint {
            Some(checkpoint) => {
                let shard = rows::restore_shard(checkpoint, &rows).map_err(|error| {
                    EngineError::Corrupt(format!(
                        "rows of shard {shard_index} at checkpoint {}: {error}",
                        checkpoint.version
                    ))
                })?;
                let sources = checkpoint
                    .sources
                    .map(|(usage_next, commands_next)| SourceMarks {
                        usage_next,
                        commands_next,
                    });
                (shard, checkpoint.log_next, sources)
            }
            None => (Shard::new(inner.config.shard, now()), 0, None),
        };
        let offsets = BatchOffsets {
            partition: shard_index,
            offset_minus_batch: i128::from(next_offset) - 1 - i128::from(shard.batch()),
        };
        let mut worker = Worker {
            shard_index,
            next_offset,
            commands,
            unsent_commands: std::collections::VecDeque::new(),
            effects: Effects::default(),
            sources,
            offsets,
            unflushed_entries: Vec::new(),
            unflushed_attempts: Vec::new(),
            account_slots: rows.accounts.iter().map(|(slot, _)| *slot).collect(),
            customer_slots: rows.customers.iter().map(|(slot, _)| *slot).collect(),
            last_flush: Instant::now(),
            flush_logged: false,
            last_tick: Instant::now(),
            last_census: None,
            failed: None,
            dirty_since: None,
            writer: FlushWriter::start(
                shard_index,
                Arc::clone(&inner.accounts),
                Retries {
                    attempts_max: inner.config.flush_attempts_max.max(1),
                    backoff: Duration::from_millis(inner.config.flush_retry_backoff_ms),
                },
            )
            .map_err(|error| {
                EngineError::Corrupt(format!(
                    "expected to start the flush writer of shard {shard_index}, found: {error}"
                ))
            })?,
            in_flight: None,
            engine,
            shard,
        };
        // Every restored balance is readable without a lock from the start.
        let handles: Vec<AccountHandle> =
            worker.shard.accounts().map(|(handle, _)| handle).collect();
        worker.publish_balances(&handles);
        worker.apply_all()?;
        // Commands in flight at the crash are published again; the recharger applies each id once.
        // Sent from the worker's loop once the recharger runs (it starts after the engine).
        worker
            .unsent_commands
            .extend(worker.shard.in_flight_commands());
        metrics::histogram!("refill_ingest_restore_seconds")
            .record(started.elapsed().as_secs_f64());
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
        let config = self.engine.inner.config;
        let flush_interval = Duration::from_millis(config.flush_interval_ms);
        let tick_interval = Duration::from_millis(config.tick_interval_ms);
        let poll = flush_interval
            .min(tick_interval)
            .min(Duration::from_millis(500));
        loop {
            // Commands waiting for room are tried again soon, not at the next poll.
            let wait = if self.unsent_commands.is_empty() {
                poll
            } else {
                Duration::from_millis(5)
            };
            let received = crossbeam_channel::select! {
                recv(wake) -> message => Received::Wake(message.ok()),
                recv(self.writer.answers()) -> written => Received::Written(written.ok().map(Box::new)),
                default(wait) => Received::Timeout,
            };
            let result = match received {
                Received::Wake(Some(Wake::Stop)) => {
                    if let Err(error) = self.stop() {
                        self.fail(&error);
                    }
                    return;
                }
                Received::Wake(Some(Wake::Read(job))) => {
                    // Apply what is durable first, so a client reads its own writes.
                    let result = self.apply_all();
                    job(&ShardView {
                        shard: &self.shard,
                        marks: self.sources(),
                        unflushed_entries: &self.unflushed_entries,
                        unflushed_attempts: &self.unflushed_attempts,
                        offsets: self.offsets,
                    });
                    result
                }
                Received::Written(Some(written)) => self
                    .flush_answered(*written)
                    .and_then(|()| self.apply_all()),
                Received::Wake(Some(Wake::Appended)) | Received::Timeout => self.apply_all(),
                // The engine dropped the lane, or the writer's thread is gone (it runs
                // while its handle lives, so only a panic there ends it).
                Received::Wake(None) => return,
                Received::Written(None) => Err(EngineError::Corrupt(format!(
                    "expected the flush writer of shard {} to run, found it stopped",
                    self.shard_index
                ))),
            };
            let result = result
                .and_then(|()| self.retry_failed_flush())
                .and_then(|()| self.log_timers(flush_interval, tick_interval))
                // What the worker logged itself (a flush, a tick) applies now, not at the
                // next wake-up.
                .and_then(|()| self.apply_all());
            self.census();
            let lag = self
                .dirty_since
                .map_or(0.0, |since| since.elapsed().as_secs_f64());
            metrics::gauge!("refill_store_flush_lag_seconds", "shard" => self.shard_index.to_string())
                .set(lag);
            if let Err(error) = result {
                self.fail(&error);
                return;
            }
        }
    }

    /// Crash-only: the shard stops where it is, says why, and its offset stays before the
    /// work that failed (a restart or the next owner redoes it from the log).
    fn fail(&self, error: &EngineError) {
        eprintln!("shard {}: stopped: {error}", self.shard_index);
        self.engine.inner.lanes[self.shard_index as usize]
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .replace(error.to_string());
        metrics::counter!("refill_ingest_shard_failures_total").increment(1);
    }

    /// Logs a flush when one is due and something changed, and a tick when a timer is
    /// due: an idle shard logs and writes nothing.
    fn log_timers(
        &mut self,
        flush_interval: Duration,
        tick_interval: Duration,
    ) -> Result<(), EngineError> {
        let dirty = !self.shard.is_clean()
            || !self.unflushed_entries.is_empty()
            || !self.unflushed_attempts.is_empty()
            || self.failed.is_some();
        // One flush in flight at a time: under load the next covers the time this one took.
        if dirty
            && !self.flush_logged
            && self.in_flight.is_none()
            && self.last_flush.elapsed() >= flush_interval
        {
            self.append_own(Input::Flush)?;
            self.flush_logged = true;
        }
        let timer_due = self.shard.next_timer_at().is_some_and(|at| at <= now());
        if timer_due && self.last_tick.elapsed() >= tick_interval {
            // Expiries and period ends apply at their instant, and replay identically.
            self.append_own(Input::Tick)?;
            self.last_tick = Instant::now();
        }
        Ok(())
    }

    /// Counts the paused accounts for their gauge, once a minute (a pass over every
    /// account: cheap next to a minute of traffic, and never on the hot path).
    fn census(&mut self) {
        if self
            .last_census
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_census = Some(Instant::now());
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
    }

    /// Appends an input of the worker's own (a flush, a tick) to its log partition.
    fn append_own(&self, input: Input) -> Result<(), EngineError> {
        let batch = LogBatch {
            at: now(),
            inputs: vec![input],
            sources: None,
        };
        let record = postcard::to_stdvec(&batch).expect("serializing to memory cannot fail");
        self.engine.inner.log.append(self.shard_index, &[&record])?;
        Ok(())
    }

    /// Applies what is logged, then a last flush so the next owner restores from rows alone.
    fn stop(&mut self) -> Result<(), EngineError> {
        self.wait_for_flush()?;
        self.apply_all()?;
        let dirty = !self.shard.is_clean()
            || !self.unflushed_entries.is_empty()
            || !self.unflushed_attempts.is_empty();
        if dirty {
            self.append_own(Input::Flush)?;
            self.apply_all()?;
        }
        self.wait_for_flush()
    }

    fn apply_all(&mut self) -> Result<(), EngineError> {
        while self.apply_available()? > 0 {}
        Ok(())
    }

    /// Applies the records available now; returns how many.
    fn apply_available(&mut self) -> Result<usize, EngineError> {
        let inner = Arc::clone(&self.engine.inner);
        if !self.send_commands() {
            // The recharger is behind: the log keeps accepting, the shard waits.
            metrics::counter!("refill_ingest_commands_backpressure_total").increment(1);
            return Ok(0);
        }
        if (self.failed.is_some() || self.in_flight.is_some())
            && self.unflushed_entries.len() + self.unflushed_attempts.len()
                >= inner.config.unflushed_rows_max
        {
            // The store is down or behind, and the rows waiting for it reached their
            // bound: stop applying (the log keeps accepting) until the flush lands.
            metrics::counter!("refill_store_flush_backpressure_total").increment(1);
            return Ok(0);
        }
        let records = inner.log.read(
            self.shard_index,
            self.next_offset,
            inner.config.read_batch_max,
        )?;
        if records.is_empty() {
            return Ok(0);
        }
        let mut finished = Vec::with_capacity(records.len());
        for record in &records {
            let batch: LogBatch = postcard::from_bytes(&record.bytes).map_err(|error| {
                EngineError::Corrupt(format!(
                    "log record {}:{}: {error}",
                    self.shard_index, record.offset
                ))
            })?;
            debug_assert_eq!(
                self.offsets.offset_of(self.shard.batch() + 1),
                i128::from(record.offset),
                "one log record is one shard batch"
            );
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
            self.count_effects();
            if self.dirty_since.is_none() {
                self.dirty_since = Some(Instant::now());
            }
            let changed = std::mem::take(&mut self.effects.changed);
            self.publish_balances(&changed);
            self.effects.changed = changed;
            self.unflushed_entries.append(&mut self.effects.entries);
            self.unflushed_attempts.append(&mut self.effects.attempts);
            self.unsent_commands
                .extend(self.effects.commands.iter().cloned());
            if let Some(flush) = self.effects.flush.take() {
                // Its rows are what the shard holds now; the writer makes them durable
                // while the shard goes on (the checkpoint, last, says how far they reach).
                self.write_flush(&flush, record.offset + 1)?;
            }
            finished.push((
                record.offset,
                Applied {
                    outcomes: std::mem::take(&mut self.effects.outcomes),
                },
            ));
            self.next_offset = record.offset + 1;
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
        Ok(records.len())
    }

    /// Sends the unsent commands while the channel has room; `true` once none is left.
    fn send_commands(&mut self) -> bool {
        while let Some(command) = self.unsent_commands.pop_front() {
            match self.commands.try_send(command) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(command)) => {
                    self.unsent_commands.push_front(command);
                    return false;
                }
                // No recharger (a test, or the process is stopping): the commands stay in
                // flight in the shard and are published again at the next start.
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    self.unsent_commands.clear();
                }
            }
        }
        true
    }

    fn count_effects(&self) {
        let fx = &self.effects;
        metrics::counter!("refill_ingest_events_applied_total").increment(fx.events_applied);
        metrics::counter!("refill_ingest_dedup_hits_total").increment(fx.events_duplicate);
        metrics::counter!("refill_ingest_inputs_rejected_total").increment(fx.inputs_rejected);
        for (_, outcome) in &fx.outcomes {
            if let Outcome::Rejected(rejection) = outcome {
                metrics::counter!("refill_ingest_inputs_rejected_by_reason_total", "reason" => rejection.code()).increment(1);
            }
        }
        for notification in &fx.notifications {
            metrics::counter!("refill_ingest_notifications_total", "kind" => notification_kind(&notification.kind)).increment(1);
        }
    }

    /// The lock-free balances of the given accounts.
    fn publish_balances(&self, handles: &[AccountHandle]) {
        let shard = &self.shard;
        let balances = &self.engine.inner.balances;
        for &handle in handles {
            balances.set(
                shard.customer_of(handle).id.as_str(),
                shard.credit_type_of(handle).as_str(),
                self.shard_index,
                shard.account(handle).balance(),
            );
        }
    }

    /// Hands the rows of a flush the shard just closed to the writer, checkpoint last (with
    /// the rows of an earlier flush that did not land, where this one does not supersede
    /// them). A flush still in flight is waited for first: flushes land in order, and the
    /// slots of this one depend on what that one wrote.
    fn write_flush(&mut self, set: &FlushSet, log_next: u64) -> Result<(), EngineError> {
        self.wait_for_flush()?;
        let mut flush = self.flush_rows(set, log_next);
        if let Some(failed) = self.failed.take() {
            carry_over(&mut flush, failed.flush);
        }
        self.flush_logged = false;
        self.last_flush = Instant::now();
        self.send_flush(flush, None, None);
        Ok(())
    }

    fn send_flush(
        &mut self,
        flush: Flush,
        failing_since: Option<Instant>,
        backoff: Option<Duration>,
    ) {
        debug_assert!(
            self.in_flight.is_none(),
            "one flush of a shard in flight at a time"
        );
        self.in_flight = Some(InFlight {
            failing_since,
            backoff,
        });
        self.writer.send(flush);
    }

    /// Blocks until the flush in flight (if any) has answered, and takes its answer.
    fn wait_for_flush(&mut self) -> Result<(), EngineError> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        let written = self.writer.answers().recv().map_err(|_| {
            EngineError::Corrupt(format!(
                "expected the flush writer of shard {} to answer, found it stopped",
                self.shard_index
            ))
        })?;
        self.flush_answered(written)
    }

    /// The writer's answer: a landed flush is booked; one the store refused after the quick
    /// retries is kept and retried while the shard goes on applying (bounded), and only an
    /// outage past `flush_outage_max_ms`, or an error no retry can cure, stops the shard.
    fn flush_answered(&mut self, written: Written) -> Result<(), EngineError> {
        let in_flight = self
            .in_flight
            .take()
            .expect("the writer answers only the flush in flight");
        let Written {
            flush,
            started,
            result,
        } = written;
        let error = match result {
            Ok(()) => {
                self.landed(&flush, started);
                return Ok(());
            }
            Err(error) => error,
        };
        let config = self.engine.inner.config;
        let since = in_flight.failing_since.unwrap_or(started);
        let transient = matches!(error, refill_store::StoreError::Backend(_));
        if !transient || since.elapsed() >= Duration::from_millis(config.flush_outage_max_ms) {
            return Err(error.into());
        }
        eprintln!(
            "shard {}: store unavailable, flush kept for later ({} s so far): {error}",
            self.shard_index,
            since.elapsed().as_secs()
        );
        metrics::counter!("refill_store_flush_failures_total").increment(1);
        let backoff = in_flight
            .backoff
            .unwrap_or(Duration::from_millis(config.flush_retry_backoff_ms));
        self.failed = Some(FailedFlush {
            flush,
            since,
            retry_at: Instant::now() + backoff,
            backoff: (backoff * 2).min(Duration::from_secs(5)),
        });
        Ok(())
    }

    /// Writes the failed flush again once its backoff has passed.
    fn retry_failed_flush(&mut self) -> Result<(), EngineError> {
        let due = self.in_flight.is_none()
            && self
                .failed
                .as_ref()
                .is_some_and(|failed| Instant::now() >= failed.retry_at);
        if !due {
            return Ok(());
        }
        let failed = self.failed.take().expect("checked above");
        self.send_flush(failed.flush, Some(failed.since), Some(failed.backoff));
        Ok(())
    }

    /// Bookkeeping once a flush is durable: the slots it wrote hold the newest states, and
    /// what it covered is no longer waiting.
    fn landed(&mut self, flush: &Flush, started: Instant) {
        for row in &flush.accounts {
            self.account_slots[row.handle as usize] = row.slot;
        }
        for row in &flush.customers {
            self.customer_slots[row.index as usize] = row.slot;
        }
        let covered_through = flush
            .checkpoint
            .as_ref()
            .map_or(0, |checkpoint| checkpoint.version);
        // Entries and attempts after the landed flush's record stay for the next one.
        let entries_covered = flush.entries.len().min(self.unflushed_entries.len());
        self.unflushed_entries.drain(..entries_covered);
        let attempts_covered = flush.attempts.len().min(self.unflushed_attempts.len());
        self.unflushed_attempts.drain(..attempts_covered);
        self.dirty_since = if self.shard.flush_number() == covered_through && self.shard.is_clean()
        {
            None
        } else {
            // Changes after the landed flush wait at most since it started.
            Some(started)
        };
        metrics::histogram!("refill_store_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("refill_store_flush_accounts_total")
            .increment(flush.accounts.len() as u64);
        metrics::gauge!("refill_ingest_accounts", "shard" => self.shard_index.to_string())
            .set(self.shard.account_count() as f64);
    }

    /// The rows of a flush (`rows::flush_rows`) from what the worker kept since the last.
    fn flush_rows(&mut self, set: &FlushSet, log_next: u64) -> Flush {
        self.account_slots.resize(self.shard.account_count(), 0);
        self.customer_slots.resize(self.shard.customer_count(), 0);
        rows::flush_rows(&rows::FlushSource {
            shard: &self.shard,
            set,
            partition: self.shard_index,
            account_slots: &self.account_slots,
            customer_slots: &self.customer_slots,
            entries: &self.unflushed_entries,
            attempts: &self.unflushed_attempts,
            offsets: self.offsets,
            log_next,
            sources: self
                .sources
                .map(|marks| (marks.usage_next, marks.commands_next)),
        })
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

/// Adds to `flush` the rows of an earlier flush that did not land and that it does not
/// supersede: states of accounts and customers it does not write again (their state has
/// not changed since), balances likewise, and the earlier dedup chunks. Entries and
/// attempts need no carrying: they wait in the worker until a flush lands.
fn carry_over(flush: &mut Flush, earlier: Flush) {
    use std::collections::HashSet;
    let accounts: HashSet<u32> = flush.accounts.iter().map(|row| row.handle).collect();
    let customers: HashSet<u32> = flush.customers.iter().map(|row| row.index).collect();
    let balances: HashSet<(String, String)> = flush
        .balances
        .iter()
        .map(|row| (row.customer_id.clone(), row.credit_type.clone()))
        .collect();
    flush.accounts.extend(
        earlier
            .accounts
            .into_iter()
            .filter(|row| !accounts.contains(&row.handle)),
    );
    flush.customers.extend(
        earlier
            .customers
            .into_iter()
            .filter(|row| !customers.contains(&row.index)),
    );
    flush.balances.extend(
        earlier
            .balances
            .into_iter()
            .filter(|row| !balances.contains(&(row.customer_id.clone(), row.credit_type.clone()))),
    );
    flush.dedup.extend(earlier.dedup);
}
