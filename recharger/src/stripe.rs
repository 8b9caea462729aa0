//! The Stripe gateway: one off-session PaymentIntent per charge over Stripe's real HTTP
//! API (`POST /v1/payment_intents` with `confirm=true`), the command id as Stripe's
//! `Idempotency-Key`, and Stripe's answers mapped to a final result or a retryable error.
//! The base URL is configurable so tests can point it at stripe-mock.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use crate::error::RechargerError;
use crate::gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};

/// Stripe's API.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";

/// How to reach Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// Base URL without a trailing `/v1` ([`DEFAULT_BASE_URL`], or stripe-mock's address).
    pub base_url: String,
    /// The secret API key (`sk_live_...` or `sk_test_...`), sent as a bearer token.
    pub secret_key: String,
    /// Deadline of one HTTP request; past it the charge is retried with the same key.
    pub request_timeout: Duration,
    /// Deadline of connecting.
    pub connect_timeout: Duration,
}

impl StripeConfig {
    /// Stripe's API with `secret_key`, 30 s per request and 10 s to connect.
    pub fn new(secret_key: impl Into<String>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            secret_key: secret_key.into(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The same settings against another base URL (stripe-mock: `http://127.0.0.1:12111`).
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret key.
        f.debug_struct("StripeConfig")
            .field("base_url", &self.base_url)
            .field("secret_key", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A [`Gateway`] over Stripe's HTTP API.
pub struct StripeGateway {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    secret_key: String,
}

impl fmt::Debug for StripeGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeGateway")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl StripeGateway {
    /// A gateway with its own HTTP client (rustls).
    pub fn new(config: StripeConfig) -> Result<Self, RechargerError> {
        if config.secret_key.is_empty() {
            return Err(RechargerError::Config(
                "expected a Stripe secret key, found an empty one".to_owned(),
            ));
        }
        let base = reqwest::Url::parse(config.base_url.trim_end_matches('/')).map_err(|error| {
            RechargerError::Config(format!(
                "expected a base URL such as {DEFAULT_BASE_URL}, found {:?}: {error}",
                config.base_url
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(RechargerError::Config(format!(
                "expected an http or https base URL, found {:?}",
                config.base_url
            )));
        }
        let endpoint = reqwest::Url::parse(&format!(
            "{}/v1/payment_intents",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|error| RechargerError::Config(format!("bad endpoint URL: {error}")))?;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|error| RechargerError::Config(format!("HTTP client: {error}")))?;
        Ok(Self {
            client,
            endpoint,
            secret_key: config.secret_key,
        })
    }

    /// The PaymentIntent endpoint charges go to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    async fn charge_once(&self, request: &ChargeRequest) -> Result<ChargeResult, GatewayError> {
        let response = self
            .client
            .post(self.endpoint.clone())
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", &request.idempotency_key)
            .form(&form_fields(request))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let should_retry = response
            .headers()
            .get("stripe-should-retry")
            .and_then(|value| value.to_str().ok())
            .map(|value| value == "true");
        let body = response.bytes().await.map_err(transport_error)?;
        interpret(status, should_retry, &body, &request.idempotency_key)
    }
}

impl Gateway for StripeGateway {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeResult, GatewayError>> + Send {
        self.charge_once(request)
    }
}

/// The form of `POST /v1/payment_intents`: confirmed at once, off-session, with the saved
/// payment method.
fn form_fields(request: &ChargeRequest) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("amount", request.amount.minor_units.to_string()),
        (
            "currency",
            request.amount.currency.code().to_ascii_lowercase(),
        ),
        ("payment_method", request.payment_method.clone()),
        ("confirm", "true".to_owned()),
        ("off_session", "true".to_owned()),
        ("description", request.description.clone()),
        (
            "metadata[refill_command_id]",
            request.idempotency_key.clone(),
        ),
    ];
    // Refill's own customer ids mean nothing to Stripe; only a Stripe customer id is sent.
    if request.customer.starts_with("cus_") {
        fields.push(("customer", request.customer.clone()));
    }
    fields
}

fn transport_error(error: reqwest::Error) -> GatewayError {
    if error.is_builder() {
        return GatewayError::Unexpected(format!("request could not be built: {error}"));
    }
    // Timeouts, refused or reset connections, bodies cut short: the charge may or may not
    // have happened, and Stripe's idempotency makes the retry safe.
    GatewayError::Transient(error.to_string())
}

/// A PaymentIntent, as far as the recharger reads it.
#[derive(Debug, Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
    #[serde(default)]
    last_payment_error: Option<ApiError>,
}

/// Stripe's error envelope `{"error": {...}}`.
#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ApiError,
}

/// Stripe's error object.
#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ApiError {
    /// The most specific reason: the issuer's decline code, else the error code.
    fn reason(&self) -> Option<&str> {
        self.decline_code.as_deref().or(self.code.as_deref())
    }
}

