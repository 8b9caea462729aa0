//! The simulator's workload: what producers and clients send, drawn from the seed. It
//! includes producer retries (same event id again), invalid requests and settings that
//! lower the limit below the spend.

use rust_decimal::Decimal;

use super::rng::SimRng;
use crate::amount::{Credits, Quantity};
use crate::autorecharge::AutoRechargeSettings;
use crate::catalog::{CreditType, Feature, UnitName};
use crate::grant::GrantKind;
use crate::ids::{CreditTypeId, CustomerId, EventId, GrantId, IdempotencyKey};
use crate::input::{CustomerUpdate, GrantRequest, Input, UsageEvent};
use crate::money::{Currency, Money, UnitPrice};
use crate::shard::Shard;
use crate::testkit::{self, credit_type, customer, example, feature, payment_method};
use crate::time::{GrantExpiration, SpendReset, TimestampMs};

const GPU_CREDITS: &str = "gpu-credits";
const METHODS: [&str; 4] = [
    "pm_card_visa",
    "pm_card_visa",
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
];
const FEATURES: [&str; 3] = [example::FEATURE, "gpu-second", "ping"];
/// Producers retry only ids younger than this (well inside the 30-day window).
const RETRY_AGE_MAX_MS: i64 = 20 * 86_400_000;

/// Workload state: who exists and what was sent.
pub struct Workload {
    customers: Vec<CustomerId>,
    sent: Vec<(UsageEvent, TimestampMs)>,
    next_event: u64,
    next_key: u64,
}

impl Workload {
    /// A workload over `customers` customers.
    pub fn new(customers: u32) -> Self {
        Self {
            customers: (0..customers.max(1))
                .map(|index| customer(&format!("cus_{index}")))
                .collect(),
            sent: Vec::new(),
            next_event: 0,
            next_key: 0,
        }
    }

    fn fresh_key(&mut self) -> IdempotencyKey {
        self.next_key += 1;
        testkit::key(&format!("key-{}", self.next_key))
    }

    /// The catalog, customers, subscriptions and first settings.
    pub fn setup(&mut self, rng: &mut SimRng) -> Vec<Input> {
        let mut inputs = testkit::example_catalog();
        let gpu_price = UnitPrice::new(Decimal::new(37, 2), Currency::USD).expect("price");
        inputs.push(Input::PutCreditType(CreditType {
            id: credit_type(GPU_CREDITS),
            name: "GPU credits".into(),
            unit_price: gpu_price,
        }));
        for (id, credit_type_id, per_unit) in [
            ("gpu-second", GPU_CREDITS, 500_000),
            ("ping", example::CREDIT_TYPE, 0),
        ] {
            inputs.push(Input::PutFeature(Feature {
                id: feature(id),
                name: id.into(),
                description: None,
                unit: UnitName {
                    singular: "unit".into(),
                    plural: "units".into(),
                },
                credit_type: credit_type(credit_type_id),
                credits_per_unit: Credits::from_micros(per_unit),
            }));
        }
        for customer in self.customers.clone() {
            let method = if rng.chance(800) {
                "pm_card_visa"
            } else {
                *rng.pick(&METHODS)
            };
            inputs.push(testkit::put_customer(customer.as_str(), method));
            if rng.chance(800) {
                inputs.push(testkit::subscribe_example(customer.as_str()));
            }
            for credit_type_id in [example::CREDIT_TYPE, GPU_CREDITS] {
                if rng.chance(700) {
                    inputs.push(settings_for(rng, &customer, credit_type_id, 0));
                }
            }
        }
        inputs
    }

