//! Auto-recharge in the shard: timers (expiries, period ends), the once-per-batch decision
//! for each touched account, and applying the recharger's outcomes.
//!
//! One recharge in flight per account: a command is issued only when none is in flight,
//! and only the outcome of the command in flight is applied; anything else is stale.

use super::Shard;
use super::admin::{NewGrant, resumed};
use crate::account::Account;
use crate::amount::Credits;
use crate::autorecharge::{
    AutoRecharge, PauseReason, RechargeDecision, SkipReason, decide_recharge, warning_percent,
};
use crate::effects::{
    AccountHandle, AttemptReason, AttemptStatus, Effects, EntryKind, LedgerEntry, Notification,
    NotificationKind, Outcome, RechargeAttempt, RechargeCommand, Reference,
};
use crate::grant::{DEFAULT_GRANT_PRIORITY, GrantKind, GrantSource};
use crate::ids::CommandId;
use crate::input::{RechargeOutcome, RechargeResult};
use crate::rejection::Rejection;
use crate::time::{SpendPeriod, TimestampMs};

impl Shard {
    /// Expires grants due by `now` (each at its own expiry instant) and wakes accounts
    /// whose spend period ended.
    pub(super) fn run_timers(&mut self, now: TimestampMs, fx: &mut Effects) {
        while let Some(&(at, account_index, grant)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if self.accounts[account_index as usize]
                .grants()
                .iter()
                .any(|held| held.id == grant)
            {
                // The ledger must sum to the balance before the expiry's entry.
                self.flush_usage(account_index, at, fx);
            }
            let account = &mut self.accounts[account_index as usize];
            // Emptied or voided grants left their timer behind; skip them.
            let Some(credits) = account.expire_grant(grant) else {
                continue;
            };
            let seq = account.next_entry_seq();
            fx.entries.push(LedgerEntry {
                account: AccountHandle(account_index),
                seq,
                at,
                kind: EntryKind::Expiry,
                amount: Credits::from_micros(-credits.micros()),
                balance_after: account.balance(),
                reference: Reference::Grant(grant),
            });
            self.touch(account_index);
        }
        while let Some(&(at, account_index)) = self.wakeups.first() {
            if at > now {
                break;
            }
            self.wakeups.pop_first();
            // Only a still-paused account whose period ends now wakes; a restored shard
            // rebuilds exactly these timers, so stale ones must not count.
            let due = self.accounts[account_index as usize]
                .auto_recharge()
                .is_some_and(|auto| {
                    auto.paused == Some(PauseReason::SpendLimitReached) && auto.period.end == at
                });
            if due {
                self.touch(account_index);
            }
        }
    }

    /// Rolls the period and, if the balance is below the threshold, issues a recharge or
    /// records why not. Runs once per batch for each touched account.
    pub(super) fn decide(&mut self, account_index: u32, now: TimestampMs, fx: &mut Effects) {
        let Shard {
            accounts,
            customers,
            catalog,
            wakeups,
            ..
        } = self;
        let account = &mut accounts[account_index as usize];
        if account.auto.is_none() {
            return;
        }
        let balance = account.balance();
        let consumed = account.totals().consumed;
        let credit_type = account.credit_type;
        let customer_index = account.customer;
        let Some(auto) = account.auto.as_deref_mut() else {
            return;
        };
        let handle = AccountHandle(account_index);
        roll_period(auto, handle, now, consumed, fx);
        if !auto.settings.enabled || auto.in_flight.is_some() {
            return;
        }
        if balance >= auto.settings.threshold {
            auto.last_skip = None;
            return;
        }
        let customer = &customers[customer_index as usize];
        let command_id = |seq| CommandId {
            customer: customer.id.clone(),
            credit_type: catalog.credit_type_at(credit_type).id.clone(),
            seq,
        };
        let gap = auto
            .settings
            .target_balance
            .checked_sub(balance)
            .unwrap_or(Credits::ZERO);
        if let Some(reason) = auto.paused {
            let skip = match reason {
                PauseReason::SpendLimitReached => SkipReason::SpendLimitReached,
                PauseReason::PaymentFailed => SkipReason::PaymentFailed,
            };
            record_skip(auto, handle, skip, gap, now, &command_id, fx);
            return;
        }
        let Some(payment_method) = auto
            .settings
            .payment_method
            .clone()
            .or_else(|| customer.payment_method.clone())
        else {
            record_skip(
                auto,
                handle,
                SkipReason::NoPaymentMethod,
                gap,
                now,
                &command_id,
                fx,
            );
            return;
        };
        let unit_price = catalog.credit_type_at(credit_type).unit_price;
        match decide_recharge(
            &auto.settings,
            balance,
            auto.spend_this_period_minor,
            &unit_price,
        ) {
            RechargeDecision::Recharge { credits, cost, cut } => {
                let seq = auto.next_seq;
                auto.next_seq += 1;
                let command = RechargeCommand {
                    id: command_id(seq),
                    account: handle,
                    credits,
                    cost,
                    unit_price,
                    spend_limit: auto.settings.spend_limit,
                    period: auto.period,
                    payment_method,
                    issued_at: now,
                };
                fx.attempts.push(RechargeAttempt {
                    account: handle,
                    id: command.id.clone(),
                    at: now,
                    credits,
                    cost: Some(cost),
                    status: AttemptStatus::Pending,
                    reason: cut.then_some(AttemptReason::CutToSpendLimit),
                });
                auto.in_flight = Some(command.clone());
                auto.last_skip = None;
                fx.commands.push(command);
            }
            RechargeDecision::LimitReached => {
                pause(auto, handle, PauseReason::SpendLimitReached, now, fx);
                wakeups.insert((auto.period.end, account_index));
                record_skip(
                    auto,
                    handle,
                    SkipReason::SpendLimitReached,
                    gap,
                    now,
                    &command_id,
                    fx,
                );
            }
            RechargeDecision::OutOfRange => {
                record_skip(
                    auto,
                    handle,
                    SkipReason::OutOfRange,
                    gap,
                    now,
                    &command_id,
                    fx,
                );
            }
        }
    }

