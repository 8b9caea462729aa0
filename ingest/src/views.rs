//! Read models: the JSON of the credits view, auto-recharge settings and entitlement
//! checks, computed on the owning shard's worker between batches (so they are exact, and a
//! client reads its own writes).

use refill_ledger::autorecharge::{AutoRecharge, AutoRechargeStatus};
use refill_ledger::effects::AccountHandle;
use refill_ledger::grant::{GrantKind, GrantSource};
use refill_ledger::time::SpendPeriod;
use refill_ledger::{Money, Shard, TimestampMs};
use serde_json::{Value, json};

fn money(value: Money) -> Value {
    json!({"amount": value.to_decimal().to_string(), "currency": value.currency.code()})
}

/// The auto-recharge part of the credits view, with the period rolled to `now` for
/// display (the shard rolls it for real at its next batch).
pub fn auto_recharge(auto: &AutoRecharge, now: TimestampMs) -> Value {
    let settings = &auto.settings;
    let (period, spend, recharges) = if now < auto.period.end {
        (
            auto.period,
            auto.spend_this_period(),
            auto.recharges_this_period,
        )
    } else {
        let period = SpendPeriod::containing(settings.reset, now).unwrap_or(auto.period);
        (period, Money::zero(settings.spend_limit.currency), 0)
    };
    let (status, reason) = match auto.status() {
        AutoRechargeStatus::Active => ("active", None),
        AutoRechargeStatus::Disabled => ("disabled", None),
        AutoRechargeStatus::Paused(reason) => ("paused", Some(reason.as_str())),
    };
    json!({
        "settings": {
            "enabled": settings.enabled,
            "threshold": settings.threshold.to_string(),
            "target_balance": settings.target_balance.to_string(),
            "spend_limit": money(settings.spend_limit),
            "spend_limit_reset": settings.reset.as_str(),
            "grant_expiration": settings.grant_expiration.to_string(),
            "payment_method": settings.payment_method.as_ref().map(|method| method.to_string()),
        },
        "status": status,
        "paused_reason": reason,
        "period": {"start": auto_time(period.start), "end": auto_time(period.end)},
        "spend_this_period": money(spend),
        "spend_limit": money(settings.spend_limit),
        "recharges_this_period": recharges,
        "in_flight": auto.in_flight.as_ref().map(|command| command.id.to_string()),
    })
}

fn auto_time(at: TimestampMs) -> String {
    at.to_string()
}

/// `GET /v1/customers/{id}/credits`.
pub fn credits(shard: &Shard, handle: AccountHandle, now: TimestampMs) -> Value {
    let account = shard.account(handle);
    let grants: Vec<Value> = account
        .grants()
        .iter()
        .map(|grant| {
            json!({
                "id": grant.id.to_string(),
                "grant_type": match grant.kind { GrantKind::Paid => "paid", GrantKind::Promotional => "promotional" },
                "source": match grant.source { GrantSource::Manual => "manual", GrantSource::Subscription => "subscription", GrantSource::Recharge => "recharge" },
                "priority": grant.priority,
                "amount": grant.amount.to_string(),
                "remaining": grant.remaining.to_string(),
                "granted_at": grant.granted_at.to_string(),
                "expires_at": grant.expires_at.map(|at| at.to_string()),
                "cost": grant.cost.map(money),
            })
        })
        .collect();
    let consumption = account
        .auto_recharge()
        .map_or(account.totals().consumed, |auto| {
            account.totals().consumed - auto.consumed_at_period_start
        });
    json!({
        "customer_id": shard.customer_of(handle).id.as_str(),
        "credit_type": shard.credit_type_of(handle).as_str(),
        "balance": account.balance().to_string(),
        "overdraft": account.overdraft().to_string(),
        "grants": grants,
        "auto_recharge": account.auto_recharge().map(|auto| auto_recharge(auto, now)),
        "consumption_this_period": refill_ledger::Credits::from_micros(i64::try_from(consumption).unwrap_or(i64::MAX)).to_string(),
        "consumed_total": refill_ledger::Credits::from_micros(i64::try_from(account.totals().consumed).unwrap_or(i64::MAX)).to_string(),
    })
}

/// The credits answer for an account another worker owns, from its flushed row: the
/// balance as of the row's `as_of` (the staleness), without what only the owner knows.
pub fn credits_from_store(row: &refill_store::BalanceRow) -> Value {
    json!({
        "credit_type": row.credit_type,
        "balance": crate::rows::credits_text(row.balance_micros),
        "overdraft": crate::rows::credits_text(row.overdraft_micros),
        "auto_recharge": row.auto_recharge_status.as_ref().map(|status| json!({
            "status": status,
            "paused_reason": row.paused_reason,
        })),
        "source": "store",
        "as_of": TimestampMs(row.as_of_ms).to_string(),
    })
}
