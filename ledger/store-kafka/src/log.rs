//! [`KafkaLog`]: the [`Log`] port over one Kafka topic, whose partitions are the log's
//! partitions, so the code written against the embedded log runs unchanged on a broker.
//!
//! How each call maps to Kafka, and why it keeps the port's contract:
//!
//! - `append`: one idempotent producer (`enable.idempotence=true`, `acks=all`) for the whole
//!   log; the records of a call are handed to it under the partition's lock, then the call
//!   waits, lock released, for every delivery report. librdkafka keeps one FIFO queue per
//!   partition and the idempotent protocol keeps its order through retries, so the records
//!   of one call land contiguously and in call order relative to every other call made
//!   through this `KafkaLog`, while concurrent calls share the broker round trips (group
//!   commit). A delivery report with `acks=all` means the records are on every in-sync
//!   replica (at least `min.insync.replicas`), below the high watermark, so readable.
//!   Limit: another producer writing to the same partition can slip its records between two
//!   of ours; the reports would show it and the call fails with an error naming the
//!   offsets (the records are written all the same). Use one `KafkaLog` per partition
//!   writer.
//! - `read`: one consumer per partition, created on first use, `assign`ed without a group at
//!   `from`; it stays positioned after the last record returned so sequential reads reuse
//!   its prefetched records, and it is re-assigned only when `from` is not that offset.
//! - `end_offset`: the partition's high watermark (a `ListOffsets` round trip).
//! - `wait_beyond`: re-reads the high watermark every `poll_interval`, and at once when an
//!   append through this `KafkaLog` completes on that partition.
//!
//! Offsets must be dense, as the port says: the topic must not be compacted and must not be
//! written with transactions (their commit markers take offsets). `connect` refuses a
//! topic whose `cleanup.policy` contains `compact`; `read` returns [`StoreError::Corrupt`]
//! when a record's offset is not the one expected.

use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use refill_store::{Log, LogRecord, StoreError};

use crate::client::{
    Pending, WaitingProducer, admin_options, apply_overrides, backend, base_config, block_on,
    consumer_config, create_admin, create_consumer, create_producer, describe_topic,
    producer_config, topic_config, wait_until_ready,
};

/// Bytes a record costs on top of its payload in the smallest record batch: the batch header
/// (61 bytes) and the record's own framing (at most about 30), rounded up.
const RECORD_OVERHEAD: u32 = 128;

/// Settings of a [`KafkaLog`]; [`LogSettings::default`] fits a development broker and
/// production alike.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// Replication factor of a topic `connect` creates; `None` = 3, or the number of
    /// brokers if fewer.
    pub replication_factor: Option<u32>,
    /// `min.insync.replicas` of a topic `connect` creates; `None` = 2 with 3 or more
    /// replicas, else 1.
    pub min_insync_replicas: Option<u32>,
    /// `max.message.bytes` of a topic `connect` creates (the largest record batch the
    /// broker takes). The largest record an append takes is what the topic allows, less
    /// 128 bytes of framing.
    pub max_message_bytes: u32,
    /// More topic settings for a topic `connect` creates (e.g. `retention.ms`).
    /// `cleanup.policy` is always `delete`.
    pub topic_config: Vec<(String, String)>,
    /// More librdkafka settings for every client (e.g. `security.protocol`).
    pub client_config: Vec<(String, String)>,
    /// Producer `linger.ms`: how long a record may wait for others to share its request.
    /// 0 by default: an append waits for its delivery anyway, and records still share
    /// requests while earlier ones are in flight (measured: 1 ms of linger made single
    /// appends about 20 times slower, see README).
    pub linger: Duration,
    /// Limit of each broker request: metadata, admin, watermarks, and of a `read` waiting
    /// for records below the high watermark.
    pub request_timeout: Duration,
    /// How often `wait_beyond` asks the broker for the high watermark.
    pub poll_interval: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            replication_factor: None,
            min_insync_replicas: None,
            max_message_bytes: 8 << 20,
            topic_config: Vec::new(),
            client_config: Vec::new(),
            linger: Duration::ZERO,
            request_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
        }
    }
}

/// The reading side of one partition: its consumer (created on the first read that has
/// records to return) and where it stands.
#[derive(Default)]
struct Reader {
    consumer: Option<BaseConsumer>,
    /// The offset the consumer's next message will have, when it is positioned.
    next: Option<u64>,
    /// Watermarks last seen (low, high): reads within them skip the round trip.
    low: u64,
    high: u64,
}

