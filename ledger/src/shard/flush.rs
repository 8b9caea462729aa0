//! Incremental flushes: what changed since the last flush (accounts, customers, dedup ids),
//! the per-row encodings the store keeps, and the restore of a shard from those rows. A
//! shard restored from the rows of flush N equals, byte for byte, the shard that made
//! flush N (checked by the simulator and the property tests).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::customer::{CustomerRow, CustomerRowRef};
use super::grant_keys::GrantKeys;
use super::index::CustomerIndex;
use super::{Customer, Shard, ShardConfig, SnapshotError};
use crate::account::Account;
use crate::autorecharge::PauseReason;
use crate::catalog::{Catalog, CatalogParts};
use crate::dedup::{DedupHeader, DedupWindow};
use crate::effects::{AccountHandle, Effects, FlushSet};
use crate::time::TimestampMs;

/// The format version, first byte of every row encoding here.
const ROW_FORMAT: u8 = 1;

/// The shard-wide state a flush checkpoint keeps (everything but accounts, customers and
/// dedup ids, which have rows of their own).
#[derive(Serialize, Deserialize)]
struct ShardMeta {
    config: ShardConfig,
    clock: TimestampMs,
    batch: u64,
    catalog: CatalogParts,
    dedup: DedupHeader,
    flush_number: u64,
    accounts: u32,
    customers: u32,
}

/// A shard's rows as a restore reads them (see [`Shard::from_rows`]).
pub struct ShardRowsRef<'a> {
    /// The checkpoint's [`Shard::flush_meta`].
    pub meta: &'a [u8],
    /// [`Shard::account_state`] per handle, in handle order.
    pub accounts: Vec<&'a [u8]>,
    /// [`Shard::customer_state`] per index, in index order.
    pub customers: Vec<&'a [u8]>,
    /// Dedup chunks: (generation, 16-byte fingerprints, big-endian, concatenated).
    pub dedup: Vec<(u64, &'a [u8])>,
}

fn versioned(body: Vec<u8>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(ROW_FORMAT);
    bytes.extend(body);
    bytes
}

fn unversioned<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    match bytes.split_first() {
        Some((&ROW_FORMAT, body)) => Ok(body),
        Some((&found, _)) => Err(SnapshotError::Inconsistent(format!(
            "{what}: expected row format {ROW_FORMAT}, found {found}"
        ))),
        None => Err(SnapshotError::Inconsistent(format!(
            "{what}: expected a row, found no bytes"
        ))),
    }
}

/// Fingerprints as a dedup chunk stores them: 16 bytes each, big-endian.
pub fn encode_fingerprints(keys: &[u128]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(keys.len() * 16);
    for key in keys {
        bytes.extend_from_slice(&key.to_be_bytes());
    }
    bytes
}

