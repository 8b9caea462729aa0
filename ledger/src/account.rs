//! One account (customer, credit type): live grants, overdraft, running totals, and the
//! auto-recharge state. The balance is kept, and asserted, equal to both sides of
//! invariant 1 (conservation).

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::autorecharge::AutoRecharge;
use crate::grant::{Grant, InlineGrant, burn_down, insert_in_burn_order};
use crate::ids::GrantId;
use crate::money::Money;

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
/// cache miss, and for memory, as there is one per idle account: two cache lines, 128
/// bytes, that the hot path fetches together (`touch`). Line 0 holds what every usage
/// event reads and writes (balance, the batch scratch, credit type) and the auto-recharge
/// pointer; line 1 the usual single grant, inline, and Σ granted. Everything few accounts
/// need (two or more grants, the inline grant's cost, expired and voided totals, Σ granted
/// past `i64`) is in one box made on demand. Two numbers follow from the others and are
/// not kept: the overdraft (−balance when no grant is live, else zero: invariant 1) and
/// Σ consumed (granted − expired − voided − balance).
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Account {
    balance: Credits,
    pub(crate) scratch: BatchScratch,
    /// Index of the credit type in the catalog.
    pub(crate) credit_type: u32,
    /// Index of the customer in the shard.
    pub(crate) customer: u32,
    pub(crate) entry_seq: u64,
    pub(crate) auto: Option<Box<AutoRecharge>>,
    /// The only live grant, when there is one (and it fits inline).
    grant: Option<InlineGrant>,
    /// Σ granted, the part that fits an `i64` (the rest in `Cold::granted_wide`).
    granted: i64,
    cold: Option<Box<Cold>>,
}

/// What few accounts need, boxed on demand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Cold {
    /// The live grants in burn order when they are not one inline grant.
    grants: Vec<Grant>,
    /// The cost of the inline grant.
    grant_cost: Option<Money>,
    /// Σ granted beyond `Account::granted`.
    granted_wide: i128,
    /// Σ expired.
    expired: i128,
    /// Σ voided.
    voided: i128,
}

impl Cold {
    fn is_empty(&self) -> bool {
        self.grants.is_empty()
            && self.grant_cost.is_none()
            && self.granted_wide == 0
            && self.expired == 0
            && self.voided == 0
    }
}

/// An account's live grants in burn order (read only; see [`Account::grants`]).
#[derive(Clone, Copy, Debug)]
pub struct Grants<'a> {
    inline: Option<(&'a InlineGrant, Option<Money>)>,
    heap: &'a [Grant],
}

impl<'a> Grants<'a> {
    /// The grants in burn order.
    pub fn iter(&self) -> impl Iterator<Item = Grant> + 'a {
        let heap = self.heap;
        self.inline
            .map(|(inline, cost)| inline.join(cost))
            .into_iter()
            .chain(heap.iter().cloned())
    }

    /// How many.
    pub fn len(&self) -> usize {
        usize::from(self.inline.is_some()) + self.heap.len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The grants in burn order, copied.
    pub fn to_vec(&self) -> Vec<Grant> {
        self.iter().collect()
    }
}

impl<'a> IntoIterator for Grants<'a> {
    type Item = Grant;
    type IntoIter = Box<dyn Iterator<Item = Grant> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl Serialize for Grants<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
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
    grants: Grants<'a>,
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
            overdraft: self.overdraft(),
            grants: self.grants(),
            totals: self.totals(),
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
        let mut account = Self::new(owned.customer, owned.credit_type);
        account.balance = owned.balance;
        account.scratch.pending = owned.pending;
        account.entry_seq = owned.entry_seq;
        account.auto = owned.auto;
        account.set_grants(owned.grants);
        account.add_granted(owned.totals.granted);
        account.cold_mut().expired = owned.totals.expired;
        account.cold_mut().voided = owned.totals.voided;
        account.drop_empty_cold();
        // The overdraft and Σ consumed are not kept: they must be what the rest implies.
        if account.overdraft() != owned.overdraft || account.totals() != owned.totals {
            return Err(serde::de::Error::custom(format!(
                "account of customer {}: overdraft {} and totals {:?} do not follow from \
                 balance {} and grants (expected overdraft {} and consumed {})",
                owned.customer,
                owned.overdraft,
                owned.totals,
                owned.balance,
                account.overdraft(),
                account.totals().consumed
            )));
        }
        Ok(account)
    }
}

impl Account {
    pub(crate) fn new(customer: u32, credit_type: u32) -> Self {
        Self {
            balance: Credits::ZERO,
            scratch: BatchScratch::default(),
            credit_type,
            customer,
            entry_seq: 0,
            auto: None,
            grant: None,
            granted: 0,
            cold: None,
        }
    }

    /// Reads one word of each line of the account, so that their cache misses overlap
    /// with other work; the value means nothing (pass it to `std::hint::black_box`).
    #[inline]
    pub(crate) fn touch(&self) -> u64 {
        self.balance.micros().cast_unsigned() ^ self.granted.cast_unsigned()
    }

