//! The catalog: credit types with their unit price, features with their credit rate,
//! products, and one-time plans with flat or stairstep credit pricing.
//!
//! Every shard holds a copy; catalog inputs are broadcast to all shards in log order.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::ids::{CreditTypeId, FeatureId, PlanId, ProductId};
use crate::money::{Money, UnitPrice};
use crate::rejection::Rejection;

/// A kind of credit and the price of one credit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditType {
    /// Its id.
    pub id: CreditTypeId,
    /// Display name.
    pub name: String,
    /// Price of one credit; its currency never changes once set.
    pub unit_price: UnitPrice,
}

/// How a feature's unit is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitName {
    /// "call".
    pub singular: String,
    /// "calls".
    pub plural: String,
}

/// A metered feature: each unit of usage burns `credits_per_unit` of `credit_type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Its id.
    pub id: FeatureId,
    /// Display name.
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// Unit names.
    pub unit: UnitName,
    /// The credit type burned.
    pub credit_type: CreditTypeId,
    /// Credits burned per unit of usage (zero or more).
    pub credits_per_unit: Credits,
}

/// A product; a customer holds at most one active subscription to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: ProductId,
    /// Display name.
    pub name: String,
}

/// One step of stairstep pricing: buying up to `up_to` credits costs `price` in all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceStep {
    /// Largest quantity of credits this step covers.
    pub up_to: Credits,
    /// The total price for any quantity in this step.
    pub price: Money,
}

/// How a plan prices its credits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanPricing {
    /// A fixed block of credits for a fixed price.
    Flat {
        /// Credits granted.
        amount: Credits,
        /// Price of the block.
        price: Money,
    },
    /// The buyer picks a quantity; the first step whose `up_to` covers it sets the price.
    Stairstep {
        /// Steps in strictly increasing `up_to`.
        steps: Vec<PriceStep>,
    },
}

/// A one-time plan of a product that grants credits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Its id.
    pub id: PlanId,
    /// The product it belongs to.
    pub product: ProductId,
    /// Display name.
    pub name: String,
    /// The credit type granted.
    pub credit_type: CreditTypeId,
    /// How credits are priced.
    pub pricing: PlanPricing,
}

impl Plan {
    /// Credits granted and the price for a purchase of `requested` credits (stairstep) or
    /// of the plan's block (flat, where `requested` must be absent or equal).
    pub fn quote(&self, requested: Option<Credits>) -> Result<(Credits, Money), Rejection> {
        match &self.pricing {
            PlanPricing::Flat { amount, price } => match requested {
                Some(credits) if credits != *amount => Err(Rejection::invalid(
                    "credits",
                    format!("expected {amount} (this plan sells a fixed block), found {credits}"),
                )),
                _ => Ok((*amount, *price)),
            },
            PlanPricing::Stairstep { steps } => {
                let credits = requested.ok_or_else(|| {
                    Rejection::invalid(
                        "credits",
                        "expected a quantity of credits for a stairstep plan, found none",
                    )
                })?;
                if !credits.is_positive() {
                    return Err(Rejection::invalid(
                        "credits",
                        format!("expected more than zero, found {credits}"),
                    ));
                }
                let step = steps
                    .iter()
                    .find(|step| credits <= step.up_to)
                    .ok_or_else(|| {
                        let most = steps.last().map_or(Credits::ZERO, |step| step.up_to);
                        Rejection::invalid(
                            "credits",
                            format!("expected at most {most}, found {credits}"),
                        )
                    })?;
                Ok((credits, step.price))
            }
        }
    }
}

/// A feature as the hot path needs it: resolved credit type and rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureRate {
    /// Index of the credit type in the catalog.
    pub credit_type: u32,
    /// Credits per unit.
    pub credits_per_unit: Credits,
}

/// The catalog of one shard.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    credit_types: Vec<CreditType>,
    credit_type_index: FxHashMap<CreditTypeId, u32>,
    features: FxHashMap<FeatureId, (Feature, FeatureRate)>,
    products: BTreeMap<ProductId, Product>,
    plans: BTreeMap<PlanId, Plan>,
}

impl Catalog {
    /// Creates or replaces a credit type; its currency may not change.
    pub fn put_credit_type(&mut self, credit_type: CreditType) -> Result<(), Rejection> {
        if let Some(&index) = self.credit_type_index.get(&credit_type.id) {
            let existing = &mut self.credit_types[index as usize];
            if existing.unit_price.currency != credit_type.unit_price.currency {
                return Err(Rejection::Conflict {
                    field: "unit_price.currency",
                    reason: format!(
                        "expected {} (a credit type's currency never changes), found {}",
                        existing.unit_price.currency, credit_type.unit_price.currency
                    ),
                });
            }
            *existing = credit_type;
        } else {
            let index =
                u32::try_from(self.credit_types.len()).map_err(|_| Rejection::Overflow {
                    field: "credit_type",
                })?;
            self.credit_type_index.insert(credit_type.id.clone(), index);
            self.credit_types.push(credit_type);
        }
        Ok(())
    }

