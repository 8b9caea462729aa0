//! The JSON of the v1 contract (DESIGN §5) and its explicit conversion into domain types.
//! Every field is checked here or in the core; each failure names its field.

use refill_ledger::autorecharge::AutoRechargeSettings;
use refill_ledger::catalog::{
    CreditType, Feature, Plan, PlanPricing, PriceStep, Product, UnitName,
};
use refill_ledger::grant::GrantKind;
use refill_ledger::ids::{
    CreditTypeId, CustomerId, EventId, FeatureId, IdError, IdempotencyKey, PaymentMethodId, PlanId,
    ProductId,
};
use refill_ledger::input::{GrantRequest, UsageEvent};
use refill_ledger::time::{GrantExpiration, SpendReset};
use refill_ledger::{Credits, Currency, Money, Quantity, TimestampMs, UnitPrice};
use serde::Deserialize;

use crate::error::ApiError;
use crate::num::Num;

/// `{amount, currency}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    /// Amount in major units.
    pub amount: Num,
    /// ISO 4217 code.
    pub currency: String,
}

fn currency(field: &str, code: &str) -> Result<Currency, ApiError> {
    Currency::from_code(code).map_err(|error| ApiError::invalid(field, error.to_string()))
}

impl MoneyBody {
    /// Exact money, zero or more.
    pub fn money(&self, field: &str) -> Result<Money, ApiError> {
        let currency = currency(&format!("{field}.currency"), &self.currency)?;
        Money::from_decimal_non_negative(self.amount.0, currency)
            .map_err(|error| ApiError::invalid(&format!("{field}.amount"), error.to_string()))
    }
}

/// Parses an id, naming the field on failure.
pub fn id<T>(field: &str, make: fn(&str) -> Result<T, IdError>, text: &str) -> Result<T, ApiError> {
    make(text).map_err(|error| ApiError::invalid(field, error.to_string()))
}

fn credits(field: &str, value: Num) -> Result<Credits, ApiError> {
    Credits::from_decimal(value.0).map_err(|error| ApiError::invalid(field, error.to_string()))
}

/// `PUT /v1/credit-types/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditTypeBody {
    /// Name.
    pub name: String,
    /// Price of one credit.
    pub unit_price: MoneyBody,
}

impl CreditTypeBody {
    /// Into the domain.
    pub fn into_domain(self, path_id: &str) -> Result<CreditType, ApiError> {
        let currency = currency("unit_price.currency", &self.unit_price.currency)?;
        let unit_price = UnitPrice::new(self.unit_price.amount.0, currency)
            .map_err(|error| ApiError::invalid("unit_price.amount", error.to_string()))?;
        Ok(CreditType {
            id: id("id", CreditTypeId::new, path_id)?,
            name: self.name,
            unit_price,
        })
    }
}

/// A feature's unit names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitBody {
    /// "call".
    pub singular: String,
    /// "calls".
    pub plural: String,
}

/// `PUT /v1/features/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureBody {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Unit names.
    pub unit: UnitBody,
    /// Credit type burned.
    pub credit_type: String,
    /// Credits per unit.
    pub credits_per_unit: Num,
}

impl FeatureBody {
    /// Into the domain.
    pub fn into_domain(self, path_id: &str) -> Result<Feature, ApiError> {
        let credits_per_unit = Credits::from_decimal_non_negative(self.credits_per_unit.0)
            .map_err(|error| ApiError::invalid("credits_per_unit", error.to_string()))?;
        Ok(Feature {
            id: id("id", FeatureId::new, path_id)?,
            name: self.name,
            description: self.description,
            unit: UnitName {
                singular: self.unit.singular,
                plural: self.unit.plural,
            },
            credit_type: id("credit_type", CreditTypeId::new, &self.credit_type)?,
            credits_per_unit,
        })
    }
}

/// `PUT /v1/products/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    /// Name.
    pub name: String,
}

impl ProductBody {
    /// Into the domain.
    pub fn into_domain(self, path_id: &str) -> Result<Product, ApiError> {
        Ok(Product {
            id: id("id", ProductId::new, path_id)?,
            name: self.name,
        })
    }
}

