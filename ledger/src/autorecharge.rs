//! Auto-recharge: the settings, the per-account state (status, in-flight command, spend
//! in the current period) and the pure decision of whether and how much to recharge.

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::effects::RechargeCommand;
use crate::ids::PaymentMethodId;
use crate::money::{Money, UnitPrice};
use crate::rejection::Rejection;
use crate::time::{GrantExpiration, SpendPeriod, SpendReset, TimestampMs};

/// What the customer set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRechargeSettings {
    /// Whether auto-recharge runs at all.
    pub enabled: bool,
    /// Recharge when the balance falls below this.
    pub threshold: Credits,
    /// Recharge back up to this balance.
    pub target_balance: Credits,
    /// Most that recharges may cost per period.
    pub spend_limit: Money,
    /// How the period is cut.
    pub reset: SpendReset,
    /// When recharged credits expire.
    pub grant_expiration: GrantExpiration,
    /// The payment method to charge; the customer's default when absent.
    pub payment_method: Option<PaymentMethodId>,
}

impl AutoRechargeSettings {
    /// Checks the rules that a single settings value must meet on its own.
    pub fn validate(&self, unit_price: &UnitPrice) -> Result<(), Rejection> {
        if self.threshold.is_negative() {
            return Err(Rejection::invalid(
                "threshold",
                format!("expected zero or more, found {}", self.threshold),
            ));
        }
        if !self.target_balance.is_positive() {
            return Err(Rejection::invalid(
                "target_balance",
                format!("expected more than zero, found {}", self.target_balance),
            ));
        }
        if self.target_balance < self.threshold {
            return Err(Rejection::invalid(
                "target_balance",
                format!(
                    "expected at least the threshold {}, found {}",
                    self.threshold, self.target_balance
                ),
            ));
        }
        if self.spend_limit.minor_units < 0 {
            return Err(Rejection::invalid(
                "spend_limit.amount",
                format!("expected zero or more, found {}", self.spend_limit),
            ));
        }
        if self.spend_limit.currency != unit_price.currency {
            return Err(Rejection::invalid(
                "spend_limit.currency",
                format!(
                    "expected {} (the credit type's currency), found {}",
                    unit_price.currency, self.spend_limit.currency
                ),
            ));
        }
        Ok(())
    }
}

/// Why auto-recharge is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// Nothing of the period's spend limit is left; resumes at the next period or when the
    /// limit is raised above the spend.
    SpendLimitReached,
    /// A payment was declined; resumes when the payment method changes or auto-recharge is
    /// re-enabled.
    PaymentFailed,
}

impl PauseReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpendLimitReached => "spend_limit_reached",
            Self::PaymentFailed => "payment_failed",
        }
    }
}

/// The status the API shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoRechargeStatus {
    /// Will recharge when the balance falls below the threshold.
    Active,
    /// Will not recharge until the reason clears.
    Paused(PauseReason),
    /// Not enabled.
    Disabled,
}

/// Auto-recharge state of one account (customer, credit type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRecharge {
    /// The settings.
    pub settings: AutoRechargeSettings,
    /// Set while paused.
    pub paused: Option<PauseReason>,
    /// The sequence number of the next attempt; command ids are built from it.
    pub next_seq: u64,
    /// The one recharge in flight, if any.
    pub in_flight: Option<RechargeCommand>,
    /// The current spend period.
    pub period: SpendPeriod,
    /// Successful recharge cost in `period`, in minor units of the limit's currency:
    /// Σ over `recent` of the recharges issued inside the period.
    pub spend_this_period_minor: i64,
    /// Successful recharges of the last two months, so spend can be counted exactly for
    /// any period, even after the reset kind changes mid-period.
    pub recent: Vec<SpentRecharge>,
    /// Successful recharges in `period`.
    pub recharges_this_period: u32,
    /// Consumption total at the start of `period` (micro-credits).
    pub consumed_at_period_start: i128,
    /// The last suppression recorded, so one crossing records one skipped attempt.
    pub last_skip: Option<SkipReason>,
    /// Highest spend-limit warning sent this period (80, 90 or 100 percent).
    pub warned_percent: u8,
}

/// A successful recharge, kept for spend accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentRecharge {
    /// When its command was issued: the instant that places it in a period.
    pub issued_at: TimestampMs,
    /// What it cost, in minor units.
    pub cost_minor: i64,
}

/// How long successful recharges are kept: longer than the longest period (a month).
const SPEND_HISTORY_MS: i64 = 62 * 86_400_000;

impl AutoRecharge {
    /// Moves to `period` and counts its spend from the history.
    pub(crate) fn enter_period(&mut self, period: SpendPeriod) {
        self.period = period;
        self.recount();
    }

    /// Records a successful recharge and recounts the current period.
    pub(crate) fn record_success(
        &mut self,
        issued_at: TimestampMs,
        cost_minor: i64,
        now: TimestampMs,
    ) {
        self.recent.push(SpentRecharge {
            issued_at,
            cost_minor,
        });
        self.recent
            .retain(|spent| spent.issued_at.0 >= now.0.saturating_sub(SPEND_HISTORY_MS));
        self.recount();
    }

