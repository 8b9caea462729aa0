//! The payment gateway port: one idempotent charge call, so the recharger can retry a
//! timed-out charge with the same key and never pay twice. Implemented by Stripe over HTTP
//! and by the in-memory sandbox; one generic contract test runs against both.

use std::future::Future;
use std::sync::Arc;

use refill_ledger::amount::Credits;
use refill_ledger::effects::RechargeCommand;
use refill_ledger::money::Money;

/// One charge to make off-session with a saved payment method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The gateway's idempotency key: the same key always gets the first answer.
    pub idempotency_key: String,
    /// What to charge, in minor units of its currency.
    pub amount: Money,
    /// The payment method at the gateway, such as Stripe's `pm_card_visa`.
    pub payment_method: String,
    /// The customer (Refill's id; Stripe receives it only when it is a `cus_` id).
    pub customer: String,
    /// Shown on the payment at the gateway.
    pub description: String,
}

impl ChargeRequest {
    /// The charge of a recharge command buying `credits` for `amount` (the command's, or
    /// less when the spend check cut it); the idempotency key is the command id's text.
    pub fn for_command(command: &RechargeCommand, credits: Credits, amount: Money) -> Self {
        Self {
            idempotency_key: command.id.to_string(),
            amount,
            payment_method: command.payment_method.as_str().to_owned(),
            customer: command.id.customer.as_str().to_owned(),
            description: format!(
                "Refill auto-recharge: {credits} {} credits ({})",
                command.id.credit_type, command.id
            ),
        }
    }
}

/// The gateway's final answer to a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeResult {
    /// Money moved.
    Succeeded {
        /// The gateway's payment id (Stripe: the PaymentIntent id `pi_...`).
        payment_id: String,
    },
    /// The payment was declined; no money moved.
    Declined {
        /// The decline code, such as `card_declined` or `insufficient_funds`.
        code: String,
    },
}

/// Why a charge got no final answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Timeout, connection failure, 5xx, rate limit, or a request with the same key still
    /// in progress: the charge may or may not have happened. Retry with the same key.
    #[error("transient gateway failure: {0}")]
    Transient(String),
    /// The gateway refused the request itself (not a card decline): an unknown payment
    /// method or customer, an amount below the minimum. No money moved, and the same
    /// request gets the same answer.
    #[error("gateway refused the request (HTTP {status}, {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The gateway's error code, such as `resource_missing`.
        code: String,
        /// The gateway's message.
        message: String,
    },
    /// The idempotency key was used before with other parameters.
    #[error("idempotency key {key:?} was used before with other parameters")]
    KeyReused {
        /// The key.
        key: String,
    },
    /// The gateway refused our credentials (a setting to fix, not the customer's fault).
    #[error("gateway refused the credentials: {0}")]
    Unauthorized(String),
    /// An answer that cannot be read; money may have moved.
    #[error("unexpected gateway answer: {0}")]
    Unexpected(String),
}

impl GatewayError {
    /// True when retrying with the same idempotency key may get a final answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// A payment gateway: charges a saved payment method, idempotently per key.
pub trait Gateway: Send + Sync {
    /// Charges `request.amount`; the same idempotency key always gets the first answer.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeResult, GatewayError>> + Send;
}

impl<G: Gateway> Gateway for Arc<G> {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeResult, GatewayError>> + Send {
        G::charge(self, request)
    }
}
