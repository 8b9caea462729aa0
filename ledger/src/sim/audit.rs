//! The auditor of the recharge invariants (3 one in flight, 5 spend limit, 6 pause rules)
//! and of the ledger (entries sum to the balance), fed every batch's inputs and effects.
//! Its rules are one-sided statements of DESIGN §4, not a copy of the shard's logic.

use std::collections::{BTreeMap, BTreeSet};

use crate::autorecharge::{AutoRechargeStatus, PauseReason};
use crate::effects::{AccountHandle, AttemptReason, AttemptStatus, Effects, RechargeCommand};
use crate::ids::CommandId;
use crate::input::Input;
use crate::shard::Shard;
use crate::time::TimestampMs;

/// A broken invariant: its name and what was seen.
pub type Violation = (&'static str, String);

/// Why an account may not be recharged right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    PaymentFailed,
    SpendLimitUntil(TimestampMs),
}

/// The auditor's memory.
#[derive(Default)]
pub struct RechargeAuditor {
    in_flight: BTreeMap<AccountHandle, CommandId>,
    last_seq: BTreeMap<AccountHandle, u64>,
    commands: BTreeMap<CommandId, RechargeCommand>,
    succeeded: BTreeSet<CommandId>,
    successes: BTreeMap<AccountHandle, Vec<(TimestampMs, i64)>>,
    blocked: BTreeMap<AccountHandle, Block>,
    ledger: BTreeMap<AccountHandle, (u64, i128)>,
    /// Successful recharges seen.
    pub recharges_succeeded: u64,
    /// Declined recharges seen.
    pub recharges_declined: u64,
    /// Skipped attempts seen.
    pub attempts_skipped: u64,
    /// Recharges cut to the spend limit.
    pub recharges_cut: u64,
}

