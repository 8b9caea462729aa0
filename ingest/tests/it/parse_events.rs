//! The event parser against arbitrary bytes and mutated valid bodies: it never panics, a
//! body either fails whole with a 4xx or yields one result per event, and every rejected
//! event names a field. (A coverage-guided `cargo fuzz` target would need a nightly
//! toolchain; this runs on stable, in every `cargo test`.)

use proptest::prelude::*;
use refill_ingest::wire::parse_events;

const VALID: &str = r#"[{"id":"e1","customer_id":"acme","feature_id":"api-call","value":"1.5","timestamp":"2026-11-25T10:00:00Z"},
{"specversion":"1.0","id":"e2","source":"/api","type":"refill.usage","time":"2026-11-25T10:00:00Z","data":{"customer_id":"acme","feature_id":"api-call","value":2}}]"#;

fn check(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_events(body, 100) {
        Err(error) => prop_assert!(
            error.status.is_client_error(),
            "whole-body failure must be 4xx: {error:?}"
        ),
        Ok(events) => {
            for event in events {
                if let Err(error) = event {
                    prop_assert!(error.status.is_client_error());
                    prop_assert!(
                        error.field.is_some(),
                        "a rejected event names its field: {error:?}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn valid_plain_and_cloud_events_parse() {
    let events = parse_events(VALID.as_bytes(), 100).expect("a valid body");
    let ids: Vec<String> = events
        .into_iter()
        .map(|event| event.expect("valid event").id.to_string())
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert!(parse_events(b"[]", 100).expect("empty array").is_empty());
    let too_many = format!("[{}]", vec!["{}"; 101].join(","));
    assert_eq!(
        parse_events(too_many.as_bytes(), 100)
            .err()
            .map(|error| error.status.as_u16()),
        Some(413)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&body)?;
    }

    #[test]
    fn mutated_valid_bodies_never_panic(edits in proptest::collection::vec((0..VALID.len(), any::<u8>()), 1..8)) {
        let mut body = VALID.as_bytes().to_vec();
        for (at, byte) in edits {
            body[at] = byte;
        }
        check(&body)?;
    }

    #[test]
    fn any_json_value_shape_is_rejected_cleanly(value in any::<i64>(), text in "\\PC{0,40}", exponent in -40_i32..40) {
        for body in [
            format!(r#"{{"id":"e","customer_id":"c","feature_id":"f","value":{value}e{exponent}}}"#),
            format!(r#"{{"id":{text:?},"customer_id":{text:?},"feature_id":"f","value":{text:?}}}"#),
            format!(r#"[{{"id":"e","customer_id":"c","feature_id":"f","value":{value}}}, {text:?}]"#),
        ] {
            check(body.as_bytes())?;
        }
    }
}
