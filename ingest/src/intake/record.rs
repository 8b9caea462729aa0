//! A `refill.usage` record into a usage event, or the reason it goes to the dead-letter
//! topic. Pure: the same record always gets the same answer, and nothing a producer sends
//! can panic it.

use refill_ledger::input::UsageEvent;

use crate::engine::kafka_partition_of;
use crate::wire::EventBody;

/// Why a record cannot be applied: the `refill-reason` header of its dead letter is
/// `"{code}: {message}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was expected and what was found.
    pub message: String,
    /// For a valid event on another partition than its owner's: the owner's partition,
    /// where the intake re-routes it.
    pub owner: Option<u32>,
}

impl Rejected {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            owner: None,
        }
    }

    fn owned_by(mut self, partition: u32) -> Self {
        self.owner = Some(partition);
        self
    }

    /// The text of the dead letter's reason header.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.code, self.message)
    }
}

/// Reads one record of partition `partition` (of `partitions`): one JSON event (plain or a
/// CloudEvent, as `POST /v1/events` takes), keyed by its customer id, on the partition
/// Kafka's default partitioner gives that key, so that its shard owns the customer.
pub fn usage_from_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    partition: u32,
    partitions: u32,
) -> Result<UsageEvent, Rejected> {
    let value = value.ok_or_else(|| {
        Rejected::new(
            "empty_record",
            "expected a JSON usage event as the record value, found no value",
        )
    })?;
    if value.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Rejected::new(
            "not_one_event",
            "expected one JSON usage event per record, found an array",
        ));
    }
    let body: EventBody = serde_json::from_slice(value).map_err(|error| {
        Rejected::new(
            "invalid_json",
            format!("expected a JSON usage event, found: {error}"),
        )
    })?;
    let event = body.into_domain().map_err(|error| {
        let field = error
            .field
            .map(|field| format!(" ({field})"))
            .unwrap_or_default();
        Rejected::new("invalid_event", format!("{}{field}", error.message))
    })?;
    let customer = event.customer.as_str();
    match key {
        Some(key) if key == customer.as_bytes() => {}
        Some(key) => {
            return Err(Rejected::new(
                "key_mismatch",
                format!(
                    "expected the record key to be the customer id {customer:?}, found {:?}",
                    String::from_utf8_lossy(key)
                ),
            ));
        }
        None => {
            return Err(Rejected::new(
                "missing_key",
                format!("expected the record key to be the customer id {customer:?}, found none"),
            ));
        }
    }
    let expected = kafka_partition_of(customer.as_bytes(), partitions);
    if expected != partition {
        // Not a bad record: the producer's partitioner is not Kafka's (kcat, librdkafka's
        // default CRC32). The intake sends it on to its owner's partition.
        return Err(Rejected::new(
            WRONG_PARTITION,
            format!(
                "expected customer {customer:?} on partition {expected} of {partitions} (Kafka's \
                 default murmur2 partitioner on the key), found it on partition {partition}"
            ),
        )
        .owned_by(expected));
    }
    Ok(event)
}

/// The code of a record on another partition than its customer's owner.
pub const WRONG_PARTITION: &str = "wrong_partition";

#[cfg(test)]
mod tests {
    use super::*;

    const PARTITIONS: u32 = 4;

    fn on_its_partition(customer: &str, value: &str) -> Result<UsageEvent, Rejected> {
        let partition = kafka_partition_of(customer.as_bytes(), PARTITIONS);
        usage_from_record(
            Some(customer.as_bytes()),
            Some(value.as_bytes()),
            partition,
            PARTITIONS,
        )
    }

    #[test]
    fn a_plain_event_and_a_cloud_event_are_read() {
        let event = on_its_partition(
            "acme",
            r#"{"id":"e1","customer_id":"acme","feature_id":"api_call","value":"2.5"}"#,
        )
        .expect("a valid event");
        assert_eq!(event.customer.as_str(), "acme");
        assert_eq!(event.value.to_string(), "2.5");
        let cloud = on_its_partition(
            "acme",
            r#"{"specversion":"1.0","id":"e2","type":"usage","source":"s","data":{"customer_id":"acme","feature_id":"api_call","value":1}}"#,
        )
        .expect("a valid CloudEvent");
        assert_eq!(cloud.id.as_str(), "e2");
    }

    #[test]
    fn every_bad_record_gets_its_reason() {
        let code = |result: Result<UsageEvent, Rejected>| result.expect_err("rejected").code;
        assert_eq!(code(on_its_partition("acme", "not json")), "invalid_json");
        assert_eq!(code(on_its_partition("acme", "[]")), "not_one_event");
        assert_eq!(
            code(on_its_partition(
                "acme",
                r#"{"id":"e1","customer_id":"acme","feature_id":"api_call"}"#
            )),
            "invalid_event"
        );
        assert_eq!(
            code(on_its_partition(
                "acme",
                r#"{"id":"e1","customer_id":"acme","feature_id":"api_call","value":"-1"}"#
            )),
            "invalid_event"
        );
        assert_eq!(
            code(on_its_partition(
                "globex",
                r#"{"id":"e1","customer_id":"acme","feature_id":"api_call","value":1}"#
            )),
            "key_mismatch"
        );
        assert_eq!(
            code(usage_from_record(
                None,
                Some(br#"{"id":"e1","customer_id":"acme","feature_id":"api_call","value":1}"#),
                0,
                1
            )),
            "missing_key"
        );
        assert_eq!(
            code(usage_from_record(Some(b"acme"), None, 0, 1)),
            "empty_record"
        );
        let right = kafka_partition_of(b"acme", PARTITIONS);
        let wrong = (right + 1) % PARTITIONS;
        let rejected = usage_from_record(
            Some(b"acme"),
            Some(br#"{"id":"e1","customer_id":"acme","feature_id":"api_call","value":1}"#),
            wrong,
            PARTITIONS,
        )
        .expect_err("on the wrong partition");
        assert_eq!(rejected.code, "wrong_partition");
        assert!(
            rejected
                .reason()
                .starts_with("wrong_partition: expected customer \"acme\"")
        );
    }

    proptest::proptest! {
        #[test]
        fn no_record_panics(
            key in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
            value in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..200)),
            partition in 0_u32..8,
        ) {
            let _ = usage_from_record(key.as_deref(), value.as_deref(), partition, 8);
        }
    }
}
