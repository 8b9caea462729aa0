//! Client settings for the engine's roles (the ingest intake, the recharge-command
//! consumer, the producers of commands and outcomes), so every role speaks to Kafka the
//! same way: idempotent keyed producers with Kafka's default partitioner, group consumers
//! with cooperative rebalancing and manual commits.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use refill_store::StoreError;

use crate::client::{
    base_config, consumer_config, create_consumer, describe_topic, producer_config,
};

/// How long a metadata look-up may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer in group `group_id`: cooperative-sticky assignment (a rebalance moves only
/// the partitions that change owner; the others keep being read), no automatic commits
/// (offsets are committed after the records' effects are durable), and a session timeout
/// of 6 s, the broker's lowest by default, so a killed worker's partitions move quickly.
pub fn group_consumer_config(bootstrap: &str, client_id: &str, group_id: &str) -> ClientConfig {
    let mut config = base_config(bootstrap, client_id);
    config
        .set("group.id", group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A group that never committed starts from the beginning: nothing produced before
        // the first worker started is skipped.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        .set("fetch.wait.max.ms", "50")
        .set("queued.max.messages.kbytes", "16384");
    config
}

/// A consumer of explicitly assigned partitions (no group membership, no commits).
pub fn assign_consumer_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut config = consumer_config(bootstrap, client_id);
    config.set("fetch.wait.max.ms", "50");
    config
}

/// An idempotent producer (acks=all) whose keyed records land where Kafka's Java producer
/// would put them (`murmur2_random`), lingering `linger` to form batches.
pub fn keyed_producer_config(bootstrap: &str, client_id: &str, linger: Duration) -> ClientConfig {
    producer_config(bootstrap, client_id, 1 << 20, linger)
}

/// The partition count of `topic`, or an error saying it does not exist (topics are made by
/// `refill migrate`, never implicitly).
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<u32, StoreError> {
    let consumer = create_consumer(&consumer_config(bootstrap, "refill-metadata"))?;
    match describe_topic(&consumer, topic, METADATA_TIMEOUT)? {
        (Some(state), _) => Ok(state.partitions),
        (None, _) => Err(StoreError::InvalidRequest(format!(
            "expected topic {topic} on the cluster at {bootstrap} (run `refill migrate`), \
             found none"
        ))),
    }
}

/// Record headers naming the value's `content-type`, as every Refill producer sends them.
pub fn content_type_headers(content_type: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some(content_type),
    })
}
