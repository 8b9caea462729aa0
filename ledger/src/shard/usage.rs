//! The hot path: one usage event → rate → dedup → burn down. No allocation unless the
//! customer is new; ledger entries are rolled up per account at the end of the batch.

use super::Shard;
use crate::dedup::fingerprint;
use crate::effects::{Effects, Outcome};
use crate::input::UsageEvent;
use crate::rejection::Rejection;

impl Shard {
    #[inline]
    pub(super) fn apply_usage(&mut self, index: u32, event: &UsageEvent, fx: &mut Effects) {
        let Some(rate) = self.catalog.feature_rate(event.feature.as_str()) else {
            reject(
                fx,
                index,
                Rejection::UnknownFeature(event.feature.to_string()),
            );
            return;
        };
        let Some(credits) = event.value.rate(rate.credits_per_unit) else {
            reject(fx, index, Rejection::Overflow { field: "value" });
            return;
        };
        // Validation that needs no account comes first, so a refused event is never
        // remembered as seen and its corrected retry is applied.
        let key = fingerprint(event.customer.as_str(), event.id.as_str());
        if !self.dedup.insert(key) {
            fx.events_duplicate += 1;
            fx.outcomes.push((index, Outcome::Duplicate));
            return;
        }
        let account_index = self.account_for(&event.customer, rate.credit_type);
        let account = &mut self.accounts[account_index as usize];
        let pending = account
            .scratch
            .pending_usage_micros
            .checked_add(credits.micros());
        if !account.can_burn(credits) || pending.is_none() {
            self.dedup.remove(key);
            reject(fx, index, Rejection::Overflow { field: "value" });
            return;
        }
        account.burn(credits);
        self.touch(account_index);
        let scratch = &mut self.accounts[account_index as usize].scratch;
        if scratch.pending_events == 0 {
            scratch.pending_first = index;
            scratch.pending_usage_micros = 0;
        }
        scratch.pending_usage_micros += credits.micros();
        scratch.pending_last = index;
        scratch.pending_events += 1;
        fx.events_applied += 1;
    }
}

fn reject(fx: &mut Effects, index: u32, rejection: Rejection) {
    fx.inputs_rejected += 1;
    fx.outcomes.push((index, Outcome::Rejected(rejection)));
}
