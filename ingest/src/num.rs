//! Exact decimals from JSON: strings or numbers, read from their text (serde_json's
//! `arbitrary_precision`), never through a float.

use std::fmt;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// A decimal as a request wrote it: `"12.5"` or `12.5`, exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Num(pub Decimal);

// The key serde_json uses to hand a number's text to a visitor under arbitrary_precision.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

struct NumVisitor;

impl<'de> Visitor<'de> for NumVisitor {
    type Value = Num;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal number or a string such as \"12.5\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Num, E> {
        parse(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Num, E> {
        Ok(Num(Decimal::from(value)))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Num, E> {
        Ok(Num(Decimal::from(value)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Num, A::Error> {
        let key: Option<String> = map.next_key()?;
        if key.as_deref() != Some(NUMBER_TOKEN) {
            return Err(de::Error::custom(
                "expected a decimal number, found an object",
            ));
        }
        let text: String = map.next_value()?;
        parse(&text).map_err(de::Error::custom)
    }
}

fn parse(text: &str) -> Result<Num, String> {
    let trimmed = text.trim();
    // Exponents ("1e3") are numbers JSON allows; accept them exactly when they fit.
    let value = if trimmed.contains(['e', 'E']) {
        Decimal::from_scientific(trimmed)
    } else {
        Decimal::from_str_exact(trimmed)
    };
    value
        .map(Num)
        .map_err(|_| format!("expected a decimal number such as \"12.5\", found {trimmed:?}"))
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_are_exact() {
        let parsed: Vec<Num> =
            serde_json::from_str(r#"[12.5, "12.5", 3, 0.1, "0.000001", 1e2]"#).expect("parses");
        let texts: Vec<String> = parsed
            .iter()
            .map(|num| num.0.normalize().to_string())
            .collect();
        assert_eq!(texts, ["12.5", "12.5", "3", "0.1", "0.000001", "100"]);
        assert!(serde_json::from_str::<Num>(r#""abc""#).is_err());
        assert!(serde_json::from_str::<Num>("true").is_err());
    }
}
