//! The sandbox gateway: an in-memory payment gateway that follows Stripe's test payment
//! methods, so `refill serve` runs with nothing to install and tests can see every
//! decline path (stripe-mock never declines). Idempotent per key, as Stripe is.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::sync::{Mutex, MutexGuard, PoisonError};

use refill_ledger::ids::PaymentMethodId;
use refill_ledger::money::Money;
use refill_ledger::testkit::sandbox_charge;

use crate::gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};

/// One idempotency key's first request and answer, and how often it was asked.
#[derive(Debug)]
struct KeyRecord {
    request: ChargeRequest,
    result: ChargeResult,
    calls: u32,
}

#[derive(Debug, Default)]
struct Ledger {
    by_key: HashMap<String, KeyRecord>,
    /// Payments that moved money, in order: (idempotency key, amount).
    payments: Vec<(String, Money)>,
}

/// An in-memory gateway following Stripe's test payment methods: `pm_card_visa`,
/// `pm_card_mastercard` and `pm_card_amex` succeed; `pm_card_chargeDeclined` declines with
/// `card_declined`; `pm_card_chargeDeclinedInsufficientFunds` with `insufficient_funds`;
/// anything else with `unknown_payment_method`.
///
/// The same idempotency key returns the first answer without charging again; the key
/// reused with other parameters is [`GatewayError::KeyReused`], as Stripe answers.
#[derive(Debug, Default)]
pub struct SandboxGateway {
    ledger: Mutex<Ledger>,
}

impl SandboxGateway {
    /// An empty sandbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger is consistent after every statement, so a panic elsewhere leaves
        // nothing half-done.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges synchronously (the [`Gateway`] call without the future).
    pub fn charge_now(&self, request: &ChargeRequest) -> Result<ChargeResult, GatewayError> {
        let mut ledger = self.ledger();
        if let Some(record) = ledger.by_key.get_mut(&request.idempotency_key) {
            if record.request != *request {
                return Err(GatewayError::KeyReused {
                    key: request.idempotency_key.clone(),
                });
            }
            record.calls += 1;
            return Ok(record.result.clone());
        }
        let verdict = PaymentMethodId::new(&request.payment_method)
            .map_err(|_| "unknown_payment_method")
            .and_then(|method| sandbox_charge(&method));
        let result = match verdict {
            Ok(()) => {
                ledger
                    .payments
                    .push((request.idempotency_key.clone(), request.amount));
                ChargeResult::Succeeded {
                    payment_id: format!("pi_sandbox_{}", ledger.payments.len()),
                }
            }
            Err(code) => ChargeResult::Declined {
                code: code.to_owned(),
            },
        };
        ledger.by_key.insert(
            request.idempotency_key.clone(),
            KeyRecord {
                request: request.clone(),
                result: result.clone(),
                calls: 1,
            },
        );
        Ok(result)
    }

    /// Payments that moved money under `key` (0 or 1: a key never pays twice).
    pub fn charges(&self, key: &str) -> usize {
        self.ledger()
            .payments
            .iter()
            .filter(|(paid_key, _)| paid_key == key)
            .count()
    }

    /// Calls answered under `key`, replays included (a rejected key reuse not counted).
    pub fn calls(&self, key: &str) -> u32 {
        self.ledger()
            .by_key
            .get(key)
            .map_or(0, |record| record.calls)
    }

    /// Every payment that moved money, in order: (idempotency key, amount).
    pub fn payments(&self) -> Vec<(String, Money)> {
        self.ledger().payments.clone()
    }
}

impl Gateway for SandboxGateway {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeResult, GatewayError>> + Send {
        ready(self.charge_now(request))
    }
}
