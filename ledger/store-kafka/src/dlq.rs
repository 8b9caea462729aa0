//! The dead-letter helper: a record that cannot be applied (malformed, invalid) must
//! neither block its partition nor vanish (DESIGN §4.9), so it goes to `refill.usage.dlq`
//! with its original key, value and headers, plus headers saying why and where it came
//! from. [`DeadLetters::send_to_dlq`] returns once the broker's in-sync replicas hold it,
//! so the caller may then commit past the source offset.

use std::sync::Arc;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use refill_store::StoreError;

use crate::DLQ_TOPIC;
use crate::client::{Pending, WaitingProducer, apply_overrides, create_producer, producer_config};
use crate::log::check_topic_name;

/// Header with the reason the record was rejected (UTF-8 text).
pub const HEADER_REASON: &str = "refill-reason";
/// Header with the topic the record was read from.
pub const HEADER_SOURCE_TOPIC: &str = "refill-source-topic";
/// Header with the partition it was read from (decimal text).
pub const HEADER_SOURCE_PARTITION: &str = "refill-source-partition";
/// Header with its offset there (decimal text).
pub const HEADER_SOURCE_OFFSET: &str = "refill-source-offset";
/// Header of a record the intake re-routed to its owner's partition: where it was read
/// (`topic/partition@offset`).
pub const HEADER_REROUTED_FROM: &str = "refill-rerouted-from";

/// Largest dead letter the producer takes (`message.max.bytes`); the DLQ topic must take
/// at least what its source topic takes.
const MAX_MESSAGE_BYTES: u32 = 8 << 20;

/// The original record, as read: key, value and headers, kept byte for byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// Its key (`None` for a null key).
    pub key: Option<&'a [u8]>,
    /// Its value (`None` for a null value).
    pub payload: Option<&'a [u8]>,
    /// Its headers in order (a `None` value is a null header value).
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> DeadLetter<'a> {
    /// The key, value and headers of a consumed message.
    pub fn of<M: Message>(message: &'a M) -> Self {
        Self {
            key: message.key(),
            payload: message.payload(),
            headers: message
                .headers()
                .map(|headers| headers.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default(),
        }
    }
}

