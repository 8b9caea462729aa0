//! Reads of an account's history (ledger entries, recharge attempts): what the store holds
//! as flushed, and, for an account this node owns, what its worker applied since the last
//! flush (entries and attempts not written yet, and the usage not rolled up yet), so a
//! client reads its own writes even between flushes.

use std::sync::Arc;

use refill_ledger::effects::{LedgerEntry, Reference};
use refill_store::{AttemptRow, LedgerRow};

use crate::engine::{Engine, EngineError, ShardView};
use crate::rows;

/// Up to `limit` ledger entries of an account from `from_seq` on, oldest first.
pub async fn ledger(
    engine: &Engine,
    customer: &str,
    credit_type: &str,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<LedgerRow>, EngineError> {
    let shard = engine.shard_of(customer);
    // The worker's part is read first: whatever it flushes meanwhile is in the store by
    // the time the store is read, so nothing falls between the two.
    let unflushed = if engine.owns(shard) {
        let (who, kind) = (customer.to_owned(), credit_type.to_owned());
        engine
            .read_view(shard, move |view| unflushed_entries(view, &who, &kind))
            .await?
    } else {
        Vec::new()
    };
    let store = Arc::clone(engine.accounts());
    let (who, kind) = (customer.to_owned(), credit_type.to_owned());
    let mut found = tokio::task::spawn_blocking(move || store.ledger(&who, &kind, from_seq, limit))
        .await
        .map_err(|_| EngineError::Stopped { shard })??;
    for row in unflushed {
        let newer = found.last().is_none_or(|last| row.seq > last.seq);
        if row.seq >= from_seq && newer && found.len() < limit {
            found.push(row);
        }
    }
    Ok(found)
}

/// Up to `limit` recharge attempts of an account, oldest first; an attempt updated since
/// the last flush shows its newest state.
pub async fn attempts(
    engine: &Engine,
    customer: &str,
    credit_type: &str,
    limit: usize,
) -> Result<Vec<AttemptRow>, EngineError> {
    let shard = engine.shard_of(customer);
    let unflushed = if engine.owns(shard) {
        let (who, kind) = (customer.to_owned(), credit_type.to_owned());
        engine
            .read_view(shard, move |view| {
                view.unflushed_attempts
                    .iter()
                    .filter(|attempt| {
                        attempt.id.customer.as_str() == who
                            && attempt.id.credit_type.as_str() == kind
                    })
                    .map(rows::attempt_row)
                    .collect::<Vec<_>>()
            })
            .await?
    } else {
        Vec::new()
    };
    let store = Arc::clone(engine.accounts());
    let (who, kind) = (customer.to_owned(), credit_type.to_owned());
    let mut found = tokio::task::spawn_blocking(move || store.attempts(&who, &kind, 0, limit))
        .await
        .map_err(|_| EngineError::Stopped { shard })??;
    for row in unflushed {
        match found.iter_mut().find(|held| held.seq == row.seq) {
            Some(held) => *held = row,
            None => found.push(row),
        }
    }
    found.sort_by_key(|row| row.seq);
    found.truncate(limit);
    Ok(found)
}

/// The account's entries since the last flush, and its usage not rolled up yet as the
/// entry the next flush will write.
fn unflushed_entries(view: &ShardView<'_>, customer: &str, credit_type: &str) -> Vec<LedgerRow> {
    let Some(handle) = view.shard.find_account(customer, credit_type) else {
        return Vec::new();
    };
    let mut found: Vec<LedgerRow> = view
        .unflushed_entries
        .iter()
        .filter(|entry| entry.account == handle)
        .map(|entry| rows::entry_row(view.shard, entry, view.offsets))
        .collect();
    let account = view.shard.account(handle);
    let pending = account.pending_usage();
    if pending.events > 0 {
        let entry = LedgerEntry {
            account: handle,
            seq: account.last_entry_seq() + 1,
            at: view.shard.clock(),
            kind: refill_ledger::effects::EntryKind::Usage,
            amount: refill_ledger::Credits::from_micros(-pending.micros),
            balance_after: account.balance(),
            reference: Reference::Usage {
                first_batch: pending.first_batch,
                last_batch: pending.last_batch(),
                events: pending.events,
            },
        };
        let mut row = rows::entry_row(view.shard, &entry, view.offsets);
        row.reference.push_str(", rolling up");
        found.push(row);
    }
    found
}