/// A stairstep step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    /// Largest quantity.
    pub up_to: Num,
    /// Price of the step.
    pub price: MoneyBody,
}

/// A plan's credits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCreditsBody {
    /// Credit type.
    pub credit_type: String,
    /// `flat` or `stairstep`.
    pub pricing_model: String,
    /// Flat: credits granted.
    pub amount: Option<Num>,
    /// Flat: price.
    pub price: Option<MoneyBody>,
    /// Stairstep: steps.
    pub steps: Option<Vec<StepBody>>,
}

/// `PUT /v1/plans/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// Product.
    pub product: String,
    /// Name.
    pub name: String,
    /// Only `one_time`.
    pub billing_model: String,
    /// Credits and pricing.
    pub credits: PlanCreditsBody,
}

impl PlanBody {
    /// Into the domain.
    pub fn into_domain(self, path_id: &str) -> Result<Plan, ApiError> {
        if self.billing_model != "one_time" {
            return Err(ApiError::invalid(
                "billing_model",
                format!("expected \"one_time\", found {:?}", self.billing_model),
            ));
        }
        let pricing = match self.credits.pricing_model.as_str() {
            "flat" => {
                let amount = self.credits.amount.ok_or_else(|| {
                    ApiError::invalid(
                        "credits.amount",
                        "expected an amount of credits for flat pricing, found none",
                    )
                })?;
                let price = self.credits.price.ok_or_else(|| {
                    ApiError::invalid(
                        "credits.price",
                        "expected a price for flat pricing, found none",
                    )
                })?;
                PlanPricing::Flat {
                    amount: credits("credits.amount", amount)?,
                    price: price.money("credits.price")?,
                }
            }
            "stairstep" => {
                let steps = self.credits.steps.ok_or_else(|| {
                    ApiError::invalid(
                        "credits.steps",
                        "expected steps for stairstep pricing, found none",
                    )
                })?;
                let steps = steps
                    .into_iter()
                    .map(|step| {
                        Ok(PriceStep {
                            up_to: credits("credits.steps.up_to", step.up_to)?,
                            price: step.price.money("credits.steps.price")?,
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?;
                PlanPricing::Stairstep { steps }
            }
            other => {
                return Err(ApiError::invalid(
                    "credits.pricing_model",
                    format!("expected \"flat\" or \"stairstep\", found {other:?}"),
                ));
            }
        };
        Ok(Plan {
            id: id("id", PlanId::new, path_id)?,
            product: id("product", ProductId::new, &self.product)?,
            name: self.name,
            credit_type: id(
                "credits.credit_type",
                CreditTypeId::new,
                &self.credits.credit_type,
            )?,
            pricing,
        })
    }
}

/// `PUT /v1/customers/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    /// Name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Default payment method.
    pub payment_method: Option<String>,
}

/// `POST /v1/customers/{id}/subscriptions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    /// Plan.
    pub plan: String,
    /// Credits (stairstep plans).
    pub credits: Option<Num>,
    /// Payment method (the customer's default otherwise).
    pub payment_method: Option<String>,
    /// Makes a retry safe; defaults to the plan id (one active subscription per product).
    pub idempotency_key: Option<String>,
}

impl SubscriptionBody {
    /// Requested credits.
    pub fn credits(&self) -> Result<Option<Credits>, ApiError> {
        self.credits
            .map(|value| credits("credits", value))
            .transpose()
    }
}

/// `POST /v1/customers/{id}/grants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Credit type.
    pub credit_type: String,
    /// Credits.
    pub amount: Num,
    /// `paid` or `promotional`.
    pub grant_type: String,
    /// Burn priority, lower first.
    pub priority: Option<u32>,
    /// RFC 3339 expiry.
    pub expires_at: Option<String>,
    /// What was paid.
    pub cost: Option<MoneyBody>,
    /// Idempotency key (required).
    pub idempotency_key: String,
}

impl GrantBody {
    /// Into the domain.
    pub fn into_domain(self, customer: CustomerId) -> Result<GrantRequest, ApiError> {
        let kind = match self.grant_type.as_str() {
            "paid" => GrantKind::Paid,
            "promotional" => GrantKind::Promotional,
            other => {
                return Err(ApiError::invalid(
                    "grant_type",
                    format!("expected \"paid\" or \"promotional\", found {other:?}"),
                ));
            }
        };
        let expires_at = self
            .expires_at
            .map(|text| {
                TimestampMs::parse_rfc3339(&text)
                    .map_err(|error| ApiError::invalid("expires_at", error.to_string()))
            })
            .transpose()?;
        Ok(GrantRequest {
            customer,
            credit_type: id("credit_type", CreditTypeId::new, &self.credit_type)?,
            amount: credits("amount", self.amount)?,
            kind,
            priority: self.priority,
            expires_at,
            cost: self.cost.map(|cost| cost.money("cost")).transpose()?,
            idempotency_key: id(
                "idempotency_key",
                IdempotencyKey::new,
                &self.idempotency_key,
            )?,
        })
    }
}

/// `PUT /v1/customers/{id}/auto-recharge`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRechargeBody {
    /// Credit type.
    pub credit_type: String,
    /// On or off.
    pub enabled: bool,
    /// Recharge below this.
    pub threshold: Num,
    /// Back up to this.
    pub target_balance: Num,
    /// Limit per period.
    pub spend_limit: MoneyBody,
    /// `day`, `week` or `month`.
    pub spend_limit_reset: String,
    /// `never` (default) or an ISO-8601 duration.
    pub grant_expiration: Option<String>,
    /// Payment method (the customer's default otherwise).
    pub payment_method: Option<String>,
}

