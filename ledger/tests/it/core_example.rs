//! The product's worked example with its exact numbers: a plan grants 50 credits, 1 credit
//! per API call, below 20 → recharge to 50, $500 per month.

use refill_ledger::autorecharge::{AutoRechargeStatus, PauseReason};
use refill_ledger::effects::{AttemptReason, AttemptStatus, EntryKind, NotificationKind};
use refill_ledger::testkit::*;
use refill_ledger::time::SpendReset;
use refill_ledger::{Effects, Input, Shard, ShardConfig, TimestampMs};

struct World {
    shard: Shard,
    recharger: InstantRecharger,
    now: TimestampMs,
    calls: u64,
}

impl World {
    fn new(method: &str) -> Self {
        let now = at("2026-11-02T09:00:00Z");
        let mut shard = Shard::new(ShardConfig::default(), now);
        let mut setup = example_catalog();
        setup.push(put_customer("acme", method));
        setup.push(subscribe_example("acme"));
        setup.push(example_auto_recharge("acme"));
        let fx = shard.apply(now, &setup);
        assert!(
            fx.outcomes
                .iter()
                .all(|(_, o)| !matches!(o, refill_ledger::effects::Outcome::Rejected(_))),
            "{:?}",
            fx.outcomes
        );
        Self {
            shard,
            recharger: InstantRecharger::default(),
            now,
            calls: 0,
        }
    }

    fn calls(&mut self, count: u64) -> Effects {
        let inputs: Vec<Input> = (0..count)
            .map(|_| {
                self.calls += 1;
                call("acme", &format!("evt-{}", self.calls))
            })
            .collect();
        self.apply(&inputs)
    }

    fn apply(&mut self, inputs: &[Input]) -> Effects {
        self.now.0 += 1_000;
        self.shard.apply(self.now, inputs)
    }

    /// Sends the commands to the recharger and applies the outcomes.
    fn recharge(&mut self, commands: &[refill_ledger::effects::RechargeCommand]) -> Effects {
        let outcomes = self.recharger.run(commands);
        self.apply(&outcomes)
    }

    fn balance(&self) -> i64 {
        let handle = self
            .shard
            .find_account("acme", example::CREDIT_TYPE)
            .expect("account");
        self.shard.account(handle).balance().micros() / 1_000_000
    }

    fn status(&self) -> AutoRechargeStatus {
        let handle = self
            .shard
            .find_account("acme", example::CREDIT_TYPE)
            .expect("account");
        self.shard
            .account(handle)
            .auto_recharge()
            .expect("auto")
            .status()
    }
}

#[test]
fn thirty_one_calls_trigger_one_recharge_of_31_credits_for_310_cents() {
    let mut world = World::new("pm_card_visa");
    assert_eq!(world.balance(), 50);
    let fx = world.calls(30);
    assert_eq!(world.balance(), 20);
    assert!(
        fx.commands.is_empty(),
        "20 is not below the threshold of 20"
    );
    let fx = world.calls(1);
    assert_eq!(world.balance(), 19);
    assert_eq!(fx.commands.len(), 1);
    let command = &fx.commands[0];
    assert_eq!(command.credits, credits(31));
    assert_eq!(command.cost, cents(310));
    assert_eq!(command.spend_limit, cents(50_000));
    assert_eq!(command.id.to_string(), "acme/api-credits/1");
    assert_eq!(fx.attempts[0].status, AttemptStatus::Pending);

    // While the recharge is in flight, more usage issues no second command.
    let fx_more = world.calls(2);
    assert!(fx_more.commands.is_empty());
    assert_eq!(world.balance(), 17);

    let fx = world.recharge(std::slice::from_ref(command));
    assert_eq!(world.balance(), 17 + 31);
    let recharge_entry = fx
        .entries
        .iter()
        .find(|e| e.kind == EntryKind::Recharge)
        .expect("recharge entry");
    assert_eq!(recharge_entry.amount, credits(31));
    assert_eq!(recharge_entry.balance_after, credits(48));
    assert_eq!(fx.attempts[0].status, AttemptStatus::Succeeded);
    // 48 is not below 20: nothing more.
    assert!(fx.commands.is_empty());
    let handle = world
        .shard
        .find_account("acme", example::CREDIT_TYPE)
        .expect("account");
    let auto = world.shard.account(handle).auto_recharge().expect("auto");
    assert_eq!(auto.spend_this_period(), cents(310));
    assert_eq!(auto.recharges_this_period, 1);
}

