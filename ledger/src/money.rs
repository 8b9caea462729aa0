//! Money: ISO 4217 currencies with their minor-unit exponents, amounts in minor units, and
//! the one rounding rule of the product (credits × unit price, half-even to the minor unit).

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::amount::Credits;

/// Why a currency or a money amount was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not an active ISO 4217 code.
    #[error("expected an ISO 4217 currency code such as \"USD\", found {found:?}")]
    UnknownCurrency {
        /// The code as given.
        found: String,
    },
    /// More decimal places than the currency's minor unit.
    #[error("expected at most {max} decimal places for {currency}, found {found}")]
    TooPrecise {
        /// The currency.
        currency: String,
        /// Its exponent.
        max: u32,
        /// Decimal places found.
        found: u32,
    },
    /// Too large to hold in minor units.
    #[error("expected an amount that fits in minor units, found {found}")]
    OutOfRange {
        /// The amount as given.
        found: String,
    },
    /// Negative where zero or more was expected.
    #[error("expected zero or more, found {found}")]
    Negative {
        /// The amount as given.
        found: String,
    },
    /// Zero or less where more than zero was expected.
    #[error("expected more than zero, found {found}")]
    NotPositive {
        /// The amount as given.
        found: String,
    },
    /// Two amounts that must share a currency do not.
    #[error("expected currency {expected}, found {found}")]
    CurrencyMismatch {
        /// The currency required.
        expected: String,
        /// The currency given.
        found: String,
    },
}

// Active ISO 4217 codes whose minor unit is not two decimal places. Every other code in
// `TWO_DECIMAL` has two. Source: the ISO 4217 list (amendment 178).
const ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DECIMAL: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const FOUR_DECIMAL: &[&str] = &["CLF", "UYW"];
const TWO_DECIMAL: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF",
    "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR",
    "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF",
    "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
    "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP",
    "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG",
    "YER", "ZAR", "ZMW", "ZWG",
];

/// An ISO 4217 currency: its three-letter code and minor-unit exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

impl Currency {
    /// US dollars, the currency of the product's worked example.
    pub const USD: Currency = Currency {
        code: *b"USD",
        exponent: 2,
    };

    /// Looks up an active ISO 4217 code (upper case, as the standard writes it).
    pub fn from_code(code: &str) -> Result<Self, MoneyError> {
        let exponent = if TWO_DECIMAL.contains(&code) {
            2
        } else if ZERO_DECIMAL.contains(&code) {
            0
        } else if THREE_DECIMAL.contains(&code) {
            3
        } else if FOUR_DECIMAL.contains(&code) {
            4
        } else {
            return Err(MoneyError::UnknownCurrency {
                found: code.to_owned(),
            });
        };
        let bytes: [u8; 3] =
            code.as_bytes()
                .try_into()
                .map_err(|_| MoneyError::UnknownCurrency {
                    found: code.to_owned(),
                })?;
        Ok(Self {
            code: bytes,
            exponent,
        })
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        // Codes only come from the ASCII tables above.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Decimal places of the minor unit (2 for USD, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u32 {
        u32::from(self.exponent)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money in the currency's minor unit (cents for USD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount in minor units.
    pub minor_units: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// Zero in `currency`.
    pub const fn zero(currency: Currency) -> Self {
        Self {
            minor_units: 0,
            currency,
        }
    }

    /// From a decimal amount that must be exact in the currency's minor unit.
    pub fn from_decimal(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        let normalized = amount.normalize();
        if normalized.scale() > currency.exponent() {
            return Err(MoneyError::TooPrecise {
                currency: currency.code().to_owned(),
                max: currency.exponent(),
                found: normalized.scale(),
            });
        }
        let factor = 10_i128.pow(currency.exponent() - normalized.scale());
        let minor_units = normalized
            .mantissa()
            .checked_mul(factor)
            .and_then(|minor| i64::try_from(minor).ok())
            .ok_or_else(|| MoneyError::OutOfRange {
                found: amount.to_string(),
            })?;
        Ok(Self {
            minor_units,
            currency,
        })
    }

    /// From a decimal amount that must be zero or more.
    pub fn from_decimal_non_negative(
        amount: Decimal,
        currency: Currency,
    ) -> Result<Self, MoneyError> {
        let money = Self::from_decimal(amount, currency)?;
        if money.minor_units < 0 {
            return Err(MoneyError::Negative {
                found: amount.to_string(),
            });
        }
        Ok(money)
    }

    /// The amount as a decimal in major units ("12.50" USD is 12.5).
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.minor_units, self.currency.exponent())
    }

    /// Checked addition; the currencies must match.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        (self.currency == other.currency).then_some(())?;
        let minor_units = self.minor_units.checked_add(other.minor_units)?;
        Some(Money {
            minor_units,
            currency: self.currency,
        })
    }

    /// Checked subtraction; the currencies must match.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        (self.currency == other.currency).then_some(())?;
        let minor_units = self.minor_units.checked_sub(other.minor_units)?;
        Some(Money {
            minor_units,
            currency: self.currency,
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency)
    }
}

/// The price of one credit. It may be finer than the minor unit ($0.001 per credit);
/// only totals are rounded, see [`UnitPrice::cost_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitPrice {
    /// Price of one credit in major units, more than zero, at most 12 decimal places.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The currency.
    pub currency: Currency,
}

