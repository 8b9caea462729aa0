//! The port of the recharger's durable state, [`RechargeBook`]: which command ids were
//! applied and how, and the spend reserved per account and period. The worker decides and
//! records through it before any charge and settles through it after, so one port carries
//! invariants 3 to 5 whatever the storage.
//!
//! Two implementations: [`StoreBook`] keeps the whole [`SpendBook`] in a [`Store`] (the
//! embedded default, one recharger per store), and [`CqlBook`](crate::cql::CqlBook) keeps it
//! in CQL rows moved by lightweight transactions (any number of recharger processes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use refill_ledger::effects::RechargeCommand;
use refill_ledger::ids::{CommandId, CreditTypeId, CustomerId};
use refill_ledger::input::RechargeResult;
use refill_ledger::spend::{Begin, CommandState, SpendBook};
use refill_ledger::time::SpendPeriod;
use refill_store::{Store, StoreError, Write};

use crate::error::RechargerError;

/// The store table of [`StoreBook`] (and of the pending rows of the CQL book).
pub const TABLE: &str = "recharger";
/// Key of the spend book (postcard bytes) in [`TABLE`].
pub const SPEND_BOOK_KEY: &[u8] = b"spend-book";
/// Key prefix of reserved commands (postcard [`RechargeCommand`]) in [`TABLE`].
pub const PENDING_PREFIX: &[u8] = b"pending/";

/// Rows read per scan when loading reserved commands.
const SCAN_PAGE: usize = 1024;

/// The gateway's final answer, as the book settles a reservation with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Money moved (or there was nothing to charge): the reservation becomes spend.
    Charged,
    /// No money moved: the reservation is released.
    Declined {
        /// The gateway's decline code, such as `card_declined`.
        code: String,
    },
}

/// The recharger's durable state: command ids applied once, spend reserved within the
/// limit before any charge. Blocking, like the store ports: async callers use
/// `spawn_blocking`.
///
/// Every call is durable when it returns `Ok`; on `Err` the state is what it was before the
/// call or what it became (never something else), so the caller may repeat the call.
pub trait RechargeBook: Send + Sync + 'static {
    /// Starts or resumes `command`: the first call decides (reserve within the period's
    /// limit, cut to the headroom, or limit reached) and makes the decision durable before
    /// it returns; every later call, from this process or another, answers the same.
    fn begin(&self, command: &RechargeCommand) -> Result<Begin, RechargerError>;

    /// Settles the reservation of `command` with the gateway's answer, durably, and returns
    /// the final result; the first settlement wins (a later one gets the recorded result).
    /// [`RechargerError::NotReserved`] when `command` was never begun.
    fn finish(
        &self,
        command: &RechargeCommand,
        settlement: &Settlement,
    ) -> Result<RechargeResult, RechargerError>;

    /// Commands begun and not settled (to resume after a restart), in command id order.
    fn pending(&self) -> Result<Vec<RechargeCommand>, RechargerError>;

    /// Where a command stands, or `None` when it was never begun.
    fn command_state(&self, id: &CommandId) -> Result<Option<CommandState>, RechargerError>;

    /// Spend reserved or charged by recharges issued inside `period`, in minor units.
    fn spent_in(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        period: SpendPeriod,
    ) -> Result<i64, RechargerError>;
}

impl<B: RechargeBook + ?Sized> RechargeBook for Arc<B> {
    fn begin(&self, command: &RechargeCommand) -> Result<Begin, RechargerError> {
        B::begin(self, command)
    }

    fn finish(
        &self,
        command: &RechargeCommand,
        settlement: &Settlement,
    ) -> Result<RechargeResult, RechargerError> {
        B::finish(self, command, settlement)
    }

    fn pending(&self) -> Result<Vec<RechargeCommand>, RechargerError> {
        B::pending(self)
    }

    fn command_state(&self, id: &CommandId) -> Result<Option<CommandState>, RechargerError> {
        B::command_state(self, id)
    }

    fn spent_in(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        period: SpendPeriod,
    ) -> Result<i64, RechargerError> {
        B::spent_in(self, customer, credit_type, period)
    }
}

/// What [`StoreBook`] holds in memory: the book as stored and the reserved commands.
#[derive(Debug, Default)]
struct Loaded {
    book: SpendBook,
    pending: BTreeMap<CommandId, RechargeCommand>,
}

/// The whole [`SpendBook`] in one row of a [`Store`], rewritten after each change, plus one
/// row per reserved command (`pending/<command id>`, the command itself), both changed in
/// one atomic store write. One writer: the process that opened it (the embedded default);
/// concurrent callers in that process are serialized by a lock held across the write.
#[derive(Debug)]
pub struct StoreBook<S> {
    store: Arc<S>,
    loaded: Mutex<Loaded>,
}

