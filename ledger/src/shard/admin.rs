//! Everything but usage that a client asks of an account: customers, grants, voids,
//! subscriptions and auto-recharge settings. Each either applies whole or is rejected.

use compact_str::CompactString;

use super::{Shard, Subscription};
use crate::amount::Credits;
use crate::autorecharge::{AutoRechargeSettings, PauseReason, new_state};
use crate::effects::{
    AccountHandle, Effects, EntryKind, LedgerEntry, Notification, NotificationKind, Outcome,
    Reference,
};
use crate::grant::{DEFAULT_GRANT_PRIORITY, Grant, GrantKind, GrantSource};
use crate::ids::{CommandId, CreditTypeId, CustomerId, GrantId, IdempotencyKey};
use crate::input::{CustomerUpdate, GrantRequest, SubscribeRequest};
use crate::money::Money;
use crate::rejection::Rejection;
use crate::time::{GrantExpiration, SpendPeriod, TimestampMs};

/// A grant about to be made.
pub(super) struct NewGrant {
    pub kind: GrantKind,
    pub source: GrantSource,
    pub priority: u32,
    pub expires_at: Option<TimestampMs>,
    pub amount: Credits,
    pub cost: Option<Money>,
    /// The recharge command that bought it, for recharge grants.
    pub command: Option<CommandId>,
}

impl Shard {
    pub(super) fn put_customer(
        &mut self,
        update: &CustomerUpdate,
        now: TimestampMs,
        fx: &mut Effects,
    ) {
        let customer_index = self.customer_for(&update.id);
        let customer = &mut self.customers[customer_index as usize];
        if let Some(name) = &update.name {
            customer.name = Some(CompactString::from(name.as_str()));
        }
        if update.email.is_some() {
            customer.details_mut().email.clone_from(&update.email);
        }
        let Some(new_method) = &update.payment_method else {
            return;
        };
        if customer.payment_method.as_ref() == Some(new_method) {
            return;
        }
        customer.payment_method = Some(new_method.clone());
        // A new default payment method resumes accounts paused by a decline on the default.
        for account_index in self.accounts_of_customer(customer_index) {
            let Some(auto) = self.accounts[account_index as usize].auto.as_deref_mut() else {
                continue;
            };
            if auto.settings.payment_method.is_some() {
                continue;
            }
            auto.last_skip = None;
            if auto.paused == Some(PauseReason::PaymentFailed) {
                auto.paused = None;
                fx.notifications.push(resumed(account_index, now));
            }
            self.touch(account_index);
        }
    }

    pub(super) fn grant(
        &mut self,
        index: u32,
        request: &GrantRequest,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        let customer_index = self.existing_customer(&request.customer)?;
        let credit_type = self.existing_credit_type(&request.credit_type)?;
        if let Some((account, grant)) = self.grant_key(customer_index, &request.idempotency_key) {
            fx.outcomes.push((
                index,
                Outcome::GrantReplayed {
                    account: AccountHandle(account),
                    grant,
                },
            ));
            return Ok(());
        }
        if !request.amount.is_positive() {
            return Err(Rejection::invalid(
                "amount",
                format!("expected more than zero, found {}", request.amount),
            ));
        }
        if let Some(expires_at) = request.expires_at
            && expires_at <= now
        {
            return Err(Rejection::invalid(
                "expires_at",
                format!("expected a time after {now}, found {expires_at}"),
            ));
        }
        if let Some(cost) = request.cost
            && cost.minor_units < 0
        {
            return Err(Rejection::invalid(
                "cost.amount",
                format!("expected zero or more, found {cost}"),
            ));
        }
        let account_index = self.account_of_customer(customer_index, credit_type);
        let grant = self.make_grant(
            account_index,
            NewGrant {
                kind: request.kind,
                source: GrantSource::Manual,
                priority: request.priority.unwrap_or(DEFAULT_GRANT_PRIORITY),
                expires_at: request.expires_at,
                amount: request.amount,
                cost: request.cost,
                command: None,
            },
            now,
            fx,
        )?;
        self.record_grant_key(
            customer_index,
            &request.idempotency_key,
            (account_index, grant),
        );
        fx.outcomes.push((
            index,
            Outcome::GrantCreated {
                account: AccountHandle(account_index),
                grant,
            },
        ));
        Ok(())
    }

