//! The rows the shard workers write to the store for the read side: ledger entries and
//! recharge attempts, keyed by (customer, credit type, sequence) so a customer's history
//! is one ordered scan. Rewriting a row on replay writes the same bytes.

use refill_ledger::effects::{AttemptStatus, EntryKind, LedgerEntry, RechargeAttempt, Reference};
use refill_ledger::{Credits, Money, TimestampMs};
use serde::{Deserialize, Serialize};

/// Table of ledger entries.
pub const LEDGER: &str = "ledger";
/// Table of recharge attempts.
pub const ATTEMPTS: &str = "attempts";
/// Table of shard snapshots.
pub const SNAPSHOTS: &str = "snapshots";

/// The key prefix of one account: `customer 0x00 credit_type 0x00`.
pub fn account_prefix(customer: &str, credit_type: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(customer.len() + credit_type.len() + 10);
    key.extend_from_slice(customer.as_bytes());
    key.push(0);
    key.extend_from_slice(credit_type.as_bytes());
    key.push(0);
    key
}

/// The key of row `seq` of an account.
pub fn row_key(customer: &str, credit_type: &str, seq: u64) -> Vec<u8> {
    let mut key = account_prefix(customer, credit_type);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A stored ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRow {
    /// Position in the account's ledger.
    pub seq: u64,
    /// When.
    pub at: TimestampMs,
    /// Kind.
    pub kind: EntryKind,
    /// Signed amount.
    pub amount: Credits,
    /// Balance after.
    pub balance_after: Credits,
    /// What it refers to, as text.
    pub reference: String,
}

impl EntryRow {
    /// From a ledger entry of `shard_batch_base` (the log offset of the batch, so usage
    /// references name log offsets).
    pub fn from_entry(entry: &LedgerEntry, partition: u32, log_offset: u64) -> Self {
        let reference = match &entry.reference {
            Reference::Usage {
                first_input,
                last_input,
                events,
                ..
            } => {
                format!(
                    "log:{partition}:{log_offset}#{first_input}..{last_input} ({events} events)"
                )
            }
            Reference::Grant(grant) => grant.to_string(),
            Reference::Recharge { command, grant } => format!("{command} {grant}"),
        };
        Self {
            seq: entry.seq,
            at: entry.at,
            kind: entry.kind,
            amount: entry.amount,
            balance_after: entry.balance_after,
            reference,
        }
    }
}

/// A stored recharge attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRow {
    /// The attempt's id (command id text).
    pub id: String,
    /// When its status was reached.
    pub at: TimestampMs,
    /// Credits.
    pub credits: Credits,
    /// Cost, when known.
    pub cost: Option<Money>,
    /// Status.
    pub status: AttemptStatus,
    /// Reason text.
    pub reason: Option<String>,
}

impl AttemptRow {
    /// From an attempt effect.
    pub fn from_attempt(attempt: &RechargeAttempt) -> Self {
        Self {
            id: attempt.id.to_string(),
            at: attempt.at,
            credits: attempt.credits,
            cost: attempt.cost,
            status: attempt.status,
            reason: attempt
                .reason
                .as_ref()
                .map(|reason| reason.as_text().to_owned()),
        }
    }
}
