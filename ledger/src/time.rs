//! Time as data: instants are milliseconds since the Unix epoch in UTC, passed in by the
//! shell. Calendar arithmetic (spend periods, grant expirations) is pure and done in UTC.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde::{Deserialize, Serialize};

/// An instant: milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TimestampMs(pub i64);

/// Why a time could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Outside the years -9999..=9999 that calendar arithmetic supports.
    #[error("expected an instant between years -9999 and 9999, found {found_ms} ms")]
    OutOfRange {
        /// The instant in milliseconds.
        found_ms: i64,
    },
    /// Not an ISO-8601 duration.
    #[error("expected \"never\" or an ISO-8601 duration such as \"P1M\", found {found:?}")]
    BadDuration {
        /// The text as given.
        found: String,
    },
    /// Not an RFC 3339 timestamp.
    #[error("expected an RFC 3339 timestamp such as \"2026-11-25T10:00:00Z\", found {found:?}")]
    BadTimestamp {
        /// The text as given.
        found: String,
    },
}

impl TimestampMs {
    /// The civil date and time in UTC (which has no daylight saving, so civil arithmetic
    /// on it is exact).
    fn to_utc_datetime(self) -> Result<DateTime, TimeError> {
        Timestamp::from_millisecond(self.0)
            .map(|ts| TimeZone::UTC.to_datetime(ts))
            .map_err(|_| TimeError::OutOfRange { found_ms: self.0 })
    }

    fn from_utc_datetime(datetime: DateTime, context: TimestampMs) -> Result<Self, TimeError> {
        TimeZone::UTC
            .to_timestamp(datetime)
            .map(|ts| Self(ts.as_millisecond()))
            .map_err(|_| TimeError::OutOfRange {
                found_ms: context.0,
            })
    }

    /// Parses an RFC 3339 timestamp (any offset) into UTC milliseconds.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        text.parse::<Timestamp>()
            .map(|ts| Self(ts.as_millisecond()))
            .map_err(|_| TimeError::BadTimestamp {
                found: text.to_owned(),
            })
    }
}

impl fmt::Display for TimestampMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Timestamp::from_millisecond(self.0) {
            Ok(ts) => write!(f, "{ts}"),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

/// How often the auto-recharge spend limit resets: calendar-aligned in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendReset {
    /// Each UTC day from midnight.
    Day,
    /// Each ISO week from Monday 00:00 UTC.
    Week,
    /// Each calendar month from the 1st 00:00 UTC.
    Month,
}

impl SpendReset {
    /// The wire name: `day`, `week` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendReset::Day => "day",
            SpendReset::Week => "week",
            SpendReset::Month => "month",
        }
    }
}

/// One spend period: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpendPeriod {
    /// First instant of the period.
    pub start: TimestampMs,
    /// First instant after the period.
    pub end: TimestampMs,
}

impl SpendPeriod {
    /// The period of `reset` that contains `at`.
    pub fn containing(reset: SpendReset, at: TimestampMs) -> Result<Self, TimeError> {
        let date = at.to_utc_datetime()?.date();
        let (start, next): (Date, Result<Date, _>) = match reset {
            SpendReset::Day => (date, date.checked_add(Span::new().days(1))),
            SpendReset::Week => {
                let monday = date
                    .checked_sub(
                        Span::new().days(i64::from(date.weekday().to_monday_zero_offset())),
                    )
                    .map_err(|_| TimeError::OutOfRange { found_ms: at.0 })?;
                (monday, monday.checked_add(Span::new().weeks(1)))
            }
            SpendReset::Month => {
                let first = date.first_of_month();
                (first, first.checked_add(Span::new().months(1)))
            }
        };
        let next = next.map_err(|_| TimeError::OutOfRange { found_ms: at.0 })?;
        Ok(Self {
            start: midnight_utc(start, at)?,
            end: midnight_utc(next, at)?,
        })
    }

    /// True when `at` falls inside the period.
    pub fn contains(&self, at: TimestampMs) -> bool {
        self.start <= at && at < self.end
    }
}

