//! Grants: blocks of credits with a priority and an optional expiry, burned down in a
//! fixed order: priority (lower first), then soonest expiry (none last), then oldest.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::ids::GrantId;
use crate::money::Money;
use crate::time::TimestampMs;

/// Priority of grants that do not name one, and of recharge grants. Lower burns first.
pub const DEFAULT_GRANT_PRIORITY: u32 = 100;

/// Whether the customer paid for a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// Bought (a plan, a manual paid grant, a recharge).
    Paid,
    /// Given for free.
    Promotional,
}

/// Where a grant came from; decides its ledger entry kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    /// A manual or promotional grant from the API.
    Manual,
    /// A plan subscription.
    Subscription,
    /// An automatic recharge.
    Recharge,
}

/// A live grant: credits still to burn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its id, unique per customer, increasing with age.
    pub id: GrantId,
    /// Paid or promotional.
    pub kind: GrantKind,
    /// Where it came from.
    pub source: GrantSource,
    /// Burn priority; lower burns first.
    pub priority: u32,
    /// When its remainder leaves the balance, if ever.
    pub expires_at: Option<TimestampMs>,
    /// When it was granted.
    pub granted_at: TimestampMs,
    /// Credits granted.
    pub amount: Credits,
    /// Credits left; always more than zero while the grant is live.
    pub remaining: Credits,
    /// What the customer paid for it, if anything.
    pub cost: Option<Money>,
}

impl Grant {
    /// The burn-down order key: priority, then soonest expiry (none last), then oldest.
    pub fn burn_key(&self) -> (u32, i64, u64) {
        (
            self.priority,
            self.expires_at.map_or(i64::MAX, |at| at.0),
            self.id.0,
        )
    }
}

/// Inserts `grant` into `grants`, kept sorted by [`Grant::burn_key`].
pub fn insert_in_burn_order(grants: &mut Vec<Grant>, grant: Grant) {
    let key = grant.burn_key();
    let at = grants.partition_point(|existing| existing.burn_key() < key);
    grants.insert(at, grant);
}

/// Burns up to `credits` from the front of `grants` (sorted in burn order), removing the
/// grants it empties. Returns the credits it could not cover (the overdraft).
pub fn burn_down(grants: &mut Vec<Grant>, credits: Credits) -> Credits {
    debug_assert!(
        !credits.is_negative(),
        "burns are never negative: {credits}"
    );
    let mut left = credits.micros();
    let mut emptied = 0;
    for grant in grants.iter_mut() {
        if left == 0 {
            break;
        }
        let take = grant.remaining.micros().min(left);
        grant.remaining = Credits::from_micros(grant.remaining.micros() - take);
        left -= take;
        if grant.remaining.is_zero() {
            emptied += 1;
        }
    }
    // Only a prefix can be emptied: a grant is left non-empty only when `left` hit zero.
    grants.drain(..emptied);
    Credits::from_micros(left)
}

/// Live grants in burn order, as an account holds them: the usual single grant inline, so
/// burning it reads a line of the account rather than a heap block the account points to
/// (one dependent cache miss less per usage event); two or more on the heap. Which form
/// holds them is invisible: everything reads them as one slice.
#[derive(Clone)]
pub(crate) enum GrantList {
    /// No grant or one.
    Inline(Option<Grant>),
    /// Two or more.
    Heap(Vec<Grant>),
}

impl Default for GrantList {
    fn default() -> Self {
        Self::Inline(None)
    }
}

impl GrantList {
    /// From grants already in burn order.
    pub fn from_vec(mut grants: Vec<Grant>) -> Self {
        if grants.len() <= 1 {
            Self::Inline(grants.pop())
        } else {
            Self::Heap(grants)
        }
    }

    /// The grants in burn order.
    #[inline]
    pub fn as_slice(&self) -> &[Grant] {
        match self {
            Self::Inline(grant) => grant.as_slice(),
            Self::Heap(grants) => grants,
        }
    }

    /// Whether no grant is live.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Inserts `grant` at its place in burn order.
    pub fn insert(&mut self, grant: Grant) {
        match self {
            Self::Inline(None) => *self = Self::Inline(Some(grant)),
            Self::Inline(Some(_)) => {
                let Self::Inline(Some(first)) = std::mem::take(self) else {
                    unreachable!("matched above");
                };
                let mut grants = Vec::with_capacity(2);
                grants.push(first);
                insert_in_burn_order(&mut grants, grant);
                *self = Self::Heap(grants);
            }
            Self::Heap(grants) => insert_in_burn_order(grants, grant),
        }
    }

