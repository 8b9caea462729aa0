//! The shard's effects as the account store's rows: ledger entries, recharge attempts and
//! the operator's balances, converted from the core's types at this edge (credits as
//! micro-credits, times as milliseconds, kinds and statuses as their wire text), and back
//! into the v1 JSON of the read routes.

use refill_ledger::autorecharge::AutoRechargeStatus;
use refill_ledger::effects::{
    AccountHandle, AttemptStatus, EntryKind, FlushSet, LedgerEntry, RechargeAttempt, Reference,
};
use refill_ledger::shard::encode_fingerprints;
use refill_ledger::shard::{ShardRowsRef, SnapshotError};
use refill_ledger::{Credits, Shard, TimestampMs};
use refill_store::{
    AccountStateRow, AttemptRow, BalanceRow, CheckpointRow, CustomerStateRow, DedupChunkRow, Flush,
    LedgerRow, ShardRows,
};
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

/// What one flush's rows are built from: the shard that just closed the flush, and what its
/// worker kept since the last one.
pub struct FlushSource<'a> {
    /// The shard, right after the batch that closed the flush.
    pub shard: &'a Shard,
    /// What the flush covers.
    pub set: &'a FlushSet,
    /// The shard's partition.
    pub partition: u32,
    /// Per account handle, the slot holding its newest flushed state (at least as long as
    /// the shard's accounts).
    pub account_slots: &'a [u8],
    /// Likewise per customer index.
    pub customer_slots: &'a [u8],
    /// Ledger entries since the last landed flush.
    pub entries: &'a [LedgerEntry],
    /// Recharge attempts since the last landed flush.
    pub attempts: &'a [RechargeAttempt],
    /// Shard batch → log offset.
    pub offsets: BatchOffsets,
    /// The log offset after the flush's record.
    pub log_next: u64,
    /// Where the shard's Kafka sources continue, if it reads them.
    pub sources: Option<(u64, u64)>,
}

/// The rows of a flush: the dirty accounts' balances and states (each in the slot not
/// holding its newest state), the changed customers, the entries and attempts since the
/// last flush, the new dedup ids, and the checkpoint.
pub fn flush_rows(source: &FlushSource<'_>) -> Flush {
    let FlushSource {
        shard,
        set,
        partition,
        ..
    } = *source;
    let as_of = shard.clock();
    let balances = set
        .accounts
        .iter()
        .map(|&handle| balance_row(shard, handle, as_of, set.number, partition))
        .collect();
    let accounts = set
        .accounts
        .iter()
        .map(|&handle| AccountStateRow {
            shard: partition,
            handle: handle.0,
            slot: 1 - source.account_slots[handle.0 as usize],
            version: set.number,
            state: shard.account_state(handle),
        })
        .collect();
    let customers = set
        .customers
        .iter()
        .map(|&index| CustomerStateRow {
            shard: partition,
            index,
            slot: 1 - source.customer_slots[index as usize],
            version: set.number,
            customer_id: shard.customer_at(index).id.to_string(),
            state: shard.customer_state(index),
        })
        .collect();
    let entries = source
        .entries
        .iter()
        .map(|entry| entry_row(shard, entry, source.offsets))
        .collect();
    let attempts = source.attempts.iter().map(attempt_row).collect();
    let dedup = set
        .dedup
        .iter()
        .map(|(generation, keys)| DedupChunkRow {
            shard: partition,
            generation: *generation,
            flush: set.number,
            fingerprints: encode_fingerprints(keys),
        })
        .collect();
    let checkpoint = CheckpointRow {
        shard: partition,
        version: set.number,
        log_next: source.log_next,
        sources: source.sources,
        as_of_ms: as_of.0,
        accounts: u32::try_from(shard.account_count()).expect("fewer than 2^32 accounts"),
        customers: u32::try_from(shard.customer_count()).expect("fewer than 2^32 customers"),
        dedup_generation_min: set.dedup_generation_min,
        meta: shard.flush_meta(),
    };
    Flush {
        balances,
        accounts,
        customers,
        entries,
        attempts,
        dedup,
        checkpoint: Some(checkpoint),
    }
}
