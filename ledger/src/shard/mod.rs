//! The shard: the single writer of its accounts. `apply(now, inputs)` is the whole
//! product logic as a deterministic state machine: the same inputs from the same state
//! give the same effects, byte for byte.

mod admin;
mod customer;
mod flush;
mod grant_keys;
mod index;
mod recharge;
mod snapshot;
mod usage;

use std::collections::BTreeSet;
use std::hint::black_box;

use serde::{Deserialize, Serialize};

pub use customer::{Customer, CustomerDetails, Subscription};
pub use flush::{ShardRowsRef, encode_fingerprints};
pub use snapshot::SnapshotError;

use grant_keys::GrantKeys;
use index::{CustomerEntry, CustomerIndex, NO_ACCOUNT};

use crate::account::Account;
use crate::catalog::Catalog;
use crate::dedup::{DedupConfig, DedupWindow};
use crate::effects::{
    AccountHandle, Effects, EntryKind, LedgerEntry, Outcome, RechargeCommand, Reference,
};
use crate::ids::{CreditTypeId, CustomerId, GrantId};
use crate::input::Input;
use crate::rejection::Rejection;
use crate::time::TimestampMs;

/// Changed customers listed before the list is compacted instead of grown (see
/// `Shard::mark_customer_dirty`).
const DIRTY_COMPACT_MIN: usize = 1_024;

/// Settings of a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardConfig {
    /// The usage-event deduplication window.
    pub dedup: DedupConfig,
}

/// One shard's state.
#[derive(Clone, Debug)]
pub struct Shard {
    config: ShardConfig,
    clock: TimestampMs,
    batch: u64,
    catalog: Catalog,
    customers: Vec<Customer>,
    /// Customer id → its index and first account.
    customer_index: CustomerIndex,
    accounts: Vec<Account>,
    /// Grant idempotency keys of every customer.
    grant_keys: GrantKeys,
    dedup: DedupWindow,
    /// Live grants with an expiry: (expires_at, account, grant). Entries of grants that
    /// were emptied or voided stay until due and are then skipped.
    expiries: BTreeSet<(TimestampMs, u32, GrantId)>,
    /// Accounts paused for their spend limit, woken at the period's end.
    wakeups: BTreeSet<(TimestampMs, u32)>,
    /// Accounts touched by the current batch, in order of first touch.
    touched: Vec<u32>,
    /// The batch of the last flush: an account touched after it is dirty.
    flush_batch: u64,
    /// Flushes so far.
    flush_number: u64,
    /// Accounts changed since the last flush, in order of first change.
    dirty_accounts: Vec<u32>,
    /// Customers changed since the last flush (repeats allowed; sorted at the flush).
    dirty_customers: Vec<u32>,
    /// Set by [`Input::Flush`]: the flush closes at the end of the batch, after every
    /// change the batch makes.
    flush_requested: bool,
}

impl Shard {
    /// An empty shard whose clock starts at `now`.
    pub fn new(config: ShardConfig, now: TimestampMs) -> Self {
        Self {
            config,
            clock: now,
            batch: 0,
            catalog: Catalog::default(),
            customers: Vec::new(),
            customer_index: CustomerIndex::default(),
            accounts: Vec::new(),
            grant_keys: GrantKeys::default(),
            dedup: DedupWindow::new(config.dedup, now),
            expiries: BTreeSet::new(),
            wakeups: BTreeSet::new(),
            touched: Vec::new(),
            flush_batch: 0,
            flush_number: 0,
            dirty_accounts: Vec::new(),
            dirty_customers: Vec::new(),
            flush_requested: false,
        }
    }

    /// Applies a batch of inputs at `now` and returns its effects.
    pub fn apply(&mut self, now: TimestampMs, inputs: &[Input]) -> Effects {
        let mut effects = Effects::default();
        self.apply_into(now, inputs, &mut effects);
        effects
    }

