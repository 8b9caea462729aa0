//! The store's flushed rows, kept in memory the way an account store keeps them (the state
//! of each account and customer, the dedup chunks of live generations, the checkpoint), so
//! the simulator's crashes can restore a shard from rows as a restarted worker does.

use std::collections::BTreeMap;

use crate::effects::FlushSet;
use crate::shard::{Shard, ShardRowsRef, SnapshotError, encode_fingerprints};

/// The rows of one shard as its flushes left them.
#[derive(Default)]
pub struct FlushedRows {
    accounts: Vec<Vec<u8>>,
    customers: Vec<Vec<u8>>,
    /// (generation, flush) → fingerprints.
    dedup: BTreeMap<(u64, u64), Vec<u8>>,
    meta: Vec<u8>,
    /// Log batches the last flush covers (a restore replays the log from there).
    position: Option<usize>,
}

impl FlushedRows {
    /// Writes one flush, as the shell does right after the batch that closed it; `position`
    /// is the number of log batches it covers.
    pub fn write(&mut self, shard: &Shard, flush: &FlushSet, position: usize) {
        for &handle in &flush.accounts {
            let index = handle.0 as usize;
            if self.accounts.len() <= index {
                self.accounts.resize(index + 1, Vec::new());
            }
            self.accounts[index] = shard.account_state(handle);
        }
        for &index in &flush.customers {
            let index_usize = index as usize;
            if self.customers.len() <= index_usize {
                self.customers.resize(index_usize + 1, Vec::new());
            }
            self.customers[index_usize] = shard.customer_state(index);
        }
        for (generation, keys) in &flush.dedup {
            self.dedup
                .insert((*generation, flush.number), encode_fingerprints(keys));
        }
        self.dedup
            .retain(|&(generation, _), _| generation >= flush.dedup_generation_min);
        self.meta = shard.flush_meta();
        self.position = Some(position);
    }

    /// Log batches the last flush covers.
    pub fn position(&self) -> Option<usize> {
        self.position
    }

    /// The shard as the last flush left it.
    pub fn restore(&self) -> Result<Shard, SnapshotError> {
        Shard::from_rows(&ShardRowsRef {
            meta: &self.meta,
            accounts: self.accounts.iter().map(Vec::as_slice).collect(),
            customers: self.customers.iter().map(Vec::as_slice).collect(),
            dedup: self
                .dedup
                .iter()
                .map(|(&(generation, _), bytes)| (generation, bytes.as_slice()))
                .collect(),
        })
    }
}
