//! The recharger on Kafka: consumes `refill.recharge-commands` in the consumer group
//! `refill-recharger`, applies each command through a [`Recharger`], publishes the outcome on
//! `refill.account-commands` (key = customer id, so it reaches the owning shard), waits for
//! its delivery report, and only then commits the command's offset. What `refill recharger`
//! runs; the binary only parses flags.
//!
//! At-least-once delivery plus the book's idempotency = effectively once: a crash before the
//! commit redelivers the command, which the book answers from its record (or charges again
//! with the same idempotency key), so the outcome record may repeat but is identical each
//! time, and the owning shard applies only the in-flight command id once.
//!
//! A record that does not decode is logged, counted
//! (`refill_recharger_records_undecodable_total`) and committed past: it never blocks the
//! partition. A command that fails for an operational reason (store, gateway down, Kafka) is
//! retried in place with a backoff, since the next commands would meet the same failure; one
//! that needs an operator stays reserved in the book (a restart resumes it) and is
//! committed past, so one bad payment method does not stop the partition.

use std::future::Future;
use std::time::Duration;

use refill_ledger::codec;
use refill_ledger::effects::RechargeCommand;
use refill_ledger::input::{Input, RechargeOutcome, RechargeResult};
use refill_store_kafka::Topics;
use refill_store_kafka::rdkafka::ClientConfig;
use refill_store_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use refill_store_kafka::rdkafka::message::{BorrowedMessage, Message};
use refill_store_kafka::rdkafka::producer::{FutureProducer, FutureRecord};

use crate::book::RechargeBook;
use crate::error::RechargerError;
use crate::gateway::Gateway;
use crate::worker::Recharger;

/// The recharger's consumer group (behind the topic prefix).
pub const CONSUMER_GROUP: &str = "refill-recharger";
/// How long an outcome may wait in the producer's queue and for its delivery report.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// First pause before retrying a command that failed for an operational reason; doubles.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest pause between two retries of one command.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where the recharger reads and writes on Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Topic names (behind the prefix).
    pub topics: Topics,
    /// Consumer group id (`{prefix}refill-recharger`).
    pub group: String,
    /// librdkafka `client.id`.
    pub client_id: String,
    /// Extra librdkafka settings (name, value), applied last.
    pub overrides: Vec<(String, String)>,
}

impl KafkaSettings {
    /// The contract's topics and group behind `prefix` (empty in production).
    pub fn new(bootstrap: &str, prefix: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            topics: Topics::with_prefix(prefix),
            group: format!("{prefix}{CONSUMER_GROUP}"),
            client_id: "refill-recharger".to_owned(),
            overrides: Vec::new(),
        }
    }

    /// The consumer's settings: the engine's group-consumer settings
    /// ([`refill_store_kafka::group_consumer_config`]: cooperative rebalancing, offsets
    /// committed by hand after the outcome is delivered, from the earliest record when the
    /// group has no offset yet), then the overrides.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = refill_store_kafka::group_consumer_config(
            &self.bootstrap,
            &self.client_id,
            &self.group,
        );
        self.apply_overrides(&mut config);
        config
    }

    /// The outcome producer's settings: the engine's keyed producer
    /// ([`refill_store_kafka::keyed_producer_config`]: idempotent, `acks=all`, the Java
    /// client's murmur2 partitioner, so an outcome lands on its customer's partition), no
    /// linger, then the overrides.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = refill_store_kafka::keyed_producer_config(
            &self.bootstrap,
            &self.client_id,
            Duration::ZERO,
        );
        self.apply_overrides(&mut config);
        config
    }

    fn apply_overrides(&self, config: &mut ClientConfig) {
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
    }
}

/// Publishes recharge outcomes on `refill.account-commands` and waits for each delivery.
pub struct OutcomeProducer {
    producer: FutureProducer,
    topic: String,
}

impl OutcomeProducer {
    /// A producer for `settings`.
    pub fn new(settings: &KafkaSettings) -> Result<Self, RechargerError> {
        let producer = settings.producer_config().create().map_err(|e| {
            RechargerError::Transport(format!("expected a Kafka producer, found {e}"))
        })?;
        Ok(Self {
            producer,
            topic: settings.topics.account_commands.clone(),
        })
    }

    /// Sends `Input::RechargeOutcome(outcome)` (key = customer id, header `content-type`)
    /// and returns its (partition, offset) once the in-sync replicas have it.
    pub async fn send(&self, outcome: &RechargeOutcome) -> Result<(i32, i64), RechargerError> {
        let value = codec::encode_account_command(&Input::RechargeOutcome(outcome.clone()));
        let key = outcome.command.customer.as_str();
        let headers = refill_store_kafka::content_type_headers(codec::CONTENT_TYPE);
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(&value)
            .headers(headers);
        match self.producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((error, _)) => Err(RechargerError::Transport(format!(
                "expected the outcome of {} acknowledged on {}, found {error}",
                outcome.command, self.topic
            ))),
        }
    }
}

/// A bounded label for an error (never the error text).
fn error_kind(error: &RechargerError) -> &'static str {
    match error {
        RechargerError::Store(_) => "store",
        RechargerError::Encode(_) => "encode",
        RechargerError::Task(_) => "task",
        RechargerError::GatewayUnavailable { .. } => "gateway_unavailable",
        RechargerError::GatewayNeedsOperator { .. } => "gateway_needs_operator",
        RechargerError::NotReserved(_) => "not_reserved",
        RechargerError::Contention { .. } => "contention",
        RechargerError::Transport(_) => "transport",
        RechargerError::Config(_) => "config",
    }
}

