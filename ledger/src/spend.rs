//! The recharger's decision, pure: each command id is applied at most once, and spend is
//! reserved against the period's limit before any charge, so concurrent or replayed
//! commands can never pass the limit nor pay twice.
//!
//! Spend in a period is the cost of the recharges issued inside it (reserved or charged),
//! whatever reset kind was in force when each was issued. The CQL adapter implements the
//! same steps with lightweight transactions; the simulator uses this in-memory book.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::effects::RechargeCommand;
use crate::ids::{CommandId, CreditTypeId, CustomerId};
use crate::input::RechargeResult;
use crate::money::Money;
use crate::time::{SpendPeriod, TimestampMs};

/// Where a command stands in the book.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandState {
    /// Spend reserved; the charge may or may not have happened (retry it with the same
    /// idempotency key).
    Reserved {
        /// Credits to buy (perhaps cut).
        credits: Credits,
        /// Cost reserved.
        cost: Money,
    },
    /// Finished; the result is final and is what every redelivery answers.
    Done(RechargeResult),
}

/// What to do with a delivered command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Charge this (new reservation, or a retry of one whose charge may have happened).
    Charge {
        /// Credits to buy.
        credits: Credits,
        /// Amount to charge.
        cost: Money,
    },
    /// Already finished: send this result again.
    Finished(RechargeResult),
}

type AccountKey = (CustomerId, CreditTypeId);

/// What `command` may reserve when `spent_minor` is already reserved or charged in its
/// period: the whole recharge when it fits under the limit, else the whole credits the
/// headroom buys (cut), or `None` when that is nothing (the spend limit is reached).
///
/// The one spend decision: the in-memory [`SpendBook`] and the recharger's CQL book both
/// call it, so they cut alike.
pub fn reserve_within(command: &RechargeCommand, spent_minor: i64) -> Option<(Credits, Money)> {
    let headroom = command.spend_limit.minor_units.saturating_sub(spent_minor);
    let (credits, cost) = if command.cost.minor_units <= headroom {
        (command.credits, command.cost)
    } else {
        let budget = Money {
            minor_units: headroom.max(0),
            currency: command.cost.currency,
        };
        let credits = command
            .unit_price
            .whole_credits_within(budget)
            .min(command.credits);
        match command.unit_price.cost_of(credits) {
            Some(cost) if credits.is_positive() => (credits, cost),
            _ => return None,
        }
    };
    assert!(
        spent_minor.saturating_add(cost.minor_units) <= command.spend_limit.minor_units,
        "a reservation never passes the limit"
    );
    Some((credits, cost))
}

/// One reserved or charged recharge of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SpendLine {
    command: CommandId,
    issued_at: TimestampMs,
    cost_minor: i64,
}

/// Command ids applied and spend per account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendBook {
    commands: BTreeMap<CommandId, CommandState>,
    spend: BTreeMap<AccountKey, Vec<SpendLine>>,
}

impl SpendBook {
    /// Starts (or resumes) a command: the first delivery reserves spend within the
    /// command's limit, cutting to whole credits if needed; later deliveries get the same
    /// answer.
    pub fn begin(&mut self, command: &RechargeCommand) -> Begin {
        if let Some(state) = self.commands.get(&command.id) {
            return match state {
                CommandState::Reserved { credits, cost } => Begin::Charge {
                    credits: *credits,
                    cost: *cost,
                },
                CommandState::Done(result) => Begin::Finished(result.clone()),
            };
        }
        let key = (command.id.customer.clone(), command.id.credit_type.clone());
        let spent = self.spent_in(&key.0, &key.1, command.period);
        let Some((credits, cost)) = reserve_within(command, spent) else {
            let result = RechargeResult::SpendLimitReached;
            self.commands
                .insert(command.id.clone(), CommandState::Done(result.clone()));
            return Begin::Finished(result);
        };
        self.spend.entry(key).or_default().push(SpendLine {
            command: command.id.clone(),
            issued_at: command.issued_at,
            cost_minor: cost.minor_units,
        });
        self.commands
            .insert(command.id.clone(), CommandState::Reserved { credits, cost });
        Begin::Charge { credits, cost }
    }

    /// Settles a reserved command with the gateway's answer: a charge keeps the spend, a
    /// decline releases it. Returns the final result (the first one wins).
    pub fn finish(
        &mut self,
        id: &CommandId,
        charged: bool,
        decline_code: &str,
    ) -> Option<RechargeResult> {
        let state = self.commands.get_mut(id)?;
        let CommandState::Reserved { credits, cost } = state.clone() else {
            let CommandState::Done(result) = state else {
                unreachable!("two states")
            };
            return Some(result.clone());
        };
        let result = if charged {
            RechargeResult::Charged { credits, cost }
        } else {
            if let Some(lines) = self
                .spend
                .get_mut(&(id.customer.clone(), id.credit_type.clone()))
            {
                lines.retain(|line| line.command != *id);
            }
            RechargeResult::Declined {
                code: decline_code.to_owned(),
            }
        };
        *state = CommandState::Done(result.clone());
        Some(result)
    }

    /// Spend reserved or charged for recharges issued inside `period`, in minor units.
    pub fn spent_in(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        period: SpendPeriod,
    ) -> i64 {
        self.spend
            .get(&(customer.clone(), credit_type.clone()))
            .map_or(0, |lines| {
                lines
                    .iter()
                    .filter(|line| period.contains(line.issued_at))
                    .map(|line| line.cost_minor)
                    .sum()
            })
    }

    /// Where a command stands.
    pub fn command(&self, id: &CommandId) -> Option<&CommandState> {
        self.commands.get(id)
    }
}
