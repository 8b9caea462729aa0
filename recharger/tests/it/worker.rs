//! The worker's guarantees over the sandbox gateway and the in-memory store fake: one
//! payment per command id through redelivery, crashes and restarts; declines; the spend
//! limit; durable reservation before any charge.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use refill_ledger::input::{RechargeOutcome, RechargeResult};
use refill_ledger::spend::CommandState;
use refill_ledger::testkit::{cents, credits};
use refill_recharger::{
    Gateway, RechargeBook, Recharger, RechargerConfig, RechargerError, SandboxGateway, StoreBook,
};

use crate::support::{Down, LosesAnswers, MemStore, command};

fn fast() -> RechargerConfig {
    RechargerConfig {
        charge_attempts_max: 3,
        retry_backoff_ms: 1,
        retry_backoff_max_ms: 4,
    }
}

async fn open<G: Gateway>(gateway: G, store: &Arc<MemStore>) -> Recharger<G, StoreBook<MemStore>> {
    Recharger::open(gateway, Arc::clone(store), fast())
        .await
        .expect("open")
}

fn charged(whole: i64, cost_cents: i64) -> RechargeResult {
    RechargeResult::Charged {
        credits: credits(whole),
        cost: cents(cost_cents),
    }
}

#[tokio::test]
async fn a_redelivered_command_is_charged_once() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let recharge = command("acme", 1, 30, 50_000, "pm_card_visa");
    let key = recharge.id.to_string();

    let mut recharger = open(Arc::clone(&sandbox), &store).await;
    let first = recharger.process(&recharge).await.expect("first delivery");
    assert_eq!(
        first,
        RechargeOutcome {
            command: recharge.id.clone(),
            result: charged(30, 300)
        }
    );
    let again = recharger.process(&recharge).await.expect("redelivery");
    assert_eq!(again, first);
    drop(recharger);

    // After a restart too, from the stored book, without calling the gateway.
    let mut restarted = open(Arc::clone(&sandbox), &store).await;
    assert_eq!(restarted.pending().await.expect("pending").len(), 0);
    assert_eq!(
        restarted.process(&recharge).await.expect("after restart"),
        first
    );

    assert_eq!(
        sandbox.calls(&key),
        1,
        "redeliveries never reach the gateway"
    );
    assert_eq!(sandbox.payments(), vec![(key, cents(300))]);
}

#[tokio::test]
async fn a_decline_is_a_declined_outcome_and_releases_the_spend() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let mut recharger = open(Arc::clone(&sandbox), &store).await;

    let declined = command("acme", 1, 30, 500, "pm_card_chargeDeclined");
    assert_eq!(
        recharger.process(&declined).await.expect("declined").result,
        RechargeResult::Declined {
            code: "card_declined".to_owned()
        }
    );
    let broke = command("bob", 1, 30, 500, "pm_card_chargeDeclinedInsufficientFunds");
    assert_eq!(
        recharger.process(&broke).await.expect("declined").result,
        RechargeResult::Declined {
            code: "insufficient_funds".to_owned()
        }
    );
    let unknown = command("carol", 1, 30, 500, "pm_nobody_knows");
    assert_eq!(
        recharger.process(&unknown).await.expect("declined").result,
        RechargeResult::Declined {
            code: "unknown_payment_method".to_owned()
        }
    );
    assert!(sandbox.payments().is_empty());

    // The declined $3.00 no longer counts: the whole $5.00 limit is left for the next one.
    let updated = command("acme", 2, 50, 500, "pm_card_visa");
    assert_eq!(
        recharger.process(&updated).await.expect("charged").result,
        charged(50, 500)
    );
}

#[tokio::test]
async fn the_spend_limit_cuts_then_stops_recharges() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let mut recharger = open(Arc::clone(&sandbox), &store).await;

    // $5.00 a month: $3.00, then $3.00 cut to the $2.00 left, then nothing.
    let first = command("acme", 1, 30, 500, "pm_card_visa");
    let second = command("acme", 2, 30, 500, "pm_card_visa");
    let third = command("acme", 3, 30, 500, "pm_card_visa");
    assert_eq!(
        recharger.process(&first).await.expect("1").result,
        charged(30, 300)
    );
    assert_eq!(
        recharger.process(&second).await.expect("2").result,
        charged(20, 200)
    );
    assert_eq!(
        recharger.process(&third).await.expect("3").result,
        RechargeResult::SpendLimitReached
    );
    assert_eq!(sandbox.calls(&third.id.to_string()), 0, "nothing to charge");
    assert_eq!(
        sandbox.payments(),
        vec![
            (first.id.to_string(), cents(300)),
            (second.id.to_string(), cents(200)),
        ],
        "the cut command is charged the cut amount"
    );
    let spent: i64 = sandbox
        .payments()
        .iter()
        .map(|(_, paid)| paid.minor_units)
        .sum();
    assert!(spent <= 500);

    // The limit-reached answer is recorded like any other.
    drop(recharger);
    let mut restarted = open(Arc::clone(&sandbox), &store).await;
    assert_eq!(
        restarted.process(&third).await.expect("3 again").result,
        RechargeResult::SpendLimitReached
    );
}