    /// Reads what the per-batch recharge decision reads of the auto-recharge state and
    /// the rarely used fields, if any, which live in heap blocks of their own, so that
    /// their cache misses overlap with other work; the value means nothing.
    #[inline]
    pub(crate) fn touch_auto_recharge(&self) -> u64 {
        self.auto.as_deref().map_or(0, |auto| {
            // Truncating is fine: only the load matters.
            #[allow(clippy::cast_possible_truncation)]
            let cold = self.cold.as_deref().map_or(0, |cold| cold.expired as u64);
            auto.period.end.0.cast_unsigned()
                ^ auto.settings.threshold.micros().cast_unsigned()
                ^ u64::from(auto.settings.enabled)
                ^ u64::from(auto.in_flight.is_some())
                ^ u64::from(auto.last_skip.is_some())
                ^ cold
        })
    }

    /// The balance: live grants' remainders minus the overdraft.
    #[inline]
    pub fn balance(&self) -> Credits {
        self.balance
    }

    /// Usage not covered by any grant, paid back first by the next grant: what the
    /// balance is below zero while no grant is live (a live grant means no overdraft).
    pub fn overdraft(&self) -> Credits {
        if self.has_grants() {
            Credits::ZERO
        } else {
            Credits::from_micros(self.balance.micros().saturating_neg().max(0))
        }
    }

    fn has_grants(&self) -> bool {
        self.grant.is_some()
            || self
                .cold
                .as_ref()
                .is_some_and(|cold| !cold.grants.is_empty())
    }