fn decode_fingerprints(generation: u64, bytes: &[u8]) -> Result<Vec<u128>, SnapshotError> {
    if !bytes.len().is_multiple_of(16) {
        return Err(SnapshotError::Inconsistent(format!(
            "dedup chunk of generation {generation}: expected a multiple of 16 bytes, found {}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|chunk| u128::from_be_bytes(chunk.try_into().expect("16 bytes")))
        .collect())
}

impl Shard {
    /// Closes the flush at the end of a batch that held [`crate::Input::Flush`]: rolls up
    /// every dirty account's pending usage into one entry and reports what changed.
    pub(super) fn close_flush(&mut self, now: TimestampMs, fx: &mut Effects) {
        let accounts = std::mem::take(&mut self.dirty_accounts);
        for &account_index in &accounts {
            self.flush_usage(account_index, now, fx);
        }
        let mut customers = std::mem::take(&mut self.dirty_customers);
        customers.sort_unstable();
        customers.dedup();
        self.flush_number += 1;
        self.flush_batch = self.batch;
        fx.flush = Some(FlushSet {
            number: self.flush_number,
            accounts: accounts.into_iter().map(AccountHandle).collect(),
            customers,
            dedup: self.dedup.take_added(),
            dedup_generation_min: self.dedup.generation_min(),
        });
    }

    /// Flushes so far.
    pub fn flush_number(&self) -> u64 {
        self.flush_number
    }

    /// True when no batch was applied since the last flush (its checkpoint is the state).
    /// Any batch moves the clock, and may change the catalog or the dedup window, so any
    /// batch calls for a flush; an idle shard applies none.
    pub fn is_clean(&self) -> bool {
        self.batch == self.flush_batch
            && self.dirty_accounts.is_empty()
            && self.dirty_customers.is_empty()
    }

    /// The earliest instant a timer (a grant's expiry, a paused account's period end) is
    /// due, if any: a shell without traffic logs a tick then, and only then.
    pub fn next_timer_at(&self) -> Option<TimestampMs> {
        let expiry = self.expiries.first().map(|&(at, _, _)| at);
        let wakeup = self.wakeups.first().map(|&(at, _)| at);
        match (expiry, wakeup) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The exact state of one account, as its state row keeps it.
    pub fn account_state(&self, handle: AccountHandle) -> Vec<u8> {
        versioned(
            postcard::to_stdvec(self.account(handle)).expect("serializing to memory cannot fail"),
        )
    }

    /// The customer at `index` (as [`crate::effects::FlushSet::customers`] names them).
    pub fn customer_at(&self, index: u32) -> &Customer {
        &self.customers[index as usize]
    }

    /// The exact state of one customer, as its state row keeps it.
    pub fn customer_state(&self, index: u32) -> Vec<u8> {
        versioned(
            postcard::to_stdvec(&self.customer_row(index))
                .expect("serializing to memory cannot fail"),
        )
    }

    /// The customer at `index` in the shape its state row and snapshots write.
    pub(super) fn customer_row(&self, index: u32) -> CustomerRowRef<'_> {
        CustomerRowRef::new(self.customer_at(index), &self.grant_keys, |account| {
            self.accounts[account as usize].credit_type
        })
    }

    /// The shard-wide state for the checkpoint of the flush just closed.
    pub fn flush_meta(&self) -> Vec<u8> {
        assert!(
            self.is_clean() && self.touched.is_empty(),
            "a checkpoint is taken right after its flush closed"
        );
        let meta = ShardMeta {
            config: self.config,
            clock: self.clock,
            batch: self.batch,
            catalog: self.catalog.to_parts(),
            dedup: self.dedup.header(),
            flush_number: self.flush_number,
            accounts: u32::try_from(self.accounts.len()).expect("fewer than 2^32 accounts"),
            customers: u32::try_from(self.customers.len()).expect("fewer than 2^32 customers"),
        };
        versioned(postcard::to_stdvec(&meta).expect("serializing to memory cannot fail"))
    }

    /// Restores the shard that closed a flush from that flush's rows: its checkpoint meta,
    /// every account and customer state (the newest at or below it) and the live dedup
    /// chunks. The counts must match the meta's; every rule a snapshot restore checks holds.
    pub fn from_rows(rows: &ShardRowsRef<'_>) -> Result<Shard, SnapshotError> {
        let meta: ShardMeta = postcard::from_bytes(unversioned("checkpoint meta", rows.meta)?)?;
        if rows.accounts.len() != meta.accounts as usize
            || rows.customers.len() != meta.customers as usize
        {
            return Err(SnapshotError::Inconsistent(format!(
                "expected {} accounts and {} customers, found {} and {}",
                meta.accounts,
                meta.customers,
                rows.accounts.len(),
                rows.customers.len()
            )));
        }
        let accounts = rows
            .accounts
            .iter()
            .enumerate()
            .map(|(handle, bytes)| {
                postcard::from_bytes::<Account>(unversioned("account state", bytes)?).map_err(
                    |error| {
                        SnapshotError::Inconsistent(format!(
                            "account state of handle {handle}: {error}"
                        ))
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let customers =
            rows.customers
                .iter()
                .enumerate()
                .map(|(index, bytes)| {
                    postcard::from_bytes::<CustomerRow>(unversioned("customer state", bytes)?)
                        .map_err(|error| {
                            SnapshotError::Inconsistent(format!(
                                "customer state of index {index}: {error}"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
        let chunks = rows
            .dedup
            .iter()
            .map(|&(generation, bytes)| Ok((generation, decode_fingerprints(generation, bytes)?)))
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        let dedup = DedupWindow::from_header(meta.dedup, chunks);
        Self::assemble(Parts {
            config: meta.config,
            clock: meta.clock,
            batch: meta.batch,
            catalog: meta.catalog,
            customers,
            accounts,
            dedup,
            flush_batch: meta.batch,
            flush_number: meta.flush_number,
            dirty_accounts: Vec::new(),
            dirty_customers: Vec::new(),
        })
    }

    /// A shard from its parts, with the indexes and timers rebuilt and every rule checked
    /// (shared by snapshot and row restores).
    pub(super) fn assemble(parts: Parts) -> Result<Shard, SnapshotError> {
        let catalog = Catalog::from_parts(parts.catalog)
            .map_err(|error| SnapshotError::Inconsistent(error.to_string()))?;
        let mut customer_index = CustomerIndex::default();
        let mut customers = Vec::with_capacity(parts.customers.len());
        let mut grant_keys = GrantKeys::default();
        for (index, row) in (0_u32..).zip(parts.customers) {
            let (mut customer, accounts, keys) = row.into_parts();
            let id = customer.id.as_str();
            let hash = CustomerIndex::hash(id);
            if customer_index.get(id, hash).is_some() {
                return Err(SnapshotError::Inconsistent(format!(
                    "customer {} appears twice",
                    customer.id
                )));
            }
            let owned = |account: u32| {
                parts
                    .accounts
                    .get(account as usize)
                    .is_some_and(|held| held.customer == index)
            };
            for &(credit_type, account) in &accounts {
                // The hot path trusts the index's first account to be this customer's.
                let listed = parts
                    .accounts
                    .get(account as usize)
                    .is_some_and(|held| held.credit_type == credit_type);
                if !(listed && owned(account)) {
                    return Err(SnapshotError::Inconsistent(format!(
                        "customer {} lists account {account}, which is not its own",
                        customer.id
                    )));
                }
            }
            customer_index.insert(customer.id.clone(), hash, index);
            if let Some(&(_, account)) = accounts.first() {
                customer_index.set_first_account(id, hash, account);
                customer.first_account = account;
            }
            if accounts.len() > 1 {
                customer.details_mut().more_accounts =
                    accounts[1..].iter().map(|&(_, account)| account).collect();
            }
            for (key, made) in keys {
                if !owned(made.0) {
                    return Err(SnapshotError::Inconsistent(format!(
                        "customer {} has grant key {key} on account {}, which is not its own",
                        customer.id, made.0
                    )));
                }
                grant_keys.insert(index, &mut customer.grant_keys, key, made, |account| {
                    parts.accounts[account as usize].customer
                });
            }
            customers.push(customer);
        }
        let mut expiries = BTreeSet::new();
        let mut wakeups = BTreeSet::new();
        let mut accounts = parts.accounts;
        for (index, account) in (0_u32..).zip(&accounts) {
            if account.customer as usize >= customers.len() {
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
        for &account_index in &parts.dirty_accounts {
            let Some(account) = accounts.get_mut(account_index as usize) else {
                return Err(SnapshotError::Inconsistent(format!(
                    "dirty account {account_index} does not exist"
                )));
            };
            // Touched after the last flush (so it is not listed twice).
            account.scratch.touched_batch = parts.batch;
        }
        Ok(Self {
            config: parts.config,
            clock: parts.clock,
            batch: parts.batch,
            catalog,
            customers,
            customer_index,
            accounts,
            grant_keys,
            dedup: parts.dedup,
            expiries,
            wakeups,
            touched: Vec::new(),
            flush_batch: parts.flush_batch,
            flush_number: parts.flush_number,
            dirty_accounts: parts.dirty_accounts,
            dirty_customers: parts.dirty_customers,
            flush_requested: false,
        })
    }
}

/// Everything a shard is made of, before its indexes are rebuilt.
pub(super) struct Parts {
    pub config: ShardConfig,
    pub clock: TimestampMs,
    pub batch: u64,
    pub catalog: CatalogParts,
    pub customers: Vec<CustomerRow>,
    pub accounts: Vec<Account>,
    pub dedup: DedupWindow,
    pub flush_batch: u64,
    pub flush_number: u64,
    pub dirty_accounts: Vec<u32>,
    pub dirty_customers: Vec<u32>,
}
