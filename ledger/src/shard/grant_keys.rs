//! Grant idempotency keys: (customer, key) → (account, grant) for every grant or
//! subscription request a customer ever made with a key, in one table for the shard.
//!
//! Nearly every customer has a key or two, and a per-customer map would cost a heap block
//! each (a `BTreeMap` with one entry allocates a whole leaf, ~460 bytes). Here a key is
//! one dense 40-byte entry plus a 4-byte slot of an open-addressing table of entry
//! numbers (at most half full). Keys are held exactly (short ones inline), so two
//! different keys never meet. Each customer's entries are chained from its record
//! (`Customer::grant_keys`), so its keys can be listed for its state row without a scan.
//! Keys are never removed. Nothing iterates the table in hash order: rows list a
//! customer's keys sorted, so no output depends on the hasher or the table's size.

use xxhash_rust::xxh3::Xxh3;

use crate::ids::{GrantId, IdempotencyKey};

/// The end of a customer's chain of keys (and an empty slot, as slot values are entry
/// numbers + 1).
pub(crate) const NO_KEY: u32 = u32::MAX;

/// One key and what it made.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    key: IdempotencyKey,
    grant: GrantId,
    /// The account the grant went to; its owner is the key's customer.
    account: u32,
    /// The customer's next entry, or [`NO_KEY`].
    next: u32,
}

/// The table (see the module doc).
#[derive(Clone, Debug, Default)]
pub(crate) struct GrantKeys {
    entries: Vec<Entry>,
    /// A power of two of slots (or none before the first insert), at most half full:
    /// entry number + 1, or 0 when empty.
    slots: Vec<u32>,
}

fn hash(customer: u32, key: &str) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&customer.to_le_bytes());
    hasher.update(key.as_bytes());
    hasher.digest()
}

impl GrantKeys {
    /// The slot holding (customer, key), or the empty one where it would go. `owner` names
    /// the customer of an account.
    fn find(&self, customer: u32, key: &str, owner: impl Fn(u32) -> u32) -> usize {
        let mask = self.slots.len() - 1;
        // The low bits of a uniform hash; truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let mut at = hash(customer, key) as usize & mask;
        loop {
            match self.slots[at] {
                0 => return at,
                held => {
                    let entry = &self.entries[held as usize - 1];
                    if entry.key.as_str() == key && owner(entry.account) == customer {
                        return at;
                    }
                    at = (at + 1) & mask;
                }
            }
        }
    }

    /// What `key` of `customer` made, if it was seen.
    pub fn get(
        &self,
        customer: u32,
        key: &IdempotencyKey,
        owner: impl Fn(u32) -> u32,
    ) -> Option<(u32, GrantId)> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.find(customer, key.as_str(), owner)] {
            0 => None,
            held => {
                let entry = &self.entries[held as usize - 1];
                Some((entry.account, entry.grant))
            }
        }
    }

    /// Records a key not seen before for `customer`, whose chain starts at `*head`; the
    /// grant went to `account`, which `owner` says is the customer's.
    pub fn insert(
        &mut self,
        customer: u32,
        head: &mut u32,
        key: IdempotencyKey,
        (account, grant): (u32, GrantId),
        owner: impl Fn(u32) -> u32,
    ) {
        assert_eq!(owner(account), customer, "a key's grant is its customer's");
        if (self.entries.len() + 1) * 2 > self.slots.len() {
            self.grow(&owner);
        }
        let at = self.find(customer, key.as_str(), &owner);
        assert_eq!(self.slots[at], 0, "grant key {key} recorded twice");
        let number = u32::try_from(self.entries.len())
            .ok()
            .filter(|&number| number != NO_KEY)
            .expect("fewer than 2^32 - 1 grant keys per shard");
        self.entries.push(Entry {
            key,
            grant,
            account,
            next: *head,
        });
        *head = number;
        self.slots[at] = number + 1;
    }

    /// The keys of the customer whose chain starts at `head`, with what they made, sorted
    /// by key.
    pub fn of_customer(&self, head: u32) -> Vec<(&IdempotencyKey, (u32, GrantId))> {
        let mut keys = Vec::new();
        let mut at = head;
        while at != NO_KEY {
            let entry = &self.entries[at as usize];
            keys.push((&entry.key, (entry.account, entry.grant)));
            at = entry.next;
        }
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        keys
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn grow(&mut self, owner: impl Fn(u32) -> u32) {
        let size = (self.slots.len() * 2).max(16);
        self.slots = vec![0; size];
        let mask = size - 1;
        for (number, entry) in (1_u32..).zip(&self.entries) {
            // Every entry is distinct, so its place is the first empty slot of its probe.
            #[allow(clippy::cast_possible_truncation)]
            let mut at = hash(owner(entry.account), entry.key.as_str()) as usize & mask;
            while self.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = number;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::new(text).expect("a key")
    }

    #[test]
    fn keys_are_per_customer_exact_and_listed_sorted() {
        // Account n belongs to customer n / 2.
        let owner = |account: u32| account / 2;
        let mut table = GrantKeys::default();
        let mut heads = vec![NO_KEY; 3_000];
        let long = "k".repeat(200);
        for customer in 0..3_000_u32 {
            for (n, text) in ["g", "b", long.as_str()].into_iter().enumerate() {
                let n = u64::try_from(n).expect("small");
                let made = (customer * 2 + 1, GrantId(u64::from(customer) * 10 + n));
                assert_eq!(table.get(customer, &key(text), owner), None);
                table.insert(
                    customer,
                    &mut heads[customer as usize],
                    key(text),
                    made,
                    owner,
                );
                assert_eq!(table.get(customer, &key(text), owner), Some(made));
            }
        }
        assert_eq!(table.len(), 9_000);
        for customer in [0_u32, 1, 1_234, 2_999] {
            let c = u64::from(customer);
            let account = customer * 2 + 1;
            assert_eq!(
                table.of_customer(heads[customer as usize]),
                vec![
                    (&key("b"), (account, GrantId(c * 10 + 1))),
                    (&key("g"), (account, GrantId(c * 10))),
                    (&key(&long), (account, GrantId(c * 10 + 2))),
                ]
            );
            assert_eq!(table.get(customer, &key("gg"), owner), None);
        }
        assert_eq!(table.of_customer(NO_KEY), vec![]);
    }
}