/// Wake-ups of `wait_beyond` callers of one partition: bumped after each append.
#[derive(Default)]
struct Appended {
    generation: Mutex<u64>,
    bumped: Condvar,
}

/// The [`Log`] port over one Kafka topic. See the module documentation for the mapping and
/// its guarantees; `README.md` has the figures.
pub struct KafkaLog {
    topic: String,
    partitions: u32,
    settings: LogSettings,
    bootstrap: String,
    /// Largest payload an append takes.
    max_record_bytes: usize,
    /// librdkafka `message.max.bytes` of the producer.
    max_message_bytes: u32,
    /// Replaced when librdkafka reports a fatal (idempotence) error.
    producer: RwLock<Arc<WaitingProducer>>,
    /// Held while an append hands its records to the producer.
    append_order: Vec<Mutex<()>>,
    readers: Vec<Mutex<Reader>>,
    /// Metadata and watermark queries.
    meta: BaseConsumer,
    appended: Vec<Appended>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Opens the log kept in `topic` on the cluster at `bootstrap` (`host:port[,...]`),
    /// creating the topic with `partitions` partitions if it is missing. Fails with
    /// [`StoreError::PartitionsChanged`] if it exists with another partition count, and
    /// with [`StoreError::InvalidRequest`] if it is compacted.
    pub fn connect(bootstrap: &str, topic: &str, partitions: u32) -> Result<Self, StoreError> {
        Self::connect_with(bootstrap, topic, partitions, LogSettings::default())
    }

    /// [`KafkaLog::connect`] with explicit settings.
    pub fn connect_with(
        bootstrap: &str,
        topic: &str,
        partitions: u32,
        settings: LogSettings,
    ) -> Result<Self, StoreError> {
        check_topic_name(topic)?;
        if partitions == 0 || i32::try_from(partitions).is_err() {
            return Err(StoreError::InvalidRequest(format!(
                "expected a partition count from 1 to {}, found {partitions}",
                i32::MAX
            )));
        }
        let timeout = settings.request_timeout;
        let mut meta_config = consumer_config(bootstrap, &format!("refill-log-meta-{topic}"));
        apply_overrides(&mut meta_config, &settings.client_config);
        let meta = create_consumer(&meta_config)?;
        let mut admin_config = base_config(bootstrap, &format!("refill-log-admin-{topic}"));
        apply_overrides(&mut admin_config, &settings.client_config);
        let admin = create_admin(&admin_config)?;

        let (state, brokers) = describe_topic(&meta, topic, timeout)?;
        match state {
            Some(state) if state.partitions != partitions => {
                return Err(StoreError::PartitionsChanged {
                    stored: state.partitions,
                    requested: partitions,
                });
            }
            Some(_) => {}
            None => {
                let replication = settings.replication_factor.unwrap_or(brokers.clamp(1, 3));
                let min_isr =
                    settings
                        .min_insync_replicas
                        .unwrap_or(if replication >= 3 { 2 } else { 1 });
                let max_message_bytes = settings.max_message_bytes.to_string();
                let min_isr = min_isr.to_string();
                let mut new = NewTopic::new(
                    topic,
                    i32::try_from(partitions).unwrap_or(i32::MAX),
                    TopicReplication::Fixed(i32::try_from(replication).unwrap_or(i32::MAX)),
                )
                .set("cleanup.policy", "delete")
                .set("min.insync.replicas", &min_isr)
                .set("max.message.bytes", &max_message_bytes);
                for (key, value) in &settings.topic_config {
                    if key != "cleanup.policy" {
                        new = new.set(key, value);
                    }
                }
                let results = block_on(admin.create_topics([&new], &admin_options(timeout)))
                    .map_err(|e| backend(&format!("creating topic {topic}"), e))?;
                for result in results {
                    match result {
                        Ok(_) => {}
                        // Someone created it meanwhile: checked below like any existing topic.
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => {
                            return Err(backend(&format!("creating topic {name}"), code));
                        }
                    }
                }
            }
        }
        // A concurrent creator may have used another count: check what is there now.
        wait_until_ready(&meta, topic, partitions, timeout).map_err(|e| {
            match describe_topic(&meta, topic, timeout) {
                Ok((Some(state), _)) if state.partitions != partitions => {
                    StoreError::PartitionsChanged {
                        stored: state.partitions,
                        requested: partitions,
                    }
                }
                _ => e,
            }
        })?;

        let config = topic_config(&admin, topic, timeout)?;
        let value_of = |name: &str| {
            config
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| value.clone())
        };
        let policy = value_of("cleanup.policy").unwrap_or_else(|| String::from("delete"));
        if policy.split(',').any(|p| p.trim() == "compact") {
            return Err(StoreError::InvalidRequest(format!(
                "expected topic {topic} with cleanup.policy=delete (a log needs dense offsets), \
                 found cleanup.policy={policy}"
            )));
        }
        let max_message_bytes = match value_of("max.message.bytes") {
            Some(value) => value.parse::<u32>().map_err(|_| {
                StoreError::Backend(format!(
                    "kafka: expected a number for max.message.bytes of topic {topic}, found {value:?}"
                ))
            })?,
            None => 1_048_588,
        };
        let max_record_bytes = usize::try_from(max_message_bytes.saturating_sub(RECORD_OVERHEAD))
            .unwrap_or(usize::MAX);