    pub(super) fn subscribe(
        &mut self,
        index: u32,
        request: &SubscribeRequest,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        let customer_index = self.existing_customer(&request.customer)?;
        if let Some((account, grant)) = self.grant_key(customer_index, &request.idempotency_key) {
            fx.outcomes.push((
                index,
                Outcome::GrantReplayed {
                    account: AccountHandle(account),
                    grant,
                },
            ));
            return Ok(());
        }
        let plan = self
            .catalog
            .plan(&request.plan)
            .ok_or_else(|| Rejection::UnknownPlan(request.plan.to_string()))?
            .clone();
        if let Some(active) = self.customers[customer_index as usize]
            .details
            .as_ref()
            .and_then(|details| details.subscriptions.get(&plan.product))
        {
            return Err(Rejection::Conflict {
                field: "plan",
                reason: format!(
                    "expected no active subscription to product {}, found one to plan {}",
                    plan.product, active.plan
                ),
            });
        }
        let (credits, price) = plan.quote(request.credits)?;
        if request.paid != price {
            return Err(Rejection::invalid(
                "paid",
                format!("expected the plan's price {price}, found {}", request.paid),
            ));
        }
        let credit_type = self.existing_credit_type(&plan.credit_type)?;
        let account_index = self.account_of_customer(customer_index, credit_type);
        let grant = self.make_grant(
            account_index,
            NewGrant {
                kind: GrantKind::Paid,
                source: GrantSource::Subscription,
                priority: DEFAULT_GRANT_PRIORITY,
                expires_at: None,
                amount: credits,
                cost: Some(price),
                command: None,
            },
            now,
            fx,
        )?;
        self.record_grant_key(
            customer_index,
            &request.idempotency_key,
            (account_index, grant),
        );
        self.customers[customer_index as usize]
            .details_mut()
            .subscriptions
            .insert(
                plan.product.clone(),
                Subscription {
                    plan: plan.id.clone(),
                    started_at: now,
                    grant,
                },
            );
        fx.outcomes.push((
            index,
            Outcome::GrantCreated {
                account: AccountHandle(account_index),
                grant,
            },
        ));
        Ok(())
    }

    pub(super) fn void_grant(
        &mut self,
        index: u32,
        customer: &CustomerId,
        grant: GrantId,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        let customer_index = self.existing_customer(customer)?;
        let record = &self.customers[customer_index as usize];
        if grant.0 == 0 || grant.0 >= record.next_grant {
            return Err(Rejection::UnknownGrant(grant.to_string()));
        }
        let owner = record.account_indexes().find(|&account| {
            self.accounts[account as usize]
                .grants()
                .iter()
                .any(|live| live.id == grant)
        });
        let Some(account_index) = owner else {
            return Err(Rejection::Conflict {
                field: "grant",
                reason: format!(
                    "expected a grant with credits left, found {grant} consumed, expired or voided"
                ),
            });
        };
        self.flush_usage(account_index, now, fx);
        let account = &mut self.accounts[account_index as usize];
        let credits = account
            .void_grant(grant)
            .expect("the grant was found live above");
        let seq = account.next_entry_seq();
        fx.entries.push(LedgerEntry {
            account: AccountHandle(account_index),
            seq,
            at: now,
            kind: EntryKind::Void,
            amount: Credits::from_micros(-credits.micros()),
            balance_after: account.balance(),
            reference: Reference::Grant(grant),
        });
        self.touch(account_index);
        fx.outcomes.push((
            index,
            Outcome::GrantVoided {
                account: AccountHandle(account_index),
                credits,
            },
        ));
        Ok(())
    }

