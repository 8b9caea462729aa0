//! The reference model: a second, deliberately naive implementation of balances (grants,
//! burn-down, overdraft, expiry, void, dedup), written from the rules and not from the
//! shard's code. The simulator compares the two after every batch.

use std::collections::{BTreeMap, BTreeSet};

use crate::amount::Credits;
use crate::grant::DEFAULT_GRANT_PRIORITY;
use crate::ids::{CommandId, CreditTypeId, CustomerId, EventId, GrantId, IdempotencyKey};
use crate::input::{Input, RechargeResult};
use crate::time::{GrantExpiration, TimestampMs};

/// A grant as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelGrant {
    /// Id.
    pub id: GrantId,
    /// Priority.
    pub priority: u32,
    /// Expiry.
    pub expires_at: Option<TimestampMs>,
    /// Credits left, in micro-credits.
    pub remaining: i64,
}

/// An account as the model sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelAccount {
    /// Grants with credits left, in no particular order.
    pub grants: Vec<ModelGrant>,
    /// Uncovered usage.
    pub overdraft: i64,
    /// Σ consumed.
    pub consumed: i128,
    /// The recharge grant expiration in force.
    pub recharge_expiration: Option<GrantExpiration>,
    /// The recharge command in flight, as announced by the shard's effects.
    pub in_flight: Option<CommandId>,
}

impl ModelAccount {
    /// Σ remaining − overdraft.
    pub fn balance(&self) -> i64 {
        self.grants.iter().map(|grant| grant.remaining).sum::<i64>() - self.overdraft
    }

    fn add_grant(
        &mut self,
        id: GrantId,
        priority: u32,
        expires_at: Option<TimestampMs>,
        amount: i64,
    ) {
        let payback = amount.min(self.overdraft);
        self.overdraft -= payback;
        if amount > payback {
            self.grants.push(ModelGrant {
                id,
                priority,
                expires_at,
                remaining: amount - payback,
            });
        }
    }

    fn burn(&mut self, mut credits: i64) {
        self.consumed += i128::from(credits);
        while credits > 0 {
            // The rule as written: priority, then soonest expiry (none last), then oldest.
            let next = self
                .grants
                .iter_mut()
                .filter(|grant| grant.remaining > 0)
                .min_by_key(|grant| {
                    (
                        grant.priority,
                        grant.expires_at.map_or(i64::MAX, |at| at.0),
                        grant.id,
                    )
                });
            let Some(grant) = next else { break };
            let take = grant.remaining.min(credits);
            grant.remaining -= take;
            credits -= take;
        }
        self.grants.retain(|grant| grant.remaining > 0);
        self.overdraft += credits;
    }
}

/// The model of a whole shard.
#[derive(Clone, Debug, Default)]
pub struct ReferenceModel {
    rates: BTreeMap<String, (CreditTypeId, i64)>,
    credit_types: BTreeMap<CreditTypeId, crate::money::Currency>,
    customers: BTreeMap<CustomerId, u64>,
    grant_keys: BTreeSet<(CustomerId, IdempotencyKey)>,
    seen: BTreeSet<(CustomerId, EventId)>,
    plans: BTreeMap<
        crate::ids::PlanId,
        (
            crate::ids::ProductId,
            CreditTypeId,
            i64,
            crate::money::Money,
        ),
    >,
    subscribed: BTreeSet<(CustomerId, crate::ids::ProductId)>,
    /// Accounts by (customer, credit type).
    pub accounts: BTreeMap<(CustomerId, CreditTypeId), ModelAccount>,
}

impl ReferenceModel {
    /// Applies one batch, the way the rules say.
    pub fn apply(&mut self, now: TimestampMs, inputs: &[Input]) {
        for account in self.accounts.values_mut() {
            account
                .grants
                .retain(|grant| grant.expires_at.is_none_or(|at| at > now));
        }
        for input in inputs {
            self.apply_one(now, input);
        }
    }

    fn next_grant(&mut self, customer: &CustomerId) -> GrantId {
        let next = self
            .customers
            .get_mut(customer)
            .expect("grants go to known customers");
        let id = GrantId(*next);
        *next += 1;
        id
    }

