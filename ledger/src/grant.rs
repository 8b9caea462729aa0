//! Grants: blocks of credits with a priority and an optional expiry, burned down in a
//! fixed order: priority (lower first), then soonest expiry (none last), then oldest.

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

/// A grant as an account holds its only live grant, inline, so burning it reads a line
/// of the account rather than a heap block the account points to: every field of
/// [`Grant`] but its cost (kept with the account's rarely used fields), in 48 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InlineGrant {
    /// First: the field the hot path reads and writes.
    pub remaining: Credits,
    pub amount: Credits,
    pub id: GrantId,
    pub granted_at: TimestampMs,
    /// [`NEVER`] for none.
    pub expires_at: TimestampMs,
    pub priority: u32,
    pub kind: GrantKind,
    pub source: GrantSource,
}

/// The `expires_at` of an inline grant that never expires: no grant can expire at the
/// first instant, as an expiry must come after the time it was granted.
const NEVER: TimestampMs = TimestampMs(i64::MIN);

impl InlineGrant {
    /// The grant inline, and its cost; `None` for a grant whose expiry is the one
    /// instant that stands for none (it stays on the heap).
    pub fn split(grant: &Grant) -> Option<(Self, Option<Money>)> {
        if grant.expires_at == Some(NEVER) {
            return None;
        }
        let inline = Self {
            remaining: grant.remaining,
            amount: grant.amount,
            id: grant.id,
            granted_at: grant.granted_at,
            expires_at: grant.expires_at.unwrap_or(NEVER),
            priority: grant.priority,
            kind: grant.kind,
            source: grant.source,
        };
        Some((inline, grant.cost))
    }

    /// The whole grant, with its cost.
    pub fn join(&self, cost: Option<Money>) -> Grant {
        Grant {
            id: self.id,
            kind: self.kind,
            source: self.source,
            priority: self.priority,
            expires_at: (self.expires_at != NEVER).then_some(self.expires_at),
            granted_at: self.granted_at,
            amount: self.amount,
            remaining: self.remaining,
            cost,
        }
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
    fn an_inline_grant_holds_every_field_but_its_cost() {
        let mut with_expiry = grant(7, 3, Some(50), 10);
        with_expiry.cost = Some(Money {
            minor_units: 5,
            currency: crate::money::Currency::USD,
        });
        for whole in [with_expiry, grant(8, 1, None, 4)] {
            let (inline, cost) = InlineGrant::split(&whole).expect("inline");
            assert_eq!(inline.join(cost), whole);
        }
        assert_eq!(InlineGrant::split(&grant(9, 1, Some(i64::MIN), 4)), None);
        assert_eq!(size_of::<InlineGrant>(), 48);
        assert_eq!(size_of::<Option<InlineGrant>>(), 48);
    }
}
