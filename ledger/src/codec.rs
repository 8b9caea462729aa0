//! The bytes of the internal Kafka topics (`refill.recharge-commands`,
//! `refill.account-commands`): a one-byte format version, then the postcard encoding of the
//! value. Internal, written and read only by Refill's own roles; the public contract (the
//! usage event) is JSON and lives in `deploy/schemas/`. The version byte lets a reader tell
//! a record of a newer release from a corrupt one.

use crate::effects::RechargeCommand;
use crate::input::Input;

/// The format version written before each value.
pub const FORMAT_V1: u8 = 1;

/// The `content-type` header of records written with this codec.
pub const CONTENT_TYPE: &str = "application/x-refill-postcard; v=1";

/// Why bytes of an internal topic do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// No bytes at all.
    #[error("expected a format byte and a postcard value, found an empty record")]
    Empty,
    /// A format this release does not know.
    #[error("expected format version {FORMAT_V1}, found {0}")]
    Version(u8),
    /// The value does not decode.
    #[error("expected a postcard {what}, found bytes that do not decode: {reason}")]
    Body {
        /// What was expected.
        what: &'static str,
        /// The decoder's words.
        reason: String,
    },
}

/// The bytes of a recharge command.
pub fn encode_recharge_command(command: &RechargeCommand) -> Vec<u8> {
    encode(command)
}

/// A recharge command from its bytes.
pub fn decode_recharge_command(bytes: &[u8]) -> Result<RechargeCommand, CodecError> {
    decode(bytes, "recharge command")
}

/// The bytes of an account command (any input but usage).
pub fn encode_account_command(input: &Input) -> Vec<u8> {
    encode(input)
}

/// An account command from its bytes.
pub fn decode_account_command(bytes: &[u8]) -> Result<Input, CodecError> {
    decode(bytes, "account command")
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_V1];
    // Serializing into memory cannot fail for these types (no maps with non-string keys
    // matter to postcard, no I/O).
    bytes.extend(postcard::to_stdvec(value).expect("postcard encodes to memory"));
    bytes
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_V1 {
        return Err(CodecError::Version(version));
    }
    postcard::from_bytes(body).map_err(|error| CodecError::Body {
        what,
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    #[test]
    fn an_account_command_round_trips_and_garbage_is_refused() {
        let input = testkit::grant(
            "acme",
            5,
            crate::grant::GrantKind::Promotional,
            None,
            None,
            "g-1",
        );
        let bytes = encode_account_command(&input);
        assert_eq!(decode_account_command(&bytes), Ok(input));
        assert_eq!(decode_account_command(&[]), Err(CodecError::Empty));
        assert_eq!(
            decode_account_command(&[9, 1, 2]),
            Err(CodecError::Version(9))
        );
        assert!(matches!(
            decode_account_command(&[FORMAT_V1, 0xff, 0xff, 0xff]),
            Err(CodecError::Body { .. })
        ));
    }
}