#[tokio::test]
async fn an_answer_lost_after_the_charge_is_retried_with_the_same_key() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let flaky = LosesAnswers::new(Arc::clone(&sandbox), 2);
    let mut recharger = open(flaky, &store).await;
    let recharge = command("acme", 1, 30, 50_000, "pm_card_visa");
    let key = recharge.id.to_string();

    let outcome = recharger
        .process(&recharge)
        .await
        .expect("third attempt answers");
    assert_eq!(outcome.result, charged(30, 300));
    assert_eq!(sandbox.calls(&key), 3, "three attempts, one key");
    assert_eq!(sandbox.payments(), vec![(key, cents(300))], "one payment");
}

#[tokio::test]
async fn a_crash_after_the_charge_resumes_from_the_store_with_the_same_key() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let recharge = command("acme", 7, 30, 50_000, "pm_card_visa");
    let key = recharge.id.to_string();

    // Every answer is lost: the charge happened but the worker never learns it.
    let mut recharger = open(LosesAnswers::new(Arc::clone(&sandbox), u32::MAX), &store).await;
    let failed = recharger.process(&recharge).await;
    assert!(
        matches!(
            failed,
            Err(RechargerError::GatewayUnavailable { attempts: 3, .. })
        ),
        "{failed:?}"
    );
    assert!(matches!(
        recharger.book().command_state(&recharge.id).expect("state"),
        Some(CommandState::Reserved { .. })
    ));
    drop(recharger); // the crash

    // The restarted worker finds the reservation in the store and resumes it by itself.
    let mut restarted = open(Arc::clone(&sandbox), &store).await;
    let pending: Vec<_> = restarted
        .pending()
        .await
        .expect("pending")
        .iter()
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(pending, vec![recharge.id.clone()]);
    let resumed = restarted.resume().await.expect("resume");
    assert_eq!(
        resumed,
        vec![RechargeOutcome {
            command: recharge.id.clone(),
            result: charged(30, 300)
        }]
    );
    assert_eq!(restarted.pending().await.expect("pending").len(), 0);
    assert_eq!(sandbox.calls(&key), 4, "every attempt used the command id");
    assert_eq!(
        sandbox.payments(),
        vec![(key.clone(), cents(300))],
        "one payment"
    );

    // The redelivered command then answers the same without the gateway.
    assert_eq!(
        restarted
            .process(&recharge)
            .await
            .expect("redelivery")
            .result,
        charged(30, 300)
    );
    assert_eq!(sandbox.calls(&key), 4);
}

#[tokio::test]
async fn a_gateway_down_leaves_the_reservation_and_a_redelivery_charges_once() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let recharge = command("acme", 1, 30, 500, "pm_card_visa");
    let key = recharge.id.to_string();

    let mut recharger = open(Down::default(), &store).await;
    assert!(recharger.process(&recharge).await.is_err());
    assert_eq!(recharger.gateway().calls.load(Ordering::SeqCst), 3);
    drop(recharger);

    // The reservation holds the spend across the restart: a concurrent command of the
    // same account only gets what is left.
    let mut restarted = open(Arc::clone(&sandbox), &store).await;
    let other = command("acme", 2, 30, 500, "pm_card_visa");
    assert_eq!(
        restarted.process(&other).await.expect("other").result,
        charged(20, 200)
    );
    // The redelivered command is charged with its own key, once.
    assert_eq!(
        restarted
            .process(&recharge)
            .await
            .expect("redelivery")
            .result,
        charged(30, 300)
    );
    assert_eq!(sandbox.charges(&key), 1);
    assert_eq!(sandbox.payments().len(), 2);
}

#[tokio::test]
async fn nothing_is_charged_before_the_reservation_is_durable() {
    let sandbox = Arc::new(SandboxGateway::new());
    let store = Arc::new(MemStore::default());
    let recharge = command("acme", 1, 30, 50_000, "pm_card_visa");
    let key = recharge.id.to_string();
    let mut recharger = open(Arc::clone(&sandbox), &store).await;

    store.fail_writes_after(0);
    let failed = recharger.process(&recharge).await;
    assert!(
        matches!(failed, Err(RechargerError::Store(_))),
        "{failed:?}"
    );
    assert_eq!(
        sandbox.calls(&key),
        0,
        "no charge without a durable reservation"
    );
    assert!(
        recharger
            .book()
            .command_state(&recharge.id)
            .expect("state")
            .is_none()
    );

    // The reservation is stored but the result is not: the redelivery replays the key.
    store.fail_writes_after(1);
    let failed = recharger.process(&recharge).await;
    assert!(
        matches!(failed, Err(RechargerError::Store(_))),
        "{failed:?}"
    );
    assert_eq!(sandbox.charges(&key), 1);

    store.heal();
    assert_eq!(
        recharger
            .process(&recharge)
            .await
            .expect("redelivery")
            .result,
        charged(30, 300)
    );
    assert_eq!(sandbox.calls(&key), 2);
    assert_eq!(sandbox.payments().len(), 1);
}
