//! The Kafka intake of a scaled-out ingest worker: a member of the consumer group on
//! `refill.usage` (cooperative rebalancing). For each partition the group gives it, it
//! takes the shard of the same number ([`Engine::acquire`]: restore and replay), reads the
//! shard's partition of `refill.account-commands` beside it, and turns what it reads into
//! journal batches. Each batch carries the offsets it takes both sources to
//! ([`SourceMarks`]), so applying is exactly once: a worker taking a partition over learns
//! from the journal where its predecessor stopped and skips what was already applied,
//! whatever offsets the group had committed. Offsets are committed to the group only after
//! the batch covering them is durable in the journal.
//!
//! A usage record that cannot be applied goes to `refill.usage.dlq` with its reason,
//! source partition and offset before the batch that moves past it is appended; it never
//! blocks its partition.
//!
//! Consumer lag per owned partition is the gauge `refill_ingest_lag_records` (`lag.rs`),
//! measured off the poll loop.
//!
//! Crash-only: when the journal append or the dead-letter send fails, or a shard cannot be
//! restored, the intake stops with the error (the process exits, the group moves its
//! partitions on, and the next owner resumes from the journal). Nothing is skipped.

mod forward;
mod lag;
mod record;
mod sink;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use refill_ledger::Input;
use refill_ledger::codec;
use refill_store_kafka::{DeadLetters, Topics, rdkafka};

use crate::engine::{Engine, EngineError, SourceMarks};

pub use forward::AccountCommandForwarder;
pub use record::{Rejected, usage_from_record};
pub use sink::spawn_command_sink;

/// Registers the help text of the intake's metrics (Prometheus `# HELP`), beside
/// [`crate::describe_metrics`].
pub fn describe_metrics() {
    metrics::describe_gauge!(
        lag::LAG_GAUGE,
        metrics::Unit::Count,
        "Consumer lag per owned partition of refill.usage: its high watermark minus the next \
         offset the shard will read (0 for a partition this worker gave up)."
    );
}

/// Why the intake stopped.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Kafka refused or failed a request.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The engine failed (journal append, restore).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The partition counts do not line up.
    #[error("{0}")]
    Topology(String),
}

/// Settings of the intake.
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// The topic names.
    pub topics: Topics,
    /// The consumer group of the ingest workers.
    pub group_id: String,
    /// Most inputs in one journal batch.
    pub batch_inputs_max: usize,
    /// Longest a read record waits for its batch to be appended.
    pub linger_ms: u64,
}

impl IntakeConfig {
    /// The defaults for a cluster at `bootstrap` and the topics of `topics`: group
    /// `{prefix}refill-ingest` is passed in by the caller.
    pub fn new(bootstrap: &str, topics: Topics, group_id: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            topics,
            group_id: group_id.to_owned(),
            batch_inputs_max: 4096,
            linger_ms: 5,
        }
    }
}

/// A running intake; stopping it leaves the group cleanly (its shards are released with
/// a snapshot, so the next owner restores fast).
pub struct Intake {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), IntakeError>>>,
}