    pub(super) fn set_auto_recharge(
        &mut self,
        customer: &CustomerId,
        credit_type: &CreditTypeId,
        settings: &AutoRechargeSettings,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        let customer_index = self.existing_customer(customer)?;
        let credit_type_index = self.existing_credit_type(credit_type)?;
        settings.validate(&self.catalog.credit_type_at(credit_type_index).unit_price)?;
        if let GrantExpiration::After(duration) = &settings.grant_expiration {
            duration
                .after(now)
                .map_err(|error| Rejection::invalid("grant_expiration", error.to_string()))?;
        }
        let account_index = self.account_of_customer(customer_index, credit_type_index);
        let account = &mut self.accounts[account_index as usize];
        let consumed = account.totals().consumed;
        match account.auto.as_deref_mut() {
            None => account.auto = Some(Box::new(new_state(settings.clone(), now, consumed)?)),
            Some(auto) => {
                let old = std::mem::replace(&mut auto.settings, settings.clone());
                if old.reset != settings.reset {
                    // Spend is counted from the recharges issued inside the new period, so
                    // switching from a month to a day keeps today's spend and no more.
                    let period = SpendPeriod::containing(settings.reset, now).map_err(|error| {
                        Rejection::invalid("spend_limit_reset", error.to_string())
                    })?;
                    auto.enter_period(period);
                    auto.warned_percent = 0;
                }
                let re_enabled = !old.enabled && settings.enabled;
                let method_changed = settings.payment_method.is_some()
                    && old.payment_method != settings.payment_method;
                let resume = match auto.paused {
                    Some(PauseReason::PaymentFailed) => re_enabled || method_changed,
                    Some(PauseReason::SpendLimitReached) => {
                        re_enabled
                            || settings.spend_limit.minor_units > auto.spend_this_period_minor
                    }
                    None => false,
                };
                if resume {
                    auto.paused = None;
                    fx.notifications.push(resumed(account_index, now));
                }
                auto.last_skip = None;
            }
        }
        if let Some(auto) = self.accounts[account_index as usize].auto.as_deref()
            && auto.paused == Some(PauseReason::SpendLimitReached)
        {
            self.wakeups.insert((auto.period.end, account_index));
        }
        self.touch(account_index);
        Ok(())
    }

    /// Makes a grant on an account: flushes pending usage, adds the grant (paying back any
    /// overdraft first), writes its ledger entry and schedules its expiry.
    pub(super) fn make_grant(
        &mut self,
        account_index: u32,
        new: NewGrant,
        now: TimestampMs,
        fx: &mut Effects,
    ) -> Result<GrantId, Rejection> {
        if !self.accounts[account_index as usize].can_grant(new.amount) {
            return Err(Rejection::Overflow { field: "amount" });
        }
        self.flush_usage(account_index, now, fx);
        let customer_index = self.accounts[account_index as usize].customer;
        let customer = &mut self.customers[customer_index as usize];
        let id = GrantId(customer.next_grant);
        customer.next_grant += 1;
        let account = &mut self.accounts[account_index as usize];
        account.add_grant(Grant {
            id,
            kind: new.kind,
            source: new.source,
            priority: new.priority,
            expires_at: new.expires_at,
            granted_at: now,
            amount: new.amount,
            remaining: new.amount,
            cost: new.cost,
        });
        let seq = account.next_entry_seq();
        let (kind, reference) = match new.command {
            Some(command) => (
                EntryKind::Recharge,
                Reference::Recharge { command, grant: id },
            ),
            None => (EntryKind::Grant, Reference::Grant(id)),
        };
        fx.entries.push(LedgerEntry {
            account: AccountHandle(account_index),
            seq,
            at: now,
            kind,
            amount: new.amount,
            balance_after: account.balance(),
            reference,
        });
        if let Some(expires_at) = new.expires_at {
            self.expiries.insert((expires_at, account_index, id));
        }
        self.touch(account_index);
        Ok(id)
    }

    /// What a grant idempotency key of the customer made, if it was seen.
    fn grant_key(&self, customer_index: u32, key: &IdempotencyKey) -> Option<(u32, GrantId)> {
        let accounts = &self.accounts;
        self.grant_keys.get(customer_index, key, |account| {
            accounts[account as usize].customer
        })
    }

    /// Records a grant idempotency key not seen before for the customer.
    fn record_grant_key(
        &mut self,
        customer_index: u32,
        key: &IdempotencyKey,
        made: (u32, GrantId),
    ) {
        let accounts = &self.accounts;
        self.grant_keys.insert(
            customer_index,
            &mut self.customers[customer_index as usize].grant_keys,
            key.clone(),
            made,
            |account| accounts[account as usize].customer,
        );
    }

    pub(super) fn existing_customer(&self, id: &CustomerId) -> Result<u32, Rejection> {
        self.customer_number(id.as_str())
            .ok_or_else(|| Rejection::UnknownCustomer(id.to_string()))
    }

    pub(super) fn existing_credit_type(&self, id: &CreditTypeId) -> Result<u32, Rejection> {
        self.catalog
            .credit_type_index(id)
            .ok_or_else(|| Rejection::UnknownCreditType(id.to_string()))
    }
}

/// The notification that auto-recharge resumed.
pub(super) fn resumed(account_index: u32, now: TimestampMs) -> Notification {
    Notification {
        account: AccountHandle(account_index),
        at: now,
        kind: NotificationKind::AutoRechargeResumed,
    }
}