    /// Creates or replaces a feature; its credit type must exist.
    pub fn put_feature(&mut self, feature: Feature) -> Result<(), Rejection> {
        if feature.credits_per_unit.is_negative() {
            return Err(Rejection::invalid(
                "credits_per_unit",
                format!("expected zero or more, found {}", feature.credits_per_unit),
            ));
        }
        let credit_type = self
            .credit_type_index(&feature.credit_type)
            .ok_or_else(|| Rejection::UnknownCreditType(feature.credit_type.to_string()))?;
        let rate = FeatureRate {
            credit_type,
            credits_per_unit: feature.credits_per_unit,
        };
        self.features.insert(feature.id.clone(), (feature, rate));
        Ok(())
    }

    /// Creates or replaces a product.
    pub fn put_product(&mut self, product: Product) {
        self.products.insert(product.id.clone(), product);
    }

    /// Creates or replaces a plan after checking its product, credit type and prices.
    pub fn put_plan(&mut self, plan: Plan) -> Result<(), Rejection> {
        if !self.products.contains_key(&plan.product) {
            return Err(Rejection::UnknownProduct(plan.product.to_string()));
        }
        if self.credit_type_index(&plan.credit_type).is_none() {
            return Err(Rejection::UnknownCreditType(plan.credit_type.to_string()));
        }
        match &plan.pricing {
            PlanPricing::Flat { amount, price } => {
                if !amount.is_positive() {
                    return Err(Rejection::invalid(
                        "credits.amount",
                        format!("expected more than zero, found {amount}"),
                    ));
                }
                if price.minor_units < 0 {
                    return Err(Rejection::invalid(
                        "credits.price",
                        format!("expected zero or more, found {price}"),
                    ));
                }
            }
            PlanPricing::Stairstep { steps } => {
                let Some(first) = steps.first() else {
                    return Err(Rejection::invalid(
                        "credits.steps",
                        "expected at least one step, found none",
                    ));
                };
                let mut previous: Option<&PriceStep> = None;
                for step in steps {
                    if step.price.currency != first.price.currency {
                        return Err(Rejection::invalid(
                            "credits.steps.price.currency",
                            format!(
                                "expected {} like the first step, found {}",
                                first.price.currency, step.price.currency
                            ),
                        ));
                    }
                    if step.price.minor_units < 0 || !step.up_to.is_positive() {
                        return Err(Rejection::invalid(
                            "credits.steps",
                            format!(
                                "expected positive up_to and a price of zero or more, found {} for {}",
                                step.up_to, step.price
                            ),
                        ));
                    }
                    if let Some(before) = previous
                        && step.up_to <= before.up_to
                    {
                        return Err(Rejection::invalid(
                            "credits.steps.up_to",
                            format!(
                                "expected strictly increasing up_to, found {} after {}",
                                step.up_to, before.up_to
                            ),
                        ));
                    }
                    previous = Some(step);
                }
            }
        }
        self.plans.insert(plan.id.clone(), plan);
        Ok(())
    }

    /// The index of a credit type.
    pub fn credit_type_index(&self, id: &CreditTypeId) -> Option<u32> {
        self.credit_type_index.get(id.as_str()).copied()
    }

    /// A credit type by index.
    pub fn credit_type_at(&self, index: u32) -> &CreditType {
        &self.credit_types[index as usize]
    }

    /// A credit type by id.
    pub fn credit_type(&self, id: &CreditTypeId) -> Option<&CreditType> {
        self.credit_type_index(id)
            .map(|index| self.credit_type_at(index))
    }

    /// The hot path's view of a feature.
    #[inline]
    pub fn feature_rate(&self, id: &str) -> Option<FeatureRate> {
        self.features.get(id).map(|(_, rate)| *rate)
    }

    /// A feature definition.
    pub fn feature(&self, id: &str) -> Option<&Feature> {
        self.features.get(id).map(|(feature, _)| feature)
    }

    /// A product.
    pub fn product(&self, id: &ProductId) -> Option<&Product> {
        self.products.get(id)
    }

    /// A plan.
    pub fn plan(&self, id: &PlanId) -> Option<&Plan> {
        self.plans.get(id)
    }

    /// Ids of every feature, sorted.
    pub fn feature_ids(&self) -> Vec<FeatureId> {
        let mut ids: Vec<FeatureId> = self.features.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Everything, in a canonical order, for snapshots.
    pub(crate) fn to_parts(&self) -> CatalogParts {
        let mut features: Vec<Feature> = self
            .features
            .values()
            .map(|(feature, _)| feature.clone())
            .collect();
        features.sort_by(|a, b| a.id.cmp(&b.id));
        CatalogParts {
            credit_types: self.credit_types.clone(),
            features,
            products: self.products.values().cloned().collect(),
            plans: self.plans.values().cloned().collect(),
        }
    }

    /// Rebuilds a catalog from snapshot parts.
    pub(crate) fn from_parts(parts: CatalogParts) -> Result<Self, Rejection> {
        let mut catalog = Catalog::default();
        for credit_type in parts.credit_types {
            catalog.put_credit_type(credit_type)?;
        }
        for feature in parts.features {
            catalog.put_feature(feature)?;
        }
        for product in parts.products {
            catalog.put_product(product);
        }
        for plan in parts.plans {
            catalog.put_plan(plan)?;
        }
        Ok(catalog)
    }
}

/// The catalog as plain data, in canonical order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CatalogParts {
    credit_types: Vec<CreditType>,
    features: Vec<Feature>,
    products: Vec<Product>,
    plans: Vec<Plan>,
}
