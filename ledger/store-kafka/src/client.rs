//! What the log, the topic code and the dead-letter helper share: the librdkafka settings
//! every client of this crate gets, the producer whose appends wait for their delivery
//! reports, topic metadata and configuration look-ups, and a tiny `block_on` for
//! rdkafka's admin futures (which need no runtime: a background thread completes them).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use refill_store::StoreError;

/// How long a delivery report may take: librdkafka retries (idempotently) until then.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings every client of this crate starts from.
pub(crate) fn base_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        // A metadata request must never create a topic with the broker's defaults
        // (librdkafka's producers ask for that unless told otherwise).
        .set("allow.auto.create.topics", "false")
        // Small requests (one append, one watermark query) leave at once: with Nagle on, a
        // single-record append measured about 3 ms here instead of a fraction of one.
        .set("socket.nagle.disable", "true")
        .set("log_level", "3");
    config
}

/// Settings of a producer that waits for its records on the in-sync replicas.
pub(crate) fn producer_config(
    bootstrap: &str,
    client_id: &str,
    max_message_bytes: u32,
    linger: Duration,
) -> ClientConfig {
    let mut config = base_config(bootstrap, client_id);
    config
        // No duplicates and no reordering on retries; implies acks=all, stated anyway.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set(
            "delivery.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .set("linger.ms", linger.as_millis().to_string())
        // Keyed records land where a Java producer (murmur2) would put them.
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", max_message_bytes.to_string());
    config
}

/// Settings of a consumer that reads assigned partitions without a group.
pub(crate) fn consumer_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut config = base_config(bootstrap, client_id);
    config
        // librdkafka refuses `assign` without a group id ("Unknown group"); the consumer
        // never joins this group (no subscribe) and never commits to it.
        .set("group.id", "refill-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A position outside the log is an error, never a silent jump.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100")
        // Prefetch per assigned partition: enough for throughput, bounded memory.
        .set("queued.max.messages.kbytes", "16384");
    config
}

/// A client setting from outside: the librdkafka name and value.
pub(crate) fn apply_overrides(config: &mut ClientConfig, overrides: &[(String, String)]) {
    for (key, value) in overrides {
        config.set(key, value);
    }
}

/// A Kafka error as the ports' backend error, saying what was being done.
pub(crate) fn backend(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("kafka: {what}: {error}"))
}

/// Delivery state of the records of one send: filled by the producer's polling thread.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    state: Mutex<PendingState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct PendingState {
    /// Records not reported yet.
    remaining: usize,
    /// Lowest and highest offset delivered, and how many were.
    first: Option<i64>,
    last: Option<i64>,
    delivered: usize,
    /// The partition the reports named (all the same for one append).
    partition: Option<i32>,
    /// The first failure reported.
    error: Option<String>,
}

/// What the delivery reports of one send said.
#[derive(Debug)]
pub(crate) struct Delivered {
    /// Partition the records went to.
    pub partition: i32,
    /// Lowest and highest offset they got.
    pub first: i64,
    pub last: i64,
    /// How many were delivered.
    pub count: usize,
}

impl Pending {
    /// Counts one more record handed to the producer.
    pub(crate) fn expect_one(&self) {
        self.lock().remaining += 1;
    }

    /// Forgets one record the producer refused (its report will never come).
    pub(crate) fn refused_one(&self) {
        let mut state = self.lock();
        state.remaining = state.remaining.saturating_sub(1);
        self.done.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self, result: Result<(i32, i64), String>) {
        let mut state = self.lock();
        match result {
            Ok((partition, offset)) => {
                state.first = Some(state.first.map_or(offset, |o| o.min(offset)));
                state.last = Some(state.last.map_or(offset, |o| o.max(offset)));
                state.partition = Some(partition);
                state.delivered += 1;
            }
            Err(error) => {
                if state.error.is_none() {
                    state.error = Some(error);
                }
            }
        }
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining == 0 {
            self.done.notify_all();
        }
    }

    /// Waits for every expected report; fails if one record failed or the reports are late.
    pub(crate) fn wait(&self, what: &str) -> Result<Delivered, StoreError> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT + Duration::from_secs(10);
        let mut state = self.lock();
        while state.remaining > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Backend(format!(
                    "kafka: {what}: expected delivery reports within {:?}, found {} still missing",
                    DELIVERY_TIMEOUT + Duration::from_secs(10),
                    state.remaining
                )));
            }
            state = self
                .done
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if let Some(error) = &state.error {
            return Err(StoreError::Backend(format!(
                "kafka: {what}: expected every record acknowledged by the in-sync replicas, \
                 found a failed delivery ({} of the others delivered): {error}",
                state.delivered
            )));
        }
        match (state.partition, state.first, state.last) {
            (Some(partition), Some(first), Some(last)) => Ok(Delivered {
                partition,
                first,
                last,
                count: state.delivered,
            }),
            _ => Err(StoreError::Backend(format!(
                "kafka: {what}: expected at least one delivery report, found none"
            ))),
        }
    }
}

