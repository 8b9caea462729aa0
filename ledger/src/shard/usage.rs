//! The hot path: one usage event → rate → dedup → burn down. No allocation unless the
//! customer is new; ledger entries are rolled up per account at the end of the batch.
//!
//! At a million accounts almost every event misses the cache several times (its dedup
//! slot, its customer's index slot, its account), and one miss costs about as much as all
//! the arithmetic of an event. Applied one by one, each event's misses come one after the
//! other. So a run of usage events goes in groups of [`GROUP`]: first the pure work of
//! every event of a group (rate, fingerprint, customer hash), then a loop that only reads
//! the lines the events will need, so that the misses of the whole group overlap, then the
//! events are applied in order exactly as one by one. The account of an event is only
//! known from its index slot, so the reads are pipelined: one loop reads the accounts of
//! group k, the slots of group k + 1 (whose accounts are looked up after group k is
//! applied) and the inputs of group k + 2. The reads change nothing: a run sees the same state, and gives the same
//! effects, as its events applied one at a time. `unsafe` is forbidden, so there are no
//! prefetch instructions: a plain load whose value goes to `std::hint::black_box` brings
//! the line in the same way (it holds up retirement while it is in flight, which is why
//! the reading loops do nothing else).

use std::hint::black_box;

use super::Shard;
use super::index::{CustomerEntry, CustomerIndex, NO_ACCOUNT};
use crate::amount::Credits;
use crate::catalog::FeatureRate;
use crate::dedup::fingerprint;
use crate::effects::{Effects, Outcome};
use crate::ids::same_text;
use crate::input::{Input, UsageEvent};
use crate::rejection::Rejection;

/// Usage events per group: enough misses in flight to keep the memory system busy, few
/// enough that the group's lines are still cached when it is applied.
pub(super) const GROUP: usize = 32;

/// What an event needs that depends only on the event and the catalog.
#[derive(Clone, Copy, Default)]
struct Prepared {
    /// The feature's rate; `None` for an unknown feature.
    rate: Option<FeatureRate>,
    /// The credits it burns; `None` when rating overflows.
    credits: Option<Credits>,
    /// Its dedup fingerprint.
    key: u128,
    /// Its customer's index hash.
    customer_hash: u64,
    /// Its customer's index entry, when found before the group was applied: a hint that
    /// `account_for` trusts only if it names an account (see there).
    customer: Option<CustomerEntry>,
}

impl Shard {
    /// Applies the usage events at the start of `inputs` (the first is input `first` of
    /// the batch) up to the first other input, and returns how many there were.
    ///
    /// Group by group, software-pipelined so that each group costs one wait for memory:
    /// the reads of a group's accounts go out together with those of the next group's
    /// dedup and index slots, and each group's accounts are found (through its index
    /// slots, read a whole group earlier) just before their reads go out.
    pub(super) fn apply_usage_run(
        &mut self,
        first: u32,
        inputs: &[Input],
        fx: &mut Effects,
    ) -> usize {
        let mut group = (first, usage_group(inputs));
        if group.1.is_empty() {
            return 0;
        }
        let mut current = [Prepared::default(); GROUP];
        let mut next = [Prepared::default(); GROUP];
        self.prepare(group.1, &mut current);
        let mut seen = 0;
        for prep in &current[..group.1.len()] {
            seen ^= self.touch_slots(prep);
        }
        black_box(seen);
        self.find_accounts(group.1, &mut current);
        let mut consumed = 0;
        loop {
            consumed += group.1.len();
            // The next group, when the run goes on.
            let following = Some(usage_group(&inputs[consumed..]))
                .filter(|events| !events.is_empty())
                .map(|events| {
                    (
                        first + u32::try_from(consumed).expect("a batch index"),
                        events,
                    )
                });
            if let Some((_, events)) = following {
                self.prepare(events, &mut next);
            }
            let mut seen = 0;
            for prep in &current[..group.1.len()] {
                seen ^= self.touch_account(prep);
            }
            if let Some((_, events)) = following {
                for prep in &next[..events.len()] {
                    seen ^= self.touch_slots(prep);
                }
                // And the inputs of the group after it, whose lines `prepare` reads next.
                let ahead = (consumed + events.len()).min(inputs.len());
                for input in inputs[ahead..].iter().take(GROUP) {
                    seen ^= touch_input(input);
                }
            }
            black_box(seen);
            for ((index, prep), input) in (group.0..).zip(&current).zip(group.1) {
                self.apply_usage(index, usage_event(input), prep, fx);
            }
            let Some(following) = following else {
                return consumed;
            };
            group = following;
            std::mem::swap(&mut current, &mut next);
            // Found after the group before was applied, though only a hint: the index
            // gains customers and first accounts, but never changes one it has.
            self.find_accounts(group.1, &mut current);
        }
    }

