//! The durable sandbox: a charge survives a restart, a repeated key gets the recorded
//! charge (no new money moves) and is counted, a torn last line is ignored.

use std::io::Write as _;

use refill_ledger::testkit::cents;
use refill_recharger::{ChargeRequest, ChargeResult, SandboxGateway, SandboxRecord};

fn request(key: &str, method: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        amount: cents(300),
        payment_method: method.to_owned(),
        customer: "acme".to_owned(),
        description: "test".to_owned(),
    }
}

#[test]
fn a_durable_sandbox_answers_a_repeated_key_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("refill-sandbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("charges.jsonl");

    let first = SandboxGateway::durable(&path).expect("opens");
    let paid = first
        .charge_now(&request("acme/api-credits/1", "pm_card_visa"))
        .expect("charged");
    let declined = first
        .charge_now(&request("acme/api-credits/2", "pm_card_chargeDeclined"))
        .expect("declined");
    assert_eq!(
        declined,
        ChargeResult::Declined {
            code: "card_declined".to_owned()
        }
    );
    drop(first);

    // A crash while a line was being written leaves a torn last line: ignored.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(b"{\"event\":\"cha"))
        .expect("torn line");

    let second = SandboxGateway::durable(&path).expect("reopens");
    assert_eq!(
        second
            .charge_now(&request("acme/api-credits/1", "pm_card_visa"))
            .expect("replayed"),
        paid
    );
    assert_eq!(second.calls("acme/api-credits/1"), 2);
    assert_eq!(second.charges("acme/api-credits/1"), 1);
    assert_eq!(
        second.payments(),
        vec![("acme/api-credits/1".to_owned(), cents(300))]
    );
    drop(second);

    let records = SandboxGateway::journal(&path).expect("reads");
    let charges = records
        .iter()
        .filter(|r| matches!(r, SandboxRecord::Charge { idempotency_key, .. } if idempotency_key == "acme/api-credits/1"))
        .count();
    assert_eq!(charges, 1, "{records:?}");
    assert!(records.contains(&SandboxRecord::Call {
        idempotency_key: "acme/api-credits/1".to_owned()
    }));
    let _ = std::fs::remove_dir_all(&dir);
}
