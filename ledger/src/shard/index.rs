//! The customer index: customer id → (customer index, its first account), built for the
//! usage hot path, where each event looks up its customer in a table far larger than
//! the caches.
//!
//! One slot holds the id inline with both numbers, so the usual customer (one credit type,
//! one account) goes from id to account with one cache line read and no visit to the
//! customer record or its list of accounts. Slots are 32 bytes, aligned so that none
//! straddles a cache line, and the home slot's address follows from the id's hash alone,
//! so the hot path can start its miss early (`touch`). Open addressing with linear
//! probing; customers are never removed. Nothing iterates the table, so its order never
//! reaches an output.
//!
//! There is a slot per idle customer too, so the table is kept denser than a power of
//! two at most half full (64 bytes a customer at 1 M): sizes go up by 1.5× and 4/3×
//! in turn (16, 24, 32, 48, ..., 2^20, 1.5 · 2^20, 2^21), at most 70 % full, the home
//! slot found by multiplying the hash into the size (`home`), so no size needs to be a
//! power of two. At 1 M customers: 1.5 M slots, 64 % full, 50 bytes a customer.

use xxhash_rust::xxh3::xxh3_64;

use crate::ids::{CustomerId, same_text};

/// The account number of a customer that has none yet.
pub(crate) const NO_ACCOUNT: u32 = u32::MAX;

/// What the index says about a customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CustomerEntry {
    /// Index of the customer in the shard.
    pub customer: u32,
    /// Its first account (`customer.accounts[0]`), or [`NO_ACCOUNT`].
    pub first_account: u32,
}

/// One slot; `id` is `None` when empty.
#[derive(Clone, Debug, Default)]
#[repr(align(32))]
struct Slot {
    id: Option<CustomerId>,
    customer: u32,
    first_account: u32,
}

/// The index.
#[derive(Clone, Debug, Default)]
pub(crate) struct CustomerIndex {
    /// Slots (none before the first insert), at most [`LOAD_MAX_PERCENT`] full.
    slots: Vec<Slot>,
    len: usize,
}

/// How full the table may be, in percent: linear probing stays short below it.
const LOAD_MAX_PERCENT: usize = 70;

impl CustomerIndex {
    /// The hash of a customer id, which decides its home slot. Deterministic.
    #[inline]
    pub fn hash(id: &str) -> u64 {
        xxh3_64(id.as_bytes())
    }

    /// The home slot of `hash`: the hash as a fraction of 2^64, times the size.
    #[inline]
    // Below the size, which is a usize: the cast never truncates.
    #[allow(clippy::cast_possible_truncation)]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot that holds `id`, or the empty one where it would go.
    #[inline]
    fn find(&self, id: &str, hash: u64) -> usize {
        let mut at = self.home(hash);
        loop {
            match &self.slots[at].id {
                Some(held) if !same_text(held.as_str(), id) => {
                    at += 1;
                    if at == self.slots.len() {
                        at = 0;
                    }
                }
                _ => return at,
            }
        }
    }

    /// The entry of `id` (whose [`CustomerIndex::hash`] is `hash`).
    #[inline]
    pub fn get(&self, id: &str, hash: u64) -> Option<CustomerEntry> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = &self.slots[self.find(id, hash)];
        slot.id.as_ref().map(|_| CustomerEntry {
            customer: slot.customer,
            first_account: slot.first_account,
        })
    }

    /// Adds a customer not yet in the index, with no account.
    pub fn insert(&mut self, id: CustomerId, hash: u64, customer: u32) {
        if (self.len + 1) * 100 > self.slots.len() * LOAD_MAX_PERCENT {
            self.grow();
        }
        let at = self.find(id.as_str(), hash);
        assert!(self.slots[at].id.is_none(), "customer {id} indexed twice");
        self.slots[at] = Slot {
            id: Some(id),
            customer,
            first_account: NO_ACCOUNT,
        };
        self.len += 1;
    }

    /// Records the first account of a customer in the index.
    pub fn set_first_account(&mut self, id: &str, hash: u64, account: u32) {
        let at = self.find(id, hash);
        let slot = &mut self.slots[at];
        assert!(slot.id.is_some(), "customer {id} is indexed");
        slot.first_account = account;
    }

    /// Reads the home slot of `hash`, so that its cache miss overlaps with other work;
    /// the value means nothing (pass it to `std::hint::black_box`).
    #[inline]
    pub fn touch(&self, hash: u64) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        u64::from(self.slots[self.home(hash)].first_account)
    }

    fn grow(&mut self) {
        let size = next_size(self.slots.len());
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        for slot in old {
            if let Some(id) = &slot.id {
                let at = self.find(id.as_str(), Self::hash(id.as_str()));
                self.slots[at] = slot;
            }
        }
    }
}

/// The size after `size`: 16, then 1.5× from a power of two and 4/3× back to the next.
fn next_size(size: usize) -> usize {
    if size < 16 {
        16
    } else if size.is_power_of_two() {
        size / 2 * 3
    } else {
        size / 3 * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_customer_through_growth() {
        let mut index = CustomerIndex::default();
        let ids: Vec<CustomerId> = (0..5_000)
            .map(|n| CustomerId::new(&format!("cus_{n}")).expect("id"))
            .collect();
        for (number, id) in (0_u32..).zip(&ids) {
            let hash = CustomerIndex::hash(id.as_str());
            assert_eq!(index.get(id.as_str(), hash), None);
            index.insert(id.clone(), hash, number);
            if number % 2 == 0 {
                index.set_first_account(id.as_str(), hash, number * 10);
            }
        }
        for (number, id) in (0_u32..).zip(&ids) {
            let entry = index
                .get(id.as_str(), CustomerIndex::hash(id.as_str()))
                .expect("indexed");
            assert_eq!(entry.customer, number);
            let first = if number % 2 == 0 {
                number * 10
            } else {
                NO_ACCOUNT
            };
            assert_eq!(entry.first_account, first);
        }
        assert_eq!(index.get("cus_x", CustomerIndex::hash("cus_x")), None);
        assert_eq!(size_of::<Slot>(), 32, "two slots to a cache line");
        assert!(index.len * 100 <= index.slots.len() * LOAD_MAX_PERCENT);
        let mut size = 0;
        let mut sizes = Vec::new();
        while size < 200 {
            size = next_size(size);
            sizes.push(size);
        }
        assert_eq!(sizes, [16, 24, 32, 48, 64, 96, 128, 192, 256]);
        assert_eq!(next_size(1 << 20), 3 << 19);
        assert_eq!(next_size(3 << 19), 1 << 21);
    }
}
