//! Property tests: random (and shrinkable) sequences of usage, retries, grants, voids,
//! settings, payment-method changes, recharges, time and restarts, checked against the
//! simulator's reference model and auditor after every batch.
//!
//! Invariants: 1 conservation, 2 effectively once (dedup), 3 one recharge at a time,
//! 5 spend limit, 6 pause rules, 7 burn-down order, 10 replay is exact.

use proptest::prelude::*;
use refill_ledger::effects::RechargeCommand;
use refill_ledger::grant::GrantKind;
use refill_ledger::ids::GrantId;
use refill_ledger::input::CustomerUpdate;
use refill_ledger::sim::audit::RechargeAuditor;
use refill_ledger::sim::reference::ReferenceModel;
use refill_ledger::testkit::*;
use refill_ledger::time::SpendReset;
use refill_ledger::{Effects, Input, Quantity, Shard, ShardConfig, TimestampMs};

const CUSTOMERS: [&str; 3] = ["a", "b", "c"];
const METHODS: [&str; 3] = [
    "pm_card_visa",
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
];

#[derive(Clone, Debug)]
enum Op {
    Usage {
        customer: usize,
        units: i64,
    },
    Retry {
        back: usize,
    },
    Grant {
        customer: usize,
        whole: i64,
        priority: u32,
        expires_in_s: Option<i64>,
        key: u8,
    },
    Void {
        customer: usize,
        grant: u64,
    },
    Settings {
        customer: usize,
        threshold: i64,
        extra: i64,
        limit_cents: i64,
        reset: u8,
        enabled: bool,
    },
    Method {
        customer: usize,
        method: usize,
    },
    Recharge,
    Advance {
        seconds: i64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3_usize, 1..6_i64).prop_map(|(customer, units)| Op::Usage { customer, units }),
        2 => (0..40_usize).prop_map(|back| Op::Retry { back }),
        2 => (0..3_usize, 1..60_i64, 0..3_u32, proptest::option::of(1..200_000_i64), 0..6_u8)
            .prop_map(|(customer, whole, priority, expires_in_s, key)| Op::Grant { customer, whole, priority, expires_in_s, key }),
        1 => (0..3_usize, 1..8_u64).prop_map(|(customer, grant)| Op::Void { customer, grant }),
        2 => (0..3_usize, 0..30_i64, 0..60_i64, 0..2_000_i64, 0..3_u8, proptest::bool::weighted(0.9))
            .prop_map(|(customer, threshold, extra, limit_cents, reset, enabled)| Op::Settings { customer, threshold, extra, limit_cents, reset, enabled }),
        1 => (0..3_usize, 0..3_usize).prop_map(|(customer, method)| Op::Method { customer, method }),
        3 => Just(Op::Recharge),
        2 => (1..400_000_i64).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Restart),
    ]
}

/// The shard under test, a twin that never restarts (for invariant 10), and the checkers.
struct Harness {
    now: TimestampMs,
    shard: Shard,
    twin: Shard,
    reference: ReferenceModel,
    auditor: RechargeAuditor,
    recharger: InstantRecharger,
    queued: Vec<RechargeCommand>,
    /// Usage sent, with when: producers retry only inside the dedup window.
    sent: Vec<(Input, TimestampMs)>,
    events: u64,
}

impl Harness {
    fn new() -> Result<Self, TestCaseError> {
        let now = at("2026-01-30T12:00:00Z");
        let mut harness = Self {
            now,
            shard: Shard::new(ShardConfig::default(), now),
            twin: Shard::new(ShardConfig::default(), now),
            reference: ReferenceModel::default(),
            auditor: RechargeAuditor::default(),
            recharger: InstantRecharger::default(),
            queued: Vec::new(),
            sent: Vec::new(),
            events: 0,
        };
        let mut setup = example_catalog();
        for name in CUSTOMERS {
            setup.push(put_customer(name, "pm_card_visa"));
            setup.push(subscribe_example(name));
        }
        harness.batch(setup)?;
        Ok(harness)
    }

