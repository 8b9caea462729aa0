//! The recharger's book on a CQL store with lightweight transactions, [`CqlBook`], so any
//! number of recharger processes can share it without ever paying twice or passing a
//! spend limit.
//!
//! **The period row is the truth.** A command's decision (reserved with its credits and
//! cost, or limit reached) is a line of the spend row of its (customer, credit type,
//! period), added by one compare-and-set on the row's version together with the new
//! `reserved_minor`: the reservation and the command id it belongs to are written by the
//! same Paxos round, so they are never apart. The first writer of a command's line wins;
//! whoever comes later (a redelivery, another process) finds the line and takes it.
//! Settling rewrites the line (charged: the spend stays; declined: released) by another
//! compare-and-set; the first settlement wins.
//!
//! **The command row is the index.** `recharge_commands` (`INSERT ... IF NOT EXISTS`, then
//! `UPDATE ... IF state = ?`) answers "command id seen?" in one read and keeps final results
//! after the period is long gone. It is derived from the line, never ahead of it.
//!
//! **Pending rows** (the [`Store`](refill_store::Store) table `recharger`, `pending/<id>`,
//! the command itself) are written before the decision and deleted after the settlement,
//! so a restarted process finds every command that may hold a reservation.
//!
//! Crash at any point: before the line, nothing is reserved (a redelivery decides afresh);
//! after it, every later call finds it, so the charge is retried with the same amount and
//! the same idempotency key, never decided again. Spend can only be over-counted (a line
//! whose command is never delivered again stays reserved), never under-counted.

use std::sync::Arc;

use refill_ledger::effects::RechargeCommand;
use refill_ledger::ids::{CommandId, CreditTypeId, CustomerId};
use refill_ledger::input::RechargeResult;
use refill_ledger::spend::{Begin, CommandState, reserve_within};
use refill_ledger::time::{SpendPeriod, TimestampMs};
use refill_store::{Store, StoreError, Write};
use refill_store_cql::CqlStore;
use serde::{Deserialize, Serialize};

use crate::book::{RechargeBook, Settlement, TABLE, encode, pending_key, scan_pending};
use crate::error::RechargerError;

/// Compare-and-set attempts on one period row before giving up with
/// [`RechargerError::Contention`] (each failed attempt means another command of the same
/// account moved the row: with one recharge in flight per account, a handful at most).
pub const CAS_ATTEMPTS_MAX: u32 = 64;

/// The format byte before the postcard bytes of the CQL book's blobs.
const FORMAT_V1: u8 = 1;

/// One command's line in a period row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    command: CommandId,
    issued_at: TimestampMs,
    state: CommandState,
}

impl Line {
    /// What the line counts toward the period's spend, in minor units.
    fn counted_minor(&self) -> i64 {
        counted_minor(&self.state)
    }
}

fn counted_minor(state: &CommandState) -> i64 {
    match state {
        CommandState::Reserved { cost, .. }
        | CommandState::Done(RechargeResult::Charged { cost, .. }) => cost.minor_units,
        CommandState::Done(_) => 0,
    }
}

/// The recharger's record of one period row (the `state` blob).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PeriodRecord {
    lines: Vec<Line>,
}

impl PeriodRecord {
    fn line(&self, id: &CommandId) -> Option<&Line> {
        self.lines.iter().find(|line| line.command == *id)
    }

    /// Spend counted for recharges issued inside `period`: the lines issued inside it, plus
    /// any reservation of the row no line accounts for (a row written without lines, by
    /// hand or by an older release: counted, to stay on the safe side).
    fn spent_in(&self, period: SpendPeriod, reserved_minor: i64) -> i64 {
        let all: i64 = self.lines.iter().map(Line::counted_minor).sum();
        let inside: i64 = self
            .lines
            .iter()
            .filter(|line| period.contains(line.issued_at))
            .map(Line::counted_minor)
            .sum();
        inside + (reserved_minor - all).max(0)
    }
}

fn encode_blob<T: Serialize>(value: &T) -> Result<Vec<u8>, RechargerError> {
    let mut bytes = vec![FORMAT_V1];
    bytes.extend(encode(value)?);
    Ok(bytes)
}

fn decode_blob<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, RechargerError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|error| {
            RechargerError::Store(StoreError::Corrupt(format!(
                "expected a postcard {what}, found bytes that do not decode: {error}"
            )))
        }),
        Some((version, _)) => Err(RechargerError::Store(StoreError::Corrupt(format!(
            "expected {what} in format {FORMAT_V1}, found format {version}"
        )))),
        None => Err(RechargerError::Store(StoreError::Corrupt(format!(
            "expected {what}, found an empty blob"
        )))),
    }
}