    fn apply_one(&mut self, now: TimestampMs, input: &Input) {
        match input {
            Input::PutCreditType(credit_type) => {
                self.credit_types
                    .insert(credit_type.id.clone(), credit_type.unit_price.currency);
            }
            Input::PutFeature(feature) => {
                if self.credit_types.contains_key(&feature.credit_type)
                    && !feature.credits_per_unit.is_negative()
                {
                    self.rates.insert(
                        feature.id.to_string(),
                        (
                            feature.credit_type.clone(),
                            feature.credits_per_unit.micros(),
                        ),
                    );
                }
            }
            Input::PutCustomer(update) => {
                self.customers.entry(update.id.clone()).or_insert(1);
            }
            Input::Usage(event) => {
                let Some((credit_type, rate)) = self.rates.get(event.feature.as_str()).cloned()
                else {
                    return;
                };
                if !self.seen.insert((event.customer.clone(), event.id.clone())) {
                    return;
                }
                self.customers.entry(event.customer.clone()).or_insert(1);
                let credits = event
                    .value
                    .rate(Credits::from_micros(rate))
                    .expect("the simulator's values fit")
                    .micros();
                self.accounts
                    .entry((event.customer.clone(), credit_type))
                    .or_default()
                    .burn(credits);
            }
            Input::Grant(request) => {
                let known = self.customers.contains_key(&request.customer)
                    && self.credit_types.contains_key(&request.credit_type);
                let fresh = !self
                    .grant_keys
                    .contains(&(request.customer.clone(), request.idempotency_key.clone()));
                let valid =
                    request.amount.is_positive() && request.expires_at.is_none_or(|at| at > now);
                if known && fresh && valid {
                    self.grant_keys
                        .insert((request.customer.clone(), request.idempotency_key.clone()));
                    let id = self.next_grant(&request.customer);
                    let account = self
                        .accounts
                        .entry((request.customer.clone(), request.credit_type.clone()))
                        .or_default();
                    account.add_grant(
                        id,
                        request.priority.unwrap_or(DEFAULT_GRANT_PRIORITY),
                        request.expires_at,
                        request.amount.micros(),
                    );
                }
            }
            Input::VoidGrant { customer, grant } => {
                for ((owner, _), account) in &mut self.accounts {
                    if owner == customer {
                        account.grants.retain(|live| live.id != *grant);
                    }
                }
            }
            Input::SetAutoRecharge {
                customer,
                credit_type,
                settings,
            } => {
                let currency = self.credit_types.get(credit_type).copied();
                if self.customers.contains_key(customer) && currency.is_some() {
                    let account = self
                        .accounts
                        .entry((customer.clone(), credit_type.clone()))
                        .or_default();
                    // Validation mirrors the contract: only valid settings take effect.
                    if settings.validate_shape() && Some(settings.spend_limit.currency) == currency
                    {
                        account.recharge_expiration = Some(settings.grant_expiration.clone());
                    }
                }
            }
            Input::RechargeOutcome(outcome) => {
                let key = (
                    outcome.command.customer.clone(),
                    outcome.command.credit_type.clone(),
                );
                let Some(account) = self.accounts.get_mut(&key) else {
                    return;
                };
                if account.in_flight.as_ref() != Some(&outcome.command) {
                    return;
                }
                account.in_flight = None;
                if let RechargeResult::Charged { credits, .. } = &outcome.result {
                    let expires_at = account
                        .recharge_expiration
                        .as_ref()
                        .and_then(|expiration| expiration.expires_at(now).ok().flatten());
                    let id = self.next_grant(&outcome.command.customer);
                    let account = self.accounts.get_mut(&key).expect("found above");
                    account.add_grant(id, DEFAULT_GRANT_PRIORITY, expires_at, credits.micros());
                }
            }
            Input::PutPlan(plan) => {
                if let crate::catalog::PlanPricing::Flat { amount, price } = &plan.pricing {
                    self.plans.insert(
                        plan.id.clone(),
                        (
                            plan.product.clone(),
                            plan.credit_type.clone(),
                            amount.micros(),
                            *price,
                        ),
                    );
                }
            }
            Input::Subscribe(request) => {
                let Some((product, credit_type, amount, price)) =
                    self.plans.get(&request.plan).cloned()
                else {
                    return;
                };
                let key = (request.customer.clone(), request.idempotency_key.clone());
                let open = !self
                    .subscribed
                    .contains(&(request.customer.clone(), product.clone()));
                if self.customers.contains_key(&request.customer)
                    && !self.grant_keys.contains(&key)
                    && open
                    && request.paid == price
                {
                    self.grant_keys.insert(key);
                    self.subscribed.insert((request.customer.clone(), product));
                    let id = self.next_grant(&request.customer);
                    let account = self
                        .accounts
                        .entry((request.customer.clone(), credit_type))
                        .or_default();
                    account.add_grant(id, DEFAULT_GRANT_PRIORITY, None, amount);
                }
            }
            Input::PutProduct(_) | Input::Tick | Input::Flush => {}
        }
    }

    /// Records a command the shard issued (the model does not re-decide recharges).
    pub fn command_issued(&mut self, command: &CommandId) {
        let key = (command.customer.clone(), command.credit_type.clone());
        if let Some(account) = self.accounts.get_mut(&key) {
            account.in_flight = Some(command.clone());
        }
    }
}

impl crate::autorecharge::AutoRechargeSettings {
    /// The shape rules, for the model (the currency check needs the catalog; the simulator
    /// always uses the credit type's currency).
    fn validate_shape(&self) -> bool {
        !self.threshold.is_negative()
            && self.target_balance.is_positive()
            && self.target_balance >= self.threshold
            && self.spend_limit.minor_units >= 0
    }
}