    fn batch(&mut self, inputs: Vec<Input>) -> Result<Effects, TestCaseError> {
        self.now.0 += 1_000;
        self.auditor.observe_inputs(&self.shard, self.now, &inputs);
        let fx = self.shard.apply(self.now, &inputs);
        let twin_fx = self.twin.apply(self.now, &inputs);
        prop_assert_eq!(
            &fx,
            &twin_fx,
            "10 replay is exact: a restored shard diverged"
        );
        self.reference.apply(self.now, &inputs);
        for command in &fx.commands {
            self.reference.command_issued(&command.id);
        }
        self.queued.extend(fx.commands.iter().cloned());
        if let Err((invariant, detail)) = self.auditor.observe_effects(&self.shard, &fx) {
            return Err(TestCaseError::fail(format!(
                "invariant {invariant}: {detail}"
            )));
        }
        for (handle, account) in self.shard.accounts() {
            let key = (
                self.shard.customer_of(handle).id.clone(),
                self.shard.credit_type_of(handle).clone(),
            );
            let model = self
                .reference
                .accounts
                .get(&key)
                .cloned()
                .unwrap_or_default();
            prop_assert_eq!(
                account.totals().consumed,
                model.consumed,
                "2 effectively once: {:?}",
                key
            );
            prop_assert_eq!(
                account.balance().micros(),
                model.balance(),
                "1 conservation: {:?}",
                key
            );
            let mut ours: Vec<(u64, i64)> = account
                .grants()
                .iter()
                .map(|g| (g.id.0, g.remaining.micros()))
                .collect();
            let mut theirs: Vec<(u64, i64)> =
                model.grants.iter().map(|g| (g.id.0, g.remaining)).collect();
            ours.sort_unstable();
            theirs.sort_unstable();
            prop_assert_eq!(ours, theirs, "7 burn-down order: {:?}", key);
        }
        Ok(fx)
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let inputs = match op {
            Op::Usage { customer, units } => {
                self.events += 1;
                let event = usage(
                    CUSTOMERS[*customer],
                    &format!("e{}", self.events),
                    example::FEATURE,
                    Quantity::from_micros(units * 1_000_000),
                );
                self.sent.push((event.clone(), self.now));
                vec![event]
            }
            Op::Retry { back } => {
                let window_ms = ShardConfig::default().dedup.window_ms;
                match self
                    .sent
                    .len()
                    .checked_sub(back + 1)
                    .map(|index| &self.sent[index])
                {
                    // The batch about to be applied is 1 s later than now.
                    Some((event, sent_at)) if self.now.0 + 1_000 - sent_at.0 < window_ms => {
                        vec![event.clone()]
                    }
                    _ => return Ok(()),
                }
            }
            Op::Grant {
                customer,
                whole,
                priority,
                expires_in_s,
                key,
            } => vec![grant(
                CUSTOMERS[*customer],
                *whole,
                GrantKind::Promotional,
                Some(*priority),
                expires_in_s.map(|seconds| TimestampMs(self.now.0 + seconds * 1_000)),
                &format!("key-{key}"),
            )],
            Op::Void { customer, grant } => vec![Input::VoidGrant {
                customer: customer_id(*customer),
                grant: GrantId(*grant),
            }],
            Op::Settings {
                customer,
                threshold,
                extra,
                limit_cents,
                reset,
                enabled,
            } => {
                let reset =
                    [SpendReset::Day, SpendReset::Week, SpendReset::Month][usize::from(*reset)];
                let mut input = set_auto_recharge(
                    CUSTOMERS[*customer],
                    *threshold,
                    (threshold + extra).max(1),
                    *limit_cents,
                    reset,
                );
                if let Input::SetAutoRecharge { settings, .. } = &mut input {
                    settings.enabled = *enabled;
                }
                vec![input]
            }
            Op::Method { customer, method } => vec![Input::PutCustomer(CustomerUpdate {
                id: customer_id(*customer),
                name: None,
                email: None,
                payment_method: Some(payment_method(METHODS[*method])),
            })],
            Op::Recharge => {
                let commands = std::mem::take(&mut self.queued);
                // Deliver each outcome twice: the second must be ignored as stale.
                let mut outcomes = self.recharger.run(&commands);
                outcomes.extend(self.recharger.run(&commands));
                outcomes
            }
            Op::Advance { seconds } => {
                self.now.0 += seconds * 1_000;
                vec![Input::Tick]
            }
            Op::Restart => {
                self.shard = Shard::restore(&self.shard.snapshot())
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                return Ok(());
            }
        };
        self.batch(inputs).map(|_| ())
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(96)
}

fn customer_id(index: usize) -> refill_ledger::ids::CustomerId {
    customer(CUSTOMERS[index])
}

proptest! {
    // 96 cases on every `cargo test`; `.ci/run` sets PROPTEST_CASES higher.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_invariant_holds_for_any_sequence(ops in proptest::collection::vec(op(), 1..80)) {
        let mut harness = Harness::new()?;
        for op in &ops {
            harness.run(op)?;
        }
        // Everything charged was granted exactly once.
        let spent: i64 = harness.recharger.charges.iter().map(|(_, cost)| cost.minor_units).sum();
        let granted: i64 = harness
            .shard
            .accounts()
            .filter_map(|(_, account)| account.auto_recharge())
            .flat_map(|auto| auto.recent.iter().map(|spent| spent.cost_minor))
            .sum();
        prop_assert_eq!(spent, granted, "4 no double charge: charged {} but granted {}", spent, granted);
    }

    #[test]
    fn dedup_applies_each_event_id_once_across_batches_and_restarts(
        plan in proptest::collection::vec((0..3_usize, 0..30_usize, proptest::bool::ANY), 1..120)
    ) {
        let now = at("2026-05-01T00:00:00Z");
        let mut shard = Shard::new(ShardConfig::default(), now);
        let mut setup = example_catalog();
        setup.push(put_customer("a", "pm_card_visa"));
        shard.apply(now, &setup);
        let mut unique = std::collections::BTreeSet::new();
        for (customer_index, event, restart) in plan {
            let name = CUSTOMERS[customer_index];
            unique.insert((name, event));
            shard.apply(now, &[call(name, &format!("e{event}"))]);
            if restart {
                shard = Shard::restore(&shard.snapshot()).map_err(|error| TestCaseError::fail(error.to_string()))?;
            }
        }
        let consumed: i128 = shard.accounts().map(|(_, account)| account.totals().consumed).sum();
        prop_assert_eq!(consumed, unique.len() as i128 * 1_000_000);
    }
}
