//! Refill's storage over Apache Kafka: the [`Log`](refill_store::Log) port over one Kafka
//! topic ([`KafkaLog`]), the topic settings of the Kafka contract and the code that applies
//! them ([`apply_topics`], what `refill migrate` calls), the retention rule of the topics a
//! shard replays from ([`check_retention`], checked at start), and the dead-letter helper
//! ([`DeadLetters`]) that parks rejected records on `refill.usage.dlq` with their reason.
//!
//! Everything here is blocking, like the ports: it runs librdkafka (bundled, 2.12.x, through
//! `rdkafka` 0.39) with its own threads, and async shells call it from blocking tasks. The
//! guarantees and their limits are in this crate's `README.md`; the short version:
//!
//! - appends go through an idempotent producer (`enable.idempotence=true`, `acks=all`) and
//!   return once every record is acknowledged by the partition's in-sync replicas;
//! - the records of one append are contiguous and in order as long as this [`KafkaLog`] is
//!   the only writer of the partition (checked on every append);
//! - the topic must be a plain, non-compacted topic written without transactions, so its
//!   offsets are dense: [`KafkaLog::connect`] refuses a compacted topic and `read` returns
//!   [`StoreError::Corrupt`](refill_store::StoreError::Corrupt) when it sees a gap.

mod client;
mod dlq;
mod log;
mod retention;
mod roles;
mod topics;

pub use dlq::{
    DeadLetter, DeadLetters, DlqReceipt, DlqSource, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};
pub use log::{KafkaLog, LogSettings};
/// The Kafka client this crate is built on (0.39, bundled librdkafka 2.12), for callers
/// that hand it messages ([`DeadLetters::send_message_to_dlq`]).
pub use rdkafka;
pub use retention::{
    RETENTION_MIN_MS_DEFAULT, RetentionProblem, RetentionReport, TopicRetention, check_retention,
};
pub use roles::{
    assign_consumer_config, content_type_headers, group_consumer_config, keyed_producer_config,
    partition_count,
};
pub use topics::{
    TopicAction, TopicDifference, TopicOutcome, TopicSpec, TopicsReport, apply_topic_specs,
    apply_topics, delete_topics, load_topics, parse_topics, prefixed_specs,
};

/// Producers' usage events (key = customer id); the log the ingest shards read.
pub const USAGE_TOPIC: &str = "refill.usage";
/// Rejected usage records: original bytes plus headers with the reason and the source.
pub const DLQ_TOPIC: &str = "refill.usage.dlq";
/// Threshold crossings from the shards to the recharger (key = customer id).
pub const RECHARGE_COMMANDS_TOPIC: &str = "refill.recharge-commands";
/// Every change to an account other than usage (key = customer id); same partition count
/// as [`USAGE_TOPIC`], so partition p of both belongs to one shard.
pub const ACCOUNT_COMMANDS_TOPIC: &str = "refill.account-commands";
/// The shards' journal when the log is Kafka: the batches each shard applies, in order (one
/// partition per shard, the partition count of [`USAGE_TOPIC`]), so a replay is exact.
pub const JOURNAL_TOPIC: &str = "refill.journal";

/// The names of the contract's topics in one namespace: the names above behind a prefix
/// (empty in production; tests and shared clusters use one of their own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Producers' usage events ([`USAGE_TOPIC`]).
    pub usage: String,
    /// Rejected usage records ([`DLQ_TOPIC`]).
    pub dlq: String,
    /// Recharge commands ([`RECHARGE_COMMANDS_TOPIC`]).
    pub recharge_commands: String,
    /// Account commands ([`ACCOUNT_COMMANDS_TOPIC`]).
    pub account_commands: String,
    /// The shards' journal ([`JOURNAL_TOPIC`]).
    pub journal: String,
}

impl Topics {
    /// The topic names behind `prefix` (empty: the contract's names).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            usage: format!("{prefix}{USAGE_TOPIC}"),
            dlq: format!("{prefix}{DLQ_TOPIC}"),
            recharge_commands: format!("{prefix}{RECHARGE_COMMANDS_TOPIC}"),
            account_commands: format!("{prefix}{ACCOUNT_COMMANDS_TOPIC}"),
            journal: format!("{prefix}{JOURNAL_TOPIC}"),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}