/// Where a rejected record was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DlqSource<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl<'a> DlqSource<'a> {
    /// The topic, partition and offset of a consumed message.
    pub fn of<M: Message>(message: &'a M) -> Self {
        Self {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

/// Where a dead letter landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DlqReceipt {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset there.
    pub offset: i64,
}

/// A producer of dead letters (idempotent, `acks=all`), keyed like the original record so
/// one customer's rejections stay in order.
pub struct DeadLetters {
    topic: String,
    producer: WaitingProducer,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// A producer to `refill.usage.dlq` on the cluster at `bootstrap`. The topic is not
    /// created here: [`apply_topics`](crate::apply_topics) does that.
    pub fn connect(bootstrap: &str) -> Result<Self, StoreError> {
        Self::connect_to(bootstrap, DLQ_TOPIC, &[])
    }

    /// A producer to another dead-letter `topic`, with more librdkafka settings.
    pub fn connect_to(
        bootstrap: &str,
        topic: &str,
        client_config: &[(String, String)],
    ) -> Result<Self, StoreError> {
        check_topic_name(topic)?;
        let mut config = producer_config(
            bootstrap,
            "refill-dlq",
            MAX_MESSAGE_BYTES,
            std::time::Duration::ZERO,
        );
        apply_overrides(&mut config, client_config);
        Ok(Self {
            topic: topic.to_owned(),
            producer: create_producer(&config)?,
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `original` to the dead-letter topic with its reason and source; returns once
    /// it is on the in-sync replicas. The original headers come first, then
    /// [`HEADER_REASON`], [`HEADER_SOURCE_TOPIC`], [`HEADER_SOURCE_PARTITION`] and
    /// [`HEADER_SOURCE_OFFSET`] (a record rejected twice carries two sets: the last is the
    /// latest).
    pub fn send_to_dlq(
        &self,
        original: &DeadLetter<'_>,
        reason: &str,
        source: DlqSource<'_>,
    ) -> Result<DlqReceipt, StoreError> {
        let mut headers = OwnedHeaders::new_with_capacity(original.headers.len() + 4);
        for (key, value) in &original.headers {
            headers = headers.insert(Header { key, value: *value });
        }
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        for (key, value) in [
            (HEADER_REASON, reason),
            (HEADER_SOURCE_TOPIC, source.topic),
            (HEADER_SOURCE_PARTITION, partition.as_str()),
            (HEADER_SOURCE_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let pending = Arc::new(Pending::default());
        pending.expect_one();
        let mut record = BaseRecord::<[u8], [u8], Arc<Pending>>::with_opaque_to(
            &self.topic,
            Arc::clone(&pending),
        )
        .headers(headers);
        if let Some(key) = original.key {
            record = record.key(key);
        }
        if let Some(payload) = original.payload {
            record = record.payload(payload);
        }
        if let Err((error, _)) = self.producer.send(record) {
            return Err(StoreError::Backend(format!(
                "kafka: expected the dead letter of {}/{}@{} taken by the producer for {}, \
                 found: {error}",
                source.topic, source.partition, source.offset, self.topic
            )));
        }
        let delivered = pending.wait(&format!(
            "sending the dead letter of {}/{}@{} to {}",
            source.topic, source.partition, source.offset, self.topic
        ))?;
        Ok(DlqReceipt {
            partition: delivered.partition,
            offset: delivered.first,
        })
    }

    /// Sends a copy of a consumed record to `partition` of `topic` (a usage record that a
    /// producer's partitioner put on another partition than its customer's owner), with
    /// its key, value and headers and [`HEADER_REROUTED_FROM`]; returns once it is on the
    /// in-sync replicas. The intake's side writes (dead letters and re-routes) share this
    /// one producer: each is durable before the batch that moves past its source.
    pub fn reroute_message<M: Message>(
        &self,
        message: &M,
        topic: &str,
        partition: u32,
    ) -> Result<(), StoreError> {
        let original = DeadLetter::of(message);
        let source = DlqSource::of(message);
        let mut headers = OwnedHeaders::new_with_capacity(original.headers.len() + 1);
        for (key, value) in &original.headers {
            headers = headers.insert(Header { key, value: *value });
        }
        let from = format!("{}/{}@{}", source.topic, source.partition, source.offset);
        headers = headers.insert(Header {
            key: HEADER_REROUTED_FROM,
            value: Some(from.as_bytes()),
        });
        let target = i32::try_from(partition).map_err(|_| {
            StoreError::InvalidRequest(format!(
                "expected a partition below 2^31, found {partition}"
            ))
        })?;
        let pending = Arc::new(Pending::default());
        pending.expect_one();
        let mut record =
            BaseRecord::<[u8], [u8], Arc<Pending>>::with_opaque_to(topic, Arc::clone(&pending))
                .headers(headers)
                .partition(target);
        if let Some(key) = original.key {
            record = record.key(key);
        }
        if let Some(payload) = original.payload {
            record = record.payload(payload);
        }
        if let Err((error, _)) = self.producer.send(record) {
            return Err(StoreError::Backend(format!(
                "kafka: expected the re-route of {from} to {topic}/{partition} taken by the \
                 producer, found: {error}"
            )));
        }
        pending.wait(&format!("re-routing {from} to {topic}/{partition}"))?;
        Ok(())
    }

    /// [`DeadLetters::send_to_dlq`] for a consumed message: original and source from it.
    pub fn send_message_to_dlq<M: Message>(
        &self,
        message: &M,
        reason: &str,
    ) -> Result<DlqReceipt, StoreError> {
        self.send_to_dlq(&DeadLetter::of(message), reason, DlqSource::of(message))
    }
}