    /// A burst of usage, with producer retries and a bounded shuffle.
    pub fn usage_burst(&mut self, rng: &mut SimRng, now: TimestampMs) -> Vec<Input> {
        let count = 1 + rng.below(30);
        let mut events = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let retry = !self.sent.is_empty() && rng.chance(100);
            let event = if retry {
                let (event, sent_at) = rng.pick(&self.sent).clone();
                if now.0 - sent_at.0 < RETRY_AGE_MAX_MS {
                    Some(event)
                } else {
                    None
                }
            } else {
                None
            };
            let event = event.unwrap_or_else(|| {
                self.next_event += 1;
                let customer = self.customers[rng.skewed(self.customers.len())].clone();
                let feature_id = *rng.pick(&FEATURES);
                let value = match feature_id {
                    "gpu-second" => Quantity::from_micros(rng.between(1, 200) * 100_000),
                    _ => Quantity::from_micros(rng.between(1, 3) * 1_000_000),
                };
                let event = UsageEvent {
                    id: EventId::new(&format!("evt-{}", self.next_event)).expect("id"),
                    customer,
                    feature: feature(feature_id),
                    value,
                    timestamp: Some(now),
                };
                self.sent.push((event.clone(), now));
                if self.sent.len() > 300 {
                    self.sent.remove(0);
                }
                event
            });
            events.push(Input::Usage(event));
        }
        for index in 1..events.len() {
            if rng.chance(200) {
                events.swap(index - 1, index);
            }
        }
        events
    }

    /// Manual grants, sometimes replaying an idempotency key.
    pub fn grants(&mut self, rng: &mut SimRng, now: TimestampMs) -> Vec<Input> {
        let customer = rng.pick(&self.customers).clone();
        let idempotency_key = if rng.chance(100) && self.next_key > 0 {
            testkit::key(&format!("key-{}", 1 + rng.below(self.next_key)))
        } else {
            self.fresh_key()
        };
        let credit_type_id = if rng.chance(600) {
            example::CREDIT_TYPE
        } else {
            GPU_CREDITS
        };
        let expires_at = rng
            .chance(500)
            .then(|| TimestampMs(now.0 + rng.between(3_600_000, 20 * 86_400_000)));
        vec![Input::Grant(GrantRequest {
            customer,
            credit_type: credit_type(credit_type_id),
            amount: Credits::from_micros(rng.between(1, 800) * 100_000),
            kind: if rng.chance(500) {
                GrantKind::Paid
            } else {
                GrantKind::Promotional
            },
            priority: rng.chance(500).then(|| rng.below(200) as u32),
            expires_at,
            cost: None,
            idempotency_key,
        })]
    }

    /// Voids of grants that may or may not exist or have credits left.
    pub fn voids(&mut self, rng: &mut SimRng) -> Vec<Input> {
        vec![Input::VoidGrant {
            customer: rng.pick(&self.customers).clone(),
            grant: GrantId(1 + rng.below(20)),
        }]
    }

    /// New auto-recharge settings for one account, sometimes with the limit below the spend.
    pub fn settings(&mut self, rng: &mut SimRng, shard: &Shard) -> Vec<Input> {
        let customer = rng.pick(&self.customers).clone();
        let credit_type_id = if rng.chance(600) {
            example::CREDIT_TYPE
        } else {
            GPU_CREDITS
        };
        let spent = shard
            .find_account(customer.as_str(), credit_type_id)
            .and_then(|handle| {
                shard
                    .account(handle)
                    .auto_recharge()
                    .map(|auto| auto.spend_this_period_minor)
            })
            .unwrap_or(0);
        vec![settings_for(rng, &customer, credit_type_id, spent)]
    }

    /// Default payment-method changes.
    pub fn payment_methods(&mut self, rng: &mut SimRng) -> Vec<Input> {
        vec![Input::PutCustomer(CustomerUpdate {
            id: rng.pick(&self.customers).clone(),
            name: None,
            email: None,
            payment_method: Some(payment_method(rng.pick::<&str>(&METHODS))),
        })]
    }

    /// Requests that must be rejected without changing anything.
    pub fn bad_inputs(&mut self, rng: &mut SimRng, now: TimestampMs) -> Vec<Input> {
        let customer = rng.pick(&self.customers).clone();
        let bad_settings = |limit: Money, threshold: i64, target: i64| Input::SetAutoRecharge {
            customer: customer.clone(),
            credit_type: credit_type(example::CREDIT_TYPE),
            settings: AutoRechargeSettings {
                enabled: true,
                threshold: testkit::credits(threshold),
                target_balance: testkit::credits(target),
                spend_limit: limit,
                reset: SpendReset::Month,
                grant_expiration: GrantExpiration::Never,
                payment_method: None,
            },
        };
        let euro = Currency::from_code("EUR").expect("EUR");
        let mut grant = |amount: Credits, expires_at: Option<TimestampMs>| {
            Input::Grant(GrantRequest {
                customer: customer.clone(),
                credit_type: credit_type(example::CREDIT_TYPE),
                amount,
                kind: GrantKind::Promotional,
                priority: None,
                expires_at,
                cost: None,
                idempotency_key: self.fresh_key(),
            })
        };
        let choices = vec![
            testkit::usage(
                customer.as_str(),
                "bad-1",
                "no-such-feature",
                Quantity::from_micros(1_000_000),
            ),
            grant(Credits::ZERO, None),
            grant(testkit::credits(5), Some(TimestampMs(now.0 - 1))),
            bad_settings(testkit::cents(1_000), 30, 10),
            bad_settings(
                Money {
                    minor_units: 1_000,
                    currency: euro,
                },
                10,
                30,
            ),
            Input::VoidGrant {
                customer: customer.clone(),
                grant: GrantId(10_000),
            },
            Input::SetAutoRecharge {
                customer: customer.clone(),
                credit_type: CreditTypeId::new("no-such-credits").expect("id"),
                settings: AutoRechargeSettings {
                    enabled: true,
                    threshold: testkit::credits(1),
                    target_balance: testkit::credits(2),
                    spend_limit: testkit::cents(100),
                    reset: SpendReset::Day,
                    grant_expiration: GrantExpiration::Never,
                    payment_method: None,
                },
            },
        ];
        let pick = rng.below(choices.len() as u64) as usize;
        vec![choices.into_iter().nth(pick).expect("in range")]
    }
}

fn settings_for(
    rng: &mut SimRng,
    customer: &CustomerId,
    credit_type_id: &str,
    spent_minor: i64,
) -> Input {
    let threshold = rng.between(0, 40);
    let target = (threshold + rng.between(0, 100)).max(1);
    let limit_cents = if spent_minor > 0 && rng.chance(200) {
        rng.between(0, spent_minor)
    } else {
        rng.between(0, 6_000)
    };
    let reset = *rng.pick(&[SpendReset::Day, SpendReset::Week, SpendReset::Month]);
    let expiration = match rng.below(10) {
        0..6 => GrantExpiration::Never,
        6 | 7 => GrantExpiration::parse("P1D").expect("duration"),
        8 => GrantExpiration::parse("P7D").expect("duration"),
        _ => GrantExpiration::parse("P1M").expect("duration"),
    };
    let method = rng
        .chance(300)
        .then(|| payment_method(rng.pick::<&str>(&METHODS)));
    Input::SetAutoRecharge {
        customer: customer.clone(),
        credit_type: credit_type(credit_type_id),
        settings: AutoRechargeSettings {
            enabled: rng.chance(900),
            threshold: testkit::credits(threshold),
            target_balance: testkit::credits(target),
            spend_limit: testkit::cents(limit_cents),
            reset,
            grant_expiration: expiration,
            payment_method: method,
        },
    }
}
