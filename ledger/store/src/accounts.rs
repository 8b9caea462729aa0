//! The account-state port: the tables a shard flushes incrementally and restores from
//! (balances, ledger entries, recharge attempts, account and customer state, the dedup
//! window, the shard checkpoint), domain-shaped so an operator reads them with `cqlsh` and
//! a worker answers reads of accounts it does not own from them.
//!
//! Numbers are plain integers here (micro-credits, minor units, milliseconds since the
//! epoch): this crate knows nothing of the ledger's types; each implementation converts at
//! its own edge (CQL stores credits as `decimal` with scale 6).
//!
//! **Crash safety without an atomic flush.** A flush of many rows cannot be one atomic
//! write on every store (a CQL batch is bounded), so the rows a restore reads are written
//! so that a flush cut short by a crash is harmless:
//! - the checkpoint is written last, and a restore starts from the last complete one;
//! - the state of an account (and of a customer) lives in two slots; a flush writes the slot
//!   that does *not* hold the state the last complete checkpoint needs, and a restore takes,
//!   per account, the slot with the highest `version` at or below the checkpoint's;
//! - dedup chunks carry the flush that wrote them; a restore ignores chunks above the
//!   checkpoint;
//! - ledger entries and attempts are keyed by their sequence, and a replay of the log after
//!   the checkpoint writes the same rows again with the same bytes;
//! - `balances` is the operator's view: it may run one incomplete flush ahead of the
//!   checkpoint (it then shows what the durable log already holds), never behind it.

use crate::StoreError;

/// Micro-credits per credit: the store's fixed scale for credits (six decimal places).
pub const MICROS_PER_CREDIT: i64 = 1_000_000;

/// The operator's view of one account (`balances`, key `(customer_id, credit_type)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceRow {
    /// The customer.
    pub customer_id: String,
    /// The credit type.
    pub credit_type: String,
    /// Balance in micro-credits (negative when in overdraft).
    pub balance_micros: i64,
    /// Credits used beyond the grants and not yet paid back, in micro-credits (≥ 0).
    pub overdraft_micros: i64,
    /// Auto-recharge status: `active`, `paused`, `disabled`, or `None` when never set up.
    pub auto_recharge_status: Option<String>,
    /// Why auto-recharge is paused (`spend_limit_reached`, `payment_failed`, ...).
    pub paused_reason: Option<String>,
    /// The time of the last batch this row reflects (ms since the epoch).
    pub as_of_ms: i64,
    /// The flush that wrote it (grows by one per flush of the shard).
    pub version: u64,
    /// The shard that owns the account.
    pub shard: u32,
}

/// The exact state of one account, for restore (key `(shard, handle, slot)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountStateRow {
    /// The shard.
    pub shard: u32,
    /// The account's handle in its shard (dense from 0).
    pub handle: u32,
    /// Which of the account's two slots (0 or 1).
    pub slot: u8,
    /// The flush that wrote it.
    pub version: u64,
    /// The core's encoding of the account (opaque here).
    pub state: Vec<u8>,
}

/// The exact state of one customer, for restore (key `(shard, index, slot)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerStateRow {
    /// The shard.
    pub shard: u32,
    /// The customer's index in its shard (dense from 0).
    pub index: u32,
    /// Which of the customer's two slots (0 or 1).
    pub slot: u8,
    /// The flush that wrote it.
    pub version: u64,
    /// The customer id (readable; also inside `state`).
    pub customer_id: String,
    /// The core's encoding of the customer (opaque here).
    pub state: Vec<u8>,
}

/// One ledger entry (`ledger_entries`, key `((customer_id, credit_type), seq)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    /// The customer.
    pub customer_id: String,
    /// The credit type.
    pub credit_type: String,
    /// Position in the account's ledger (dense from 0).
    pub seq: u64,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// `grant`, `usage`, `recharge`, `expiry` or `void`.
    pub kind: String,
    /// Signed amount in micro-credits: positive for grants and recharges.
    pub amount_micros: i64,
    /// The balance after it, in micro-credits.
    pub balance_after_micros: i64,
    /// What it refers to: a grant, a recharge command, or the log range of rolled-up usage.
    pub reference: String,
}

/// One recharge attempt (`recharge_attempts`, key `((customer_id, credit_type), seq)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRow {
    /// The customer.
    pub customer_id: String,
    /// The credit type.
    pub credit_type: String,
    /// The recharge sequence of the account (the command id's last part).
    pub seq: u64,
    /// The command id (`customer/credit_type/seq`).
    pub command_id: String,
    /// When its status was reached (ms since the epoch).
    pub at_ms: i64,
    /// Credits of the recharge, in micro-credits.
    pub credits_micros: i64,
    /// Its cost in the currency's minor unit, when known.
    pub cost_minor_units: Option<i64>,
    /// The cost's ISO 4217 currency, when known.
    pub currency: Option<String>,
    /// `pending`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    /// Why (a decline code, `spend_limit_reached`, ...).
    pub reason: Option<String>,
}

/// Fingerprints of usage event ids added to one generation of a shard's dedup window by one
/// flush (key `(shard, generation, flush)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupChunkRow {
    /// The shard.
    pub shard: u32,
    /// The window's generation the ids belong to.
    pub generation: u64,
    /// The flush that wrote it.
    pub flush: u64,
    /// 16-byte fingerprints, concatenated (opaque here).
    pub fingerprints: Vec<u8>,
}

