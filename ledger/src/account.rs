//! One account (customer, credit type): live grants, overdraft, running totals, and the
//! auto-recharge state. The balance is kept, and asserted, equal to both sides of
//! invariant 1 (conservation).

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::autorecharge::AutoRecharge;
use crate::grant::{Grant, GrantList};
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

/// Bookkeeping between ledger entries: the batch that last touched the account, and the
/// usage not yet rolled up into an entry (rolled up at the shard's next flush, or before
/// any other entry of the account, so the ledger always sums to the balance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchScratch {
    pub touched_batch: u64,
    pub pending: PendingUsage,
}

/// Usage applied to an account and not yet written as a ledger entry (24 bytes, so the
/// account's first cache line still holds everything the hot path touches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUsage {
    /// Σ credits of the events, in micro-credits.
    pub micros: i64,
    /// The shard batch of the first event.
    pub first_batch: u64,
    /// Batches from the first event's to the last event's.
    pub batches_after_first: u32,
    /// How many events.
    pub events: u32,
}

impl PendingUsage {
    /// The shard batch of the last event.
    pub fn last_batch(&self) -> u64 {
        self.first_batch + u64::from(self.batches_after_first)
    }
}

/// An account.
///
/// Laid out for the usage hot path, where at 1 M accounts nearly every account read is a
/// cache miss: one 256-byte block aligned to cache lines, so an account is four adjacent
/// lines that the hot path fetches together (`touch`) instead of chasing a pointer to a
/// heap block for its grant. Line 0 holds what every usage event reads and
/// writes (balance, overdraft, the batch scratch, credit type); line 1 the totals; lines
/// 2–3 the usual single grant, inline, and the auto-recharge pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Account {
    balance: Credits,
    overdraft: Credits,
    pub(crate) scratch: BatchScratch,
    /// Index of the credit type in the catalog.
    pub(crate) credit_type: u32,
    /// Index of the customer in the shard.
    pub(crate) customer: u32,
    pub(crate) entry_seq: u64,
    totals: Totals,
    grants: GrantList,
    pub(crate) auto: Option<Box<AutoRecharge>>,
}

/// An account as snapshots write it: the fields in their original order, so snapshot
/// bytes do not depend on the in-memory layout.
#[derive(Serialize)]
#[serde(rename = "Account")]
struct AccountRef<'a> {
    customer: u32,
    credit_type: u32,
    balance: Credits,
    overdraft: Credits,
    grants: &'a [Grant],
    totals: Totals,
    entry_seq: u64,
    auto: &'a Option<Box<AutoRecharge>>,
    pending: PendingUsage,
}

/// An account as snapshots read it (see [`AccountRef`]).
#[derive(Deserialize)]
#[serde(rename = "Account")]
struct AccountOwned {
    customer: u32,
    credit_type: u32,
    balance: Credits,
    overdraft: Credits,
    grants: Vec<Grant>,
    totals: Totals,
    entry_seq: u64,
    auto: Option<Box<AutoRecharge>>,
    pending: PendingUsage,
}

impl Serialize for Account {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        AccountRef {
            customer: self.customer,
            credit_type: self.credit_type,
            balance: self.balance,
            overdraft: self.overdraft,
            grants: self.grants.as_slice(),
            totals: self.totals,
            entry_seq: self.entry_seq,
            auto: &self.auto,
            pending: self.scratch.pending,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = AccountOwned::deserialize(deserializer)?;
        Ok(Self {
            balance: owned.balance,
            overdraft: owned.overdraft,
            scratch: BatchScratch {
                pending: owned.pending,
                ..BatchScratch::default()
            },
            credit_type: owned.credit_type,
            customer: owned.customer,
            entry_seq: owned.entry_seq,
            totals: owned.totals,
            grants: GrantList::from_vec(owned.grants),
            auto: owned.auto,
        })
    }
}

impl Account {
    pub(crate) fn new(customer: u32, credit_type: u32) -> Self {
        Self {
            balance: Credits::ZERO,
            overdraft: Credits::ZERO,
            scratch: BatchScratch::default(),
            credit_type,
            customer,
            entry_seq: 0,
            totals: Totals::default(),
            grants: GrantList::default(),
            auto: None,
        }
    }

    /// Reads one word of each line of the account, so that their cache misses overlap
    /// with other work; the value means nothing (pass it to `std::hint::black_box`).
    #[inline]
    pub(crate) fn touch(&self) -> u64 {
        // Truncating the totals is fine: only the load matters.
        #[allow(clippy::cast_possible_truncation)]
        let totals = self.totals.granted as u64;
        self.balance.micros().cast_unsigned()
            ^ totals
            ^ self.grants.touch()
            ^ u64::from(self.auto.is_some())
    }

