//! One gateway contract, run against the sandbox and against Stripe's HTTP API through
//! stripe-mock (when `REFILL_STRIPE_MOCK` is set).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use refill_ledger::money::{Currency, Money};
use refill_ledger::testkit::cents;
use refill_recharger::{
    ChargeRequest, ChargeResult, Gateway, GatewayError, SandboxGateway, StripeConfig, StripeGateway,
};

fn request(key: &str, method: &str, amount: Money, customer: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        amount,
        payment_method: method.to_owned(),
        customer: customer.to_owned(),
        description: format!("contract test {key}"),
    }
}

fn run_id() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

fn succeeded(result: &ChargeResult) -> bool {
    matches!(result, ChargeResult::Succeeded { payment_id } if !payment_id.is_empty())
}

/// The contract every gateway keeps. `expect_declines`: the gateway decides for real (the
/// sandbox, or Stripe in test mode); false for stripe-mock, which validates request shapes
/// but is stateless and answers a fixed PaymentIntent, so only "answered" is checked there.
async fn gateway_contract<G: Gateway>(g: &G, expect_declines: bool) {
    let run = run_id();
    let key = |name: &str| format!("contract-{run}-{name}");
    let yen = Currency::from_code("JPY").expect("jpy");

    // Cards that pay, a Stripe customer id, a Refill customer id, a zero-decimal currency.
    let visa = request(&key("visa"), "pm_card_visa", cents(500), "acme");
    let first = g.charge(&visa).await.expect("visa is answered");
    let paying = [
        request(
            &key("mastercard"),
            "pm_card_mastercard",
            cents(1_250),
            "cus_contract",
        ),
        request(&key("amex"), "pm_card_amex", cents(99), "acme"),
        request(
            &key("yen"),
            "pm_card_visa",
            Money {
                minor_units: 500,
                currency: yen,
            },
            "acme",
        ),
    ];
    for charge in &paying {
        let answer = g.charge(charge).await;
        assert!(answer.is_ok(), "{charge:?} is answered: {answer:?}");
        if expect_declines {
            assert!(
                answer.as_ref().is_ok_and(succeeded),
                "{charge:?} pays: {answer:?}"
            );
        }
    }
    // The same key again is answered (with the first answer where the gateway keeps state).
    let again = g.charge(&visa).await.expect("a replayed key is answered");

    if !expect_declines {
        println!(
            "stripe-mock accepted every request shape; declines and idempotency are checked against the sandbox"
        );
        return;
    }
    assert!(succeeded(&first), "pm_card_visa pays: {first:?}");
    assert_eq!(again, first, "the same key gets the first answer");

    for (method, code) in [
        ("pm_card_chargeDeclined", "card_declined"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
        ("pm_card_bogus", "unknown_payment_method"),
    ] {
        let declined = request(&key(method), method, cents(500), "acme");
        let expected = ChargeResult::Declined {
            code: code.to_owned(),
        };
        assert_eq!(g.charge(&declined).await, Ok(expected.clone()), "{method}");
        assert_eq!(g.charge(&declined).await, Ok(expected), "{method} replayed");
    }

    // The key reused with another amount is refused, as Stripe refuses it.
    let other_amount = request(&key("visa"), "pm_card_visa", cents(501), "acme");
    assert_eq!(
        g.charge(&other_amount).await,
        Err(GatewayError::KeyReused { key: key("visa") })
    );
}

#[tokio::test]
async fn sandbox_keeps_the_gateway_contract() {
    let sandbox = SandboxGateway::new();
    gateway_contract(&sandbox, true).await;
    // Replays and the refused reuse moved no money: one payment per paying key.
    let payments = sandbox.payments();
    assert_eq!(payments.len(), 4, "{payments:?}");
    let visa = payments
        .iter()
        .find(|(key, _)| key.ends_with("-visa"))
        .expect("visa paid");
    assert_eq!(sandbox.charges(&visa.0), 1);
    assert_eq!(sandbox.calls(&visa.0), 2);
    assert_eq!(visa.1, cents(500));
}

fn stripe_mock() -> Option<String> {
    match std::env::var("REFILL_STRIPE_MOCK") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: REFILL_STRIPE_MOCK not set (deploy/local/up stripe-mock starts it)");
            None
        }
    }
}

#[tokio::test]
async fn stripe_keeps_the_gateway_contract_against_stripe_mock() {
    let Some(url) = stripe_mock() else { return };
    let gateway =
        StripeGateway::new(StripeConfig::new("sk_test_123").with_base_url(url)).expect("gateway");
    gateway_contract(&gateway, false).await;
}

#[tokio::test]
async fn stripe_reports_refused_credentials_as_unauthorized() {
    let Some(url) = stripe_mock() else { return };
    let gateway =
        StripeGateway::new(StripeConfig::new("not-a-key").with_base_url(url)).expect("gateway");
    let answer = gateway
        .charge(&request(
            &format!("auth-{}", run_id()),
            "pm_card_visa",
            cents(500),
            "acme",
        ))
        .await;
    assert!(
        matches!(answer, Err(GatewayError::Unauthorized(_))),
        "{answer:?}"
    );
}

#[tokio::test]
async fn stripe_unreachable_is_transient() {
    // Nothing listens on port 1 of the loopback address.
    let mut config = StripeConfig::new("sk_test_123").with_base_url("http://127.0.0.1:1");
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(2);
    let gateway = StripeGateway::new(config).expect("gateway");
    assert_eq!(gateway.endpoint(), "http://127.0.0.1:1/v1/payment_intents");
    let answer = gateway
        .charge(&request("unreachable", "pm_card_visa", cents(500), "acme"))
        .await;
    assert!(
        answer.as_ref().is_err_and(GatewayError::is_transient),
        "{answer:?}"
    );
}

#[test]
fn stripe_settings_are_checked() {
    assert!(StripeGateway::new(StripeConfig::new("")).is_err());
    assert!(StripeGateway::new(StripeConfig::new("sk_test_1").with_base_url("ftp://x")).is_err());
    assert!(StripeGateway::new(StripeConfig::new("sk_test_1").with_base_url("not a url")).is_err());
    let gateway = StripeGateway::new(StripeConfig::new("sk_test_1")).expect("default");
    assert_eq!(
        gateway.endpoint(),
        "https://api.stripe.com/v1/payment_intents"
    );
    assert!(!format!("{:?}", StripeConfig::new("sk_test_secret")).contains("sk_test_secret"));
}