    /// Applies the recharger's result for the command in flight; anything else is stale.
    pub(super) fn apply_recharge_outcome(
        &mut self,
        index: u32,
        outcome: &RechargeOutcome,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        let Some(handle) = self.find_account(
            outcome.command.customer.as_str(),
            outcome.command.credit_type.as_str(),
        ) else {
            fx.outcomes.push((index, Outcome::StaleRechargeOutcome));
            return Ok(());
        };
        let account_index = handle.0;
        let in_flight = self.accounts[account_index as usize]
            .auto
            .as_ref()
            .and_then(|auto| auto.in_flight.as_ref())
            .filter(|command| command.id == outcome.command)
            .cloned();
        let Some(command) = in_flight else {
            fx.outcomes.push((index, Outcome::StaleRechargeOutcome));
            return Ok(());
        };
        match &outcome.result {
            RechargeResult::Charged { credits, cost } => {
                check_charge(&command, *credits, cost)?;
                let expiration = self.accounts[account_index as usize]
                    .auto
                    .as_ref()
                    .map(|auto| auto.settings.grant_expiration.clone());
                // An expiry past year 9999 cannot be represented; such credits never expire.
                let expires_at =
                    expiration.and_then(|expiration| expiration.expires_at(now).ok().flatten());
                self.make_grant(
                    account_index,
                    NewGrant {
                        kind: GrantKind::Paid,
                        source: GrantSource::Recharge,
                        priority: DEFAULT_GRANT_PRIORITY,
                        expires_at,
                        amount: *credits,
                        cost: Some(*cost),
                        command: Some(command.id.clone()),
                    },
                    now,
                    fx,
                )?;
                let auto = auto_of(&mut self.accounts[account_index as usize]);
                auto.in_flight = None;
                auto.record_success(command.issued_at, cost.minor_units, now);
                let level = warning_percent(
                    auto.spend_this_period_minor,
                    auto.settings.spend_limit.minor_units,
                );
                if level > auto.warned_percent {
                    auto.warned_percent = level;
                    fx.notifications.push(Notification {
                        account: handle,
                        at: now,
                        kind: NotificationKind::SpendLimitWarning { percent: level },
                    });
                }
                fx.attempts.push(RechargeAttempt {
                    account: handle,
                    id: command.id.clone(),
                    at: now,
                    credits: *credits,
                    cost: Some(*cost),
                    status: AttemptStatus::Succeeded,
                    reason: (*credits < command.credits).then_some(AttemptReason::CutToSpendLimit),
                });
                fx.notifications.push(Notification {
                    account: handle,
                    at: now,
                    kind: NotificationKind::RechargeSucceeded {
                        command: command.id.clone(),
                        credits: *credits,
                        cost: *cost,
                    },
                });
            }
            RechargeResult::Declined { code } => {
                let auto = auto_of(&mut self.accounts[account_index as usize]);
                auto.in_flight = None;
                pause(auto, handle, PauseReason::PaymentFailed, now, fx);
                // The failed attempt is the record of this crossing; no extra skipped one.
                auto.last_skip = Some(SkipReason::PaymentFailed);
                fx.attempts.push(RechargeAttempt {
                    account: handle,
                    id: command.id.clone(),
                    at: now,
                    credits: command.credits,
                    cost: Some(command.cost),
                    status: AttemptStatus::Failed,
                    reason: Some(AttemptReason::Declined(code.clone())),
                });
                fx.notifications.push(Notification {
                    account: handle,
                    at: now,
                    kind: NotificationKind::RechargeFailed {
                        command: command.id.clone(),
                        code: code.clone(),
                    },
                });
                self.touch(account_index);
            }
            RechargeResult::SpendLimitReached => {
                let auto = auto_of(&mut self.accounts[account_index as usize]);
                auto.in_flight = None;
                pause(auto, handle, PauseReason::SpendLimitReached, now, fx);
                auto.last_skip = Some(SkipReason::SpendLimitReached);
                let period_end = auto.period.end;
                fx.attempts.push(RechargeAttempt {
                    account: handle,
                    id: command.id.clone(),
                    at: now,
                    credits: command.credits,
                    cost: Some(command.cost),
                    status: AttemptStatus::Skipped,
                    reason: Some(AttemptReason::Skipped(SkipReason::SpendLimitReached)),
                });
                self.wakeups.insert((period_end, account_index));
                self.touch(account_index);
            }
        }
        Ok(())
    }
}