    /// Live grants in burn order.
    pub fn grants(&self) -> Grants<'_> {
        let cold = self.cold.as_deref();
        Grants {
            inline: self
                .grant
                .as_ref()
                .map(|grant| (grant, cold.and_then(|cold| cold.grant_cost))),
            heap: cold.map_or(&[][..], |cold| &cold.grants),
        }
    }

    /// Running totals.
    pub fn totals(&self) -> Totals {
        let (granted_wide, expired, voided) = self.cold.as_deref().map_or((0, 0, 0), |cold| {
            (cold.granted_wide, cold.expired, cold.voided)
        });
        let granted = i128::from(self.granted) + granted_wide;
        Totals {
            granted,
            consumed: granted - expired - voided - i128::from(self.balance.micros()),
            expired,
            voided,
        }
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

    fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the box of rarely used fields once it holds nothing.
    fn drop_empty_cold(&mut self) {
        if self.cold.as_deref().is_some_and(Cold::is_empty) {
            self.cold = None;
        }
    }

    /// Adds to Σ granted, widening into the box past `i64`.
    fn add_granted(&mut self, micros: i128) {
        let sum = i128::from(self.granted) + micros;
        match i64::try_from(sum) {
            Ok(granted) => self.granted = granted,
            Err(_) => {
                self.cold_mut().granted_wide += sum;
                self.granted = 0;
            }
        }
    }

    /// Holds `grants` (in burn order): one inline if it can be, else on the heap.
    fn set_grants(&mut self, mut grants: Vec<Grant>) {
        let inline = match grants.as_slice() {
            [only] => InlineGrant::split(only),
            _ => None,
        };
        match inline {
            Some((grant, cost)) => {
                grants.clear();
                self.grant = Some(grant);
                if cost.is_some() || self.cold.is_some() {
                    let cold = self.cold_mut();
                    cold.grant_cost = cost;
                    cold.grants = grants;
                }
            }
            None => {
                self.grant = None;
                if !grants.is_empty() || self.cold.is_some() {
                    let cold = self.cold_mut();
                    cold.grant_cost = None;
                    cold.grants = grants;
                }
            }
        }
        self.drop_empty_cold();
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
        debug_assert!(!credits.is_negative(), "burns are never negative");
        match &mut self.grant {
            Some(grant) => {
                let take = grant.remaining.micros().min(credits.micros());
                grant.remaining = Credits::from_micros(grant.remaining.micros() - take);
                if grant.remaining.is_zero() {
                    self.grant = None;
                    if let Some(cold) = self.cold.as_deref_mut() {
                        cold.grant_cost = None;
                    }
                    self.drop_empty_cold();
                }
            }
            None => {
                if let Some(cold) = self.cold.as_deref_mut()
                    && !cold.grants.is_empty()
                {
                    burn_down(&mut cold.grants, credits);
                    if cold.grants.len() <= 1 {
                        let grants = std::mem::take(&mut cold.grants);
                        self.set_grants(grants);
                    }
                }
            }
        }
        // What no grant covered is the overdraft, which follows from the balance.
        self.balance = Credits::from_micros(self.balance.micros() - credits.micros());
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
        let payback = Credits::from_micros(grant.amount.micros().min(self.overdraft().micros()));
        grant.remaining = Credits::from_micros(grant.amount.micros() - payback.micros());
        self.balance = Credits::from_micros(self.balance.micros() + grant.amount.micros());
        self.add_granted(i128::from(grant.amount.micros()));
        if grant.remaining.is_positive() {
            let mut grants = self.grants().to_vec();
            insert_in_burn_order(&mut grants, grant);
            self.set_grants(grants);
        }
        payback
    }

    /// Removes a live grant by id and returns it.
    fn take_grant(&mut self, id: GrantId) -> Option<Grant> {
        let mut grants = self.grants().to_vec();
        let at = grants.iter().position(|grant| grant.id == id)?;
        let grant = grants.remove(at);
        self.set_grants(grants);
        self.balance = Credits::from_micros(self.balance.micros() - grant.remaining.micros());
        Some(grant)
    }

    /// Expires a live grant; returns the credits that left.
    pub(crate) fn expire_grant(&mut self, id: GrantId) -> Option<Credits> {
        let grant = self.take_grant(id)?;
        self.cold_mut().expired += i128::from(grant.remaining.micros());
        Some(grant.remaining)
    }

    /// Voids a live grant; returns the credits that left.
    pub(crate) fn void_grant(&mut self, id: GrantId) -> Option<Credits> {
        let grant = self.take_grant(id)?;
        self.cold_mut().voided += i128::from(grant.remaining.micros());
        Some(grant.remaining)
    }

    /// Next ledger entry number.
    pub(crate) fn next_entry_seq(&mut self) -> u64 {
        self.entry_seq += 1;
        self.entry_seq
    }

    /// Invariant 1, asserted in release builds: crashing beats a wrong balance. With the
    /// overdraft and Σ consumed implied, what is left to check is that the balance is the
    /// live grants' remainders while any is live, and otherwise at most zero (the
    /// overdraft); that Σ consumed never went below zero; and that the grants are held in
    /// their one form (one inline, two or more on the heap).
    pub(crate) fn assert_conserved(&self) {
        let grants = self.grants();
        if grants.is_empty() {
            assert!(
                !self.balance.is_positive(),
                "no credits without a live grant: {}",
                self.balance
            );
        } else {
            let live: i128 = grants
                .iter()
                .map(|grant| i128::from(grant.remaining.micros()))
                .sum();
            assert_eq!(
                live,
                i128::from(self.balance.micros()),
                "balance must equal live grants while any is live (no overdraft then)"
            );
        }
        assert!(
            grants.iter().all(|grant| grant.remaining.is_positive()),
            "live grants hold credits"
        );
        let totals = self.totals();
        assert!(
            totals.consumed >= 0 && totals.expired >= 0 && totals.voided >= 0,
            "totals are never negative: {totals:?}"
        );
        assert!(
            self.grant.is_none() || grants.heap.is_empty(),
            "one grant inline or every grant on the heap"
        );
        assert!(
            self.cold.as_deref().is_none_or(|cold| !cold.is_empty()),
            "no empty box"
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
        assert_eq!(size_of::<Account>(), 128);
        assert_eq!(align_of::<Account>(), 64);
        assert!(std::mem::offset_of!(Account, entry_seq) < 64);
        assert_eq!(std::mem::offset_of!(Account, grant), 64);
        assert!(std::mem::offset_of!(Account, granted) < 128);
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

    #[test]
    fn totals_past_i64_widen_into_the_box_and_round_trip() {
        let big = i64::MAX - 1;
        let grant = |id| Grant {
            id: GrantId(id),
            kind: GrantKind::Promotional,
            source: GrantSource::Manual,
            priority: 1,
            expires_at: None,
            granted_at: TimestampMs(1),
            amount: Credits::from_micros(big),
            remaining: Credits::from_micros(big),
            cost: None,
        };
        let mut account = Account::new(0, 0);
        account.add_grant(grant(1));
        account.burn(Credits::from_micros(big));
        assert!(
            account.cold.is_none(),
            "an emptied inline grant leaves no box"
        );
        account.add_grant(grant(2));
        account.burn(Credits::from_micros(5));
        let totals = account.totals();
        assert_eq!(totals.granted, 2 * i128::from(big));
        assert_eq!(totals.consumed, i128::from(big) + 5);
        account.assert_conserved();
        let bytes = postcard::to_stdvec(&account).expect("serializes");
        let restored: Account = postcard::from_bytes(&bytes).expect("deserializes");
        assert_eq!(restored.totals(), totals);
        assert_eq!(postcard::to_stdvec(&restored).expect("serializes"), bytes);
    }

    #[test]
    fn a_row_whose_totals_do_not_follow_is_refused() {
        let before = Before {
            customer: 1,
            credit_type: 0,
            balance: Credits::from_micros(-3),
            overdraft: Credits::from_micros(2),
            grants: Vec::new(),
            totals: Totals::default(),
            entry_seq: 0,
            auto: None,
            pending: PendingUsage::default(),
        };
        let bytes = postcard::to_stdvec(&before).expect("serializes");
        assert!(postcard::from_bytes::<Account>(&bytes).is_err());
    }
}