        let max_message_bytes = max_message_bytes.max(1000);
        let producer = build_producer(bootstrap, topic, max_message_bytes, &settings)?;
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            bootstrap: bootstrap.to_owned(),
            max_record_bytes,
            max_message_bytes,
            producer: RwLock::new(Arc::new(producer)),
            append_order: (0..partitions).map(|_| Mutex::new(())).collect(),
            readers: (0..partitions)
                .map(|_| Mutex::new(Reader::default()))
                .collect(),
            meta,
            appended: (0..partitions).map(|_| Appended::default()).collect(),
            settings,
        })
    }

    /// The topic this log lives in.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The largest record (payload bytes) an append takes on this topic.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn new_producer(&self) -> Result<WaitingProducer, StoreError> {
        build_producer(
            &self.bootstrap,
            &self.topic,
            self.max_message_bytes,
            &self.settings,
        )
    }

    fn check_partition(&self, partition: u32) -> Result<i32, StoreError> {
        if partition >= self.partitions {
            return Err(StoreError::NoSuchPartition {
                partitions: self.partitions,
                found: partition,
            });
        }
        i32::try_from(partition).map_err(|_| StoreError::NoSuchPartition {
            partitions: self.partitions,
            found: partition,
        })
    }

    fn current_producer(&self) -> Arc<WaitingProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// After a failed append: a producer in a fatal state (an idempotence sequence broken
    /// beyond repair) refuses everything from then on, so it is replaced.
    fn replace_if_fatal(&self, failed: &Arc<WaitingProducer>) {
        if failed.client().fatal_error().is_none() {
            return;
        }
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&current, failed)
            && let Ok(fresh) = self.new_producer()
        {
            *current = Arc::new(fresh);
        }
    }

    /// High and low watermark of `partition`.
    fn watermarks(&self, partition: i32) -> Result<(u64, u64), StoreError> {
        let (low, high) = self
            .meta
            .fetch_watermarks(&self.topic, partition, self.settings.request_timeout)
            .map_err(|e| {
                backend(
                    &format!(
                        "fetching the watermarks of partition {partition} of topic {}",
                        self.topic
                    ),
                    e,
                )
            })?;
        let as_offset = |value: i64| {
            u64::try_from(value).map_err(|_| {
                StoreError::Corrupt(format!(
                    "expected watermarks at or above 0 for partition {partition} of topic {}, \
                     found low {low}, high {high}",
                    self.topic
                ))
            })
        };
        Ok((as_offset(low)?, as_offset(high)?))
    }

    fn bump(&self, partition: usize) {
        if let Some(appended) = self.appended.get(partition) {
            let mut generation = appended
                .generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *generation = generation.wrapping_add(1);
            appended.bumped.notify_all();
        }
    }

    /// Hands the records to the producer in order; returns how many it took and the
    /// refusal that stopped it, if any.
    fn enqueue(
        &self,
        producer: &WaitingProducer,
        partition: i32,
        records: &[&[u8]],
        pending: &Arc<Pending>,
    ) -> (usize, Option<KafkaError>) {
        let deadline = Instant::now() + self.settings.request_timeout;
        for (i, record) in records.iter().enumerate() {
            pending.expect_one();
            let mut next = BaseRecord::<(), [u8], Arc<Pending>>::with_opaque_to(
                &self.topic,
                Arc::clone(pending),
            )
            .partition(partition)
            .payload(*record);
            loop {
                match producer.send(next) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        // The local queue drains as the broker acknowledges: wait a little.
                        next = back;
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err((error, _)) => {
                        pending.refused_one();
                        return (i, Some(error));
                    }
                }
            }
        }
        (records.len(), None)
    }

    /// The partition's reading consumer, created on first use.
    fn consumer(&self, partition: i32) -> Result<BaseConsumer, StoreError> {
        let mut config = consumer_config(
            &self.bootstrap,
            &format!("refill-log-read-{}-{partition}", self.topic),
        );
        apply_overrides(&mut config, &self.settings.client_config);
        create_consumer(&config)
    }
}

