//! Snapshots: a shard's whole state as canonical bytes (postcard), restored exactly.
//! Indexes and timers are derived data and are rebuilt, not stored.

use serde::{Deserialize, Serialize};

use super::customer::CustomerRow;
use super::flush::Parts;
use super::{Shard, ShardConfig};
use crate::account::Account;
use crate::catalog::CatalogParts;
use crate::dedup::{DedupParts, DedupWindow};
use crate::time::TimestampMs;

/// The snapshot format version, first byte of every snapshot (2: pending usage, the flush
/// position and what changed since the last flush).
const FORMAT_VERSION: u8 = 2;

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Empty input.
    #[error("expected a snapshot, found no bytes")]
    Empty,
    /// Written by another format version.
    #[error("expected snapshot format {FORMAT_VERSION}, found {found}")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// Not decodable.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// Decodes, but breaks a rule of the state.
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// A snapshot as it is written: customers in the shape of their state rows.
#[derive(Serialize)]
struct SnapshotV2Ref<'a> {
    config: ShardConfig,
    clock: TimestampMs,
    batch: u64,
    catalog: CatalogParts,
    customers: CustomersRef<'a>,
    accounts: &'a [Account],
    dedup: DedupParts,
    flush_batch: u64,
    flush_number: u64,
    dirty_accounts: &'a [u32],
    dirty_customers: Vec<u32>,
}

/// Every customer's row, made one at a time as the snapshot is written (never all at once).
struct CustomersRef<'a>(&'a Shard);

impl Serialize for CustomersRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shard = self.0;
        let count = u32::try_from(shard.customers.len()).expect("fewer than 2^32 customers");
        serializer.collect_seq((0..count).map(|index| shard.customer_row(index)))
    }
}

/// A snapshot as it is read (see [`SnapshotV2Ref`]).
#[derive(Deserialize)]
struct SnapshotV2 {
    config: ShardConfig,
    clock: TimestampMs,
    batch: u64,
    catalog: CatalogParts,
    customers: Vec<CustomerRow>,
    accounts: Vec<Account>,
    dedup: DedupParts,
    flush_batch: u64,
    flush_number: u64,
    dirty_accounts: Vec<u32>,
    dirty_customers: Vec<u32>,
}

impl Shard {
    /// The whole state as bytes; equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        assert!(
            self.touched.is_empty(),
            "snapshots are taken between batches"
        );
        let mut dirty_customers = self.dirty_customers.clone();
        // Repeats and order of marking do not change what the next flush writes.
        dirty_customers.sort_unstable();
        dirty_customers.dedup();
        let state = SnapshotV2Ref {
            config: self.config,
            clock: self.clock,
            batch: self.batch,
            catalog: self.catalog.to_parts(),
            customers: CustomersRef(self),
            accounts: &self.accounts,
            dedup: self.dedup.to_parts(),
            flush_batch: self.flush_batch,
            flush_number: self.flush_number,
            dirty_accounts: &self.dirty_accounts,
            dirty_customers,
        };
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend(postcard::to_stdvec(&state).expect("serializing to memory cannot fail"));
        bytes
    }

    /// Restores a shard from [`Shard::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let (&version, body) = bytes.split_first().ok_or(SnapshotError::Empty)?;
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        let state: SnapshotV2 = postcard::from_bytes(body)?;
        Self::assemble(Parts {
            config: state.config,
            clock: state.clock,
            batch: state.batch,
            catalog: state.catalog,
            customers: state.customers,
            accounts: state.accounts,
            dedup: DedupWindow::from_parts(state.dedup),
            flush_batch: state.flush_batch,
            flush_number: state.flush_number,
            dirty_accounts: state.dirty_accounts,
            dirty_customers: state.dirty_customers,
        })
    }
}