    /// Applies a batch of inputs at `now`, writing its effects into `fx` (cleared first).
    ///
    /// The clock never goes back: a `now` before the last batch's is taken as the last.
    pub fn apply_into(&mut self, now: TimestampMs, inputs: &[Input], fx: &mut Effects) {
        assert!(
            u32::try_from(inputs.len()).is_ok(),
            "a batch holds at most u32::MAX inputs"
        );
        fx.clear();
        let now = now.max(self.clock);
        self.clock = now;
        self.batch += 1;
        fx.batch = self.batch;
        self.dedup.rotate_if_due(now);
        // Room for every id of the batch now, so no event waits for the window to grow.
        self.dedup.reserve(inputs.len());
        self.run_timers(now, fx);
        let mut at = 0;
        while at < inputs.len() {
            // Runs of usage events go through the hot path together; any other input ends
            // a run, so each input still sees the state left by the last.
            let index = u32::try_from(at).expect("checked above");
            let run = self.apply_usage_run(index, &inputs[at..], fx);
            if run > 0 {
                at += run;
                continue;
            }
            if let Err(rejection) = self.apply_command(index, &inputs[at], now, fx) {
                fx.inputs_rejected += 1;
                fx.outcomes.push((index, Outcome::Rejected(rejection)));
            }
            self.mark_customer_of(&inputs[at]);
            at += 1;
        }
        self.finish_batch(now, fx);
        if std::mem::take(&mut self.flush_requested) {
            self.close_flush(now, fx);
        }
    }

    /// Marks the customer a command names as changed (conservatively: whether or not the
    /// command changed it), so the next flush writes its row.
    fn mark_customer_of(&mut self, input: &Input) {
        let customer = match input {
            Input::PutCustomer(update) => &update.id,
            Input::Subscribe(request) => &request.customer,
            Input::Grant(request) => &request.customer,
            Input::VoidGrant { customer, .. } | Input::SetAutoRecharge { customer, .. } => customer,
            Input::RechargeOutcome(outcome) => &outcome.command.customer,
            Input::Usage(_)
            | Input::PutCreditType(_)
            | Input::PutFeature(_)
            | Input::PutProduct(_)
            | Input::PutPlan(_)
            | Input::Tick
            | Input::Flush => return,
        };
        if let Some(index) = self.customer_number(customer.as_str()) {
            self.mark_customer_dirty(index);
        }
    }

    /// Marks a customer changed since the last flush. A command marks its customer twice
    /// or more (creating it, then for the command), and a flush apart can be millions of
    /// commands, so repeats in a row are skipped and a full list is compacted (sorted,
    /// repeats dropped) before it grows: it holds at most twice the customers changed.
    /// Its order means nothing: the flush and snapshots sort it.
    fn mark_customer_dirty(&mut self, index: u32) {
        let dirty = &mut self.dirty_customers;
        if dirty.last() == Some(&index) {
            return;
        }
        if dirty.len() == dirty.capacity() && dirty.len() >= DIRTY_COMPACT_MIN {
            dirty.sort_unstable();
            dirty.dedup();
        }
        dirty.push(index);
    }

    fn apply_command(
        &mut self,
        index: u32,
        input: &Input,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        match input {
            Input::Usage(_) => unreachable!("usage takes the hot path"),
            Input::PutCreditType(credit_type) => self.catalog.put_credit_type(credit_type.clone()),
            Input::PutFeature(feature) => self.catalog.put_feature(feature.clone()),
            Input::PutProduct(product) => {
                self.catalog.put_product(product.clone());
                Ok(())
            }
            Input::PutPlan(plan) => self.catalog.put_plan(plan.clone()),
            Input::PutCustomer(update) => {
                self.put_customer(update, now, fx);
                Ok(())
            }
            Input::Subscribe(request) => self.subscribe(index, request, now, fx),
            Input::Grant(request) => self.grant(index, request, now, fx),
            Input::VoidGrant { customer, grant } => {
                self.void_grant(index, customer, *grant, now, fx)
            }
            Input::SetAutoRecharge {
                customer,
                credit_type,
                settings,
            } => self.set_auto_recharge(customer, credit_type, settings, now, fx),
            Input::RechargeOutcome(outcome) => self.apply_recharge_outcome(index, outcome, now, fx),
            Input::Tick => Ok(()),
            Input::Flush => {
                self.flush_requested = true;
                Ok(())
            }
        }
    }

