//! The balance table: every owned account's balance, readable by API threads without
//! asking the shard's worker, written only by that worker. Compact because it holds every
//! account: an index from a 128-bit fingerprint of (customer, credit type) to a cell, and
//! the cells (one `AtomicI64` each) in fixed chunks that never move, so a balance update is
//! one atomic store that never writes to the index, and a read allocates nothing.
//!
//! The fingerprint is xxh3-128 of `customer ‖ 0xFF ‖ credit_type` (0xFF never occurs in
//! UTF-8, so pairs cannot run together): a collision would need about 2^64 accounts, the
//! same argument as the dedup window's. It is kept as four `u32`s, not a `u128`, so an
//! index entry is 24 bytes rather than 32 (a `u128` is aligned to 16 bytes).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use dashmap::DashMap;
use refill_ledger::Credits;
use xxhash_rust::xxh3::Xxh3;

/// Cells per chunk (512 KiB of atomics).
const CHUNK_CELLS: usize = 1 << 16;
/// Chunks at most: 2^32 cells, the most a `u32` cell number names.
const CHUNKS_MAX: usize = 1 << 16;

/// Where an account's balance lives, and which shard owns it (for a release).
#[derive(Clone, Copy, Debug)]
struct Slot {
    cell: u32,
    shard: u32,
}

/// The table of balances (see the module doc).
pub struct Balances {
    index: DashMap<Key, Slot, rustc_hash::FxBuildHasher>,
    chunks: Box<[OnceLock<Box<[AtomicI64]>>]>,
    next_cell: AtomicU32,
    /// Cells of released accounts, reused before new ones.
    free: Mutex<Vec<u32>>,
}

impl Default for Balances {
    fn default() -> Self {
        Self::new()
    }
}

/// A 128-bit fingerprint, aligned to 4 bytes.
type Key = [u32; 4];

/// The key of (customer, credit type).
fn fingerprint(customer: &str, credit_type: &str) -> Key {
    let mut hasher = Xxh3::new();
    hasher.update(customer.as_bytes());
    hasher.update(&[0xFF]);
    hasher.update(credit_type.as_bytes());
    let bits = hasher.digest128();
    // The four 32-bit words of the fingerprint; truncation is the point.
    #[allow(clippy::cast_possible_truncation)]
    let word = |at: u32| (bits >> at) as u32;
    [word(0), word(32), word(64), word(96)]
}

impl Balances {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            index: DashMap::with_hasher(rustc_hash::FxBuildHasher),
            chunks: (0..CHUNKS_MAX).map(|_| OnceLock::new()).collect(),
            next_cell: AtomicU32::new(0),
            free: Mutex::new(Vec::new()),
        }
    }

    fn cell(&self, cell: u32) -> &AtomicI64 {
        let cell = cell as usize;
        let chunk = self.chunks[cell / CHUNK_CELLS].get_or_init(|| {
            (0..CHUNK_CELLS)
                .map(|_| AtomicI64::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        &chunk[cell % CHUNK_CELLS]
    }

    /// The balance of (customer, credit type), if an owned account has one.
    pub fn get(&self, customer: &str, credit_type: &str) -> Option<Credits> {
        let slot = *self.index.get(&fingerprint(customer, credit_type))?;
        // Acquire pairs with the worker's Release: no older than the batch that wrote it.
        Some(Credits::from_micros(
            self.cell(slot.cell).load(Ordering::Acquire),
        ))
    }

    /// Sets the balance of an account of `shard` (its worker is the only caller for it).
    pub fn set(&self, customer: &str, credit_type: &str, shard: u32, balance: Credits) {
        let key = fingerprint(customer, credit_type);
        let cell = match self.index.get(&key) {
            Some(slot) => slot.cell,
            None => {
                let cell = self.allocate();
                // Written before the index names it, so a reader never sees a stale cell.
                self.cell(cell).store(balance.micros(), Ordering::Release);
                self.index.insert(key, Slot { cell, shard });
                return;
            }
        };
        // Release pairs with the readers' Acquire.
        self.cell(cell).store(balance.micros(), Ordering::Release);
    }

    fn allocate(&self) -> u32 {
        if let Some(cell) = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return cell;
        }
        let cell = self.next_cell.fetch_add(1, Ordering::Relaxed);
        assert!(cell < u32::MAX, "fewer than 2^32 balances in one engine");
        cell
    }

    /// Forgets the balances of a released shard (their cells are reused).
    pub fn release_shard(&self, shard: u32) {
        let mut freed = Vec::new();
        self.index.retain(|_, slot| {
            if slot.shard == shard {
                freed.push(slot.cell);
                false
            } else {
                true
            }
        });
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(freed);
    }

    /// Balances held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Bytes the table holds on the heap, from its capacities (the index's buckets with
    /// their control bytes, the chunks of cells made so far): what a benchmark reads
    /// where the resident set is blurred by memory the allocator reuses.
    pub fn allocated_bytes(&self) -> usize {
        // hashbrown keeps a table at most 7/8 full: buckets = capacity · 8/7.
        let buckets = self.index.capacity() * 8 / 7;
        let chunks = self
            .chunks
            .iter()
            .filter(|chunk| chunk.get().is_some())
            .count();
        buckets * (size_of::<(Key, Slot)>() + 1) + chunks * CHUNK_CELLS * size_of::<AtomicI64>()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_are_set_read_and_released_by_shard() {
        let table = Balances::new();
        table.set("acme", "api-credits", 0, Credits::from_micros(5));
        table.set("acme", "gpu-credits", 1, Credits::from_micros(-7));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        table.set("ab", "c", 0, Credits::from_micros(1));
        table.set("a", "bc", 1, Credits::from_micros(2));
        assert_eq!(
            table.get("acme", "api-credits"),
            Some(Credits::from_micros(5))
        );
        assert_eq!(
            table.get("acme", "gpu-credits"),
            Some(Credits::from_micros(-7))
        );
        assert_eq!(table.get("ab", "c"), Some(Credits::from_micros(1)));
        assert_eq!(table.get("a", "bc"), Some(Credits::from_micros(2)));
        assert_eq!(table.get("acme", "other"), None);
        table.set("acme", "api-credits", 0, Credits::from_micros(9));
        assert_eq!(
            table.get("acme", "api-credits"),
            Some(Credits::from_micros(9))
        );
        table.release_shard(0);
        assert_eq!(table.get("acme", "api-credits"), None);
        assert_eq!(table.get("a", "bc"), Some(Credits::from_micros(2)));
        assert_eq!(table.len(), 2);
        // A released cell is reused, starting from the new balance.
        table.set("new", "api-credits", 1, Credits::from_micros(3));
        assert_eq!(
            table.get("new", "api-credits"),
            Some(Credits::from_micros(3))
        );
        assert_eq!(table.next_cell.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn an_index_entry_is_24_bytes() {
        assert_eq!(size_of::<(Key, Slot)>(), 24);
        assert_ne!(fingerprint("a", "bc"), fingerprint("ab", "c"));
    }

    #[test]
    fn cells_beyond_the_first_chunk_work() {
        let table = Balances::new();
        let accounts = CHUNK_CELLS + 10;
        for n in 0..accounts {
            table.set(&format!("c{n}"), "x", 0, Credits::from_micros(n as i64));
        }
        for n in [0, CHUNK_CELLS - 1, CHUNK_CELLS, accounts - 1] {
            assert_eq!(
                table.get(&format!("c{n}"), "x"),
                Some(Credits::from_micros(n as i64))
            );
        }
    }
}