/// Where a shard's flushed state stands (`checkpoints`, key `shard`); written last by every
/// flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    /// The shard.
    pub shard: u32,
    /// The flush it completes.
    pub version: u64,
    /// The next offset of the shard's log partition to apply after it.
    pub log_next: u64,
    /// Next offsets of the shard's Kafka sources (`refill.usage`, `refill.account-commands`)
    /// when it reads them.
    pub sources: Option<(u64, u64)>,
    /// The time of the last batch it covers (ms since the epoch).
    pub as_of_ms: i64,
    /// Accounts the shard had (handles `0..accounts` each have a state row at or below
    /// `version`).
    pub accounts: u32,
    /// Customers the shard had (indexes `0..customers`, likewise).
    pub customers: u32,
    /// The lowest dedup generation still live: chunks of older ones are dropped.
    pub dedup_generation_min: u64,
    /// The core's encoding of the shard-wide state (clock, catalog, dedup header; opaque
    /// here).
    pub meta: Vec<u8>,
}

/// What one flush of a shard writes: everything that changed since the last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flush {
    /// Operator's view of the dirty accounts.
    pub balances: Vec<BalanceRow>,
    /// Exact state of the dirty accounts.
    pub accounts: Vec<AccountStateRow>,
    /// Exact state of the changed customers.
    pub customers: Vec<CustomerStateRow>,
    /// New ledger entries (usage rolled up per account per flush).
    pub entries: Vec<LedgerRow>,
    /// New or changed recharge attempts.
    pub attempts: Vec<AttemptRow>,
    /// Dedup ids added since the last flush, per generation.
    pub dedup: Vec<DedupChunkRow>,
    /// Written last; `None` only in tests of partial flushes.
    pub checkpoint: Option<CheckpointRow>,
}

impl Flush {
    /// True when it writes nothing but (maybe) its checkpoint.
    pub fn is_empty(&self) -> bool {
        self.balances.is_empty()
            && self.accounts.is_empty()
            && self.customers.is_empty()
            && self.entries.is_empty()
            && self.attempts.is_empty()
            && self.dedup.is_empty()
    }
}

/// What a restore reads of one shard: the last complete checkpoint and, per account and
/// customer, the state its slots hold at or below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRows {
    /// The last complete checkpoint.
    pub checkpoint: Option<CheckpointRow>,
    /// Per account handle (index = handle), the newest state at or below the checkpoint
    /// and the slot it was in.
    pub accounts: Vec<(u8, Vec<u8>)>,
    /// Per customer index, likewise.
    pub customers: Vec<(u8, Vec<u8>)>,
    /// Dedup chunks at or below the checkpoint whose generation is still live, in
    /// (generation, flush) order.
    pub dedup: Vec<DedupChunkRow>,
}

/// The durable tables of account state. Blocking, like the other ports; `Send + Sync`.
pub trait AccountStore: Send + Sync + 'static {
    /// Writes one flush: every row, then the checkpoint last (only once every row is
    /// durable), and drops dedup chunks of generations below the checkpoint's
    /// `dedup_generation_min`. Returns once all of it is durable. Retried by the caller as a
    /// whole on failure (every write is idempotent).
    fn flush(&self, flush: &Flush) -> Result<(), StoreError>;

    /// The shard's rows for a restore (see [`ShardRows`]): empty when it never flushed.
    /// Fails with [`StoreError::Corrupt`] naming the table and key when a handle or index
    /// below the checkpoint's counts has no state at or below it.
    fn load_shard(&self, shard: u32) -> Result<ShardRows, StoreError>;

    /// The shard's last complete checkpoint.
    fn checkpoint(&self, shard: u32) -> Result<Option<CheckpointRow>, StoreError>;

    /// The balances of one customer, one row per credit type, in credit type order.
    fn balances(&self, customer_id: &str) -> Result<Vec<BalanceRow>, StoreError>;

    /// Up to `limit` ledger entries of an account with `seq` ≥ `from_seq`, oldest first.
    fn ledger(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError>;

    /// Up to `limit` recharge attempts of an account with `seq` ≥ `from_seq`, oldest first.
    fn attempts(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AttemptRow>, StoreError>;
}

impl<T: AccountStore + ?Sized> AccountStore for std::sync::Arc<T> {
    fn flush(&self, flush: &Flush) -> Result<(), StoreError> {
        (**self).flush(flush)
    }
    fn load_shard(&self, shard: u32) -> Result<ShardRows, StoreError> {
        (**self).load_shard(shard)
    }
    fn checkpoint(&self, shard: u32) -> Result<Option<CheckpointRow>, StoreError> {
        (**self).checkpoint(shard)
    }
    fn balances(&self, customer_id: &str) -> Result<Vec<BalanceRow>, StoreError> {
        (**self).balances(customer_id)
    }
    fn ledger(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        (**self).ledger(customer_id, credit_type, from_seq, limit)
    }
    fn attempts(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        (**self).attempts(customer_id, credit_type, from_seq, limit)
    }
}

/// Picks, from the two slots of one account or customer, the state a restore at checkpoint
/// `version` needs: the slot with the highest version at or below it. `None` when neither
/// qualifies. Shared by every implementation so they choose alike.
pub fn pick_slot<'a>(
    slots: impl IntoIterator<Item = (u8, u64, &'a [u8])>,
    version: u64,
) -> Option<(u8, &'a [u8])> {
    slots
        .into_iter()
        .filter(|&(_, slot_version, _)| slot_version <= version)
        .max_by_key(|&(_, slot_version, _)| slot_version)
        .map(|(slot, _, state)| (slot, state))
}
