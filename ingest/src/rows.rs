//! The shard's effects as the account store's rows: ledger entries, recharge attempts and
//! the operator's balances, converted from the core's types at this edge (credits as
//! micro-credits, times as milliseconds, kinds and statuses as their wire text), and back
//! into the v1 JSON of the read routes.

use refill_ledger::autorecharge::AutoRechargeStatus;
use refill_ledger::effects::{
    AccountHandle, AttemptStatus, EntryKind, LedgerEntry, RechargeAttempt, Reference,
};
use refill_ledger::shard::{ShardRowsRef, SnapshotError};
use refill_ledger::{Credits, Shard, TimestampMs};
use refill_store::{AttemptRow, BalanceRow, CheckpointRow, LedgerRow, ShardRows};
use serde_json::{Value, json};

/// Maps a shard batch to the log offset of the record it came from: each log record is
/// applied as exactly one batch, so the two differ by a constant per shard life.
#[derive(Clone, Copy, Debug)]
pub struct BatchOffsets {
    /// The shard's partition of the log.
    pub partition: u32,
    /// `offset - batch` of every record applied since the shard was restored.
    pub offset_minus_batch: i128,
}

impl BatchOffsets {
    /// The log offset of shard batch `batch`.
    pub fn offset_of(&self, batch: u64) -> i128 {
        i128::from(batch) + self.offset_minus_batch
    }
}

/// The wire text of an entry kind.
pub fn kind_text(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Grant => "grant",
        EntryKind::Usage => "usage",
        EntryKind::Recharge => "recharge",
        EntryKind::Expiry => "expiry",
        EntryKind::Void => "void",
    }
}

/// The wire text of an attempt status.
pub fn status_text(status: AttemptStatus) -> &'static str {
    match status {
        AttemptStatus::Pending => "pending",
        AttemptStatus::Succeeded => "succeeded",
        AttemptStatus::Failed => "failed",
        AttemptStatus::Skipped => "skipped",
    }
}

/// The reference text of an entry: usage names the log range it rolls up, so every event
/// id stays traceable (`log:P:FIRST..LAST (N events)`).
pub fn reference_text(reference: &Reference, offsets: BatchOffsets) -> String {
    match reference {
        Reference::Usage {
            first_batch,
            last_batch,
            events,
        } => format!(
            "log:{}:{}..{} ({events} events)",
            offsets.partition,
            offsets.offset_of(*first_batch),
            offsets.offset_of(*last_batch)
        ),
        Reference::Grant(grant) => grant.to_string(),
        Reference::Recharge { command, grant } => format!("{command} {grant}"),
    }
}

/// The row of a ledger entry.
pub fn entry_row(shard: &Shard, entry: &LedgerEntry, offsets: BatchOffsets) -> LedgerRow {
    LedgerRow {
        customer_id: shard.customer_of(entry.account).id.to_string(),
        credit_type: shard.credit_type_of(entry.account).to_string(),
        seq: entry.seq,
        at_ms: entry.at.0,
        kind: kind_text(entry.kind).to_owned(),
        amount_micros: entry.amount.micros(),
        balance_after_micros: entry.balance_after.micros(),
        reference: reference_text(&entry.reference, offsets),
    }
}

/// The row of a recharge attempt.
pub fn attempt_row(attempt: &RechargeAttempt) -> AttemptRow {
    AttemptRow {
        customer_id: attempt.id.customer.to_string(),
        credit_type: attempt.id.credit_type.to_string(),
        seq: attempt.id.seq,
        command_id: attempt.id.to_string(),
        at_ms: attempt.at.0,
        credits_micros: attempt.credits.micros(),
        cost_minor_units: attempt.cost.map(|cost| cost.minor_units),
        currency: attempt.cost.map(|cost| cost.currency.code().to_owned()),
        status: status_text(attempt.status).to_owned(),
        reason: attempt
            .reason
            .as_ref()
            .map(|reason| reason.as_text().to_owned()),
    }
}

/// The operator's view of an account as of `as_of`, written by flush `version`.
pub fn balance_row(
    shard: &Shard,
    handle: AccountHandle,
    as_of: TimestampMs,
    version: u64,
    partition: u32,
) -> BalanceRow {
    let account = shard.account(handle);
    let (status, reason) = match account.auto_recharge().map(|auto| auto.status()) {
        None => (None, None),
        Some(AutoRechargeStatus::Active) => (Some("active"), None),
        Some(AutoRechargeStatus::Disabled) => (Some("disabled"), None),
        Some(AutoRechargeStatus::Paused(reason)) => (Some("paused"), Some(reason.as_str())),
    };
    BalanceRow {
        customer_id: shard.customer_of(handle).id.to_string(),
        credit_type: shard.credit_type_of(handle).to_string(),
        balance_micros: account.balance().micros(),
        overdraft_micros: account.overdraft().micros(),
        auto_recharge_status: status.map(str::to_owned),
        paused_reason: reason.map(str::to_owned),
        as_of_ms: as_of.0,
        version,
        shard: partition,
    }
}

/// Micro-credits as the API's decimal text.
pub fn credits_text(micros: i64) -> String {
    Credits::from_micros(micros).to_string()
}

/// A ledger row as the v1 JSON entry.
pub fn entry_json(row: &LedgerRow) -> Value {
    json!({
        "id": row.seq,
        "at": TimestampMs(row.at_ms).to_string(),
        "kind": row.kind,
        "amount": credits_text(row.amount_micros),
        "balance_after": credits_text(row.balance_after_micros),
        "reference": row.reference,
    })
}

/// An attempt row as the v1 JSON attempt.
pub fn attempt_json(row: &AttemptRow) -> Value {
    let cost = match (row.cost_minor_units, &row.currency) {
        (Some(minor), Some(code)) => refill_ledger::Currency::from_code(code)
            .map(|currency| {
                json!({
                    "amount": refill_ledger::Money { minor_units: minor, currency }.to_decimal().to_string(),
                    "currency": code,
                })
            })
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    json!({
        "id": row.command_id,
        "at": TimestampMs(row.at_ms).to_string(),
        "credits": credits_text(row.credits_micros),
        "cost": cost,
        "status": row.status,
        "reason": row.reason,
    })
}

/// The shard that made `checkpoint`, from the rows a restore read with it
/// (`AccountStore::load_shard`).
pub fn restore_shard(checkpoint: &CheckpointRow, rows: &ShardRows) -> Result<Shard, SnapshotError> {
    Shard::from_rows(&ShardRowsRef {
        meta: &checkpoint.meta,
        accounts: rows
            .accounts
            .iter()
            .map(|(_, state)| state.as_slice())
            .collect(),
        customers: rows
            .customers
            .iter()
            .map(|(_, state)| state.as_slice())
            .collect(),
        dedup: rows
            .dedup
            .iter()
            .map(|chunk| (chunk.generation, chunk.fingerprints.as_slice()))
            .collect(),
    })
}