    /// The pure work of each event: rate, fingerprint, customer hash.
    fn prepare(&self, events: &[Input], prepared: &mut [Prepared; GROUP]) {
        // A batch usually names one feature, so its rate is looked up once; usage never
        // changes the catalog, so the rate holds for the whole run.
        let mut last_feature: Option<(&str, Option<FeatureRate>)> = None;
        for (prep, event) in prepared.iter_mut().zip(events.iter().map(usage_event)) {
            let feature = event.feature.as_str();
            let rate = match last_feature {
                Some((name, rate)) if same_text(name, feature) => rate,
                _ => {
                    let rate = self.catalog.feature_rate(feature);
                    last_feature = Some((feature, rate));
                    rate
                }
            };
            *prep = Prepared {
                rate,
                credits: rate.and_then(|rate| event.value.rate(rate.credits_per_unit)),
                key: fingerprint(event.customer.as_str(), event.id.as_str()),
                customer_hash: CustomerIndex::hash(event.customer.as_str()),
                customer: None,
            };
        }
    }

    /// Reads an event's dedup and customer index slots; the value means nothing.
    #[inline]
    fn touch_slots(&self, prep: &Prepared) -> u64 {
        self.dedup.touch(prep.key) ^ self.customer_index.touch(prep.customer_hash)
    }

    /// Reads the lines of an event's account, if it was found; the value means nothing.
    #[inline]
    fn touch_account(&self, prep: &Prepared) -> u64 {
        match prep.customer {
            Some(entry) if entry.first_account != NO_ACCOUNT => {
                self.accounts[entry.first_account as usize].touch()
            }
            _ => 0,
        }
    }

    /// Looks up each event's customer in the index (its slot was read a group earlier).
    fn find_accounts(&self, events: &[Input], prepared: &mut [Prepared; GROUP]) {
        for (prep, event) in prepared.iter_mut().zip(events.iter().map(usage_event)) {
            prep.customer = self
                .customer_index
                .get(event.customer.as_str(), prep.customer_hash);
        }
    }

    #[inline]
    fn apply_usage(&mut self, index: u32, event: &UsageEvent, prep: &Prepared, fx: &mut Effects) {
        let Some(rate) = prep.rate else {
            reject(
                fx,
                index,
                Rejection::UnknownFeature(event.feature.to_string()),
            );
            return;
        };
        let Some(credits) = prep.credits else {
            reject(fx, index, Rejection::Overflow { field: "value" });
            return;
        };
        // Validation that needs no account comes first, so a refused event is never
        // remembered as seen and its corrected retry is applied.
        let Some(vacancy) = self.dedup.check(prep.key) else {
            fx.events_duplicate += 1;
            fx.outcomes.push((index, Outcome::Duplicate));
            return;
        };
        let account_index = self.account_for(
            &event.customer,
            prep.customer_hash,
            prep.customer,
            rate.credit_type,
        );
        let account = &self.accounts[account_index as usize];
        if !account.can_burn(credits) {
            // Not recorded in the window: the event was refused.
            reject(fx, index, Rejection::Overflow { field: "value" });
            return;
        }
        let pending = account.scratch.pending;
        let batches_after_first = u32::try_from(self.batch - pending.first_batch);
        if pending.events > 0
            && (pending.micros.checked_add(credits.micros()).is_none()
                || pending.events == u32::MAX
                || batches_after_first.is_err())
        {
            // The roll-up cannot hold one more event: close it as an entry of its own.
            let now = self.clock;
            self.flush_usage(account_index, now, fx);
        }
        self.dedup.commit(vacancy);
        let batch = self.batch;
        let account = &mut self.accounts[account_index as usize];
        account.burn(credits);
        let pending = &mut account.scratch.pending;
        if pending.events == 0 {
            pending.first_batch = batch;
        }
        pending.micros += credits.micros();
        pending.batches_after_first = u32::try_from(batch - pending.first_batch)
            .expect("a roll-up spanning 2^32 batches was closed above");
        pending.events += 1;
        self.touch(account_index);
        fx.events_applied += 1;
    }
}

/// The usage inputs at the start of `inputs`, at most [`GROUP`].
fn usage_group(inputs: &[Input]) -> &[Input] {
    let len = inputs
        .iter()
        .take(GROUP)
        .take_while(|input| matches!(input, Input::Usage(_)))
        .count();
    &inputs[..len]
}

/// Reads the lines of an input that the hot path reads; the value means nothing.
#[inline]
fn touch_input(input: &Input) -> u64 {
    match input {
        Input::Usage(event) => {
            (event.id.as_str().len() ^ event.customer.as_str().len() ^ event.feature.as_str().len())
                as u64
                ^ event.value.micros().cast_unsigned()
        }
        _ => 0,
    }
}

/// The event of a usage input.
#[inline]
fn usage_event(input: &Input) -> &UsageEvent {
    match input {
        Input::Usage(event) => event,
        _ => unreachable!("a run holds usage events only"),
    }
}

fn reject(fx: &mut Effects, index: u32, rejection: Rejection) {
    fx.inputs_rejected += 1;
    fx.outcomes.push((index, Outcome::Rejected(rejection)));
}