    /// Burns up to `credits` in burn order, dropping the grants it empties; returns what
    /// it could not cover. Same rule as [`burn_down`].
    #[inline]
    pub fn burn(&mut self, credits: Credits) -> Credits {
        match self {
            Self::Inline(None) => credits,
            Self::Inline(Some(grant)) => {
                debug_assert!(!credits.is_negative(), "burns are never negative");
                let take = grant.remaining.micros().min(credits.micros());
                grant.remaining = Credits::from_micros(grant.remaining.micros() - take);
                if grant.remaining.is_zero() {
                    *self = Self::Inline(None);
                }
                Credits::from_micros(credits.micros() - take)
            }
            Self::Heap(grants) => {
                let uncovered = burn_down(grants, credits);
                self.settle();
                uncovered
            }
        }
    }

    /// Removes a live grant by id and returns it.
    pub fn remove(&mut self, id: GrantId) -> Option<Grant> {
        match self {
            Self::Inline(grant) => grant.take_if(|grant| grant.id == id),
            Self::Heap(grants) => {
                let at = grants.iter().position(|grant| grant.id == id)?;
                let grant = grants.remove(at);
                self.settle();
                Some(grant)
            }
        }
    }

    /// Reads the first grant's remainder, to bring its line into the cache; the value
    /// means nothing.
    #[inline]
    pub fn touch(&self) -> u64 {
        self.as_slice()
            .first()
            .map_or(0, |grant| grant.remaining.micros().cast_unsigned())
    }

    /// Moves one grant left on the heap back inline.
    fn settle(&mut self) {
        if let Self::Heap(grants) = self
            && grants.len() <= 1
        {
            *self = Self::Inline(grants.pop());
        }
    }
}

impl PartialEq for GrantList {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for GrantList {}

impl fmt::Debug for GrantList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: u64, priority: u32, expires_at: Option<i64>, remaining: i64) -> Grant {
        Grant {
            id: GrantId(id),
            kind: GrantKind::Promotional,
            source: GrantSource::Manual,
            priority,
            expires_at: expires_at.map(TimestampMs),
            granted_at: TimestampMs(0),
            amount: Credits::from_micros(remaining),
            remaining: Credits::from_micros(remaining),
            cost: None,
        }
    }

    #[test]
    fn burn_order_is_priority_then_expiry_then_age() {
        let mut grants = Vec::new();
        for g in [
            grant(1, 5, None, 10),
            grant(2, 1, None, 10),
            grant(3, 1, Some(50), 10),
            grant(4, 1, Some(50), 10),
        ] {
            insert_in_burn_order(&mut grants, g);
        }
        let order: Vec<u64> = grants.iter().map(|g| g.id.0).collect();
        assert_eq!(order, vec![3, 4, 2, 1]);
    }

    #[test]
    fn burn_down_empties_a_prefix_and_returns_the_overdraft() {
        let mut grants = vec![grant(1, 0, None, 10), grant(2, 0, None, 10)];
        assert_eq!(
            burn_down(&mut grants, Credits::from_micros(15)),
            Credits::ZERO
        );
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].remaining, Credits::from_micros(5));
        assert_eq!(
            burn_down(&mut grants, Credits::from_micros(7)),
            Credits::from_micros(2)
        );
        assert!(grants.is_empty());
    }

    #[test]
    fn a_grant_list_burns_and_orders_like_the_vec() {
        let grants = [
            grant(1, 5, None, 10),
            grant(2, 1, None, 10),
            grant(3, 1, Some(50), 10),
        ];
        let mut list = GrantList::default();
        let mut vec = Vec::new();
        for g in grants {
            list.insert(g.clone());
            insert_in_burn_order(&mut vec, g);
            assert_eq!(list.as_slice(), vec.as_slice());
        }
        for burn in [3, 9, 0, 12, 4, 5] {
            let credits = Credits::from_micros(burn);
            assert_eq!(list.burn(credits), burn_down(&mut vec, credits));
            assert_eq!(list.as_slice(), vec.as_slice());
        }
        assert!(matches!(list, GrantList::Inline(None)), "emptied inline");
        list.insert(grant(4, 1, None, 10));
        list.insert(grant(5, 1, None, 10));
        assert_eq!(list.remove(GrantId(4)).map(|g| g.id), Some(GrantId(4)));
        assert!(
            matches!(list, GrantList::Inline(Some(_))),
            "one left, inline"
        );
        assert_eq!(list.remove(GrantId(4)), None);
        assert_eq!(list.remove(GrantId(5)).map(|g| g.id), Some(GrantId(5)));
        assert!(list.is_empty());
    }
}
