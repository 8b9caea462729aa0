//! One account (customer, credit type): live grants, overdraft, running totals, and the
//! auto-recharge state. The balance is kept, and asserted, equal to both sides of
//! invariant 1 (conservation).

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::autorecharge::AutoRecharge;
use crate::grant::{Grant, burn_down, insert_in_burn_order};
use crate::ids::GrantId;

/// Running totals in micro-credits, wide enough never to overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Σ granted (grants, plans and recharges).
    pub granted: i128,
    /// Σ consumed by usage.
    pub consumed: i128,
    /// Σ expired.
    pub expired: i128,
    /// Σ voided.
    pub voided: i128,
}

impl Totals {
    /// granted − consumed − expired − voided: what the balance must equal.
    pub fn net(&self) -> i128 {
        self.granted - self.consumed - self.expired - self.voided
    }
}

/// Per-batch bookkeeping, never snapshotted (a batch is atomic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchScratch {
    pub touched_batch: u64,
    pub pending_usage_micros: i64,
    pub pending_first: u32,
    pub pending_last: u32,
    pub pending_events: u32,
}

/// An account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Index of the customer in the shard.
    pub(crate) customer: u32,
    /// Index of the credit type in the catalog.
    pub(crate) credit_type: u32,
    balance: Credits,
    overdraft: Credits,
    grants: Vec<Grant>,
    totals: Totals,
    pub(crate) entry_seq: u64,
    pub(crate) auto: Option<Box<AutoRecharge>>,
    #[serde(skip)]
    pub(crate) scratch: BatchScratch,
}

impl Account {
    pub(crate) fn new(customer: u32, credit_type: u32) -> Self {
        Self {
            customer,
            credit_type,
            balance: Credits::ZERO,
            overdraft: Credits::ZERO,
            grants: Vec::new(),
            totals: Totals::default(),
            entry_seq: 0,
            auto: None,
            scratch: BatchScratch::default(),
        }
    }

    /// The balance: live grants' remainders minus the overdraft.
    #[inline]
    pub fn balance(&self) -> Credits {
        self.balance
    }

    /// Usage not covered by any grant, paid back first by the next grant.
    pub fn overdraft(&self) -> Credits {
        self.overdraft
    }

    /// Live grants in burn order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Running totals.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Auto-recharge state, when set up.
    pub fn auto_recharge(&self) -> Option<&AutoRecharge> {
        self.auto.as_deref()
    }

    /// Whether `credits` can be burned without leaving the fixed-point range.
    #[inline]
    pub(crate) fn can_burn(&self, credits: Credits) -> bool {
        self.balance.checked_sub(credits).is_some()
    }

    /// Burns usage: grants in burn order, the rest as overdraft. The caller checked
    /// [`Account::can_burn`].
    #[inline]
    pub(crate) fn burn(&mut self, credits: Credits) {
        let uncovered = burn_down(&mut self.grants, credits);
        // can_burn bounds the balance; the overdraft is at most −balance, so it fits too.
        self.overdraft = Credits::from_micros(self.overdraft.micros() + uncovered.micros());
        self.balance = Credits::from_micros(self.balance.micros() - credits.micros());
        self.totals.consumed += i128::from(credits.micros());
    }

    /// Whether a grant of `amount` keeps the balance in range.
    pub(crate) fn can_grant(&self, amount: Credits) -> bool {
        self.balance.checked_add(amount).is_some()
    }

    /// Adds a grant; what it owes the overdraft is paid back first. Returns the credits
    /// that went to the overdraft.
    pub(crate) fn add_grant(&mut self, mut grant: Grant) -> Credits {
        assert!(
            grant.amount.is_positive(),
            "grants are positive: {}",
            grant.amount
        );
        let payback = Credits::from_micros(grant.amount.micros().min(self.overdraft.micros()));
        self.overdraft = Credits::from_micros(self.overdraft.micros() - payback.micros());
        grant.remaining = Credits::from_micros(grant.amount.micros() - payback.micros());
        self.balance = Credits::from_micros(self.balance.micros() + grant.amount.micros());
        self.totals.granted += i128::from(grant.amount.micros());
        if grant.remaining.is_positive() {
            insert_in_burn_order(&mut self.grants, grant);
        }
        payback
    }

    /// Removes a live grant by id and returns it.
    fn take_grant(&mut self, id: GrantId) -> Option<Grant> {
        let at = self.grants.iter().position(|grant| grant.id == id)?;
        let grant = self.grants.remove(at);
        self.balance = Credits::from_micros(self.balance.micros() - grant.remaining.micros());
        Some(grant)
    }

    /// Expires a live grant; returns the credits that left.
    pub(crate) fn expire_grant(&mut self, id: GrantId) -> Option<Credits> {
        let grant = self.take_grant(id)?;
        self.totals.expired += i128::from(grant.remaining.micros());
        Some(grant.remaining)
    }

    /// Voids a live grant; returns the credits that left.
    pub(crate) fn void_grant(&mut self, id: GrantId) -> Option<Credits> {
        let grant = self.take_grant(id)?;
        self.totals.voided += i128::from(grant.remaining.micros());
        Some(grant.remaining)
    }

    /// Next ledger entry number.
    pub(crate) fn next_entry_seq(&mut self) -> u64 {
        self.entry_seq += 1;
        self.entry_seq
    }

    /// Invariant 1, both sides, asserted in release builds: crashing beats a wrong balance.
    pub(crate) fn assert_conserved(&self) {
        let live: i128 = self
            .grants
            .iter()
            .map(|grant| i128::from(grant.remaining.micros()))
            .sum();
        assert_eq!(
            live - i128::from(self.overdraft.micros()),
            i128::from(self.balance.micros()),
            "balance must equal live grants minus overdraft"
        );
        assert_eq!(
            self.totals.net(),
            i128::from(self.balance.micros()),
            "balance must equal granted − consumed − expired − voided"
        );
        assert!(!self.overdraft.is_negative(), "overdraft is never negative");
        assert!(
            self.grants
                .iter()
                .all(|grant| grant.remaining.is_positive()),
            "live grants hold credits"
        );
        assert!(
            self.overdraft.is_zero() || self.grants.is_empty(),
            "no overdraft while grants are live"
        );
    }
}
