//! Snapshots: a shard's whole state as canonical bytes (postcard), restored exactly.
//! Indexes and timers are derived data and are rebuilt, not stored.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::index::CustomerIndex;
use super::{Customer, Shard, ShardConfig};
use crate::account::Account;
use crate::autorecharge::PauseReason;
use crate::catalog::{Catalog, CatalogParts};
use crate::dedup::{DedupParts, DedupWindow};
use crate::time::TimestampMs;

/// The snapshot format version, first byte of every snapshot.
const FORMAT_VERSION: u8 = 1;

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

#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    config: ShardConfig,
    clock: TimestampMs,
    batch: u64,
    catalog: CatalogParts,
    customers: Vec<Customer>,
    accounts: Vec<Account>,
    dedup: DedupParts,
}

impl Shard {
    /// The whole state as bytes; equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        assert!(
            self.touched.is_empty(),
            "snapshots are taken between batches"
        );
        let state = SnapshotV1 {
            config: self.config,
            clock: self.clock,
            batch: self.batch,
            catalog: self.catalog.to_parts(),
            customers: self.customers.clone(),
            accounts: self.accounts.clone(),
            dedup: self.dedup.to_parts(),
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
        let state: SnapshotV1 = postcard::from_bytes(body)?;
        let catalog = Catalog::from_parts(state.catalog)
            .map_err(|error| SnapshotError::Inconsistent(error.to_string()))?;
        let mut customer_index = CustomerIndex::default();
        for (index, customer) in (0_u32..).zip(&state.customers) {
            let id = customer.id.as_str();
            let hash = CustomerIndex::hash(id);
            if customer_index.get(id, hash).is_some() {
                return Err(SnapshotError::Inconsistent(format!(
                    "customer {} appears twice",
                    customer.id
                )));
            }
            for &(credit_type, account) in &customer.accounts {
                // The hot path trusts the index's first account to be this customer's.
                let owned = state
                    .accounts
                    .get(account as usize)
                    .is_some_and(|held| held.customer == index && held.credit_type == credit_type);
                if !owned {
                    return Err(SnapshotError::Inconsistent(format!(
                        "customer {} lists account {account}, which is not its own",
                        customer.id
                    )));
                }
            }
            customer_index.insert(customer.id.clone(), hash, index);
            if let Some(&(_, account)) = customer.accounts.first() {
                customer_index.set_first_account(id, hash, account);
            }
        }
        let mut expiries = BTreeSet::new();
        let mut wakeups = BTreeSet::new();
        for (index, account) in (0_u32..).zip(&state.accounts) {
            if account.customer as usize >= state.customers.len() {
                return Err(SnapshotError::Inconsistent(format!(
                    "account {index} names a missing customer"
                )));
            }
            for grant in account.grants() {
                if let Some(expires_at) = grant.expires_at {
                    expiries.insert((expires_at, index, grant.id));
                }
            }
            if let Some(auto) = account.auto_recharge()
                && auto.paused == Some(PauseReason::SpendLimitReached)
            {
                wakeups.insert((auto.period.end, index));
            }
            account.assert_conserved();
        }
        Ok(Self {
            config: state.config,
            clock: state.clock,
            batch: state.batch,
            catalog,
            customers: state.customers,
            customer_index,
            accounts: state.accounts,
            dedup: DedupWindow::from_parts(state.dedup),
            expiries,
            wakeups,
            touched: Vec::new(),
        })
    }
}
