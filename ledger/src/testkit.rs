//! Builders shared by tests, the simulator and benchmarks: the product's worked example as
//! inputs, and short constructors. Pure helpers; nothing here is used on the hot path.

use rust_decimal::Decimal;

use crate::amount::{Credits, Quantity};
use crate::autorecharge::AutoRechargeSettings;
use crate::catalog::{CreditType, Feature, Plan, PlanPricing, Product, UnitName};
use crate::grant::GrantKind;
use crate::ids::{
    CreditTypeId, CustomerId, EventId, FeatureId, IdempotencyKey, PaymentMethodId, PlanId,
    ProductId,
};
use crate::input::{CustomerUpdate, GrantRequest, Input, SubscribeRequest, UsageEvent};
use crate::money::{Currency, Money, UnitPrice};
use crate::time::{GrantExpiration, SpendReset, TimestampMs};

/// Parses a known-good id; panics on a bad literal (test code only).
fn id<T>(make: fn(&str) -> Result<T, crate::ids::IdError>, text: &str) -> T {
    make(text).unwrap_or_else(|error| panic!("bad test id {text:?}: {error}"))
}

/// A customer id.
pub fn customer(text: &str) -> CustomerId {
    id(CustomerId::new, text)
}

/// A credit type id.
pub fn credit_type(text: &str) -> CreditTypeId {
    id(CreditTypeId::new, text)
}

/// A feature id.
pub fn feature(text: &str) -> FeatureId {
    id(FeatureId::new, text)
}

/// A payment method id.
pub fn payment_method(text: &str) -> PaymentMethodId {
    id(PaymentMethodId::new, text)
}

/// An idempotency key.
pub fn key(text: &str) -> IdempotencyKey {
    id(IdempotencyKey::new, text)
}

/// Whole credits.
pub fn credits(whole: i64) -> Credits {
    Credits::from_whole(whole).unwrap_or_else(|| panic!("{whole} credits overflow"))
}

/// US cents.
pub fn cents(minor_units: i64) -> Money {
    Money {
        minor_units,
        currency: Currency::USD,
    }
}

/// Parses an RFC 3339 instant.
pub fn at(text: &str) -> TimestampMs {
    TimestampMs::parse_rfc3339(text)
        .unwrap_or_else(|error| panic!("bad test time {text:?}: {error}"))
}

/// The worked example's ids.
pub mod example {
    /// The credit type.
    pub const CREDIT_TYPE: &str = "api-credits";
    /// The feature: one credit per call.
    pub const FEATURE: &str = "api-call";
    /// The product.
    pub const PRODUCT: &str = "api";
    /// The prepaid plan: 50 credits.
    pub const PLAN: &str = "starter";
    /// Unit price of a credit in US cents.
    pub const CENTS_PER_CREDIT: i64 = 10;
}

/// The catalog of the worked example: credits at $0.10, 1 credit per API call, a plan of
/// 50 credits for $5.00.
pub fn example_catalog() -> Vec<Input> {
    let price =
        UnitPrice::new(Decimal::new(example::CENTS_PER_CREDIT, 2), Currency::USD).expect("price");
    vec![
        Input::PutCreditType(CreditType {
            id: credit_type(example::CREDIT_TYPE),
            name: "API credits".into(),
            unit_price: price,
        }),
        Input::PutFeature(Feature {
            id: feature(example::FEATURE),
            name: "API call".into(),
            description: None,
            unit: UnitName {
                singular: "call".into(),
                plural: "calls".into(),
            },
            credit_type: credit_type(example::CREDIT_TYPE),
            credits_per_unit: credits(1),
        }),
        Input::PutProduct(Product {
            id: id(ProductId::new, example::PRODUCT),
            name: "API".into(),
        }),
        Input::PutPlan(Plan {
            id: id(PlanId::new, example::PLAN),
            product: id(ProductId::new, example::PRODUCT),
            name: "Starter".into(),
            credit_type: credit_type(example::CREDIT_TYPE),
            pricing: PlanPricing::Flat {
                amount: credits(50),
                price: cents(500),
            },
        }),
    ]
}

/// Creates a customer with a default payment method.
pub fn put_customer(name: &str, method: &str) -> Input {
    Input::PutCustomer(CustomerUpdate {
        id: customer(name),
        name: Some(name.to_owned()),
        email: None,
        payment_method: Some(payment_method(method)),
    })
}