impl Intake {
    /// Joins the group and starts reading. `engine` must have one shard per partition of
    /// the usage topic and own none yet.
    pub fn start(engine: Engine, config: IntakeConfig) -> Result<Intake, IntakeError> {
        let partitions =
            refill_store_kafka::partition_count(&config.bootstrap, &config.topics.usage)
                .map_err(|error| IntakeError::Kafka(error.to_string()))?;
        let command_partitions =
            refill_store_kafka::partition_count(&config.bootstrap, &config.topics.account_commands)
                .map_err(|error| IntakeError::Kafka(error.to_string()))?;
        if partitions != engine.shards() || command_partitions != partitions {
            return Err(IntakeError::Topology(format!(
                "expected {} partitions (one per shard) in {} and {}, found {partitions} and \
                 {command_partitions}",
                engine.shards(),
                config.topics.usage,
                config.topics.account_commands
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut pump = Pump::connect(engine, config)?;
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kafka-intake".into())
            .spawn(move || pump.run(&stop_flag))
            .map_err(|error| IntakeError::Topology(format!("cannot start the intake: {error}")))?;
        Ok(Intake {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the intake is still running (false after a fatal error).
    pub fn is_running(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// A handle that asks the intake to leave the group, from any thread; [`Intake::wait`]
    /// then returns.
    pub fn stopper(&self) -> IntakeStopper {
        IntakeStopper(Arc::clone(&self.stop))
    }

    /// Leaves the group (releasing every shard) and returns how the intake ended.
    pub fn stop(mut self) -> Result<(), IntakeError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(IntakeError::Topology("the intake thread panicked".into())),
            None => Ok(()),
        }
    }

    /// Waits until the intake ends (asked by an [`IntakeStopper`], or a fatal error) and
    /// returns how.
    pub fn wait(mut self) -> Result<(), IntakeError> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(IntakeError::Topology("the intake thread panicked".into())),
            None => Ok(()),
        }
    }
}

/// Asks a running [`Intake`] to leave the group.
#[derive(Clone, Debug)]
pub struct IntakeStopper(Arc<AtomicBool>);

impl IntakeStopper {
    /// Asks; the intake releases its shards and its thread ends.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// One owned partition: where its sources stand and what is read but not yet appended.
#[derive(Default)]
struct Slot {
    marks: SourceMarks,
    inputs: Vec<Input>,
    dead: Vec<(OwnedMessage, String)>,
    /// Valid events a producer put on this partition for a customer another partition owns:
    /// (record, owner's partition), sent there before the batch moves past them.
    reroute: Vec<(OwnedMessage, u32)>,
    oldest: Option<Instant>,
    /// Whether the batch read usage (then the group offset moves to `marks.usage_next`).
    read_usage: bool,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.inputs.is_empty()
            && self.dead.is_empty()
            && self.reroute.is_empty()
            && self.oldest.is_none()
    }
}

/// What the loop and the rebalance callbacks share (both run on the intake thread, inside
/// or between polls; the mutex is never held across a poll).
struct Shared {
    slots: BTreeMap<u32, Slot>,
    fatal: Option<IntakeError>,
}

struct IntakeContext {
    engine: Engine,
    shared: Arc<Mutex<Shared>>,
    commands: Arc<BaseConsumer>,
    topics: Topics,
}

impl ClientContext for IntakeContext {}

impl ConsumerContext for IntakeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Records read but not appended are dropped: not committed, the next owner
            // reads them again.
            let revoked = self.partitions_of(list);
            let mut commands = TopicPartitionList::new();
            {
                let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                for &partition in &revoked {
                    shared.slots.remove(&partition);
                    lag::set_lag(partition, 0);
                    commands.add_partition(&self.topics.account_commands, partition as i32);
                }
            }
            for &partition in &revoked {
                if let Err(error) = self.engine.release(partition) {
                    eprintln!("intake: releasing shard {partition}: {error}");
                }
            }
            if let Err(error) = self.commands.incremental_unassign(&commands) {
                eprintln!("intake: unassigning account commands: {error}");
            }
            metrics::counter!("refill_ingest_partitions_revoked_total")
                .increment(revoked.len() as u64);
            eprintln!("intake: released partitions {revoked:?}");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = self.partitions_of(list);
            let mut commands = TopicPartitionList::new();
            for &partition in &assigned {
                let started = Instant::now();
                match self.engine.acquire(partition) {
                    Ok(marks) => {
                        self.report_lag(partition, marks.usage_next);
                        let offset = i64::try_from(marks.commands_next).unwrap_or(i64::MAX);
                        let _ = commands.add_partition_offset(
                            &self.topics.account_commands,
                            partition as i32,
                            Offset::Offset(offset),
                        );
                        self.shared
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .slots
                            .insert(
                                partition,
                                Slot {
                                    marks,
                                    ..Slot::default()
                                },
                            );
                        eprintln!(
                            "intake: took partition {partition} in {} ms (usage from offset {}, \
                             account commands from {})",
                            started.elapsed().as_millis(),
                            marks.usage_next,
                            marks.commands_next
                        );
                    }
                    Err(error) => {
                        self.fail(IntakeError::Engine(error));
                        return;
                    }
                }
            }
            if let Err(error) = self.commands.incremental_assign(&commands) {
                self.fail(IntakeError::Kafka(format!(
                    "assigning account commands {assigned:?}: {error}"
                )));
            }
            metrics::counter!("refill_ingest_partitions_assigned_total")
                .increment(assigned.len() as u64);
        }
    }
}

impl IntakeContext {
    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<u32> {
        list.elements()
            .iter()
            .filter(|element| element.topic() == self.topics.usage)
            .filter_map(|element| u32::try_from(element.partition()).ok())
            .collect()
    }

    /// The lag of a partition just taken, at once (the lag thread measures it from then on):
    /// a backlog shows from the moment its shard owns it. Asked through the commands
    /// consumer, a client of its own, never inside the group consumer's callback.
    fn report_lag(&self, partition: u32, next: u64) {
        let Ok(id) = i32::try_from(partition) else {
            return;
        };
        match self
            .commands
            .fetch_watermarks(&self.topics.usage, id, lag::WATERMARK_TIMEOUT)
        {
            Ok((_, high)) => lag::set_lag(partition, lag::lag_records(high, next)),
            Err(error) => eprintln!(
                "intake: watermarks of {} partition {partition}: {error}",
                self.topics.usage
            ),
        }
    }