/// A bounded label for a result.
pub fn result_label(result: &RechargeResult) -> &'static str {
    match result {
        RechargeResult::Charged { .. } => "succeeded",
        RechargeResult::Declined { .. } => "declined",
        RechargeResult::SpendLimitReached => "spend_limit_reached",
    }
}

/// Describes the loop's metrics to the installed recorder (call once at start).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "refill_recharger_commands_total",
        "Recharge command records read from Kafka."
    );
    metrics::describe_counter!(
        "refill_recharger_records_undecodable_total",
        "Records of the commands topic that do not decode, committed past."
    );
    metrics::describe_counter!(
        "refill_recharger_outcomes_total",
        "Outcomes published, by result."
    );
    metrics::describe_counter!(
        "refill_recharger_errors_total",
        "Failed attempts at a command, by kind."
    );
    metrics::describe_counter!(
        "refill_recharger_parked_total",
        "Commands left reserved for an operator and committed past."
    );
}

/// The consumer loop: resumes what the book holds reserved, then serves the commands topic
/// until `stop` resolves. Returns an error only when it cannot start (consumer, producer,
/// subscription, reading the pending commands); failures while serving are retried.
pub async fn run<G: Gateway, B: RechargeBook>(
    mut recharger: Recharger<G, B>,
    settings: &KafkaSettings,
    stop: impl Future<Output = ()>,
) -> Result<(), RechargerError> {
    let producer = OutcomeProducer::new(settings)?;
    let consumer: StreamConsumer = settings
        .consumer_config()
        .create()
        .map_err(|e| RechargerError::Transport(format!("expected a Kafka consumer, found {e}")))?;
    let mut stop = std::pin::pin!(stop);

    // Commands a previous run (of any recharger on this book) left reserved: settled with
    // their own keys and their outcomes sent, before the group gives us records (so a long
    // resume never exceeds the consumer's poll interval). Failures are handled as for a
    // delivered command: retried, or parked for an operator.
    let pending = recharger.pending().await?;
    if !pending.is_empty() {
        eprintln!("recharger: resuming {} reserved commands", pending.len());
    }
    for command in &pending {
        if !handle(&mut recharger, &producer, command, &mut stop).await {
            eprintln!("recharger: stopped while resuming");
            return Ok(());
        }
    }

    let topic = settings.topics.recharge_commands.as_str();
    consumer.subscribe(&[topic]).map_err(|e| {
        RechargerError::Transport(format!("expected to subscribe to {topic}, found {e}"))
    })?;
    eprintln!(
        "recharger: consuming {topic} in group {} (outcomes to {})",
        settings.group, settings.topics.account_commands
    );

    loop {
        let message = tokio::select! {
            () = &mut stop => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                eprintln!("recharger: kafka consumer error: {error}");
                metrics::counter!("refill_recharger_errors_total", "kind" => "transport")
                    .increment(1);
                tokio::time::sleep(RETRY_BACKOFF_MIN).await;
                continue;
            }
        };
        metrics::counter!("refill_recharger_commands_total").increment(1);
        let command = match codec::decode_recharge_command(message.payload().unwrap_or(&[])) {
            Ok(command) => command,
            Err(error) => {
                eprintln!(
                    "recharger: undecodable record skipped: topic={} partition={} offset={} \
                     error={error}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                );
                metrics::counter!("refill_recharger_records_undecodable_total").increment(1);
                commit(&consumer, &message);
                continue;
            }
        };
        if handle(&mut recharger, &producer, &command, &mut stop).await {
            commit(&consumer, &message);
        } else {
            // Stopping in the middle of a command: not committed, so redelivered.
            break;
        }
    }
    eprintln!("recharger: stopped");
    Ok(())
}

/// Processes one command until its outcome is delivered (true) or it is parked for an
/// operator (true), retrying operational failures; false when `stop` came first.
async fn handle<G: Gateway, B: RechargeBook>(
    recharger: &mut Recharger<G, B>,
    producer: &OutcomeProducer,
    command: &RechargeCommand,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut backoff = RETRY_BACKOFF_MIN;
    loop {
        let failure = match recharger.process(command).await {
            Ok(outcome) => match producer.send(&outcome).await {
                Ok(_) => {
                    metrics::counter!(
                        "refill_recharger_outcomes_total",
                        "result" => result_label(&outcome.result)
                    )
                    .increment(1);
                    return true;
                }
                Err(error) => error,
            },
            Err(error @ RechargerError::GatewayNeedsOperator { .. }) => {
                // Money may or may not have moved: the command stays reserved in the book
                // (a restart resumes it with the same key); the partition goes on.
                eprintln!(
                    "recharger: command {} parked for an operator: {error}",
                    command.id
                );
                metrics::counter!("refill_recharger_parked_total").increment(1);
                return true;
            }
            Err(error) => error,
        };
        eprintln!(
            "recharger: command {} failed, retrying in {backoff:?}: {failure}",
            command.id
        );
        metrics::counter!("refill_recharger_errors_total", "kind" => error_kind(&failure))
            .increment(1);
        tokio::select! {
            () = stop.as_mut() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// Commits past `message`. A failed commit (the partition was just revoked, say) only means
/// the record is delivered again, and the book answers it the same.
fn commit(consumer: &StreamConsumer, message: &BorrowedMessage<'_>) {
    if let Err(error) = consumer.commit_message(message, CommitMode::Sync) {
        eprintln!(
            "recharger: commit of partition {} offset {} failed (it will be redelivered): \
             {error}",
            message.partition(),
            message.offset()
        );
    }
}
