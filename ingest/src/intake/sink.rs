//! Recharge commands from the shards to `refill.recharge-commands`, keyed by customer. A
//! command is retried until Kafka has it: a threshold crossing is never dropped. Commands
//! are re-sent when a shard restores with a recharge in flight; the recharger applies each
//! command id once.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use refill_ledger::codec;
use refill_ledger::effects::RechargeCommand;
use refill_store_kafka::rdkafka;

use super::IntakeError;

/// Longest pause between two tries of one command.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts a task that produces every command received on `commands` to `topic`; it ends
/// when the channel closes. Must run inside a tokio runtime.
pub fn spawn_command_sink(
    bootstrap: &str,
    topic: &str,
    mut commands: tokio::sync::mpsc::Receiver<RechargeCommand>,
) -> Result<tokio::task::JoinHandle<()>, IntakeError> {
    let producer: FutureProducer = refill_store_kafka::keyed_producer_config(
        bootstrap,
        "refill-ingest-commands",
        Duration::from_millis(1),
    )
    .create()
    .map_err(|error| IntakeError::Kafka(format!("creating the command producer: {error}")))?;
    let topic = topic.to_owned();
    Ok(tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            let payload = codec::encode_recharge_command(&command);
            let key = command.id.customer.as_str().to_owned();
            let mut backoff = Duration::from_millis(50);
            loop {
                let headers = refill_store_kafka::content_type_headers(codec::CONTENT_TYPE);
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                match producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => {
                        metrics::counter!("refill_ingest_recharge_commands_sent_total")
                            .increment(1);
                        break;
                    }
                    Err((error, _)) => {
                        metrics::counter!("refill_ingest_kafka_errors_total").increment(1);
                        eprintln!(
                            "intake: sending recharge command {} to {topic}: {error}; retrying",
                            command.id
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    }
                }
            }
        }
    }))
}