/// Producer context that routes each delivery report to the [`Pending`] of its send.
#[derive(Debug, Default)]
pub(crate) struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        match result {
            Ok(message) => pending.report(Ok((message.partition(), message.offset()))),
            Err((error, _)) => pending.report(Err(error.to_string())),
        }
    }
}

/// The producer of this crate: its polling thread delivers the reports.
pub(crate) type WaitingProducer = ThreadedProducer<DeliveryContext>;

/// A producer from `config`.
pub(crate) fn create_producer(config: &ClientConfig) -> Result<WaitingProducer, StoreError> {
    config
        .create_with_context(DeliveryContext)
        .map_err(|e| backend("creating a producer", e))
}

/// A consumer (no group) from `config`.
pub(crate) fn create_consumer(config: &ClientConfig) -> Result<BaseConsumer, StoreError> {
    config
        .create()
        .map_err(|e| backend("creating a consumer", e))
}

/// An admin client from `config`.
pub(crate) fn create_admin(
    config: &ClientConfig,
) -> Result<AdminClient<DefaultClientContext>, StoreError> {
    config
        .create()
        .map_err(|e| backend("creating an admin client", e))
}

/// Admin options with `timeout` for the request and the operation.
pub(crate) fn admin_options(timeout: Duration) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout))
}

/// What the cluster says about one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicState {
    /// Partition count.
    pub partitions: u32,
    /// Replicas of partition 0 (all partitions get the same factor from the admin API).
    pub replication_factor: u32,
    /// Whether every partition has a leader.
    pub all_led: bool,
}

/// The topic as the cluster sees it, or `None` when it does not exist; also the number of
/// brokers.
pub(crate) fn describe_topic(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<(Option<TopicState>, u32), StoreError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| backend(&format!("fetching the metadata of topic {topic}"), e))?;
    let brokers = u32::try_from(metadata.brokers().len()).unwrap_or(u32::MAX);
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok((None, brokers));
    };
    match found.error() {
        None => {}
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            return Ok((None, brokers));
        }
        // Being created or electing leaders: it exists, not ready yet.
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) => {}
        Some(other) => {
            return Err(StoreError::Backend(format!(
                "kafka: expected the metadata of topic {topic}, found error {}",
                RDKafkaErrorCode::from(other)
            )));
        }
    }
    let partitions = found.partitions();
    if partitions.is_empty() {
        return Ok((None, brokers));
    }
    let replication_factor = partitions
        .iter()
        .find(|p| p.id() == 0)
        .map_or(0, |p| u32::try_from(p.replicas().len()).unwrap_or(u32::MAX));
    let all_led = partitions
        .iter()
        .all(|p| p.leader() >= 0 && p.error().is_none());
    Ok((
        Some(TopicState {
            partitions: u32::try_from(partitions.len()).unwrap_or(u32::MAX),
            replication_factor,
            all_led,
        }),
        brokers,
    ))
}

/// Waits until `topic` shows `partitions` partitions, each with a leader, and answers
/// watermark queries (a new topic takes a moment to be served).
pub(crate) fn wait_until_ready(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<(), StoreError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match describe_topic(consumer, topic, timeout) {
            Ok((Some(state), _)) if state.partitions == partitions && state.all_led => {
                let all_answer = (0..partitions).all(|p| {
                    i32::try_from(p).is_ok_and(|p| {
                        consumer
                            .fetch_watermarks(topic, p, Duration::from_secs(5))
                            .is_ok()
                    })
                });
                if all_answer {
                    return Ok(());
                }
                String::from("the partitions do not answer watermark queries yet")
            }
            Ok((state, _)) => format!("{state:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(StoreError::Backend(format!(
                "kafka: expected topic {topic} with {partitions} led partitions within \
                 {timeout:?}, found {last}"
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The current configuration of `topic` (name → value).
pub(crate) fn topic_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let results = block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options(timeout)),
    )
    .map_err(|e| backend(&format!("describing the configuration of topic {topic}"), e))?;
    let Some(result) = results.into_iter().next() else {
        return Err(StoreError::Backend(format!(
            "kafka: expected the configuration of topic {topic}, found an empty answer"
        )));
    };
    let resource = result.map_err(|code| {
        backend(
            &format!("describing the configuration of topic {topic}"),
            code,
        )
    })?;
    Ok(resource
        .entries
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect())
}

/// Runs a future to completion on this thread, parking between wake-ups.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        thread::park();
    }
}