    fn fail(&self, error: IntakeError) {
        eprintln!("intake: {error}");
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.fatal.get_or_insert(error);
    }
}

struct Pump {
    engine: Engine,
    config: IntakeConfig,
    group: BaseConsumer<IntakeContext>,
    commands: Arc<BaseConsumer>,
    shared: Arc<Mutex<Shared>>,
    dead_letters: DeadLetters,
    partitions: u32,
    /// Measures the lag while the pump runs; dropped (stopped) with it.
    _lag: lag::LagReporter,
}

impl Pump {
    fn connect(engine: Engine, config: IntakeConfig) -> Result<Pump, IntakeError> {
        let kafka = |what: &str, error: rdkafka::error::KafkaError| {
            IntakeError::Kafka(format!("{what}: {error}"))
        };
        let commands: Arc<BaseConsumer> = Arc::new(
            refill_store_kafka::assign_consumer_config(&config.bootstrap, "refill-ingest-commands")
                .create()
                .map_err(|error| kafka("creating the account-commands consumer", error))?,
        );
        let shared = Arc::new(Mutex::new(Shared {
            slots: BTreeMap::new(),
            fatal: None,
        }));
        let context = IntakeContext {
            engine: engine.clone(),
            shared: Arc::clone(&shared),
            commands: Arc::clone(&commands),
            topics: config.topics.clone(),
        };
        let group: BaseConsumer<IntakeContext> = refill_store_kafka::group_consumer_config(
            &config.bootstrap,
            "refill-ingest",
            &config.group_id,
        )
        .create_with_context(context)
        .map_err(|error| kafka("creating the group consumer", error))?;
        group
            .subscribe(&[config.topics.usage.as_str()])
            .map_err(|error| kafka("subscribing to the usage topic", error))?;
        let dead_letters = DeadLetters::connect_to(&config.bootstrap, &config.topics.dlq, &[])
            .map_err(|error| IntakeError::Kafka(error.to_string()))?;
        let lag =
            lag::LagReporter::spawn(&config.bootstrap, &config.topics.usage, Arc::clone(&shared))?;
        Ok(Pump {
            _lag: lag,
            partitions: engine.shards(),
            engine,
            config,
            group,
            commands,
            shared,
            dead_letters,
        })
    }

    fn run(&mut self, stop: &AtomicBool) -> Result<(), IntakeError> {
        let result = self.pump(stop);
        // Leaving the group revokes every partition: the callbacks release the shards.
        self.group.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.engine.owned_shards().is_empty() && Instant::now() < deadline {
            let _ = self.group.poll(Duration::from_millis(100));
        }
        for shard in self.engine.owned_shards() {
            let _ = self.engine.release(shard);
        }
        result
    }

    fn pump(&mut self, stop: &AtomicBool) -> Result<(), IntakeError> {
        let linger = Duration::from_millis(self.config.linger_ms);
        let mut usage: Vec<OwnedMessage> = Vec::new();
        let mut commands: Vec<OwnedMessage> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            // Polls (and the rebalance callbacks they run) happen without the lock.
            usage.clear();
            commands.clear();
            let mut wait = linger;
            while usage.len() < self.config.batch_inputs_max {
                match self.group.poll(wait) {
                    Some(Ok(message)) => usage.push(message.detach()),
                    Some(Err(error)) => {
                        metrics::counter!("refill_ingest_kafka_errors_total").increment(1);
                        eprintln!("intake: reading {}: {error}", self.config.topics.usage);
                        break;
                    }
                    None => break,
                }
                wait = Duration::ZERO;
            }
            while commands.len() < self.config.batch_inputs_max {
                match self.commands.poll(Duration::ZERO) {
                    Some(Ok(message)) => commands.push(message.detach()),
                    Some(Err(error)) => {
                        metrics::counter!("refill_ingest_kafka_errors_total").increment(1);
                        eprintln!(
                            "intake: reading {}: {error}",
                            self.config.topics.account_commands
                        );
                        break;
                    }
                    None => break,
                }
            }
            let due = {
                let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(error) = shared.fatal.take() {
                    return Err(error);
                }
                for message in usage.drain(..) {
                    self.take_usage(&mut shared, message);
                }
                for message in commands.drain(..) {
                    take_command(&mut shared, message);
                }
                due_batches(&mut shared, linger, self.config.batch_inputs_max)
            };
            for (partition, batch) in due {
                self.append(partition, batch)?;
            }
        }
        Ok(())
    }

