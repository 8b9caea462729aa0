//! Credits and usage quantities as checked fixed-point integers (micro-units), converted
//! exactly to and from `rust_decimal` at the boundary.
//!
//! The hot path adds and subtracts `i64` micro-units; every conversion that cannot be exact
//! (too many decimal places, out of range) is refused with a reason instead of rounded.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Decimal places held by [`Credits`] and [`Quantity`]: one micro-unit is 10^-6.
pub const SCALE: u32 = 6;
/// Micro-units in one whole unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Why a decimal could not become a fixed-point amount.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// More decimal places than the fixed-point scale holds.
    #[error("expected at most {max} decimal places, found {found}")]
    TooPrecise {
        /// Decimal places allowed.
        max: u32,
        /// Decimal places found.
        found: u32,
    },
    /// Larger in magnitude than an `i64` of micro-units.
    #[error("expected a magnitude below 9223372036854.775807, found {found}")]
    OutOfRange {
        /// The value as given.
        found: String,
    },
    /// Negative where only zero or more is allowed.
    #[error("expected zero or more, found {found}")]
    Negative {
        /// The value as given.
        found: String,
    },
    /// Zero or negative where only more than zero is allowed.
    #[error("expected more than zero, found {found}")]
    NotPositive {
        /// The value as given.
        found: String,
    },
    /// Not a decimal number at all.
    #[error("expected a decimal number such as \"12.5\", found {found:?}")]
    NotANumber {
        /// The text as given.
        found: String,
    },
}

/// Converts a decimal to micro-units exactly, or says why it cannot.
pub fn decimal_to_micros(value: Decimal) -> Result<i64, AmountError> {
    let normalized = value.normalize();
    let scale = normalized.scale();
    if scale > SCALE {
        return Err(AmountError::TooPrecise {
            max: SCALE,
            found: scale,
        });
    }
    let factor = 10_i128.pow(SCALE - scale);
    normalized
        .mantissa()
        .checked_mul(factor)
        .and_then(|micros| i64::try_from(micros).ok())
        .ok_or_else(|| AmountError::OutOfRange {
            found: value.to_string(),
        })
}

/// Converts micro-units to the shortest exact decimal.
pub fn micros_to_decimal(micros: i64) -> Decimal {
    Decimal::new(micros, SCALE).normalize()
}

/// Parses decimal text exactly (no exponent, no rounding) into micro-units.
pub fn parse_micros(text: &str) -> Result<i64, AmountError> {
    let trimmed = text.trim();
    // from_str_exact refuses to round; anything it rejects is either too long or not a number.
    match Decimal::from_str_exact(trimmed) {
        Ok(value) => decimal_to_micros(value),
        Err(rust_decimal::Error::Underflow) => {
            let places = trimmed.split_once('.').map_or(0, |(_, frac)| frac.len());
            Err(AmountError::TooPrecise {
                max: SCALE,
                found: u32::try_from(places).unwrap_or(u32::MAX),
            })
        }
        Err(
            rust_decimal::Error::ExceedsMaximumPossibleValue
            | rust_decimal::Error::LessThanMinimumPossibleValue,
        ) => Err(AmountError::OutOfRange {
            found: trimmed.to_owned(),
        }),
        Err(_) => Err(AmountError::NotANumber {
            found: trimmed.to_owned(),
        }),
    }
}

/// Multiplies two micro-unit values and rounds half-even to one micro-unit.
///
/// Used to rate usage: `quantity × credits_per_unit`. `None` when the result overflows.
pub fn mul_micros_half_even(a_micros: i64, b_micros: i64) -> Option<i64> {
    // Rating runs once per usage event. When the product fits an i64 (any realistic
    // quantity and rate), the same half-even rounding in i64 divides by a constant, which
    // compiles to a multiply; the i128 path calls a software division.
    if let Some(product) = a_micros.checked_mul(b_micros) {
        return Some(div_round_half_even_i64(product, MICROS_PER_UNIT));
    }
    let product = i128::from(a_micros).checked_mul(i128::from(b_micros))?;
    let rounded = div_round_half_even(product, i128::from(MICROS_PER_UNIT));
    i64::try_from(rounded).ok()
}

