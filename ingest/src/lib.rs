//! Event intake, the imperative shell around the ledger core: shard workers over the log,
//! the lock-free balance table, the store rows of the read side, and the HTTP API.

pub mod console;
pub mod engine;
pub mod error;
pub mod http;
pub mod intake;
pub mod login_throttle;
pub mod num;
pub mod openapi;
pub mod page;
pub mod reads;
pub mod rows;
pub mod views;
pub mod wire;

/// Registers the help text of every metric the engine exports (Prometheus `# HELP`).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "refill_console_login_failures_total",
        "Console logins with a wrong API key (20 a minute close the login for the rest of it)."
    );
    describe_counter!(
        "refill_ingest_reads_refused_total",
        "Reads refused because a shard's request queue was full (HTTP 503, busy)."
    );
    describe_counter!(
        "refill_ingest_commands_backpressure_total",
        "Times a shard held off applying because the recharge-command queue was full."
    );
    describe_counter!(
        "refill_ingest_log_appends_total",
        "Log records appended (each durable before acknowledged)."
    );
    describe_counter!(
        "refill_ingest_events_accepted_total",
        "Usage events accepted over HTTP."
    );
    describe_counter!(
        "refill_ingest_events_rejected_total",
        "Usage events rejected at the HTTP edge, by reason."
    );
    describe_counter!(
        "refill_ingest_events_applied_total",
        "Usage events applied by the shards."
    );
    describe_counter!(
        "refill_ingest_dedup_hits_total",
        "Usage events dropped as duplicates inside the dedup window."
    );
    describe_counter!(
        "refill_ingest_inputs_rejected_total",
        "Inputs the shards rejected."
    );
    describe_counter!(
        "refill_ingest_inputs_rejected_by_reason_total",
        "Inputs the shards rejected, by rejection code."
    );
    describe_counter!(
        "refill_ingest_notifications_total",
        "Notifications produced, by kind."
    );
    describe_counter!(
        "refill_ingest_rerouted_total",
        "Valid usage records on another partition than their customer's owner, re-routed there."
    );
    describe_counter!(
        "refill_ingest_shard_failures_total",
        "Shards stopped on an error they cannot go past (see /readyz for the reason)."
    );
    describe_counter!(
        "refill_store_flush_accounts_total",
        "Dirty accounts written by landed flushes."
    );
    describe_counter!(
        "refill_store_flush_retries_total",
        "Flush writes retried at once after a transient store error."
    );
    describe_counter!(
        "refill_store_flush_failures_total",
        "Flushes kept for later because the store stayed unavailable."
    );
    describe_counter!(
        "refill_store_flush_backpressure_total",
        "Passes a shard did not apply because too many rows wait for an unavailable store."
    );
    describe_gauge!(
        "refill_store_flush_lag_seconds",
        Unit::Seconds,
        "Age of the oldest change not yet in a landed flush, per shard (0 when flushed)."
    );
    describe_counter!(
        "refill_recharger_outcomes_total",
        "Recharge outcomes sent back to the shards, by result."
    );
    describe_gauge!(
        "refill_ingest_shards_owned",
        "Shards this node owns now (all on one machine; its partitions' when scaled out)."
    );
    describe_counter!(
        "refill_ingest_partitions_assigned_total",
        "refill.usage partitions the consumer group gave this worker."
    );
    describe_counter!(
        "refill_ingest_partitions_revoked_total",
        "refill.usage partitions the consumer group took from this worker."
    );
    describe_counter!(
        "refill_ingest_kafka_events_total",
        "Inputs read from Kafka and appended to a shard's journal."
    );
    describe_counter!(
        "refill_ingest_kafka_skipped_total",
        "Kafka records skipped because the shard's journal already holds them."
    );
    describe_counter!(
        "refill_ingest_kafka_errors_total",
        "Kafka read and produce errors of the intake (retried or surfaced)."
    );
    describe_counter!(
        "refill_ingest_dead_letters_total",
        "Usage records sent to refill.usage.dlq with their reason."
    );
    describe_counter!(
        "refill_ingest_account_commands_rejected_total",
        "refill.account-commands records that do not decode (skipped, logged)."
    );
    describe_counter!(
        "refill_ingest_recharge_commands_sent_total",
        "Recharge commands acknowledged by refill.recharge-commands."
    );
    describe_gauge!(
        "refill_ingest_paused_accounts",
        "Accounts whose auto-recharge is paused, per shard (counted every minute)."
    );
    describe_gauge!(
        "refill_ingest_accounts",
        "Accounts per shard (updated at flushes)."
    );
    describe_histogram!(
        "refill_ingest_batch_inputs",
        "Inputs per applied log record."
    );
    describe_histogram!(
        "refill_ingest_apply_seconds",
        Unit::Seconds,
        "Time to apply one log record in a shard."
    );
    describe_histogram!(
        "refill_store_flush_seconds",
        Unit::Seconds,
        "Time to build and write one flush's rows, checkpoint last."
    );
    describe_histogram!(
        "refill_ingest_restore_seconds",
        Unit::Seconds,
        "Time for a shard to restore from its rows and checkpoint and replay the log after it."
    );
}