    fn take_usage(&self, shared: &mut Shared, message: OwnedMessage) {
        let Ok(partition) = u32::try_from(message.partition()) else {
            return;
        };
        let Ok(offset) = u64::try_from(message.offset()) else {
            return;
        };
        // Read before this worker owned the partition, or already applied by the journal.
        let Some(slot) = shared.slots.get_mut(&partition) else {
            return;
        };
        if offset < slot.marks.usage_next {
            metrics::counter!("refill_ingest_kafka_skipped_total").increment(1);
            return;
        }
        slot.marks.usage_next = offset + 1;
        slot.read_usage = true;
        slot.oldest.get_or_insert_with(Instant::now);
        match usage_from_record(message.key(), message.payload(), partition, self.partitions) {
            Ok(event) => slot.inputs.push(Input::Usage(event)),
            Err(Rejected {
                owner: Some(owner), ..
            }) => {
                metrics::counter!("refill_ingest_rerouted_total").increment(1);
                slot.reroute.push((message, owner));
            }
            Err(rejected) => {
                metrics::counter!("refill_ingest_events_rejected_total", "reason" => rejected.code)
                    .increment(1);
                slot.dead.push((message, rejected.reason()));
            }
        }
    }

    /// Dead letters first, then the journal batch, then the group commit: each step only
    /// once the one before it is durable.
    fn append(&self, partition: u32, batch: Slot) -> Result<(), IntakeError> {
        for (message, owner) in &batch.reroute {
            // Once durable on the owner's partition, the owner applies it (deduplicating by
            // event id if a crash makes this send happen twice).
            self.dead_letters
                .reroute_message(message, &self.config.topics.usage, *owner)
                .map_err(|error| IntakeError::Kafka(error.to_string()))?;
        }
        for (message, reason) in &batch.dead {
            self.dead_letters
                .send_message_to_dlq(message, reason)
                .map_err(|error| IntakeError::Kafka(error.to_string()))?;
            metrics::counter!("refill_ingest_dead_letters_total").increment(1);
        }
        let events = batch.inputs.len() as u64;
        self.engine
            .append_from_sources(partition, batch.inputs, batch.marks)?;
        metrics::counter!("refill_ingest_kafka_events_total").increment(events);
        if batch.read_usage {
            let next = batch.marks.usage_next;
            let mut offsets = TopicPartitionList::new();
            let _ = offsets.add_partition_offset(
                &self.config.topics.usage,
                partition as i32,
                Offset::Offset(i64::try_from(next).unwrap_or(i64::MAX)),
            );
            // Async: the journal, not the group, says where a shard resumes; the commit
            // only keeps the group's lag honest and shortens what a new owner re-reads.
            if let Err(error) = self.group.commit(&offsets, CommitMode::Async) {
                eprintln!("intake: committing {next} on partition {partition}: {error}");
            }
        }
        Ok(())
    }
}

fn take_command(shared: &mut Shared, message: OwnedMessage) {
    let (Ok(partition), Ok(offset)) = (
        u32::try_from(message.partition()),
        u64::try_from(message.offset()),
    ) else {
        return;
    };
    let Some(slot) = shared.slots.get_mut(&partition) else {
        return;
    };
    if offset < slot.marks.commands_next {
        return;
    }
    slot.marks.commands_next = offset + 1;
    slot.oldest.get_or_insert_with(Instant::now);
    match message.payload().map(codec::decode_account_command) {
        Some(Ok(input)) => slot.inputs.push(input),
        Some(Err(error)) => {
            metrics::counter!("refill_ingest_account_commands_rejected_total").increment(1);
            eprintln!("intake: account command {partition}@{offset} skipped: {error}");
        }
        None => {
            metrics::counter!("refill_ingest_account_commands_rejected_total").increment(1);
            eprintln!("intake: account command {partition}@{offset} skipped: no value");
        }
    }
}

/// Takes out the batches to append now: full ones, and those whose oldest record waited
/// `linger`.
fn due_batches(shared: &mut Shared, linger: Duration, inputs_max: usize) -> Vec<(u32, Slot)> {
    let mut due = Vec::new();
    for (&partition, slot) in &mut shared.slots {
        if slot.is_empty() {
            continue;
        }
        let waited = slot.oldest.is_some_and(|oldest| oldest.elapsed() >= linger);
        if waited || slot.inputs.len() >= inputs_max {
            let marks = slot.marks;
            let batch = std::mem::replace(
                slot,
                Slot {
                    marks,
                    ..Slot::default()
                },
            );
            due.push((partition, batch));
        }
    }
    due
}