/// [`div_round_half_even`] on `i64`, inlined so a constant divisor needs no division.
#[inline]
fn div_round_half_even_i64(dividend: i64, divisor: i64) -> i64 {
    debug_assert!(divisor > 0, "divisor must be positive, found {divisor}");
    let quotient = dividend.div_euclid(divisor);
    let remainder = dividend.rem_euclid(divisor);
    let twice = remainder * 2;
    if twice > divisor || (twice == divisor && quotient % 2 != 0) {
        quotient + 1
    } else {
        quotient
    }
}

/// Divides and rounds half-even (banker's rounding); `divisor` must be positive.
pub fn div_round_half_even(dividend: i128, divisor: i128) -> i128 {
    assert!(divisor > 0, "divisor must be positive, found {divisor}");
    let quotient = dividend.div_euclid(divisor);
    let remainder = dividend.rem_euclid(divisor);
    let twice = remainder * 2;
    if twice > divisor || (twice == divisor && quotient % 2 != 0) {
        quotient + 1
    } else {
        quotient
    }
}

macro_rules! fixed_point {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name {
            micros: i64,
        }

        impl $name {
            /// Zero.
            pub const ZERO: Self = Self { micros: 0 };

            /// From micro-units (10^-6).
            pub const fn from_micros(micros: i64) -> Self {
                Self { micros }
            }

            /// From whole units; `None` on overflow.
            pub fn from_whole(units: i64) -> Option<Self> {
                units.checked_mul(MICROS_PER_UNIT).map(Self::from_micros)
            }

            /// The value in micro-units.
            pub const fn micros(self) -> i64 {
                self.micros
            }

            /// From a decimal, exactly; any sign.
            pub fn from_decimal(value: Decimal) -> Result<Self, AmountError> {
                decimal_to_micros(value).map(Self::from_micros)
            }

            /// From a decimal that must be zero or more, exactly.
            pub fn from_decimal_non_negative(value: Decimal) -> Result<Self, AmountError> {
                let parsed = Self::from_decimal(value)?;
                if parsed.micros < 0 {
                    return Err(AmountError::Negative { found: value.to_string() });
                }
                Ok(parsed)
            }

            /// From a decimal that must be more than zero, exactly.
            pub fn from_decimal_positive(value: Decimal) -> Result<Self, AmountError> {
                let parsed = Self::from_decimal(value)?;
                if parsed.micros <= 0 {
                    return Err(AmountError::NotPositive { found: value.to_string() });
                }
                Ok(parsed)
            }

            /// The exact decimal value, without trailing zeros.
            pub fn to_decimal(self) -> Decimal {
                micros_to_decimal(self.micros)
            }

            /// Checked addition.
            pub fn checked_add(self, other: Self) -> Option<Self> {
                self.micros.checked_add(other.micros).map(Self::from_micros)
            }

            /// Checked subtraction.
            pub fn checked_sub(self, other: Self) -> Option<Self> {
                self.micros.checked_sub(other.micros).map(Self::from_micros)
            }

            /// Checked negation.
            pub fn checked_neg(self) -> Option<Self> {
                self.micros.checked_neg().map(Self::from_micros)
            }

            /// True when zero.
            pub const fn is_zero(self) -> bool {
                self.micros == 0
            }

            /// True when above zero.
            pub const fn is_positive(self) -> bool {
                self.micros > 0
            }

            /// True when below zero.
            pub const fn is_negative(self) -> bool {
                self.micros < 0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.to_decimal(), f)
            }
        }

        impl FromStr for $name {
            type Err = AmountError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_micros(text).map(Self::from_micros)
            }
        }
    };
}

fixed_point!(
    /// An amount of credits in micro-credits: balances, grants, usage, thresholds. Signed,
    /// since balances may go below zero (overdraft) and ledger amounts carry a sign.
    Credits
);

