//! Inputs for shards another worker owns, sent to their partition of
//! `refill.account-commands` (the owner's intake reads them into its journal), and usage
//! events posted over HTTP for customers another worker owns, to `refill.usage`. Catalog
//! changes and events sent to any worker reach their shards this way.

use std::pin::Pin;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use refill_ledger::{Input, codec};
use refill_store_kafka::rdkafka;

use super::IntakeError;
use crate::http::Forwarder;

/// Produces forwarded inputs to an explicit partition of the account-commands topic, and
/// forwarded usage events to the usage topic.
pub struct AccountCommandForwarder {
    producer: FutureProducer,
    topic: String,
    usage_topic: String,
}

impl AccountCommandForwarder {
    /// A forwarder to `topic` (account commands) and `usage_topic` on the cluster at
    /// `bootstrap`.
    pub fn connect(bootstrap: &str, topic: &str, usage_topic: &str) -> Result<Self, IntakeError> {
        let producer = refill_store_kafka::keyed_producer_config(
            bootstrap,
            "refill-ingest-forward",
            Duration::ZERO,
        )
        .create()
        .map_err(|error| IntakeError::Kafka(format!("creating the forwarder: {error}")))?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            usage_topic: usage_topic.to_owned(),
        })
    }
}

impl Forwarder for AccountCommandForwarder {
    fn forward(
        &self,
        shard: u32,
        input: Input,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        Box::pin(async move {
            let payload = codec::encode_account_command(&input);
            let partition = i32::try_from(shard).map_err(|error| error.to_string())?;
            let headers = refill_store_kafka::content_type_headers(codec::CONTENT_TYPE);
            let record = FutureRecord::<(), _>::to(&topic)
                .partition(partition)
                .payload(&payload)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(error, _)| format!("{topic} partition {shard}: {error}"))
        })
    }

    fn forward_usage(
        &self,
        customer: String,
        event_json: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let producer = self.producer.clone();
        let topic = self.usage_topic.clone();
        Box::pin(async move {
            let headers = refill_store_kafka::content_type_headers("application/json");
            // Keyed by customer with Kafka's partitioner: the owner's partition.
            let record = FutureRecord::to(&topic)
                .key(&customer)
                .payload(&event_json)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(error, _)| format!("{topic}: {error}"))
        })
    }
}