impl RechargeAuditor {
    /// Clears blocks that an input of this batch may lift (settings changes, a new default
    /// payment method, a new period). Liberal on purpose: the check is that nothing is
    /// recharged while *certainly* blocked.
    pub fn observe_inputs(&mut self, shard: &Shard, now: TimestampMs, inputs: &[Input]) {
        self.blocked
            .retain(|_, block| !matches!(block, Block::SpendLimitUntil(end) if now >= *end));
        for input in inputs {
            match input {
                Input::SetAutoRecharge {
                    customer,
                    credit_type,
                    ..
                } => {
                    if let Some(handle) =
                        shard.find_account(customer.as_str(), credit_type.as_str())
                    {
                        self.blocked.remove(&handle);
                    }
                }
                Input::PutCustomer(update) if update.payment_method.is_some() => {
                    let owned: Vec<AccountHandle> = shard
                        .accounts()
                        .filter(|(handle, _)| shard.customer_of(*handle).id == update.id)
                        .map(|(handle, _)| handle)
                        .collect();
                    for handle in owned {
                        self.blocked.remove(&handle);
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks a batch's effects against the shard's state after it.
    pub fn observe_effects(&mut self, shard: &Shard, fx: &Effects) -> Result<(), Violation> {
        self.check_ledger(shard, fx)?;
        for attempt in &fx.attempts {
            match attempt.status {
                AttemptStatus::Pending => continue,
                AttemptStatus::Succeeded => {
                    let command = self.commands.get(&attempt.id).ok_or((
                        "3 one recharge at a time",
                        format!("{} succeeded but was never issued", attempt.id),
                    ))?;
                    if !self.succeeded.insert(attempt.id.clone()) {
                        return Err((
                            "3 one recharge at a time",
                            format!("{} applied twice", attempt.id),
                        ));
                    }
                    let cost = attempt.cost.map_or(0, |cost| cost.minor_units);
                    let history = self.successes.entry(attempt.account).or_default();
                    history.push((command.issued_at, cost));
                    let spent: i64 = history
                        .iter()
                        .filter(|(at, _)| command.period.contains(*at))
                        .map(|(_, cost)| cost)
                        .sum();
                    if spent > command.spend_limit.minor_units {
                        return Err((
                            "5 spend limit",
                            format!(
                                "{}: spend {} passes the limit {} of period {:?}",
                                attempt.id, spent, command.spend_limit, command.period
                            ),
                        ));
                    }
                    self.recharges_succeeded += 1;
                }
                AttemptStatus::Failed => {
                    self.blocked.insert(attempt.account, Block::PaymentFailed);
                    self.recharges_declined += 1;
                }
                AttemptStatus::Skipped => {
                    self.attempts_skipped += 1;
                    if let Some(AttemptReason::Skipped(
                        crate::autorecharge::SkipReason::SpendLimitReached,
                    )) = attempt.reason
                    {
                        let end = shard
                            .account(attempt.account)
                            .auto_recharge()
                            .map_or(TimestampMs(i64::MAX), |auto| auto.period.end);
                        self.blocked
                            .insert(attempt.account, Block::SpendLimitUntil(end));
                    }
                }
            }
            if self.in_flight.get(&attempt.account) == Some(&attempt.id) {
                self.in_flight.remove(&attempt.account);
            }
        }
        for command in &fx.commands {
            self.check_command(shard, command)?;
        }
        for &handle in &fx.changed {
            check_liveness(shard, handle)?;
        }
        Ok(())
    }

    fn check_ledger(&mut self, shard: &Shard, fx: &Effects) -> Result<(), Violation> {
        for entry in &fx.entries {
            let (last_seq, sum) = self.ledger.entry(entry.account).or_default();
            if entry.seq != *last_seq + 1 {
                return Err((
                    "1 conservation",
                    format!(
                        "account {:?}: entry {} follows {}",
                        entry.account, entry.seq, last_seq
                    ),
                ));
            }
            *last_seq = entry.seq;
            *sum += i128::from(entry.amount.micros());
            if *sum != i128::from(entry.balance_after.micros()) {
                return Err((
                    "1 conservation",
                    format!(
                        "account {:?}: entries sum to {sum} µ but balance_after is {}",
                        entry.account, entry.balance_after
                    ),
                ));
            }
        }
        for &handle in &fx.changed {
            let sum = self.ledger.get(&handle).map_or(0, |(_, sum)| *sum);
            // Usage not yet rolled up is an entry still to come.
            let pending = i128::from(shard.account(handle).pending_usage().micros);
            let balance = i128::from(shard.account(handle).balance().micros());
            if sum - pending != balance {
                return Err((
                    "1 conservation",
                    format!(
                        "account {handle:?}: ledger sums to {sum} µ with {pending} µ of usage \
                         pending, balance is {balance} µ"
                    ),
                ));
            }
        }
        if fx.flush.is_some() {
            // A flush rolls up everything: the ledger alone sums to every balance.
            for (handle, account) in shard.accounts() {
                let sum = self.ledger.get(&handle).map_or(0, |(_, sum)| *sum);
                if account.pending_usage().events != 0
                    || sum != i128::from(account.balance().micros())
                {
                    return Err((
                        "1 conservation",
                        format!(
                            "account {handle:?}: after a flush the ledger sums to {sum} µ, \
                             the balance is {}, {} events pending",
                            account.balance(),
                            account.pending_usage().events
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_command(&mut self, shard: &Shard, command: &RechargeCommand) -> Result<(), Violation> {
        let handle = command.account;
        if let Some(other) = self.in_flight.get(&handle) {
            return Err((
                "3 one recharge at a time",
                format!("{} issued while {} is in flight", command.id, other),
            ));
        }
        let last = self.last_seq.entry(handle).or_default();
        if command.id.seq <= *last {
            return Err((
                "3 one recharge at a time",
                format!("{} reuses a sequence at or below {}", command.id, last),
            ));
        }
        *last = command.id.seq;
        if let Some(block) = self.blocked.get(&handle) {
            return Err((
                "6 pause rules",
                format!("{} issued while blocked by {block:?}", command.id),
            ));
        }
        let account = shard.account(handle);
        let auto = account.auto_recharge().ok_or((
            "3 one recharge at a time",
            format!("{} without settings", command.id),
        ))?;
        let balance = account.balance();
        if balance >= auto.settings.threshold {
            return Err((
                "5 spend limit",
                format!(
                    "{} issued at balance {balance}, not below {}",
                    command.id, auto.settings.threshold
                ),
            ));
        }
        let gap = auto.settings.target_balance.micros() - balance.micros();
        let spent: i64 = self.successes.get(&handle).map_or(0, |history| {
            history
                .iter()
                .filter(|(at, _)| command.period.contains(*at))
                .map(|(_, cost)| cost)
                .sum()
        });
        if command.cost.minor_units > command.spend_limit.minor_units - spent {
            return Err((
                "5 spend limit",
                format!(
                    "{} costs {} with only {} µ¤ left",
                    command.id,
                    command.cost,
                    command.spend_limit.minor_units - spent
                ),
            ));
        }
        let headroom = command.spend_limit.minor_units - spent;
        let full_fits = command
            .unit_price
            .cost_of(balance_gap(gap))
            .is_some_and(|full| full.minor_units <= headroom);
        if command.credits.micros() > gap || (command.credits.micros() < gap && full_fits) {
            return Err((
                "5 spend limit",
                format!(
                    "{} buys {} for a gap of {gap} µ",
                    command.id, command.credits
                ),
            ));
        }
        if command.credits.micros() < gap {
            self.recharges_cut += 1;
        }
        if command.unit_price.cost_of(command.credits) != Some(command.cost) {
            return Err((
                "5 spend limit",
                format!(
                    "{} costs {} for {} credits",
                    command.id, command.cost, command.credits
                ),
            ));
        }
        self.in_flight.insert(handle, command.id.clone());
        self.commands.insert(command.id.clone(), command.clone());
        Ok(())
    }
}

fn balance_gap(micros: i64) -> crate::amount::Credits {
    crate::amount::Credits::from_micros(micros)
}

/// An active account below its threshold with nothing in flight must have recorded why.
fn check_liveness(shard: &Shard, handle: AccountHandle) -> Result<(), Violation> {
    let account = shard.account(handle);
    let Some(auto) = account.auto_recharge() else {
        return Ok(());
    };
    let stuck = auto.status() == AutoRechargeStatus::Active
        && auto.in_flight.is_none()
        && account.balance() < auto.settings.threshold
        && auto.last_skip.is_none();
    if stuck {
        return Err((
            "3 one recharge at a time",
            format!("account {handle:?} is below its threshold with no recharge and no reason"),
        ));
    }
    if auto.paused == Some(PauseReason::SpendLimitReached)
        && auto.spend_this_period_minor < auto.settings.spend_limit.minor_units
    {
        // Paused for the limit with headroom left is allowed only when the headroom buys
        // less than one credit.
        let headroom = crate::money::Money {
            minor_units: auto.settings.spend_limit.minor_units - auto.spend_this_period_minor,
            currency: auto.settings.spend_limit.currency,
        };
        let unit_price = shard
            .catalog()
            .credit_type_at(account.credit_type)
            .unit_price;
        if unit_price.whole_credits_within(headroom).is_positive() && auto.in_flight.is_none() {
            return Err((
                "6 pause rules",
                format!("account {handle:?} paused for its limit with {headroom} left"),
            ));
        }
    }
    Ok(())
}

impl RechargeAuditor {
    /// Whether the command with this id text was granted (its success applied).
    pub fn granted(&self, command_text: &str) -> bool {
        self.succeeded
            .iter()
            .any(|id| id.to_string() == command_text)
    }
}