impl AutoRechargeBody {
    /// Into the domain.
    pub fn into_domain(self) -> Result<(CreditTypeId, AutoRechargeSettings), ApiError> {
        let reset = match self.spend_limit_reset.as_str() {
            "day" => SpendReset::Day,
            "week" => SpendReset::Week,
            "month" => SpendReset::Month,
            other => {
                return Err(ApiError::invalid(
                    "spend_limit_reset",
                    format!("expected \"day\", \"week\" or \"month\", found {other:?}"),
                ));
            }
        };
        let grant_expiration =
            GrantExpiration::parse(self.grant_expiration.as_deref().unwrap_or("never"))
                .map_err(|error| ApiError::invalid("grant_expiration", error.to_string()))?;
        Ok((
            id("credit_type", CreditTypeId::new, &self.credit_type)?,
            AutoRechargeSettings {
                enabled: self.enabled,
                threshold: credits("threshold", self.threshold)?,
                target_balance: credits("target_balance", self.target_balance)?,
                spend_limit: self.spend_limit.money("spend_limit")?,
                reset,
                grant_expiration,
                payment_method: self
                    .payment_method
                    .map(|text| id("payment_method", PaymentMethodId::new, &text))
                    .transpose()?,
            },
        ))
    }
}

/// A usage event as producers send it (plain JSON or a CloudEvent).
#[derive(Deserialize)]
pub struct EventBody {
    /// Event id.
    pub id: Option<String>,
    /// Customer.
    pub customer_id: Option<String>,
    /// Feature.
    pub feature_id: Option<String>,
    /// Quantity.
    pub value: Option<Num>,
    /// RFC 3339.
    pub timestamp: Option<String>,
    /// Free-form dimensions (kept by producers' tooling; not used for rating).
    pub dimensions: Option<serde_json::Map<String, serde_json::Value>>,
    /// CloudEvents: version.
    pub specversion: Option<String>,
    /// CloudEvents: type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// CloudEvents: source.
    pub source: Option<String>,
    /// CloudEvents: subject (the customer, when `data` has none).
    pub subject: Option<String>,
    /// CloudEvents: time.
    pub time: Option<String>,
    /// CloudEvents: content type of data.
    pub datacontenttype: Option<String>,
    /// CloudEvents: the event's data.
    pub data: Option<CloudEventData>,
}

