//! The storage ports of Refill: a durable partitioned log (the source of truth the shards
//! replay) and a key-value store (snapshots, ledger rows, recharge bookkeeping). One trait
//! per port; the embedded implementation lives here, Kafka and CQL ones come later, and one
//! generic test body runs against every implementation.
//!
//! Both ports are blocking: async shells call them from blocking tasks. Durability is the
//! contract: a call returns only once what it wrote survives `kill -9`.

use std::time::Duration;

pub mod accounts;
#[cfg(feature = "conformance")]
pub mod accounts_conformance;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod kv_accounts;

pub use accounts::{
    AccountStateRow, AccountStore, AttemptRow, BalanceRow, CheckpointRow, CustomerStateRow,
    DedupChunkRow, Flush, LedgerRow, ShardRows,
};
pub use kv_accounts::KvAccountStore;

/// Why a storage call failed (operational errors; the caller retries or stops).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A partition outside `0..partitions`.
    #[error("expected a partition below {partitions}, found {found}")]
    NoSuchPartition {
        /// Partitions the log has.
        partitions: u32,
        /// The partition asked for.
        found: u32,
    },
    /// Stored bytes that do not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A reopen asked for another partition count than the log was created with.
    #[error(
        "expected the {stored} partitions the log was created with, found a request for {requested}"
    )]
    PartitionsChanged {
        /// Partitions the log was created with.
        stored: u32,
        /// Partitions the reopen asked for.
        requested: u32,
    },
    /// A call whose arguments the implementation cannot take (says what it expected).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its offset in the partition (0, 1, 2, ...).
    pub offset: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A durable, append-only, partitioned log.
pub trait Log: Send + Sync + 'static {
    /// Number of partitions (fixed at creation).
    fn partitions(&self) -> u32;

    /// Appends `records` to `partition` in order and returns the offset of the first.
    /// Returns only once they are durable; concurrent callers share one sync (group commit).
    /// Records become visible to [`Log::read`] and [`Log::end_offset`] only once durable.
    /// With no records it writes nothing and returns the end offset.
    fn append(&self, partition: u32, records: &[&[u8]]) -> Result<u64, StoreError>;

    /// Up to `max` records from offset `from` on, in order.
    fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<LogRecord>, StoreError>;

    /// The offset the next append will get.
    fn end_offset(&self, partition: u32) -> Result<u64, StoreError>;

    /// Waits until the partition's end offset passes `offset` or `timeout` elapses; returns
    /// the end offset then.
    fn wait_beyond(
        &self,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64, StoreError>;
}

/// One write of a [`Store::write`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Sets `table[key] = value`.
    Put {
        /// Table name.
        table: &'static str,
        /// Key bytes (ordered bytewise).
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Removes `table[key]`.
    Delete {
        /// Table name.
        table: &'static str,
        /// Key bytes.
        key: Vec<u8>,
    },
}

/// One entry of a [`Store::scan`]: key and value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A durable key-value store of named tables with ordered keys.
pub trait Store: Send + Sync + 'static {
    /// Applies all writes atomically; returns once durable.
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// One value.
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `max` entries whose key starts with `prefix` and is at or after `start`
    /// (`start` itself included), in key order.
    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        max: usize,
    ) -> Result<Vec<Entry>, StoreError>;
}

/// A shared store is a store, so code generic over `S: Store` takes `Arc<dyn Store>`.
impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        (**self).write(writes)
    }

    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        (**self).scan(table, prefix, start, max)
    }
}
