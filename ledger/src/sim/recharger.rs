//! The simulated recharger and payment gateway, with the faults the real ones meet:
//! gateway timeouts after the charge happened, recharger crashes between the charge and
//! the outcome, and outcomes delivered late or twice.

use std::collections::{BTreeMap, VecDeque};

use super::rng::SimRng;
use crate::effects::RechargeCommand;
use crate::ids::PaymentMethodId;
use crate::input::{Input, RechargeOutcome};
use crate::money::Money;
use crate::spend::{Begin, SpendBook};
use crate::testkit::sandbox_charge;

/// The gateway: idempotent by key, like Stripe's `Idempotency-Key`.
#[derive(Default)]
pub struct SimGateway {
    /// Every key's first answer: (amount, succeeded).
    answers: BTreeMap<String, (Money, Result<(), &'static str>)>,
    /// Money actually moved per key (must be one charge at most).
    pub charged: BTreeMap<String, u32>,
    /// Calls made, retries included.
    pub calls: u64,
}

impl SimGateway {
    /// Charges `amount` once per key; a repeated key answers as the first time.
    fn charge(
        &mut self,
        key: &str,
        amount: Money,
        method: &PaymentMethodId,
    ) -> Result<Result<(), &'static str>, String> {
        self.calls += 1;
        if let Some((first_amount, answer)) = self.answers.get(key) {
            if *first_amount != amount {
                return Err(format!(
                    "key {key} retried with {amount}, first with {first_amount}"
                ));
            }
            return Ok(*answer);
        }
        let answer = sandbox_charge(method);
        if answer.is_ok() {
            *self.charged.entry(key.to_owned()).or_default() += 1;
        }
        self.answers.insert(key.to_owned(), (amount, answer));
        Ok(answer)
    }
}

/// The recharger: a queue of delivered commands, the spend book, the gateway.
#[derive(Default)]
pub struct SimRecharger {
    /// Commands delivered and not yet finished (at-least-once).
    pub queue: VecDeque<RechargeCommand>,
    /// The spend book (its state survives recharger crashes, like the CQL rows).
    pub book: SpendBook,
    /// The gateway.
    pub gateway: SimGateway,
    /// Timeouts injected.
    pub timeouts: u64,
    /// Crashes injected between charge and outcome.
    pub crashes: u64,
}

impl SimRecharger {
    /// Works through up to `budget` commands; returns the outcomes produced.
    pub fn work(&mut self, rng: &mut SimRng, budget: usize) -> Result<Vec<Input>, String> {
        let mut outcomes = Vec::new();
        for _ in 0..budget {
            let Some(command) = self.queue.pop_front() else {
                break;
            };
            let result = match self.book.begin(&command) {
                Begin::Finished(result) => result,
                Begin::Charge { cost, .. } => {
                    let answer = self.gateway.charge(
                        &command.id.to_string(),
                        cost,
                        &command.payment_method,
                    )?;
                    if rng.chance(100) {
                        // The charge went through but its answer was lost: retry later, same key.
                        self.timeouts += 1;
                        self.queue.push_back(command);
                        continue;
                    }
                    if rng.chance(50) {
                        // Crash after the charge, before the outcome: the command is redelivered.
                        self.crashes += 1;
                        self.queue.push_back(command);
                        continue;
                    }
                    self.book
                        .finish(&command.id, answer.is_ok(), answer.err().unwrap_or(""))
                        .ok_or_else(|| format!("{} finished without a reservation", command.id))?
                }
            };
            outcomes.push(Input::RechargeOutcome(RechargeOutcome {
                command: command.id.clone(),
                result,
            }));
        }
        Ok(outcomes)
    }
}