    /// Checks every touched account and decides recharges, once per batch. (Usage is rolled
    /// up at the flush, or before the account's next other entry.)
    fn finish_batch(&mut self, now: TimestampMs, fx: &mut Effects) {
        let touched = std::mem::take(&mut self.touched);
        // By now the lines of the accounts touched early in the batch have left the core's
        // caches; reading a chunk's lines first overlaps their misses (see `usage.rs`).
        // Pipelined: one loop reads the auto-recharge state of chunk k, found through its
        // account lines read a chunk earlier, and the account lines of chunk k + 1.
        let mut chunks = touched.chunks(usage::GROUP).peekable();
        let mut seen = 0;
        for &account_index in chunks.peek().copied().unwrap_or_default() {
            seen ^= self.accounts[account_index as usize].touch();
        }
        black_box(seen);
        while let Some(chunk) = chunks.next() {
            let mut seen = 0;
            for &account_index in chunk {
                seen ^= self.accounts[account_index as usize].touch_auto_recharge();
            }
            for &account_index in chunks.peek().copied().unwrap_or_default() {
                seen ^= self.accounts[account_index as usize].touch();
            }
            black_box(seen);
            for &account_index in chunk {
                self.accounts[account_index as usize].assert_conserved();
                self.decide(account_index, now, fx);
                fx.changed.push(AccountHandle(account_index));
            }
        }
        self.touched = touched;
        self.touched.clear();
    }

    /// Marks an account changed by this batch.
    #[inline]
    fn touch(&mut self, account_index: u32) {
        let scratch = &mut self.accounts[account_index as usize].scratch;
        if scratch.touched_batch != self.batch {
            if scratch.touched_batch <= self.flush_batch {
                self.dirty_accounts.push(account_index);
            }
            scratch.touched_batch = self.batch;
            self.touched.push(account_index);
        }
    }

    /// Writes the account's pending usage as one ledger entry, so that any other entry
    /// after it sees a ledger whose amounts sum to the balance.
    fn flush_usage(&mut self, account_index: u32, at: TimestampMs, fx: &mut Effects) {
        let account = &mut self.accounts[account_index as usize];
        if account.scratch.pending.events == 0 {
            return;
        }
        let pending = std::mem::take(&mut account.scratch.pending);
        let seq = account.next_entry_seq();
        fx.entries.push(LedgerEntry {
            account: AccountHandle(account_index),
            seq,
            at,
            kind: EntryKind::Usage,
            amount: crate::amount::Credits::from_micros(-pending.micros),
            balance_after: account.balance(),
            reference: Reference::Usage {
                first_batch: pending.first_batch,
                last_batch: pending.last_batch(),
                events: pending.events,
            },
        });
    }

    /// The account of (customer, credit type), created on first sight; `hash` is the
    /// customer's [`CustomerIndex::hash`], `known` its index entry if already looked up
    /// (entries only ever gain a first account, so an old one with an account is current).
    #[inline]
    fn account_for(
        &mut self,
        customer: &CustomerId,
        hash: u64,
        known: Option<CustomerEntry>,
        credit_type: u32,
    ) -> u32 {
        let entry = match known {
            Some(entry) if entry.first_account != NO_ACCOUNT => Some(entry),
            _ => self.customer_index.get(customer.as_str(), hash),
        };
        let customer_index = match entry {
            Some(entry) => {
                // The usual case: the customer's first account is the one, found from the
                // index alone.
                if entry.first_account != NO_ACCOUNT
                    && self.accounts[entry.first_account as usize].credit_type == credit_type
                {
                    return entry.first_account;
                }
                entry.customer
            }
            None => self.new_customer(customer, hash),
        };
        self.account_of_customer(customer_index, credit_type)
    }

