//! Inputs of a shard: everything that can change an account, already parsed into domain
//! types by the shell. The log of inputs is the source of truth; replaying it is exact.

use serde::{Deserialize, Serialize};

use crate::amount::{Credits, Quantity};
use crate::autorecharge::AutoRechargeSettings;
use crate::catalog::{CreditType, Feature, Plan, Product};
use crate::grant::GrantKind;
use crate::ids::{
    CommandId, CreditTypeId, CustomerId, EventId, FeatureId, GrantId, IdempotencyKey,
    PaymentMethodId, PlanId,
};
use crate::money::Money;
use crate::time::TimestampMs;

/// One usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Producer-minted id; duplicates inside the window are applied once.
    pub id: EventId,
    /// Who used it.
    pub customer: CustomerId,
    /// What was used.
    pub feature: FeatureId,
    /// How much, in the feature's unit.
    pub value: Quantity,
    /// When the producer says it happened (informational; balances move at apply time).
    pub timestamp: Option<TimestampMs>,
}

/// Creates or updates a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerUpdate {
    /// The customer.
    pub id: CustomerId,
    /// Display name, when given.
    pub name: Option<String>,
    /// Email, when given.
    pub email: Option<String>,
    /// Default payment method, when given.
    pub payment_method: Option<PaymentMethodId>,
}

/// Grants credits by hand (paid or promotional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    /// The customer.
    pub customer: CustomerId,
    /// The credit type.
    pub credit_type: CreditTypeId,
    /// Credits, more than zero.
    pub amount: Credits,
    /// Paid or promotional.
    pub kind: GrantKind,
    /// Burn priority (lower first); the default when absent.
    pub priority: Option<u32>,
    /// Expiry instant, after the apply time.
    pub expires_at: Option<TimestampMs>,
    /// What the customer paid, if anything.
    pub cost: Option<Money>,
    /// Makes the request idempotent per customer.
    pub idempotency_key: IdempotencyKey,
}

/// Subscribes a customer to a plan whose price the shell has already charged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The customer.
    pub customer: CustomerId,
    /// The plan.
    pub plan: PlanId,
    /// Credits requested (stairstep plans).
    pub credits: Option<Credits>,
    /// What was charged; must equal the plan's quote.
    pub paid: Money,
    /// Makes the request idempotent per customer.
    pub idempotency_key: IdempotencyKey,
}

/// What the recharger did with a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RechargeResult {
    /// Charged; grant these credits (at most the command's, less when the recharger's
    /// authoritative spend check cut it).
    Charged {
        /// Credits bought.
        credits: Credits,
        /// What was charged.
        cost: Money,
    },
    /// The gateway declined the payment.
    Declined {
        /// The gateway's decline code, such as `card_declined` or `insufficient_funds`.
        code: String,
    },
    /// The recharger's spend check found no headroom in the period.
    SpendLimitReached,
}

/// The result of a recharge command, sent back to the owning shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeOutcome {
    /// The command.
    pub command: CommandId,
    /// What happened.
    pub result: RechargeResult,
}

/// One input of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A usage event.
    Usage(UsageEvent),
    /// Creates or replaces a credit type.
    PutCreditType(CreditType),
    /// Creates or replaces a feature.
    PutFeature(Feature),
    /// Creates or replaces a product.
    PutProduct(Product),
    /// Creates or replaces a plan.
    PutPlan(Plan),
    /// Creates or updates a customer.
    PutCustomer(CustomerUpdate),
    /// Subscribes to a plan.
    Subscribe(SubscribeRequest),
    /// Grants credits.
    Grant(GrantRequest),
    /// Voids what remains of a grant.
    VoidGrant {
        /// The customer.
        customer: CustomerId,
        /// The grant.
        grant: GrantId,
    },
    /// Sets auto-recharge for one credit type.
    SetAutoRecharge {
        /// The customer.
        customer: CustomerId,
        /// The credit type.
        credit_type: CreditTypeId,
        /// The settings, replacing any before.
        settings: AutoRechargeSettings,
    },
    /// A recharge command's result.
    RechargeOutcome(RechargeOutcome),
    /// Only lets time pass (expiries, period resets).
    Tick,
    /// Closes the shard's flush: rolls up every account's pending usage into one ledger
    /// entry and reports what changed since the last flush ([`crate::effects::FlushSet`]).
    /// Logged like any input, so a replay rolls up at the same points.
    Flush,
}