    fn recount(&mut self) {
        let period = self.period;
        let inside = self
            .recent
            .iter()
            .filter(|spent| period.contains(spent.issued_at));
        self.spend_this_period_minor = inside.clone().map(|spent| spent.cost_minor).sum();
        self.recharges_this_period = u32::try_from(inside.count()).unwrap_or(u32::MAX);
    }

    /// The status the API shows.
    pub fn status(&self) -> AutoRechargeStatus {
        match (self.settings.enabled, self.paused) {
            (false, _) => AutoRechargeStatus::Disabled,
            (true, Some(reason)) => AutoRechargeStatus::Paused(reason),
            (true, None) => AutoRechargeStatus::Active,
        }
    }

    /// Spend so far this period.
    pub fn spend_this_period(&self) -> Money {
        Money {
            minor_units: self.spend_this_period_minor,
            currency: self.settings.spend_limit.currency,
        }
    }
}

/// Why a recharge that was due did not go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The period's spend limit leaves nothing (or less than one credit).
    SpendLimitReached,
    /// Paused after a declined payment.
    PaymentFailed,
    /// Neither the settings nor the customer name a payment method.
    NoPaymentMethod,
    /// The gap or its cost does not fit the fixed-point range.
    OutOfRange,
}

impl SkipReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpendLimitReached => "spend_limit_reached",
            Self::PaymentFailed => "payment_failed",
            Self::NoPaymentMethod => "no_payment_method",
            Self::OutOfRange => "out_of_range",
        }
    }
}

/// What the policy decides for an account whose balance is below its threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RechargeDecision {
    /// Recharge these credits at this cost; `cut` when the spend limit shrank it.
    Recharge {
        /// Credits to buy.
        credits: Credits,
        /// What they cost.
        cost: Money,
        /// True when cut to the remaining spend limit.
        cut: bool,
    },
    /// Nothing can be bought within the limit: pause.
    LimitReached,
    /// The numbers overflow.
    OutOfRange,
}

/// Decides the recharge that closes the gap from `balance` to the target, cut to what the
/// period's remaining limit buys (whole credits).
pub fn decide_recharge(
    settings: &AutoRechargeSettings,
    balance: Credits,
    spend_this_period_minor: i64,
    unit_price: &UnitPrice,
) -> RechargeDecision {
    let Some(gap) = settings.target_balance.checked_sub(balance) else {
        return RechargeDecision::OutOfRange;
    };
    debug_assert!(
        gap.is_positive(),
        "decide only below the threshold, and target >= threshold"
    );
    let Some(remaining_minor) = settings
        .spend_limit
        .minor_units
        .checked_sub(spend_this_period_minor)
    else {
        return RechargeDecision::OutOfRange;
    };
    if remaining_minor <= 0 {
        return RechargeDecision::LimitReached;
    }
    let Some(cost) = unit_price.cost_of(gap) else {
        return RechargeDecision::OutOfRange;
    };
    if cost.minor_units <= remaining_minor {
        return RechargeDecision::Recharge {
            credits: gap,
            cost,
            cut: false,
        };
    }
    let budget = Money {
        minor_units: remaining_minor,
        currency: settings.spend_limit.currency,
    };
    let credits = unit_price.whole_credits_within(budget);
    if !credits.is_positive() {
        return RechargeDecision::LimitReached;
    }
    match unit_price.cost_of(credits) {
        Some(cost) => {
            assert!(
                cost.minor_units <= remaining_minor,
                "a cut recharge stays within the limit"
            );
            RechargeDecision::Recharge {
                credits,
                cost,
                cut: true,
            }
        }
        None => RechargeDecision::OutOfRange,
    }
}

/// The spend-limit warning level reached by `spend` against `limit`: 0, 80, 90 or 100.
pub fn warning_percent(spend_minor: i64, limit_minor: i64) -> u8 {
    if limit_minor <= 0 {
        return 0;
    }
    let percent = i128::from(spend_minor) * 100 / i128::from(limit_minor);
    match percent {
        100.. => 100,
        90..=99 => 90,
        80..=89 => 80,
        _ => 0,
    }
}

/// Starts auto-recharge state for first settings.
pub(crate) fn new_state(
    settings: AutoRechargeSettings,
    now: TimestampMs,
    consumed: i128,
) -> Result<AutoRecharge, Rejection> {
    let period = SpendPeriod::containing(settings.reset, now)
        .map_err(|error| Rejection::invalid("spend_limit_reset", error.to_string()))?;
    Ok(AutoRecharge {
        settings,
        paused: None,
        next_seq: 1,
        in_flight: None,
        period,
        spend_this_period_minor: 0,
        recent: Vec::new(),
        recharges_this_period: 0,
        consumed_at_period_start: consumed,
        last_skip: None,
        warned_percent: 0,
    })
}
