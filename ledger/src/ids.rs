//! Identifiers: validated, cheap to clone (inline up to 24 bytes), ordered for
//! deterministic output.

use std::borrow::Borrow;
use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than allowed.
    #[error("expected 1 to {max} bytes, found {found}")]
    Length {
        /// Most bytes allowed.
        max: usize,
        /// Bytes found.
        found: usize,
    },
    /// A character the id may not hold.
    #[error("expected visible ASCII other than '/', found {found:?} at byte {at}")]
    Character {
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// A control character.
    #[error("expected no control characters, found {found:?} at byte {at}")]
    Control {
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Most bytes in a catalog, customer or payment-method id.
pub const NAME_ID_BYTES_MAX: usize = 128;
/// Most bytes in a usage event id or an idempotency key.
pub const EVENT_ID_BYTES_MAX: usize = 256;

fn check_name_id(text: &str) -> Result<(), IdError> {
    if text.is_empty() || text.len() > NAME_ID_BYTES_MAX {
        return Err(IdError::Length {
            max: NAME_ID_BYTES_MAX,
            found: text.len(),
        });
    }
    // '/' separates the parts of a command id and of URL paths, so names never hold it.
    match text
        .char_indices()
        .find(|(_, c)| !c.is_ascii_graphic() || *c == '/')
    {
        Some((at, found)) => Err(IdError::Character { found, at }),
        None => Ok(()),
    }
}

fn check_opaque_id(text: &str) -> Result<(), IdError> {
    if text.is_empty() || text.len() > EVENT_ID_BYTES_MAX {
        return Err(IdError::Length {
            max: EVENT_ID_BYTES_MAX,
            found: text.len(),
        });
    }
    match text.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, found)) => Err(IdError::Control { found, at }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "CompactString", into = "CompactString")]
        pub struct $name(CompactString);

        impl $name {
            /// Validates and wraps `text`.
            pub fn new(text: &str) -> Result<Self, IdError> {
                $check(text)?;
                Ok(Self(CompactString::new(text)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<CompactString> for $name {
            type Error = IdError;

            fn try_from(text: CompactString) -> Result<Self, IdError> {
                $check(&text)?;
                Ok(Self(text))
            }
        }

        impl From<$name> for CompactString {
            fn from(id: $name) -> CompactString {
                id.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A customer, as producers name it (the Kafka key of its usage).
    CustomerId,
    check_name_id
);
id_type!(
    /// A credit type (a currency of credits with a unit price).
    CreditTypeId,
    check_name_id
);
id_type!(
    /// A metered feature.
    FeatureId,
    check_name_id
);
id_type!(
    /// A product (at most one active subscription per customer).
    ProductId,
    check_name_id
);
id_type!(
    /// A plan of a product.
    PlanId,
    check_name_id
);
id_type!(
    /// A payment method at the gateway, such as Stripe's `pm_card_visa`.
    PaymentMethodId,
    check_name_id
);
id_type!(
    /// A usage event's producer-minted id (1 to 256 bytes), the key of deduplication.
    EventId,
    check_opaque_id
);
id_type!(
    /// A client-minted key that makes a grant or subscription request idempotent.
    IdempotencyKey,
    check_opaque_id
);

/// Whether two texts are equal, without a call to `memcmp`: ids on the hot path are a few
/// to a few dozen bytes, where the call costs more than the comparison itself.
#[inline]
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    fn word(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }
    fn half(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        // Whole words, then the last word again (overlapping) for the tail.
        let mut at = 0;
        while at + 8 <= n {
            if word(a, at) != word(b, at) {
                return false;
            }
            at += 8;
        }
        at == n || word(a, n - 8) == word(b, n - 8)
    } else if n >= 4 {
        half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4)
    } else {
        a == b
    }
}

/// A grant, numbered per customer: `gr_1`, `gr_2`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrantId(pub u64);

impl GrantId {
    /// Parses `gr_N`.
    pub fn parse(text: &str) -> Option<Self> {
        text.strip_prefix("gr_")?.parse().ok().map(Self)
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gr_{}", self.0)
    }
}

/// A recharge command: customer + credit type + recharge sequence. Deterministic, so a
/// replay re-emits the same id; the gateway's idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// The customer.
    pub customer: CustomerId,
    /// The credit type recharged.
    pub credit_type: CreditTypeId,
    /// The account's recharge sequence number, from 1.
    pub seq: u64,
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names never contain '/', so this text is unambiguous.
        write!(f, "{}/{}/{}", self.customer, self.credit_type, self.seq)
    }
}

impl CommandId {
    /// Parses the text form `customer/credit_type/seq`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let customer = CustomerId::new(parts.next()?).ok()?;
        let credit_type = CreditTypeId::new(parts.next()?).ok()?;
        let seq = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            customer,
            credit_type,
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_slashes_spaces_and_empty() {
        assert!(CustomerId::new("cus_42").is_ok());
        assert!(matches!(
            CustomerId::new("a/b"),
            Err(IdError::Character { found: '/', at: 1 })
        ));
        assert!(matches!(
            CustomerId::new("a b"),
            Err(IdError::Character { .. })
        ));
        assert!(matches!(CustomerId::new(""), Err(IdError::Length { .. })));
        assert!(CustomerId::new(&"x".repeat(129)).is_err());
    }

    #[test]
    fn event_ids_take_any_text_up_to_256_bytes() {
        assert!(EventId::new("évt 1/2").is_ok());
        assert!(EventId::new(&"x".repeat(256)).is_ok());
        assert!(EventId::new(&"x".repeat(257)).is_err());
        assert!(EventId::new("a\nb").is_err());
    }

    #[test]
    fn same_text_is_string_equality() {
        let texts = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abce",
            "abcdefg",
            "abcdefgh",
            "abcdefgi",
            "c0000001",
            "c0000002",
            "c00000001",
            "c00000002",
            "b00000001",
            "api-call",
            "api-calls",
            "0123456789abcdef",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "1123456789abcdef0",
            "0123456789abcdef1",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(same_text(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn command_ids_round_trip_through_text() {
        let id = CommandId {
            customer: CustomerId::new("cus_1").expect("id"),
            credit_type: CreditTypeId::new("api-credits").expect("id"),
            seq: 7,
        };
        assert_eq!(id.to_string(), "cus_1/api-credits/7");
        assert_eq!(CommandId::parse(&id.to_string()), Some(id));
        assert_eq!(CommandId::parse("a/b"), None);
        assert_eq!(GrantId::parse("gr_12"), Some(GrantId(12)));
    }
}