/// Most decimal places a unit price may carry.
pub const UNIT_PRICE_SCALE_MAX: u32 = 12;

impl UnitPrice {
    /// Validates a unit price: more than zero, at most [`UNIT_PRICE_SCALE_MAX`] places.
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        let normalized = amount.normalize();
        if normalized <= Decimal::ZERO {
            return Err(MoneyError::NotPositive {
                found: amount.to_string(),
            });
        }
        if normalized.scale() > UNIT_PRICE_SCALE_MAX {
            return Err(MoneyError::TooPrecise {
                currency: currency.code().to_owned(),
                max: UNIT_PRICE_SCALE_MAX,
                found: normalized.scale(),
            });
        }
        Ok(Self {
            amount: normalized,
            currency,
        })
    }

    /// The cost of `credits`: credits × unit price, rounded half-even to the currency's
    /// minor unit. `None` when the cost does not fit.
    pub fn cost_of(&self, credits: Credits) -> Option<Money> {
        let exact = credits.to_decimal().checked_mul(self.amount)?;
        let rounded = exact.round_dp_with_strategy(
            self.currency.exponent(),
            RoundingStrategy::MidpointNearestEven,
        );
        let minor = rounded.checked_mul(Decimal::from(10_i64.pow(self.currency.exponent())))?;
        let minor_units = i64::try_from(minor.normalize().mantissa()).ok()?;
        debug_assert_eq!(
            minor.normalize().scale(),
            0,
            "rounded minor units are whole"
        );
        Some(Money {
            minor_units,
            currency: self.currency,
        })
    }

    /// The most whole credits whose cost fits in `budget`, so a recharge cut to the
    /// remaining spend limit never passes it. Zero when not even one credit fits.
    pub fn whole_credits_within(&self, budget: Money) -> Credits {
        if budget.minor_units <= 0 || budget.currency != self.currency {
            return Credits::ZERO;
        }
        let quotient = (budget.to_decimal() / self.amount).floor();
        let Some(mut whole) = i64::try_from(quotient.mantissa())
            .ok()
            .and_then(Credits::from_whole)
        else {
            return Credits::ZERO;
        };
        // Half-even rounding lifts a cost at most half a minor unit above the exact product,
        // so a few steps down always reach a whole number of credits that fits.
        for _ in 0..4 {
            if !whole.is_positive() {
                break;
            }
            match self.cost_of(whole) {
                Some(cost) if cost.minor_units <= budget.minor_units => return whole,
                _ => whole = Credits::from_micros(whole.micros() - crate::amount::MICROS_PER_UNIT),
            }
        }
        Credits::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> UnitPrice {
        UnitPrice::new(text.parse().expect("decimal"), Currency::USD).expect("price")
    }

    #[test]
    fn currencies_carry_their_iso_exponent() {
        assert_eq!(Currency::from_code("USD").map(|c| c.exponent()), Ok(2));
        assert_eq!(Currency::from_code("JPY").map(|c| c.exponent()), Ok(0));
        assert_eq!(Currency::from_code("KWD").map(|c| c.exponent()), Ok(3));
        assert!(Currency::from_code("usd").is_err());
        assert!(Currency::from_code("XYZ").is_err());
    }

    #[test]
    fn money_must_be_exact_in_minor_units() {
        let cents =
            Money::from_decimal("500".parse().expect("decimal"), Currency::USD).expect("money");
        assert_eq!(cents.minor_units, 50_000);
        assert!(Money::from_decimal("1.005".parse().expect("decimal"), Currency::USD).is_err());
        let yen = Currency::from_code("JPY").expect("jpy");
        assert!(Money::from_decimal("1.5".parse().expect("decimal"), yen).is_err());
    }

    #[test]
    fn cost_rounds_half_even_to_the_minor_unit() {
        // 31 credits at $0.10 = $3.10 exactly.
        assert_eq!(
            usd("0.1")
                .cost_of(Credits::from_micros(31_000_000))
                .map(|m| m.minor_units),
            Some(310)
        );
        // 1 credit at $0.005 = 0.5 cent -> 0 (even); 3 credits = 1.5 cents -> 2.
        assert_eq!(
            usd("0.005")
                .cost_of(Credits::from_micros(1_000_000))
                .map(|m| m.minor_units),
            Some(0)
        );
        assert_eq!(
            usd("0.005")
                .cost_of(Credits::from_micros(3_000_000))
                .map(|m| m.minor_units),
            Some(2)
        );
        assert_eq!(
            usd("0.015")
                .cost_of(Credits::from_micros(1_000_000))
                .map(|m| m.minor_units),
            Some(2)
        );
    }

    #[test]
    fn whole_credits_within_never_passes_the_budget() {
        let budget = Money {
            minor_units: 500,
            currency: Currency::USD,
        };
        assert_eq!(
            usd("0.3").whole_credits_within(budget),
            Credits::from_micros(16_000_000)
        );
        assert_eq!(usd("6").whole_credits_within(budget), Credits::ZERO);
        // 0.005 per credit: 1000 credits cost exactly $5.00.
        assert_eq!(
            usd("0.005").whole_credits_within(budget),
            Credits::from_micros(1_000_000_000)
        );
    }
}