/// Subscribes `name` to the example plan (50 credits for $5.00).
pub fn subscribe_example(name: &str) -> Input {
    Input::Subscribe(SubscribeRequest {
        customer: customer(name),
        plan: id(PlanId::new, example::PLAN),
        credits: None,
        paid: cents(500),
        idempotency_key: key(&format!("sub-{name}")),
    })
}

/// The example's auto-recharge: below 20 → back to 50, $500 per month.
pub fn example_auto_recharge(name: &str) -> Input {
    set_auto_recharge(name, 20, 50, 50_000, SpendReset::Month)
}

/// Auto-recharge settings in whole credits and cents.
pub fn set_auto_recharge(
    name: &str,
    threshold: i64,
    target: i64,
    limit_cents: i64,
    reset: SpendReset,
) -> Input {
    Input::SetAutoRecharge {
        customer: customer(name),
        credit_type: credit_type(example::CREDIT_TYPE),
        settings: AutoRechargeSettings {
            enabled: true,
            threshold: credits(threshold),
            target_balance: credits(target),
            spend_limit: cents(limit_cents),
            reset,
            grant_expiration: GrantExpiration::Never,
            payment_method: None,
        },
    }
}

/// One API call by `name` with event id `event`.
pub fn call(name: &str, event: &str) -> Input {
    usage(
        name,
        event,
        example::FEATURE,
        Quantity::from_micros(crate::amount::MICROS_PER_UNIT),
    )
}

/// A usage event.
pub fn usage(name: &str, event: &str, feature_id: &str, value: Quantity) -> Input {
    Input::Usage(UsageEvent {
        id: id(EventId::new, event),
        customer: customer(name),
        feature: feature(feature_id),
        value,
        timestamp: None,
    })
}

/// A manual grant of whole credits.
pub fn grant(
    name: &str,
    whole: i64,
    kind: GrantKind,
    priority: Option<u32>,
    expires_at: Option<TimestampMs>,
    idempotency: &str,
) -> Input {
    Input::Grant(GrantRequest {
        customer: customer(name),
        credit_type: credit_type(example::CREDIT_TYPE),
        amount: credits(whole),
        kind,
        priority,
        expires_at,
        cost: None,
        idempotency_key: key(idempotency),
    })
}

/// Stripe's test payment methods, as the sandbox gateway follows them: `pm_card_visa`
/// succeeds; `pm_card_chargeDeclined` and `pm_card_chargeDeclinedInsufficientFunds`
/// decline; anything else declines as unknown.
pub fn sandbox_charge(method: &PaymentMethodId) -> Result<(), &'static str> {
    match method.as_str() {
        "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" => Ok(()),
        "pm_card_chargeDeclined" => Err("card_declined"),
        "pm_card_chargeDeclinedInsufficientFunds" => Err("insufficient_funds"),
        _ => Err("unknown_payment_method"),
    }
}

/// A recharger without faults for tests: the spend book plus the sandbox rules. Every
/// command becomes its outcome input at once.
#[derive(Default)]
pub struct InstantRecharger {
    /// The spend book.
    pub book: crate::spend::SpendBook,
    /// Charges made: (command id, cost).
    pub charges: Vec<(crate::ids::CommandId, Money)>,
}

impl InstantRecharger {
    /// Runs each command through the book and the sandbox; returns the outcome inputs.
    pub fn run(&mut self, commands: &[crate::effects::RechargeCommand]) -> Vec<Input> {
        use crate::spend::Begin;
        commands
            .iter()
            .map(|command| {
                let result = match self.book.begin(command) {
                    Begin::Finished(result) => result,
                    Begin::Charge { cost, .. } => {
                        let verdict = sandbox_charge(&command.payment_method);
                        if verdict.is_ok() {
                            self.charges.push((command.id.clone(), cost));
                        }
                        self.book
                            .finish(&command.id, verdict.is_ok(), verdict.err().unwrap_or(""))
                            .expect("begun above")
                    }
                };
                Input::RechargeOutcome(crate::input::RechargeOutcome {
                    command: command.id.clone(),
                    result,
                })
            })
            .collect()
    }
}