/// A period row as the book reads it.
struct PeriodRow {
    version: i64,
    reserved_minor: i64,
    record: PeriodRecord,
}

/// The recharger's book on a CQL store (ScyllaDB or Cassandra) with lightweight
/// transactions; see the module docs for the protocol. Share one per process behind an
/// `Arc`, or open one per process on the same keyspace: both are safe.
pub struct CqlBook {
    store: Arc<CqlStore>,
}

impl std::fmt::Debug for CqlBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlBook")
            .field("address", &self.store.address())
            .field("keyspace", &self.store.keyspace())
            .finish()
    }
}

impl CqlBook {
    /// The book on `store` (migrated: `CqlStore::migrate`).
    pub fn new(store: Arc<CqlStore>) -> Self {
        Self { store }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<CqlStore> {
        &self.store
    }

    fn read_row(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        period: SpendPeriod,
    ) -> Result<Option<PeriodRow>, RechargerError> {
        let Some(row) =
            self.store
                .spend_row(customer.as_str(), credit_type.as_str(), period.start.0)?
        else {
            return Ok(None);
        };
        let record = if row.state.is_empty() {
            PeriodRecord::default()
        } else {
            decode_blob(&row.state, "spend period record")?
        };
        Ok(Some(PeriodRow {
            version: row.version,
            reserved_minor: row.reserved_minor,
            record,
        }))
    }

    fn write_row(
        &self,
        command: &RechargeCommand,
        expected_version: i64,
        reserved_minor: i64,
        record: &PeriodRecord,
    ) -> Result<bool, RechargerError> {
        Ok(self.store.compare_and_set_spend_state(
            command.id.customer.as_str(),
            command.id.credit_type.as_str(),
            command.period.start.0,
            expected_version,
            reserved_minor,
            &encode_blob(record)?,
        )?)
    }

    /// The command's line in its period row: the one there, or a new decision added by
    /// compare-and-set.
    fn decide(&self, command: &RechargeCommand) -> Result<CommandState, RechargerError> {
        let id = &command.id;
        for _ in 0..CAS_ATTEMPTS_MAX {
            let row = self.read_row(&id.customer, &id.credit_type, command.period)?;
            let (version, reserved_minor, mut record) = match row {
                Some(row) => (row.version, row.reserved_minor, row.record),
                None => (0, 0, PeriodRecord::default()),
            };
            if let Some(line) = record.line(id) {
                return Ok(line.state.clone());
            }
            let spent = record.spent_in(command.period, reserved_minor);
            let state = match reserve_within(command, spent) {
                Some((credits, cost)) => CommandState::Reserved { credits, cost },
                None => CommandState::Done(RechargeResult::SpendLimitReached),
            };
            let reserved_after = reserved_minor
                .checked_add(counted_minor(&state))
                .ok_or_else(|| overflow(id, reserved_minor))?;
            record.lines.push(Line {
                command: id.clone(),
                issued_at: command.issued_at,
                state: state.clone(),
            });
            if self.write_row(command, version, reserved_after, &record)? {
                return Ok(state);
            }
        }
        Err(RechargerError::Contention {
            command: id.to_string(),
            attempts: CAS_ATTEMPTS_MAX,
        })
    }

    /// Settles the command's line (first settlement wins) and returns the final result.
    fn settle(
        &self,
        command: &RechargeCommand,
        settlement: &Settlement,
    ) -> Result<RechargeResult, RechargerError> {
        let id = &command.id;
        for _ in 0..CAS_ATTEMPTS_MAX {
            let not_reserved = || RechargerError::NotReserved(id.to_string());
            let row = self
                .read_row(&id.customer, &id.credit_type, command.period)?
                .ok_or_else(not_reserved)?;
            let mut record = row.record;
            let line = record
                .lines
                .iter_mut()
                .find(|line| line.command == *id)
                .ok_or_else(not_reserved)?;
            let (credits, cost) = match &line.state {
                CommandState::Done(result) => return Ok(result.clone()),
                CommandState::Reserved { credits, cost } => (*credits, *cost),
            };
            let (result, released) = match settlement {
                Settlement::Charged => (RechargeResult::Charged { credits, cost }, 0),
                Settlement::Declined { code } => (
                    RechargeResult::Declined { code: code.clone() },
                    cost.minor_units,
                ),
            };
            line.state = CommandState::Done(result.clone());
            let reserved_after = row.reserved_minor - released;
            if self.write_row(command, row.version, reserved_after, &record)? {
                return Ok(result);
            }
        }
        Err(RechargerError::Contention {
            command: id.to_string(),
            attempts: CAS_ATTEMPTS_MAX,
        })
    }

    /// The command row, raw and decoded.
    fn command_row(
        &self,
        id: &CommandId,
    ) -> Result<Option<(Vec<u8>, CommandState)>, RechargerError> {
        let Some(bytes) = self.store.command_state(&id.to_string())? else {
            return Ok(None);
        };
        let state = decode_blob(&bytes, "recharge command state")?;
        Ok(Some((bytes, state)))
    }

    /// Makes the command row say `done` (unless it already says done).
    fn index_done(&self, id: &CommandId, done: &CommandState) -> Result<(), RechargerError> {
        let key = id.to_string();
        let done_bytes = encode_blob(done)?;
        for _ in 0..CAS_ATTEMPTS_MAX {
            match self.command_row(id)? {
                None => {
                    if self.store.insert_if_absent(&key, &done_bytes)? {
                        return Ok(());
                    }
                }
                Some((_, CommandState::Done(_))) => return Ok(()),
                Some((bytes, CommandState::Reserved { .. })) => {
                    if self
                        .store
                        .replace_command_state(&key, &bytes, &done_bytes)?
                    {
                        return Ok(());
                    }
                }
            }
        }
        Err(RechargerError::Contention {
            command: key,
            attempts: CAS_ATTEMPTS_MAX,
        })
    }

    fn drop_pending(&self, id: &CommandId) -> Result<(), RechargerError> {
        self.store.write(vec![Write::Delete {
            table: TABLE,
            key: pending_key(id),
        }])?;
        Ok(())
    }
}

fn overflow(id: &CommandId, reserved_minor: i64) -> RechargerError {
    RechargerError::Store(StoreError::Corrupt(format!(
        "expected the spend reserved for {id} to stay within i64 minor units, found \
         {reserved_minor} already reserved"
    )))
}

fn to_begin(state: CommandState) -> Begin {
    match state {
        CommandState::Reserved { credits, cost } => Begin::Charge { credits, cost },
        CommandState::Done(result) => Begin::Finished(result),
    }
}

impl RechargeBook for CqlBook {
    fn begin(&self, command: &RechargeCommand) -> Result<Begin, RechargerError> {
        if let Some((_, state)) = self.command_row(&command.id)? {
            return Ok(to_begin(state));
        }
        // Before the decision: a restart then finds every command that may hold spend.
        self.store.write(vec![Write::Put {
            table: TABLE,
            key: pending_key(&command.id),
            value: encode(command)?,
        }])?;
        let mut state = self.decide(command)?;
        let key = command.id.to_string();
        if !self.store.insert_if_absent(&key, &encode_blob(&state)?)? {
            // Another process indexed the same line first; its row may be further along.
            if let Some((_, indexed)) = self.command_row(&command.id)? {
                state = indexed;
            }
        }
        if matches!(state, CommandState::Done(_)) {
            self.drop_pending(&command.id)?;
        }
        Ok(to_begin(state))
    }

    fn finish(
        &self,
        command: &RechargeCommand,
        settlement: &Settlement,
    ) -> Result<RechargeResult, RechargerError> {
        let result = self.settle(command, settlement)?;
        self.index_done(&command.id, &CommandState::Done(result.clone()))?;
        self.drop_pending(&command.id)?;
        Ok(result)
    }

    fn pending(&self) -> Result<Vec<RechargeCommand>, RechargerError> {
        let mut pending = Vec::new();
        for (id, command) in scan_pending(&*self.store)? {
            match self.command_row(&id)? {
                // Settled before the pending row could be deleted: tidy up.
                Some((_, CommandState::Done(_))) => self.drop_pending(&id)?,
                _ => pending.push(command),
            }
        }
        Ok(pending)
    }

    fn command_state(&self, id: &CommandId) -> Result<Option<CommandState>, RechargerError> {
        if let Some((_, state)) = self.command_row(id)? {
            return Ok(Some(state));
        }
        Ok(None)
    }

    fn spent_in(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        period: SpendPeriod,
    ) -> Result<i64, RechargerError> {
        Ok(self
            .read_row(customer, credit_type, period)?
            .map_or(0, |row| row.record.spent_in(period, row.reserved_minor)))
    }
}