    /// Reads what the per-batch recharge decision reads of the auto-recharge state, if
    /// any, which lives in its own heap block, so that its cache misses overlap with other
    /// work; the value means nothing.
    #[inline]
    pub(crate) fn touch_auto_recharge(&self) -> u64 {
        self.auto.as_deref().map_or(0, |auto| {
            auto.period.end.0.cast_unsigned()
                ^ auto.settings.threshold.micros().cast_unsigned()
                ^ u64::from(auto.settings.enabled)
                ^ u64::from(auto.in_flight.is_some())
                ^ u64::from(auto.last_skip.is_some())
        })
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
        self.grants.as_slice()
    }

    /// Running totals.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Usage applied and not yet rolled up into a ledger entry.
    pub fn pending_usage(&self) -> PendingUsage {
        self.scratch.pending
    }

    /// The sequence of the account's last ledger entry (0 before the first).
    pub fn last_entry_seq(&self) -> u64 {
        self.entry_seq
    }

    /// Auto-recharge state, when set up.
    pub fn auto_recharge(&self) -> Option<&AutoRecharge> {
        self.auto.as_deref()
    }

    /// Whether `credits` can be burned without leaving the fixed-point range.
    #[inline]
    pub(crate) fn can_burn(&self, credits: Credits) -> bool {
        // The overdraft is −balance, so the balance must stay above i64::MIN for it to fit.
        self.balance
            .checked_sub(credits)
            .is_some_and(|after| after.micros() != i64::MIN)
    }

    /// Burns usage: grants in burn order, the rest as overdraft. The caller checked
    /// [`Account::can_burn`].
    #[inline]
    pub(crate) fn burn(&mut self, credits: Credits) {
        let uncovered = self.grants.burn(credits);
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
            self.grants.insert(grant);
        }
        payback
    }

    /// Removes a live grant by id and returns it.
    fn take_grant(&mut self, id: GrantId) -> Option<Grant> {
        let grant = self.grants.remove(id)?;
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
            .grants()
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
            self.grants()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{GrantKind, GrantSource};
    use crate::time::TimestampMs;

    #[test]
    fn the_layout_puts_the_hot_fields_in_the_first_line() {
        assert_eq!(size_of::<Account>(), 256);
        assert_eq!(align_of::<Account>(), 64);
        assert!(std::mem::offset_of!(Account, entry_seq) < 64);
        assert_eq!(std::mem::offset_of!(Account, totals), 64);
        assert_eq!(std::mem::offset_of!(Account, grants), 128);
    }

    /// The fields and order snapshots had before the layout above; the bytes must not move.
    #[derive(Serialize)]
    struct Before {
        customer: u32,
        credit_type: u32,
        balance: Credits,
        overdraft: Credits,
        grants: Vec<Grant>,
        totals: Totals,
        entry_seq: u64,
        auto: Option<Box<AutoRecharge>>,
        pending: PendingUsage,
    }

    #[test]
    fn snapshots_keep_their_bytes_and_round_trip() {
        let grant = |id, amount| Grant {
            id: GrantId(id),
            kind: GrantKind::Paid,
            source: GrantSource::Manual,
            priority: 3,
            expires_at: Some(TimestampMs(9)),
            granted_at: TimestampMs(1),
            amount: Credits::from_micros(amount),
            remaining: Credits::from_micros(amount),
            cost: None,
        };
        let mut account = Account::new(7, 2);
        for grants in 0..3_u64 {
            if grants > 0 {
                account.add_grant(grant(grants, 5 + i64::try_from(grants).expect("small")));
            }
            account.burn(Credits::from_micros(1));
            account.entry_seq = 40 + grants;
            let before = Before {
                customer: 7,
                credit_type: 2,
                balance: account.balance(),
                overdraft: account.overdraft(),
                grants: account.grants().to_vec(),
                totals: account.totals(),
                entry_seq: account.entry_seq,
                auto: None,
                pending: PendingUsage::default(),
            };
            let bytes = postcard::to_stdvec(&account).expect("serializes");
            assert_eq!(bytes, postcard::to_stdvec(&before).expect("serializes"));
            let restored: Account = postcard::from_bytes(&bytes).expect("deserializes");
            assert_eq!(restored, account);
            restored.assert_conserved();
        }
    }
}