/// Maps Stripe's answer (HTTP status, `Stripe-Should-Retry` header, body) to a result.
fn interpret(
    status: u16,
    should_retry: Option<bool>,
    body: &[u8],
    key: &str,
) -> Result<ChargeResult, GatewayError> {
    if (200..300).contains(&status) {
        let intent: PaymentIntent = serde_json::from_slice(body).map_err(|error| {
            GatewayError::Unexpected(format!(
                "HTTP {status} with a body that is not a PaymentIntent: {error}"
            ))
        })?;
        return interpret_intent(intent);
    }
    if status >= 500 {
        return Err(GatewayError::Transient(format!(
            "HTTP {status} from Stripe"
        )));
    }
    let error = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|envelope| envelope.error)
        .unwrap_or_default();
    let message = error
        .message
        .clone()
        .unwrap_or_else(|| format!("HTTP {status} without a Stripe error body"));
    let kind = error.kind.as_deref().unwrap_or("");
    // A request with this key still running, rate limits, lock timeouts and failing
    // dependencies: Stripe says when a retry may succeed.
    if should_retry == Some(true)
        || matches!(status, 409 | 424 | 429)
        || error.code.as_deref() == Some("idempotency_key_in_use")
    {
        return Err(GatewayError::Transient(format!("HTTP {status}: {message}")));
    }
    if kind == "idempotency_error" {
        return Err(GatewayError::KeyReused {
            key: key.to_owned(),
        });
    }
    if status == 402 && kind == "card_error" {
        return Ok(ChargeResult::Declined {
            code: error.reason().unwrap_or("card_declined").to_owned(),
        });
    }
    if matches!(status, 401 | 403) {
        return Err(GatewayError::Unauthorized(format!(
            "HTTP {status}: {message}"
        )));
    }
    Err(GatewayError::Refused {
        status,
        code: error
            .code
            .clone()
            .or_else(|| error.kind.clone())
            .unwrap_or_else(|| "invalid_request".to_owned()),
        message,
    })
}