/// The `data` of a CloudEvent usage event.
#[derive(Deserialize)]
pub struct CloudEventData {
    /// Customer.
    pub customer_id: Option<String>,
    /// Feature.
    pub feature_id: Option<String>,
    /// Quantity.
    pub value: Option<Num>,
}

impl EventBody {
    /// Validates into a usage event.
    pub fn into_domain(self) -> Result<UsageEvent, ApiError> {
        let cloud = self.specversion.is_some();
        let data = self.data.unwrap_or(CloudEventData {
            customer_id: None,
            feature_id: None,
            value: None,
        });
        let customer = if cloud {
            data.customer_id.or(self.subject)
        } else {
            self.customer_id
        };
        let feature = if cloud {
            data.feature_id
        } else {
            self.feature_id
        };
        let value = if cloud { data.value } else { self.value };
        let timestamp = if cloud { self.time } else { self.timestamp };
        let prefix = if cloud { "data." } else { "" };
        let id_text = self.id.ok_or_else(|| {
            ApiError::invalid("id", "expected an event id of 1 to 256 bytes, found none")
        })?;
        let customer = customer.ok_or_else(|| {
            ApiError::invalid(
                &format!("{prefix}customer_id"),
                "expected a customer id, found none",
            )
        })?;
        let feature = feature.ok_or_else(|| {
            ApiError::invalid(
                &format!("{prefix}feature_id"),
                "expected a feature id, found none",
            )
        })?;
        let value = value.ok_or_else(|| {
            ApiError::invalid(&format!("{prefix}value"), "expected a value, found none")
        })?;
        Ok(UsageEvent {
            id: id("id", EventId::new, &id_text)?,
            customer: id(&format!("{prefix}customer_id"), CustomerId::new, &customer)?,
            feature: id(&format!("{prefix}feature_id"), FeatureId::new, &feature)?,
            value: Quantity::from_decimal_non_negative(value.0)
                .map_err(|error| ApiError::invalid(&format!("{prefix}value"), error.to_string()))?,
            timestamp: timestamp
                .map(|text| {
                    TimestampMs::parse_rfc3339(&text).map_err(|error| {
                        ApiError::invalid(
                            if cloud { "time" } else { "timestamp" },
                            error.to_string(),
                        )
                    })
                })
                .transpose()?,
        })
    }
}

/// Parses a `POST /v1/events` body: one event or an array. The request fails as a whole
/// only when it is not JSON or holds more than `events_max` events; otherwise each event
/// is parsed on its own and a bad one is rejected alone, naming its field.
pub fn parse_events(
    body: &[u8],
    events_max: usize,
) -> Result<Vec<Result<UsageEvent, ApiError>>, ApiError> {
    Ok(parse_events_with_text(body, events_max)?
        .into_iter()
        .map(|(_, event)| event)
        .collect())
}

/// One event of a `POST /v1/events` body: its JSON text as sent, and what it parsed into.
pub type EventWithText = (
    Box<serde_json::value::RawValue>,
    Result<UsageEvent, ApiError>,
);

/// [`parse_events`], each event with its JSON text as sent (forwarded as is to
/// `refill.usage` when another worker owns its customer).
pub fn parse_events_with_text(
    body: &[u8],
    events_max: usize,
) -> Result<Vec<EventWithText>, ApiError> {
    let raw: Vec<Box<serde_json::value::RawValue>> =
        match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
            Some(b'[') => serde_json::from_slice(body)
                .map_err(|error| crate::error::from_json_error(&error, "body"))?,
            _ => vec![
                serde_json::from_slice(body)
                    .map_err(|error| crate::error::from_json_error(&error, "body"))?,
            ],
        };
    if raw.len() > events_max {
        return Err(ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_many_events",
            message: format!(
                "expected at most {events_max} events per request, found {}",
                raw.len()
            ),
            field: None,
        });
    }
    Ok(raw
        .into_iter()
        .map(|value| {
            let event = serde_json::from_str::<EventBody>(value.get())
                .map_err(|error| crate::error::from_json_error(&error, "event"))
                .and_then(EventBody::into_domain);
            (value, event)
        })
        .collect())
}