impl Log for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn append(&self, partition: u32, records: &[&[u8]]) -> Result<u64, StoreError> {
        let kafka_partition = self.check_partition(partition)?;
        if records.is_empty() {
            return self.end_offset(partition);
        }
        if let Some((index, record)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() > self.max_record_bytes)
        {
            return Err(StoreError::InvalidRequest(format!(
                "expected records of at most {} bytes (max.message.bytes of topic {} less {} \
                 bytes of framing), found {} bytes in record {index}",
                self.max_record_bytes,
                self.topic,
                RECORD_OVERHEAD,
                record.len()
            )));
        }
        let producer = self.current_producer();
        let pending = Arc::new(Pending::default());
        let (taken, refused) = {
            let _order = self
                .append_order
                .get(usize::try_from(partition).unwrap_or(usize::MAX))
                .ok_or(StoreError::NoSuchPartition {
                    partitions: self.partitions,
                    found: partition,
                })?
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.enqueue(&producer, kafka_partition, records, &pending)
        };
        let delivered = if taken > 0 {
            Some(pending.wait(&format!(
                "appending to partition {partition} of topic {}",
                self.topic
            )))
        } else {
            None
        };
        if taken > 0 {
            self.bump(usize::try_from(partition).unwrap_or(usize::MAX));
        }
        if let Some(error) = refused {
            self.replace_if_fatal(&producer);
            let before = match (&delivered, taken) {
                (_, 0) => String::from("nothing was written"),
                (Some(Ok(_)), _) => format!("the {taken} records before it were written"),
                _ => format!("the {taken} records before it may or may not have been written"),
            };
            return Err(StoreError::Backend(format!(
                "kafka: appending to partition {partition} of topic {}: expected the producer \
                 to take all {} records, found it refused record {taken} ({error}); {before}",
                self.topic,
                records.len(),
            )));
        }
        let delivered = match delivered {
            Some(Ok(delivered)) => delivered,
            Some(Err(error)) => {
                self.replace_if_fatal(&producer);
                return Err(error);
            }
            None => {
                return Err(StoreError::Backend(String::from(
                    "kafka: expected records handed to the producer, found none",
                )));
            }
        };
        let span = delivered.last - delivered.first + 1;
        if delivered.partition != kafka_partition
            || delivered.count != records.len()
            || usize::try_from(span).ok() != Some(records.len())
        {
            return Err(StoreError::Backend(format!(
                "kafka: appending {} records to partition {partition} of topic {}: expected \
                 them on contiguous offsets, found {} of them on partition {} between offsets \
                 {} and {} (another producer writes to this partition: a KafkaLog must be its \
                 only writer); they are written",
                records.len(),
                self.topic,
                delivered.count,
                delivered.partition,
                delivered.first,
                delivered.last
            )));
        }
        u64::try_from(delivered.first).map_err(|_| {
            StoreError::Corrupt(format!(
                "expected an offset at or above 0 from the delivery report, found {}",
                delivered.first
            ))
        })
    }

    fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        let kafka_partition = self.check_partition(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let index = usize::try_from(partition).unwrap_or(usize::MAX);
        let mut reader = self
            .readers
            .get(index)
            .ok_or(StoreError::NoSuchPartition {
                partitions: self.partitions,
                found: partition,
            })?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let reader = &mut *reader;
        let wanted_end = from.saturating_add(u64::try_from(max).unwrap_or(u64::MAX));
        if from < reader.low || wanted_end > reader.high {
            (reader.low, reader.high) = self.watermarks(kafka_partition)?;
        }
        let (low, high) = (reader.low, reader.high);
        if from >= high {
            return Ok(Vec::new());
        }
        if from < low {
            return Err(StoreError::Backend(format!(
                "kafka: reading partition {partition} of topic {} from offset {from}: expected \
                 the record there, found the partition starts at {low} (retention deleted the \
                 records before it)",
                self.topic
            )));
        }
        let want = usize::try_from(high.min(wanted_end) - from).unwrap_or(usize::MAX);
        let consumer = match &mut reader.consumer {
            Some(consumer) => consumer,
            empty => empty.insert(self.consumer(kafka_partition)?),
        };
        if reader.next != Some(from) {
            reader.next = None;
            let mut assignment = TopicPartitionList::new();
            let start = i64::try_from(from).map_err(|_| {
                StoreError::InvalidRequest(format!(
                    "expected an offset below {}, found {from}",
                    i64::MAX
                ))
            })?;
            assignment
                .add_partition_offset(&self.topic, kafka_partition, Offset::Offset(start))
                .map_err(|e| backend("positioning a reading consumer", e))?;
            consumer
                .assign(&assignment)
                .map_err(|e| backend("assigning a reading consumer", e))?;
        }
        let mut records = Vec::with_capacity(want.min(4096));
        let deadline = Instant::now() + self.settings.request_timeout;
        let mut last_error = None;
        while records.len() < want {
            let now = Instant::now();
            if now >= deadline {
                reader.next = None;
                return Err(StoreError::Backend(format!(
                    "kafka: reading partition {partition} of topic {}: expected the records \
                     up to offset {} (below the high watermark) within {:?}, found {} from \
                     offset {from}; last consumer error: {}; if the broker is healthy, the \
                     topic has an offset gap (transaction markers) this log cannot take",
                    self.topic,
                    from + want as u64 - 1,
                    self.settings.request_timeout,
                    records.len(),
                    last_error.as_deref().unwrap_or("none")
                )));
            }
            let Some(polled) = consumer.poll((deadline - now).min(Duration::from_millis(100)))
            else {
                continue;
            };
            let message = match polled {
                Ok(message) => message,
                Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Resolve),
                )) => {
                    // librdkafka reconnects by itself: keep waiting until the deadline.
                    last_error = Some(code.to_string());
                    continue;
                }
                Err(error) => {
                    reader.next = None;
                    return Err(backend(
                        &format!("reading partition {partition} of topic {}", self.topic),
                        error,
                    ));
                }
            };
            let expected = from + records.len() as u64;
            let found = message.offset();
            if message.partition() != kafka_partition || u64::try_from(found).ok() != Some(expected)
            {
                reader.next = None;
                return Err(StoreError::Corrupt(format!(
                    "expected offset {expected} of partition {partition} in topic {}, found \
                     offset {found} of partition {}: the topic has offset gaps (compaction or \
                     transactions), which a KafkaLog cannot take",
                    self.topic,
                    message.partition()
                )));
            }
            let Some(payload) = message.payload() else {
                reader.next = None;
                return Err(StoreError::Corrupt(format!(
                    "expected a record with a value at offset {expected} of partition \
                     {partition} in topic {}, found a null value (a tombstone another producer \
                     wrote)",
                    self.topic
                )));
            };
            records.push(LogRecord {
                offset: expected,
                bytes: payload.to_vec(),
            });
        }
        reader.next = Some(from + records.len() as u64);
        Ok(records)
    }

    fn end_offset(&self, partition: u32) -> Result<u64, StoreError> {
        let kafka_partition = self.check_partition(partition)?;
        Ok(self.watermarks(kafka_partition)?.1)
    }

    fn wait_beyond(
        &self,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let kafka_partition = self.check_partition(partition)?;
        let appended = self
            .appended
            .get(usize::try_from(partition).unwrap_or(usize::MAX))
            .ok_or(StoreError::NoSuchPartition {
                partitions: self.partitions,
                found: partition,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            let seen = *appended
                .generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let end = self.watermarks(kafka_partition)?.1;
            let now = Instant::now();
            if end > offset || now >= deadline {
                return Ok(end);
            }
            let pause = (deadline - now).min(self.settings.poll_interval);
            let generation = appended
                .generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *generation == seen {
                drop(
                    appended
                        .bumped
                        .wait_timeout(generation, pause)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
    }
}

/// The producer of a log on `topic`.
fn build_producer(
    bootstrap: &str,
    topic: &str,
    max_message_bytes: u32,
    settings: &LogSettings,
) -> Result<WaitingProducer, StoreError> {
    let mut config = producer_config(
        bootstrap,
        &format!("refill-log-{topic}"),
        max_message_bytes,
        settings.linger,
    );
    apply_overrides(&mut config, &settings.client_config);
    create_producer(&config)
}

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), StoreError> {
    let legal = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(StoreError::InvalidRequest(format!(
            "expected a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-'), found {topic:?}"
        )))
    }
}