    fn account_of_customer(&mut self, customer_index: u32, credit_type: u32) -> u32 {
        let found = self.customers[customer_index as usize]
            .account_indexes()
            .find(|&account| self.accounts[account as usize].credit_type == credit_type);
        if let Some(account) = found {
            return account;
        }
        let account =
            u32::try_from(self.accounts.len()).expect("fewer than 2^32 accounts per shard");
        let customer = &mut self.customers[customer_index as usize];
        if customer.first_account == NO_ACCOUNT {
            customer.first_account = account;
            let id = customer.id.as_str();
            self.customer_index
                .set_first_account(id, CustomerIndex::hash(id), account);
        } else {
            customer.details_mut().more_accounts.push(account);
        }
        self.mark_customer_dirty(customer_index);
        self.accounts
            .push(Account::new(customer_index, credit_type));
        account
    }

    /// The accounts of a customer, in the order they were opened.
    pub(super) fn accounts_of_customer(&self, customer_index: u32) -> Vec<u32> {
        self.customers[customer_index as usize]
            .account_indexes()
            .collect()
    }

    /// The customer, created on first sight.
    fn customer_for(&mut self, id: &CustomerId) -> u32 {
        let hash = CustomerIndex::hash(id.as_str());
        match self.customer_index.get(id.as_str(), hash) {
            Some(entry) => entry.customer,
            None => self.new_customer(id, hash),
        }
    }

    /// Adds a customer not seen before; `hash` is its [`CustomerIndex::hash`].
    fn new_customer(&mut self, id: &CustomerId, hash: u64) -> u32 {
        let index =
            u32::try_from(self.customers.len()).expect("fewer than 2^32 customers per shard");
        self.customers.push(Customer::new(id.clone()));
        self.customer_index.insert(id.clone(), hash, index);
        self.mark_customer_dirty(index);
        index
    }

    /// The index of a customer, if known.
    fn customer_number(&self, id: &str) -> Option<u32> {
        self.customer_index
            .get(id, CustomerIndex::hash(id))
            .map(|entry| entry.customer)
    }

    // ---- read side -------------------------------------------------------------------

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The shard's clock: the `now` of the last batch.
    pub fn clock(&self) -> TimestampMs {
        self.clock
    }

    /// Batches applied so far.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Settings.
    pub fn config(&self) -> ShardConfig {
        self.config
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Number of customers.
    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }

    /// Usage ids held by the dedup window.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// An account by handle.
    pub fn account(&self, handle: AccountHandle) -> &Account {
        &self.accounts[handle.0 as usize]
    }

    /// All accounts with their handles, in handle order.
    pub fn accounts(&self) -> impl Iterator<Item = (AccountHandle, &Account)> {
        (0_u32..)
            .zip(&self.accounts)
            .map(|(index, account)| (AccountHandle(index), account))
    }

    /// The customer that owns an account.
    pub fn customer_of(&self, handle: AccountHandle) -> &Customer {
        &self.customers[self.account(handle).customer as usize]
    }

    /// The credit type of an account.
    pub fn credit_type_of(&self, handle: AccountHandle) -> &CreditTypeId {
        &self
            .catalog
            .credit_type_at(self.account(handle).credit_type)
            .id
    }

    /// A customer by id.
    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customer_number(id)
            .map(|index| &self.customers[index as usize])
    }

    /// A customer's accounts, in the order they were opened.
    pub fn accounts_of(&self, customer: &str) -> Vec<AccountHandle> {
        self.customer(customer).map_or_else(Vec::new, |found| {
            found.account_indexes().map(AccountHandle).collect()
        })
    }

    /// The account of (customer, credit type), if it exists.
    pub fn find_account(&self, customer: &str, credit_type: &str) -> Option<AccountHandle> {
        let credit_type = self
            .catalog
            .credit_type_index(&CreditTypeId::new(credit_type).ok()?)?;
        let customer = self.customer(customer)?;
        customer
            .account_indexes()
            .find(|&account| self.accounts[account as usize].credit_type == credit_type)
            .map(AccountHandle)
    }

    /// Recharge commands in flight, to publish again after a restart (the recharger
    /// applies each command id once).
    pub fn in_flight_commands(&self) -> Vec<RechargeCommand> {
        self.accounts
            .iter()
            .filter_map(|account| account.auto.as_ref()?.in_flight.clone())
            .collect()
    }
}