#[test]
fn later_crossings_charge_only_within_the_500_dollar_limit_then_pause() {
    let mut world = World::new("pm_card_visa");
    let mut full = 0;
    let mut cut = None;
    loop {
        // Burn down to 19 exactly, one batch per crossing.
        let down = u64::try_from(world.balance() - 19).expect("above 19");
        let fx = world.calls(down);
        let Some(command) = fx.commands.first().cloned() else {
            assert!(
                fx.attempts
                    .iter()
                    .any(|a| a.status == AttemptStatus::Skipped),
                "a suppressed recharge is recorded"
            );
            break;
        };
        if command.credits == credits(31) {
            assert_eq!(command.cost, cents(310));
            full += 1;
        } else {
            cut = Some(command.clone());
        }
        world.recharge(&[command]);
    }
    // 161 × $3.10 = $499.10; the 162nd is cut to what $0.90 buys: 9 credits.
    assert_eq!(full, 161);
    let cut = cut.expect("one cut recharge");
    assert_eq!((cut.credits, cut.cost), (credits(9), cents(90)));
    assert_eq!(
        world.status(),
        AutoRechargeStatus::Paused(PauseReason::SpendLimitReached)
    );
    let handle = world
        .shard
        .find_account("acme", example::CREDIT_TYPE)
        .expect("account");
    assert_eq!(
        world
            .shard
            .account(handle)
            .auto_recharge()
            .expect("auto")
            .spend_this_period(),
        cents(50_000)
    );
    let spent: i64 = world
        .recharger
        .charges
        .iter()
        .map(|(_, cost)| cost.minor_units)
        .sum();
    assert_eq!(spent, 50_000, "never more than the limit");

    // More usage while paused records no further attempts (one skipped per crossing).
    let fx = world.calls(5);
    assert!(fx.commands.is_empty() && fx.attempts.is_empty());

    // The next month resets the period: the recharge goes out at once.
    let fx = world
        .shard
        .apply(at("2026-12-01T00:00:00Z"), &[Input::Tick]);
    assert!(
        fx.notifications
            .iter()
            .any(|n| n.kind == NotificationKind::AutoRechargeResumed)
    );
    assert_eq!(fx.commands.len(), 1);
    assert_eq!(fx.commands[0].period.start, at("2026-12-01T00:00:00Z"));
}

#[test]
fn a_declined_card_pauses_until_the_payment_method_changes() {
    let mut world = World::new("pm_card_chargeDeclined");
    let fx = world.calls(31);
    let fx = world.recharge(&fx.commands);
    assert_eq!(fx.attempts[0].status, AttemptStatus::Failed);
    assert_eq!(
        fx.attempts[0].reason,
        Some(AttemptReason::Declined("card_declined".into()))
    );
    assert_eq!(
        world.status(),
        AutoRechargeStatus::Paused(PauseReason::PaymentFailed)
    );
    assert_eq!(world.balance(), 19);
    assert!(world.recharger.charges.is_empty());

    // Usage goes on; no retry of the declined card.
    let fx = world.calls(10);
    assert!(fx.commands.is_empty());

    // Updating the payment method resumes, and the pending gap (target 50 − 9) goes out.
    let fx = world.apply(&[put_customer("acme", "pm_card_visa")]);
    assert_eq!(world.status(), AutoRechargeStatus::Active);
    assert_eq!(fx.commands.len(), 1);
    assert_eq!(fx.commands[0].credits, credits(41));
    assert_eq!(fx.commands[0].cost, cents(410));
    world.recharge(&fx.commands.clone());
    assert_eq!(world.balance(), 50);
}

#[test]
fn a_limit_lowered_below_the_spend_blocks_until_raised() {
    let mut world = World::new("pm_card_visa");
    let fx = world.calls(31);
    world.recharge(&fx.commands);
    // Spent $3.10; lower the limit to $2.00.
    world.apply(&[set_auto_recharge("acme", 20, 50, 200, SpendReset::Month)]);
    let fx = world.calls(31); // 50 → 19
    assert!(fx.commands.is_empty());
    assert_eq!(fx.attempts.len(), 1);
    assert_eq!(fx.attempts[0].status, AttemptStatus::Skipped);
    assert_eq!(
        world.status(),
        AutoRechargeStatus::Paused(PauseReason::SpendLimitReached)
    );
    // Raising it above the spend resumes at once.
    let fx = world.apply(&[set_auto_recharge("acme", 20, 50, 1_000, SpendReset::Month)]);
    assert_eq!(world.status(), AutoRechargeStatus::Active);
    assert_eq!(fx.commands.len(), 1);
    // $10.00 − $3.10 = $6.90 left: the 31-credit gap costs $3.10 and fits.
    assert_eq!(
        (fx.commands[0].credits, fx.commands[0].cost),
        (credits(31), cents(310))
    );
}