fn interpret_intent(intent: PaymentIntent) -> Result<ChargeResult, GatewayError> {
    match intent.status.as_str() {
        "succeeded" => Ok(ChargeResult::Succeeded {
            payment_id: intent.id,
        }),
        // Confirmed but the payment failed (Stripe usually answers 402 for this).
        "requires_payment_method" => Ok(ChargeResult::Declined {
            code: intent
                .last_payment_error
                .as_ref()
                .and_then(ApiError::reason)
                .unwrap_or("payment_failed")
                .to_owned(),
        }),
        // Off-session, nobody can authenticate: a decline the customer must resolve.
        "requires_action" | "requires_confirmation" => Ok(ChargeResult::Declined {
            code: "authentication_required".to_owned(),
        }),
        "canceled" => Ok(ChargeResult::Declined {
            code: "canceled".to_owned(),
        }),
        // Not settled yet; the same key answers again later.
        "processing" => Err(GatewayError::Transient(format!(
            "payment {} is still processing",
            intent.id
        ))),
        other => Err(GatewayError::Unexpected(format!(
            "payment {} in status {other:?} (expected succeeded or a failure)",
            intent.id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(status: u16, body: &str) -> Result<ChargeResult, GatewayError> {
        interpret(status, None, body.as_bytes(), "k")
    }

    #[test]
    fn a_succeeded_intent_is_a_payment() {
        assert_eq!(
            decode(
                200,
                r#"{"id":"pi_1","object":"payment_intent","status":"succeeded"}"#
            ),
            Ok(ChargeResult::Succeeded {
                payment_id: "pi_1".to_owned()
            })
        );
    }

    #[test]
    fn card_errors_are_declines_with_the_most_specific_code() {
        let body = r#"{"error":{"type":"card_error","code":"card_declined",
            "decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        assert_eq!(
            decode(402, body),
            Ok(ChargeResult::Declined {
                code: "insufficient_funds".to_owned()
            })
        );
        let body = r#"{"error":{"type":"card_error","code":"expired_card"}}"#;
        assert_eq!(
            decode(402, body),
            Ok(ChargeResult::Declined {
                code: "expired_card".to_owned()
            })
        );
    }

    #[test]
    fn failed_or_unauthenticated_intents_are_declines() {
        let body = r#"{"id":"pi_2","status":"requires_payment_method",
            "last_payment_error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline"}}"#;
        assert_eq!(
            decode(200, body),
            Ok(ChargeResult::Declined {
                code: "generic_decline".to_owned()
            })
        );
        assert_eq!(
            decode(200, r#"{"id":"pi_3","status":"requires_action"}"#),
            Ok(ChargeResult::Declined {
                code: "authentication_required".to_owned()
            })
        );
    }

    #[test]
    fn server_errors_rate_limits_and_key_in_use_are_transient() {
        assert!(decode(500, "").is_err_and(|e| e.is_transient()));
        assert!(decode(503, "<html>").is_err_and(|e| e.is_transient()));
        assert!(
            decode(
                429,
                r#"{"error":{"type":"invalid_request_error","code":"rate_limit"}}"#
            )
            .is_err_and(|e| e.is_transient())
        );
        assert!(
            decode(
                409,
                r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use"}}"#
            )
            .is_err_and(|e| e.is_transient())
        );
        assert!(
            decode(200, r#"{"id":"pi_4","status":"processing"}"#).is_err_and(|e| e.is_transient())
        );
        assert!(interpret(400, Some(true), b"{}", "k").is_err_and(|e| e.is_transient()));
    }

    #[test]
    fn other_client_errors_are_final_and_not_declines() {
        let body = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
        assert_eq!(
            decode(400, body),
            Err(GatewayError::KeyReused {
                key: "k".to_owned()
            })
        );
        let body =
            r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided"}}"#;
        assert!(matches!(
            decode(401, body),
            Err(GatewayError::Unauthorized(_))
        ));
        let body = r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such PaymentMethod: 'pm_x'"}}"#;
        assert!(matches!(
            decode(400, body),
            Err(GatewayError::Refused { status: 400, ref code, .. }) if code == "resource_missing"
        ));
        assert!(matches!(
            decode(200, "not json"),
            Err(GatewayError::Unexpected(_))
        ));
        assert!(matches!(
            decode(200, r#"{"id":"pi_5","status":"requires_capture"}"#),
            Err(GatewayError::Unexpected(_))
        ));
    }

    #[test]
    fn the_form_sends_stripe_customers_only() {
        let mut request = ChargeRequest {
            idempotency_key: "acme/api-credits/1".to_owned(),
            amount: refill_ledger::Money {
                minor_units: 500,
                currency: refill_ledger::Currency::USD,
            },
            payment_method: "pm_card_visa".to_owned(),
            customer: "acme".to_owned(),
            description: "d".to_owned(),
        };
        let fields = form_fields(&request);
        assert!(fields.contains(&("amount", "500".to_owned())));
        assert!(fields.contains(&("currency", "usd".to_owned())));
        assert!(fields.iter().all(|(name, _)| *name != "customer"));
        request.customer = "cus_123".to_owned();
        assert!(form_fields(&request).contains(&("customer", "cus_123".to_owned())));
    }
}