impl<S: Store + 'static> StoreBook<S> {
    /// Loads the book from `store` (empty when there is none yet). Blocking.
    pub fn open(store: Arc<S>) -> Result<Self, RechargerError> {
        let loaded = load(&*store)?;
        Ok(Self {
            store,
            loaded: Mutex::new(loaded),
        })
    }

    /// The spend book as stored (a copy).
    pub fn snapshot(&self) -> SpendBook {
        self.lock().book.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        // Memory changes only after the store write succeeded, so a panic elsewhere leaves
        // the book as stored.
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: Store + 'static> RechargeBook for StoreBook<S> {
    fn begin(&self, command: &RechargeCommand) -> Result<Begin, RechargerError> {
        let mut loaded = self.lock();
        if loaded.book.command(&command.id).is_some() {
            // Known: `begin` only reads the recorded state.
            return Ok(loaded.book.begin(command));
        }
        let mut next = loaded.book.clone();
        let decision = next.begin(command);
        let mut writes = vec![book_write(&next)?];
        let reserved = matches!(decision, Begin::Charge { .. });
        if reserved {
            writes.push(Write::Put {
                table: TABLE,
                key: pending_key(&command.id),
                value: encode(command)?,
            });
        }
        self.store.write(writes)?;
        loaded.book = next;
        if reserved {
            loaded.pending.insert(command.id.clone(), command.clone());
        }
        Ok(decision)
    }

    fn finish(
        &self,
        command: &RechargeCommand,
        settlement: &Settlement,
    ) -> Result<RechargeResult, RechargerError> {
        let mut loaded = self.lock();
        if let Some(CommandState::Done(result)) = loaded.book.command(&command.id) {
            return Ok(result.clone());
        }
        let mut next = loaded.book.clone();
        let (charged, code) = match settlement {
            Settlement::Charged => (true, ""),
            Settlement::Declined { code } => (false, code.as_str()),
        };
        let result = next
            .finish(&command.id, charged, code)
            .ok_or_else(|| RechargerError::NotReserved(command.id.to_string()))?;
        self.store.write(vec![
            book_write(&next)?,
            Write::Delete {
                table: TABLE,
                key: pending_key(&command.id),
            },
        ])?;
        loaded.book = next;
        loaded.pending.remove(&command.id);
        Ok(result)
    }

    fn pending(&self) -> Result<Vec<RechargeCommand>, RechargerError> {
        Ok(self.lock().pending.values().cloned().collect())
    }

    fn command_state(&self, id: &CommandId) -> Result<Option<CommandState>, RechargerError> {
        Ok(self.lock().book.command(id).cloned())
    }

    fn spent_in(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        period: SpendPeriod,
    ) -> Result<i64, RechargerError> {
        Ok(self.lock().book.spent_in(customer, credit_type, period))
    }
}

/// The key of a reserved command's row in [`TABLE`].
pub(crate) fn pending_key(id: &CommandId) -> Vec<u8> {
    let mut key = PENDING_PREFIX.to_vec();
    key.extend_from_slice(id.to_string().as_bytes());
    key
}

/// Postcard bytes of `value`.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, RechargerError> {
    postcard::to_stdvec(value).map_err(|error| RechargerError::Encode(error.to_string()))
}

fn book_write(book: &SpendBook) -> Result<Write, RechargerError> {
    Ok(Write::Put {
        table: TABLE,
        key: SPEND_BOOK_KEY.to_vec(),
        value: encode(book)?,
    })
}

/// Every command row under [`PENDING_PREFIX`] in `store`, by command id.
pub(crate) fn scan_pending<S: Store + ?Sized>(
    store: &S,
) -> Result<BTreeMap<CommandId, RechargeCommand>, RechargerError> {
    let mut pending = BTreeMap::new();
    let mut start = PENDING_PREFIX.to_vec();
    loop {
        let page = store.scan(TABLE, PENDING_PREFIX, &start, SCAN_PAGE)?;
        for (key, value) in &page {
            let command: RechargeCommand = postcard::from_bytes(value).map_err(|error| {
                StoreError::Corrupt(format!(
                    "expected a postcard recharge command in recharger row {}, found bytes \
                     that do not decode: {error}",
                    String::from_utf8_lossy(key)
                ))
            })?;
            pending.insert(command.id.clone(), command);
        }
        match page.last() {
            Some((key, _)) if page.len() == SCAN_PAGE => {
                start = key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(pending)
}

fn load<S: Store + ?Sized>(store: &S) -> Result<Loaded, RechargerError> {
    let book: SpendBook = match store.get(TABLE, SPEND_BOOK_KEY)? {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|error| {
            StoreError::Corrupt(format!(
                "expected a postcard spend book in the recharger table, found bytes that do \
                 not decode: {error}"
            ))
        })?,
        None => SpendBook::default(),
    };
    let mut pending = scan_pending(store)?;
    // Rows are deleted in the same write that finishes a command; keep only what the book
    // still holds as reserved, whatever happened.
    pending.retain(|id, _| matches!(book.command(id), Some(CommandState::Reserved { .. })));
    Ok(Loaded { book, pending })
}
