//! The recharger's decision, pure: each command id is applied at most once, and spend is
//! reserved against the period's limit before any charge, so concurrent or replayed
//! commands can never pass the limit nor pay twice.
//!
//! The CQL adapter implements the same steps with lightweight transactions; the simulator
//! and the embedded engine use this in-memory book.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::effects::RechargeCommand;
use crate::ids::{CommandId, CreditTypeId, CustomerId};
use crate::input::RechargeResult;
use crate::money::Money;
use crate::time::TimestampMs;

/// The spend row of one (customer, credit type, period).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSpend {
    /// Charged and settled, in minor units.
    pub spent_minor: i64,
    /// Reserved by commands being charged, in minor units.
    pub reserved_minor: i64,
}

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

type PeriodKey = (CustomerId, CreditTypeId, TimestampMs);

/// Command ids applied and spend per period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendBook {
    commands: BTreeMap<CommandId, (PeriodKey, CommandState)>,
    periods: BTreeMap<PeriodKey, PeriodSpend>,
}

impl SpendBook {
    /// Starts (or resumes) a command: the first delivery reserves spend within the
    /// command's limit, cutting to whole credits if needed; later deliveries get the same
    /// answer.
    pub fn begin(&mut self, command: &RechargeCommand) -> Begin {
        if let Some((_, state)) = self.commands.get(&command.id) {
            return match state {
                CommandState::Reserved { credits, cost } => Begin::Charge {
                    credits: *credits,
                    cost: *cost,
                },
                CommandState::Done(result) => Begin::Finished(result.clone()),
            };
        }
        let key = (
            command.id.customer.clone(),
            command.id.credit_type.clone(),
            command.period.start,
        );
        let row = self.periods.entry(key.clone()).or_default();
        let headroom = command.spend_limit.minor_units - row.spent_minor - row.reserved_minor;
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
                _ => {
                    let result = RechargeResult::SpendLimitReached;
                    self.commands.insert(
                        command.id.clone(),
                        (key, CommandState::Done(result.clone())),
                    );
                    return Begin::Finished(result);
                }
            }
        };
        assert!(
            row.spent_minor + row.reserved_minor + cost.minor_units
                <= command.spend_limit.minor_units,
            "a reservation never passes the limit"
        );
        row.reserved_minor += cost.minor_units;
        self.commands.insert(
            command.id.clone(),
            (key, CommandState::Reserved { credits, cost }),
        );
        Begin::Charge { credits, cost }
    }

    /// Settles a reserved command with the gateway's answer: a charge moves the reservation
    /// to spent, a decline releases it. Returns the final result (the first one wins).
    pub fn finish(
        &mut self,
        id: &CommandId,
        charged: bool,
        decline_code: &str,
    ) -> Option<RechargeResult> {
        let (key, state) = self.commands.get_mut(id)?;
        let CommandState::Reserved { credits, cost } = state.clone() else {
            let CommandState::Done(result) = state else {
                unreachable!()
            };
            return Some(result.clone());
        };
        let row = self
            .periods
            .get_mut(key)
            .expect("a reserved command has its period row");
        row.reserved_minor -= cost.minor_units;
        let result = if charged {
            row.spent_minor += cost.minor_units;
            RechargeResult::Charged { credits, cost }
        } else {
            RechargeResult::Declined {
                code: decline_code.to_owned(),
            }
        };
        *state = CommandState::Done(result.clone());
        Some(result)
    }

    /// The spend row of a period.
    pub fn period(
        &self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        start: TimestampMs,
    ) -> PeriodSpend {
        self.periods
            .get(&(customer.clone(), credit_type.clone(), start))
            .copied()
            .unwrap_or_default()
    }

    /// Where a command stands.
    pub fn command(&self, id: &CommandId) -> Option<&CommandState> {
        self.commands.get(id).map(|(_, state)| state)
    }
}
