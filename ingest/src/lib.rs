//! Event intake, the imperative shell around the ledger core: shard workers over the log,
//! the lock-free balance table, the store rows of the read side, and the HTTP API.

pub mod engine;
pub mod error;
pub mod http;
pub mod intake;
pub mod num;
pub mod openapi;
pub mod page;
pub mod rows;
pub mod views;
pub mod wire;

/// Registers the help text of every metric the engine exports (Prometheus `# HELP`).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
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
    describe_counter!("refill_ingest_snapshots_total", "Shard snapshots written.");
    describe_counter!(
        "refill_recharger_outcomes_total",
        "Recharge outcomes sent back to the shards, by result."
    );
    describe_gauge!(
        "refill_ingest_paused_accounts",
        "Accounts whose auto-recharge is paused, per shard (updated at snapshots)."
    );
    describe_gauge!(
        "refill_ingest_accounts",
        "Accounts per shard (updated at snapshots)."
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
        "refill_ingest_flush_seconds",
        Unit::Seconds,
        "Time to write a pass's rows to the store."
    );
    describe_histogram!(
        "refill_ingest_restore_seconds",
        Unit::Seconds,
        "Time for a shard to restore its snapshot and replay the log."
    );
}