fixed_point!(
    /// A usage quantity (an event's `value`) in micro-units of the feature's unit.
    Quantity
);

impl Quantity {
    /// Credits burned by this quantity at `credits_per_unit`, rounded half-even to the
    /// micro-credit; `None` on overflow.
    pub fn rate(self, credits_per_unit: Credits) -> Option<Credits> {
        mul_micros_half_even(self.micros, credits_per_unit.micros).map(Credits::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_conversions_round_trip() {
        for text in [
            "0",
            "1",
            "12.5",
            "0.000001",
            "-3.25",
            "9223372036854.775807",
        ] {
            let credits: Credits = text.parse().expect("parses");
            assert_eq!(credits.to_string(), text);
        }
    }

    #[test]
    fn inexact_inputs_are_refused_with_a_reason() {
        assert_eq!(
            "0.0000001".parse::<Credits>(),
            Err(AmountError::TooPrecise { max: 6, found: 7 })
        );
        assert!(matches!(
            "9223372036855".parse::<Credits>(),
            Err(AmountError::OutOfRange { .. })
        ));
        assert!(matches!(
            "NaN".parse::<Credits>(),
            Err(AmountError::NotANumber { .. })
        ));
        assert!(matches!(
            "1e3".parse::<Credits>(),
            Err(AmountError::NotANumber { .. })
        ));
        assert!(matches!(
            Credits::from_decimal_non_negative(Decimal::new(-1, 0)),
            Err(AmountError::Negative { .. })
        ));
        // Trailing zeros beyond the scale are still exact.
        assert_eq!(
            "1.50000000".parse::<Credits>(),
            Ok(Credits::from_micros(1_500_000))
        );
    }

    #[test]
    fn rating_rounds_half_even_to_the_micro_credit() {
        let half_micro = Quantity::from_micros(1); // 0.000001 units
        let half = Credits::from_micros(500_000); // 0.5 credits per unit
        assert_eq!(half_micro.rate(half), Some(Credits::ZERO)); // 0.0000005 -> 0 (even)
        let three_micro = Quantity::from_micros(3);
        assert_eq!(three_micro.rate(half), Some(Credits::from_micros(2))); // 1.5 -> 2
        let one = Quantity::from_micros(MICROS_PER_UNIT);
        assert_eq!(
            one.rate(Credits::from_micros(MICROS_PER_UNIT)),
            Some(Credits::from_micros(MICROS_PER_UNIT))
        );
        assert_eq!(
            Quantity::from_micros(i64::MAX).rate(Credits::from_micros(2 * MICROS_PER_UNIT)),
            None
        );
    }

    #[test]
    fn the_i64_rating_path_agrees_with_i128() {
        let values = [
            0,
            1,
            -1,
            2,
            499_999,
            500_000,
            500_001,
            1_500_000,
            2_500_000,
            -2_500_000,
            MICROS_PER_UNIT,
            3_037_000_499,
            3_037_000_500,
            i64::MAX / MICROS_PER_UNIT,
            i64::MAX,
            i64::MIN + 1,
            i64::MIN,
        ];
        for &a in &values {
            for &b in &values {
                let wide = i128::from(a)
                    .checked_mul(i128::from(b))
                    .map(|product| div_round_half_even(product, i128::from(MICROS_PER_UNIT)))
                    .and_then(|rounded| i64::try_from(rounded).ok());
                assert_eq!(mul_micros_half_even(a, b), wide, "{a} × {b}");
            }
        }
    }

    #[test]
    fn half_even_division() {
        assert_eq!(div_round_half_even(5, 2), 2);
        assert_eq!(div_round_half_even(7, 2), 4);
        assert_eq!(div_round_half_even(-5, 2), -2);
        assert_eq!(div_round_half_even(-7, 2), -4);
        assert_eq!(div_round_half_even(10, 4), 2);
        assert_eq!(div_round_half_even(11, 4), 3);
    }
}