fn midnight_utc(date: Date, context: TimestampMs) -> Result<TimestampMs, TimeError> {
    TimestampMs::from_utc_datetime(date.to_datetime(Time::midnight()), context)
}

/// When a granted credit expires: never, or a calendar duration after the grant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GrantExpiration {
    /// Credits never expire.
    Never,
    /// Credits expire this ISO-8601 duration after they are granted (`P1M`, `P30D`, `PT12H`).
    After(IsoDuration),
}

impl GrantExpiration {
    /// Parses `never` or an ISO-8601 duration.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        if text == "never" {
            Ok(Self::Never)
        } else {
            IsoDuration::parse(text).map(Self::After)
        }
    }

    /// The expiry instant of a grant made at `granted_at`, if any.
    pub fn expires_at(&self, granted_at: TimestampMs) -> Result<Option<TimestampMs>, TimeError> {
        match self {
            Self::Never => Ok(None),
            Self::After(duration) => duration.after(granted_at).map(Some),
        }
    }
}

impl fmt::Display for GrantExpiration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::After(duration) => f.write_str(&duration.0),
        }
    }
}

/// A positive ISO-8601 duration, kept as the text the user wrote.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IsoDuration(String);

impl IsoDuration {
    /// Parses and validates: a positive ISO-8601 duration.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        // jiff also reads a friendly form ("1 month"); the contract is ISO-8601 only.
        if !text.starts_with('P') {
            return Err(TimeError::BadDuration {
                found: text.to_owned(),
            });
        }
        let span: Span = text.parse().map_err(|_| TimeError::BadDuration {
            found: text.to_owned(),
        })?;
        if span.signum() <= 0 {
            return Err(TimeError::BadDuration {
                found: text.to_owned(),
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// `at` plus this duration, with calendar arithmetic in UTC (Jan 31 + P1M = Feb 28).
    pub fn after(&self, at: TimestampMs) -> Result<TimestampMs, TimeError> {
        let span: Span = self.0.parse().map_err(|_| TimeError::BadDuration {
            found: self.0.clone(),
        })?;
        let later = at
            .to_utc_datetime()?
            .checked_add(span)
            .map_err(|_| TimeError::OutOfRange { found_ms: at.0 })?;
        TimestampMs::from_utc_datetime(later, at)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> TimestampMs {
        TimestampMs::parse_rfc3339(text).expect("timestamp")
    }

    #[test]
    fn periods_are_calendar_aligned_in_utc() {
        let t = at("2026-11-25T10:29:00Z"); // a Wednesday
        let day = SpendPeriod::containing(SpendReset::Day, t).expect("day");
        assert_eq!(
            (day.start, day.end),
            (at("2026-11-25T00:00:00Z"), at("2026-11-26T00:00:00Z"))
        );
        let week = SpendPeriod::containing(SpendReset::Week, t).expect("week");
        assert_eq!(
            (week.start, week.end),
            (at("2026-11-23T00:00:00Z"), at("2026-11-30T00:00:00Z"))
        );
        let month = SpendPeriod::containing(SpendReset::Month, t).expect("month");
        assert_eq!(
            (month.start, month.end),
            (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        let feb = SpendPeriod::containing(SpendReset::Month, at("2028-02-29T23:59:59.999Z"))
            .expect("feb");
        assert_eq!(feb.end, at("2028-03-01T00:00:00Z"));
        // The first instant of a period belongs to it, the end does not.
        assert!(month.contains(month.start) && !month.contains(month.end));
    }

    #[test]
    fn durations_use_calendar_arithmetic() {
        let one_month = GrantExpiration::parse("P1M").expect("P1M");
        assert_eq!(
            one_month
                .expires_at(at("2026-01-31T12:00:00Z"))
                .expect("add"),
            Some(at("2026-02-28T12:00:00Z"))
        );
        assert_eq!(
            GrantExpiration::parse("never")
                .expect("never")
                .expires_at(at("2026-01-01T00:00:00Z")),
            Ok(None)
        );
        assert!(GrantExpiration::parse("1 month").is_err());
        assert!(GrantExpiration::parse("-P1D").is_err());
        assert!(GrantExpiration::parse("PT0S").is_err());
    }
}