fn auto_of(account: &mut Account) -> &mut AutoRecharge {
    account
        .auto
        .as_deref_mut()
        .expect("an account with a command in flight has auto-recharge state")
}

/// A charge may be cut by the recharger's spend check, never raised.
fn check_charge(
    command: &RechargeCommand,
    credits: Credits,
    cost: &crate::money::Money,
) -> Result<(), Rejection> {
    if !credits.is_positive() || credits > command.credits {
        return Err(Rejection::invalid(
            "credits",
            format!(
                "expected more than zero and at most the command's {}, found {credits}",
                command.credits
            ),
        ));
    }
    if cost.currency != command.cost.currency
        || cost.minor_units < 0
        || cost.minor_units > command.cost.minor_units
    {
        return Err(Rejection::invalid(
            "cost",
            format!(
                "expected at most the command's {}, found {cost}",
                command.cost
            ),
        ));
    }
    Ok(())
}

/// Starts a new period when `now` passed the current one's end; a spend-limit pause ends.
fn roll_period(
    auto: &mut AutoRecharge,
    handle: AccountHandle,
    now: TimestampMs,
    consumed: i128,
    fx: &mut Effects,
) {
    if now < auto.period.end {
        return;
    }
    let Ok(period) = SpendPeriod::containing(auto.settings.reset, now) else {
        return;
    };
    auto.enter_period(period);
    auto.consumed_at_period_start = consumed;
    auto.warned_percent = 0;
    if auto.paused == Some(PauseReason::SpendLimitReached) {
        auto.paused = None;
        auto.last_skip = None;
        fx.notifications.push(resumed(handle.0, now));
    }
}

fn pause(
    auto: &mut AutoRecharge,
    handle: AccountHandle,
    reason: PauseReason,
    now: TimestampMs,
    fx: &mut Effects,
) {
    if auto.paused != Some(reason) {
        auto.paused = Some(reason);
        fx.notifications.push(Notification {
            account: handle,
            at: now,
            kind: NotificationKind::AutoRechargePaused { reason },
        });
    }
}

/// Records a suppressed recharge once per reason, so a paused account does not write an
/// attempt for every batch of usage.
fn record_skip(
    auto: &mut AutoRecharge,
    handle: AccountHandle,
    reason: SkipReason,
    gap: Credits,
    now: TimestampMs,
    command_id: &dyn Fn(u64) -> CommandId,
    fx: &mut Effects,
) {
    if auto.last_skip == Some(reason) {
        return;
    }
    auto.last_skip = Some(reason);
    let seq = auto.next_seq;
    auto.next_seq += 1;
    fx.attempts.push(RechargeAttempt {
        account: handle,
        id: command_id(seq),
        at: now,
        credits: gap,
        cost: None,
        status: AttemptStatus::Skipped,
        reason: Some(AttemptReason::Skipped(reason)),
    });
}
