//! The v1 HTTP API (DESIGN §5) over the engine: bearer auth, JSON errors naming fields,
//! body and batch limits, writes answered once the owning shard applied them.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use refill_ledger::effects::Outcome;
use refill_ledger::ids::{
    CreditTypeId, CustomerId, FeatureId, GrantId, IdempotencyKey, PaymentMethodId, PlanId,
};
use refill_ledger::input::{CustomerUpdate, SubscribeRequest};
use refill_ledger::{Input, Money, Quantity};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::engine::{Applied, Engine, now};
use crate::error::{ApiError, from_json_error};
use crate::rows;
use crate::views;
use crate::wire::{self, id};

/// Charges a one-time price (plan subscriptions) through the payment gateway.
pub trait Charger: Send + Sync + 'static {
    /// Charges `amount` once per `idempotency_key`; `Err` carries the decline or failure.
    fn charge(
        &self,
        idempotency_key: String,
        amount: Money,
        payment_method: String,
        customer: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// Sends what belongs to shards this node does not own to their owners over Kafka (scaled
/// out): catalog changes through their partitions of `refill.account-commands`, usage
/// events through `refill.usage`.
pub trait Forwarder: Send + Sync + 'static {
    /// Sends `input` to `shard`; `Ok` once the broker acknowledged it (the owner applies it).
    fn forward(
        &self,
        shard: u32,
        input: Input,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    /// Sends one usage event, as its JSON text, to `refill.usage` keyed by `customer` (the
    /// owner's intake validates and applies it); `Ok` once the broker acknowledged it.
    fn forward_usage(
        &self,
        customer: String,
        event_json: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// Limits of the API, kept together.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Most events in one `POST /v1/events`.
    pub events_per_request_max: usize,
    /// How long a write waits for its shard before answering 503.
    pub write_timeout_ms: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            body_bytes_max: 4 * 1024 * 1024,
            events_per_request_max: 10_000,
            write_timeout_ms: 5_000,
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Api {
    pub(crate) engine: Engine,
    pub(crate) api_key: Arc<String>,
    /// The console's login sessions (per process: a login holds on the worker that made it).
    pub(crate) sessions: Arc<crate::console::Sessions>,
    /// Wrong console keys of late (a guesser is slowed to a few tries a minute).
    pub(crate) login_throttle: Arc<crate::login_throttle::LoginThrottle>,
    charger: Arc<dyn Charger>,
    limits: ApiLimits,
    features: Arc<RwLock<Option<HashSet<String>>>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    forwarder: Option<Arc<dyn Forwarder>>,
}

impl Api {
    /// The API over `engine`; `features` are the feature ids known at start, checked at the
    /// edge (an unknown feature is refused with the request); `None` when this node cannot
    /// know them all (a scaled-out worker owning some shards), and the shards refuse unknown
    /// features themselves.
    pub fn new(
        engine: Engine,
        api_key: String,
        charger: Arc<dyn Charger>,
        limits: ApiLimits,
        features: Option<HashSet<String>>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        Self {
            engine,
            api_key: Arc::new(api_key),
            sessions: Arc::new(crate::console::Sessions::default()),
            login_throttle: Arc::new(crate::login_throttle::LoginThrottle::default()),
            charger,
            limits,
            features: Arc::new(RwLock::new(features)),
            metrics,
            forwarder: None,
        }
    }

    /// Catalog changes reach the shards this node does not own through `forwarder`.
    #[must_use]
    pub fn with_forwarder(mut self, forwarder: Arc<dyn Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        let v1 = Router::new()
            .route("/credit-types/{id}", put(put_credit_type))
            .route("/features/{id}", put(put_feature))
            .route("/products/{id}", put(put_product))
            .route("/plans/{id}", put(put_plan))
            .route("/customers/{id}", put(put_customer))
            .route("/customers/{id}/subscriptions", post(post_subscription))
            .route("/customers/{id}/grants", post(post_grant))
            .route("/customers/{id}/grants/{grant}/void", post(post_void))
            .route(
                "/customers/{id}/auto-recharge",
                put(put_auto_recharge).get(get_auto_recharge),
            )
            .route("/customers/{id}/credits", get(get_credits))
            .route("/customers/{id}/ledger", get(get_ledger))
            .route("/customers/{id}/recharges", get(get_recharges))
            .route(
                "/customers/{id}/entitlements/{feature}",
                get(get_entitlement),
            )
            .route("/events", post(post_events))
            .route_layer(middleware::from_fn_with_state(self.clone(), require_key));
        Router::new()
            .nest("/v1", v1)
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(get_metrics))
            .route(
                "/openapi.json",
                get(|| async { Json(crate::openapi::document()) }),
            )
            // The Credits page and its old path: HTML, behind the console's login.
            .merge(crate::console::routes())
            .layer(DefaultBodyLimit::max(self.limits.body_bytes_max))
            .with_state(self)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.limits.write_timeout_ms)
    }

    /// Applies one input on its shard and returns its outcome, if any.
    async fn write(&self, shard: u32, input: Input) -> Result<Option<Outcome>, ApiError> {
        let applied: Applied = self
            .engine
            .append_and_wait(shard, vec![input], self.timeout())
            .await?;
        Ok(applied
            .outcomes
            .into_iter()
            .find(|(index, _)| *index == 0)
            .map(|(_, outcome)| outcome))
    }

    /// Applies a catalog input on every shard (each keeps a copy of the catalog): on the
    /// shards this node owns first (a rejection stops it there), then forwarded to the
    /// others, whose owners apply it from `refill.account-commands`.
    async fn write_catalog(&self, input: Input) -> Result<(), ApiError> {
        let (owned, others): (Vec<u32>, Vec<u32>) =
            (0..self.engine.shards()).partition(|&shard| self.engine.owns(shard));
        if !others.is_empty() && self.forwarder.is_none() {
            return Err(crate::engine::EngineError::NotOwner { shard: others[0] }.into());
        }
        for shard in owned {
            if let Some(Outcome::Rejected(rejection)) = self.write(shard, input.clone()).await? {
                return Err(rejection.into());
            }
        }
        if let Some(forwarder) = &self.forwarder {
            for shard in others {
                forwarder
                    .forward(shard, input.clone())
                    .await
                    .map_err(|message| {
                        ApiError::unavailable(
                            "unavailable",
                            format!(
                                "expected the catalog change forwarded to shard {shard}, found: \
                                 {message}; send it again (it applies once)"
                            ),
                        )
                    })?;
            }
        }
        Ok(())
    }
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
pub(crate) fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The key of an `Authorization: Bearer <key>` header, if there is one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

async fn require_key(State(api): State<Api>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(key) if same_key(key.as_bytes(), api.api_key.as_bytes()) => next.run(request).await,
        _ => ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "expected Authorization: Bearer <api key>".into(),
            field: None,
        }
        .into_response(),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| from_json_error(&error, "body"))
}

fn rejected(outcome: Option<Outcome>) -> Result<Option<Outcome>, ApiError> {
    match outcome {
        Some(Outcome::Rejected(rejection)) => Err(rejection.into()),
        other => Ok(other),
    }
}

async fn put_credit_type(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let credit_type = parse::<wire::CreditTypeBody>(&body)?.into_domain(&path_id)?;
    api.write_catalog(Input::PutCreditType(credit_type)).await?;
    Ok(Json(json!({"id": path_id})))
}

async fn put_feature(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let feature = parse::<wire::FeatureBody>(&body)?.into_domain(&path_id)?;
    api.write_catalog(Input::PutFeature(feature)).await?;
    if let Some(features) = api
        .features
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
        .as_mut()
    {
        features.insert(path_id.clone());
    }
    Ok(Json(json!({"id": path_id})))
}

async fn put_product(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let product = parse::<wire::ProductBody>(&body)?.into_domain(&path_id)?;
    api.write_catalog(Input::PutProduct(product)).await?;
    Ok(Json(json!({"id": path_id})))
}

async fn put_plan(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let plan = parse::<wire::PlanBody>(&body)?.into_domain(&path_id)?;
    api.write_catalog(Input::PutPlan(plan)).await?;
    Ok(Json(json!({"id": path_id})))
}

async fn put_customer(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: wire::CustomerBody = parse(&body)?;
    let customer = id("id", CustomerId::new, &path_id)?;
    let payment_method = body
        .payment_method
        .map(|text| id("payment_method", PaymentMethodId::new, &text))
        .transpose()?;
    let input = Input::PutCustomer(CustomerUpdate {
        id: customer,
        name: body.name,
        email: body.email,
        payment_method,
    });
    rejected(api.write(api.engine.shard_of(&path_id), input).await?)?;
    Ok(Json(json!({"id": path_id})))
}

async fn post_subscription(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: wire::SubscriptionBody = parse(&body)?;
    let customer = id("id", CustomerId::new, &path_id)?;
    let plan = id("plan", PlanId::new, &body.plan)?;
    let credits = body.credits()?;
    let shard = api.engine.shard_of(&path_id);
    let key_text = body
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("subscription:{}", body.plan));
    let idempotency_key = id("idempotency_key", IdempotencyKey::new, &key_text)?;
    let (plan_for_quote, customer_for_method) = (plan.clone(), path_id.clone());
    let (quote, default_method) = api
        .engine
        .read(shard, move |state| {
            let quote = state
                .catalog()
                .plan(&plan_for_quote)
                .map(|found| found.quote(credits));
            let method = state
                .customer(&customer_for_method)
                .and_then(|found| found.payment_method.clone());
            (quote, method)
        })
        .await?;
    let (_, price) = quote.ok_or_else(|| {
        ApiError::not_found("unknown_plan", format!("unknown plan {:?}", body.plan))
    })??;
    let method = body
        .payment_method
        .or_else(|| default_method.map(|method| method.to_string()));
    let method = method.ok_or_else(|| {
        ApiError::invalid(
            "payment_method",
            "expected a payment method (here or on the customer), found none",
        )
    })?;
    if price.minor_units > 0 {
        api.charger
            .charge(
                format!("{path_id}/{key_text}"),
                price,
                method,
                path_id.clone(),
            )
            .await
            .map_err(|reason| ApiError {
                status: StatusCode::PAYMENT_REQUIRED,
                code: "payment_failed",
                message: reason,
                field: Some("payment_method".into()),
            })?;
    }
    let input = Input::Subscribe(SubscribeRequest {
        customer,
        plan,
        credits,
        paid: price,
        idempotency_key,
    });
    let outcome = rejected(api.write(shard, input).await?)?;
    let grant = match outcome {
        Some(Outcome::GrantCreated { grant, .. } | Outcome::GrantReplayed { grant, .. }) => {
            Some(grant.to_string())
        }
        _ => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"plan": body.plan, "grant": grant, "charged": {"amount": price.to_decimal().to_string(), "currency": price.currency.code()}}),
        ),
    ))
}

async fn post_grant(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let customer = id("id", CustomerId::new, &path_id)?;
    let request = parse::<wire::GrantBody>(&body)?.into_domain(customer)?;
    match rejected(
        api.write(api.engine.shard_of(&path_id), Input::Grant(request))
            .await?,
    )? {
        Some(Outcome::GrantCreated { grant, .. }) => Ok((
            StatusCode::CREATED,
            Json(json!({"id": grant.to_string(), "replayed": false})),
        )),
        Some(Outcome::GrantReplayed { grant, .. }) => Ok((
            StatusCode::OK,
            Json(json!({"id": grant.to_string(), "replayed": true})),
        )),
        other => Err(ApiError::internal(
            "internal",
            format!("expected a grant outcome, found {other:?}"),
        )),
    }
}

async fn post_void(
    State(api): State<Api>,
    Path((path_id, grant_text)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let customer = id("id", CustomerId::new, &path_id)?;
    let grant = GrantId::parse(&grant_text).ok_or_else(|| {
        ApiError::invalid(
            "grant",
            format!("expected a grant id such as \"gr_1\", found {grant_text:?}"),
        )
    })?;
    match rejected(
        api.write(
            api.engine.shard_of(&path_id),
            Input::VoidGrant { customer, grant },
        )
        .await?,
    )? {
        Some(Outcome::GrantVoided { credits, .. }) => Ok(Json(
            json!({"id": grant_text, "voided": credits.to_string()}),
        )),
        other => Err(ApiError::internal(
            "internal",
            format!("expected a void outcome, found {other:?}"),
        )),
    }
}

async fn put_auto_recharge(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let customer = id("id", CustomerId::new, &path_id)?;
    let (credit_type, settings) = parse::<wire::AutoRechargeBody>(&body)?.into_domain()?;
    let shard = api.engine.shard_of(&path_id);
    rejected(
        api.write(
            shard,
            Input::SetAutoRecharge {
                customer,
                credit_type: credit_type.clone(),
                settings,
            },
        )
        .await?,
    )?;
    auto_recharge_view(&api, shard, path_id, credit_type.to_string()).await
}

/// `?credit_type=`: which of the customer's accounts (its only one when absent).
#[derive(Deserialize)]
pub(crate) struct CreditTypeQuery {
    pub(crate) credit_type: Option<String>,
}

async fn get_auto_recharge(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    Query(query): Query<CreditTypeQuery>,
) -> Result<Json<Value>, ApiError> {
    let shard = api.engine.shard_of(&path_id);
    let credit_type = resolve_credit_type(&api, shard, &path_id, query.credit_type).await?;
    auto_recharge_view(&api, shard, path_id, credit_type).await
}

async fn auto_recharge_view(
    api: &Api,
    shard: u32,
    customer: String,
    credit_type: String,
) -> Result<Json<Value>, ApiError> {
    let at = now();
    let view = api
        .engine
        .read(shard, move |state| {
            let handle = state.find_account(&customer, &credit_type)?;
            state.account(handle).auto_recharge().map(|auto| {
                let mut view = views::auto_recharge(auto, at);
                view["credit_type"] = json!(credit_type);
                view
            })
        })
        .await?;
    view.map(Json).ok_or_else(|| {
        ApiError::not_found(
            "not_found",
            "no auto-recharge settings for this customer and credit type",
        )
    })
}

/// The credit type asked for, or the customer's only one.
pub(crate) async fn resolve_credit_type(
    api: &Api,
    shard: u32,
    customer: &str,
    asked: Option<String>,
) -> Result<String, ApiError> {
    if let Some(credit_type) = asked {
        return Ok(credit_type);
    }
    let customer_id = customer.to_owned();
    let first = if api.engine.owns(shard) {
        api.engine
            .read(shard, move |state| {
                let handle = *state.accounts_of(&customer_id).first()?;
                Some(state.credit_type_of(handle).to_string())
            })
            .await?
    } else {
        store_balances(api, customer)
            .await?
            .first()
            .map(|row| row.credit_type.clone())
    };
    first.ok_or_else(|| {
        ApiError::not_found(
            "unknown_customer",
            format!("no account for customer {customer:?}"),
        )
    })
}

/// The flushed balances of a customer, from the account store.
async fn store_balances(
    api: &Api,
    customer: &str,
) -> Result<Vec<refill_store::BalanceRow>, ApiError> {
    let store = Arc::clone(api.engine.accounts());
    let customer = customer.to_owned();
    tokio::task::spawn_blocking(move || store.balances(&customer))
        .await
        .map_err(|_| ApiError::internal("internal", "balance read failed"))?
        .map_err(|error| ApiError::from(crate::engine::EngineError::from(error)))
}

async fn get_credits(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    Query(query): Query<CreditTypeQuery>,
) -> Result<Json<Value>, ApiError> {
    let shard = api.engine.shard_of(&path_id);
    let credit_type = resolve_credit_type(&api, shard, &path_id, query.credit_type).await?;
    let at = now();
    if !api.engine.owns(shard) {
        // Another worker owns the account: answer from the store, saying how fresh it is.
        let rows = store_balances(&api, &path_id).await?;
        return rows
            .iter()
            .find(|row| row.credit_type == credit_type)
            .map(|row| Json(views::credits_from_store(row)))
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_customer",
                    "no account for this customer and credit type",
                )
            });
    }
    let view = api
        .engine
        .read(shard, move |state| {
            state
                .find_account(&path_id, &credit_type)
                .map(|handle| views::credits(state, handle, at))
        })
        .await?;
    view.map(Json).ok_or_else(|| {
        ApiError::not_found(
            "unknown_customer",
            "no account for this customer and credit type",
        )
    })
}

#[derive(Deserialize)]
struct LedgerQuery {
    credit_type: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

async fn get_ledger(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    Query(query): Query<LedgerQuery>,
) -> Result<Json<Value>, ApiError> {
    let shard = api.engine.shard_of(&path_id);
    let credit_type = resolve_credit_type(&api, shard, &path_id, query.credit_type).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    let from_seq = query.after.map_or(0, |after| after.saturating_add(1));
    let found =
        crate::reads::ledger(&api.engine, &path_id, &credit_type, from_seq, limit + 1).await?;
    let entries: Vec<Value> = found.iter().take(limit).map(rows::entry_json).collect();
    let next = (found.len() > limit)
        .then(|| entries.last().map(|entry| entry["id"].clone()))
        .flatten();
    Ok(Json(
        json!({"credit_type": credit_type, "entries": entries, "next": next}),
    ))
}

async fn get_recharges(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    Query(query): Query<CreditTypeQuery>,
) -> Result<Json<Value>, ApiError> {
    let shard = api.engine.shard_of(&path_id);
    let credit_type = resolve_credit_type(&api, shard, &path_id, query.credit_type).await?;
    let found = crate::reads::attempts(&api.engine, &path_id, &credit_type, 1_000).await?;
    let attempts: Vec<Value> = found.iter().map(rows::attempt_json).collect();
    Ok(Json(
        json!({"credit_type": credit_type, "attempts": attempts}),
    ))
}

#[derive(Deserialize)]
struct UnitsQuery {
    units: Option<String>,
}

async fn get_entitlement(
    State(api): State<Api>,
    Path((path_id, feature_text)): Path<(String, String)>,
    Query(query): Query<UnitsQuery>,
) -> Result<Json<Value>, ApiError> {
    let units_text = query.units.unwrap_or_else(|| "1".into());
    let units: Quantity = units_text
        .parse()
        .map_err(|error: refill_ledger::AmountError| {
            ApiError::invalid("units", error.to_string())
        })?;
    if units.is_negative() {
        return Err(ApiError::invalid(
            "units",
            format!("expected zero or more, found {units_text}"),
        ));
    }
    let feature = id("feature", FeatureId::new, &feature_text)?;
    let shard = api.engine.shard_of(&path_id);
    let answer = api
        .engine
        .read(shard, move |state| {
            let rate = state.catalog().feature_rate(feature.as_str())?;
            let credit_type: CreditTypeId = state.catalog().credit_type_at(rate.credit_type).id.clone();
            let required = units.rate(rate.credits_per_unit)?;
            let balance = state.find_account(&path_id, credit_type.as_str()).map_or(refill_ledger::Credits::ZERO, |handle| state.account(handle).balance());
            Some(json!({"has_access": balance >= required, "credits_required": required.to_string(), "balance": balance.to_string(), "credit_type": credit_type.as_str()}))
        })
        .await?;
    answer.map(Json).ok_or_else(|| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "unknown_feature",
        message: format!("unknown feature {feature_text:?} (or units out of range)"),
        field: Some("feature".into()),
    })
}

#[derive(Deserialize)]
struct EventsQuery {
    sync: Option<bool>,
}

async fn post_events(
    State(api): State<Api>,
    Query(query): Query<EventsQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let events = wire::parse_events_with_text(&body, api.limits.events_per_request_max)?;
    let mut rejected = Vec::new();
    // Events of customers another worker owns: (customer, JSON text), sent to refill.usage.
    let mut forwarded: Vec<(String, String)> = Vec::new();
    let shards = api.engine.shards() as usize;
    let mut per_shard: Vec<(Vec<usize>, Vec<Input>)> =
        (0..shards).map(|_| (Vec::new(), Vec::new())).collect();
    {
        let features = api
            .features
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        for (index, (text, event)) in events.into_iter().enumerate() {
            match event {
                Ok(event)
                    if features
                        .as_ref()
                        .is_some_and(|known| !known.contains(event.feature.as_str())) =>
                {
                    rejected.push(json!({"index": index, "error": {"code": "unknown_feature", "message": format!("unknown feature {:?}", event.feature.as_str()), "field": "feature_id"}}));
                }
                Ok(event)
                    if api.forwarder.is_some()
                        && !api.engine.owns(api.engine.shard_of(event.customer.as_str())) =>
                {
                    forwarded.push((event.customer.as_str().to_owned(), text.get().to_owned()));
                }
                Ok(event) => {
                    let shard = api.engine.shard_of(event.customer.as_str()) as usize;
                    per_shard[shard].0.push(index);
                    per_shard[shard].1.push(Input::Usage(event));
                }
                Err(error) => rejected.push(json!({"index": index, "error": {"code": error.code, "message": error.message, "field": error.field}})),
            }
        }
    }
    metrics::counter!("refill_ingest_events_rejected_total", "reason" => "invalid")
        .increment(rejected.len() as u64);
    let mut accepted = 0_usize;
    let mut duplicates = 0_usize;
    for (shard, (indexes, inputs)) in (0_u32..).zip(per_shard) {
        if inputs.is_empty() {
            continue;
        }
        accepted += inputs.len();
        if query.sync.unwrap_or(false) {
            let applied = api
                .engine
                .append_and_wait(shard, inputs, api.timeout())
                .await?;
            for (position, outcome) in applied.outcomes {
                let index = indexes[position as usize];
                match outcome {
                    Outcome::Duplicate => duplicates += 1,
                    Outcome::Rejected(rejection) => {
                        accepted -= 1;
                        rejected.push(json!({"index": index, "error": {"code": rejection.code(), "message": rejection.to_string(), "field": rejection.field()}}));
                    }
                    _ => {}
                }
            }
        } else {
            let engine = api.engine.clone();
            tokio::task::spawn_blocking(move || engine.append(shard, inputs))
                .await
                .map_err(|_| ApiError::unavailable("unavailable", "append failed"))??;
        }
    }
    let forwarded_count = forwarded.len();
    if let Some(forwarder) = &api.forwarder
        && !forwarded.is_empty()
    {
        // All sent at once, then awaited: one broker round trip for the lot.
        let mut sends = tokio::task::JoinSet::new();
        for (customer, text) in forwarded.drain(..) {
            sends.spawn(forwarder.forward_usage(customer, text));
            accepted += 1;
        }
        while let Some(sent) = sends.join_next().await {
            sent.map_err(|error| ApiError::internal("internal", error.to_string()))?
                .map_err(|message| {
                    ApiError::unavailable(
                        "unavailable",
                        format!(
                            "expected the events of customers another worker owns forwarded \
                             to refill.usage, found: {message}; send the request again (each \
                             event id applies once)"
                        ),
                    )
                })?;
        }
    }
    metrics::counter!("refill_ingest_events_accepted_total").increment(accepted as u64);
    let mut answer = json!({"accepted": accepted, "rejected": rejected});
    if query.sync.unwrap_or(false) {
        answer["duplicates"] = json!(duplicates);
    }
    if forwarded_count > 0 {
        // Durable in refill.usage, applied by their owners: not waited for, even with sync.
        answer["forwarded"] = json!(forwarded_count);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Ready, with the shards this node owns (all of them on one machine; those of its
/// partitions when scaled out over Kafka) and the log offset each has applied.
async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let applied = api.engine.applied_offsets();
    let owned: Vec<Value> = api
        .engine
        .owned_shards()
        .into_iter()
        .map(|shard| json!({"shard": shard, "applied_through": applied.get(shard as usize)}))
        .collect();
    let failures: Vec<Value> = api
        .engine
        .failures()
        .into_iter()
        .map(|(shard, reason)| json!({"shard": shard, "reason": reason}))
        .collect();
    let status = if failures.is_empty() {
        "ready"
    } else {
        "not_ready"
    };
    let code = if failures.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(
            json!({"status": status, "shards": api.engine.shards(), "owned": owned, "failed": failures}),
        ),
    )
}

async fn get_metrics(State(api): State<Api>) -> Response {
    match &api.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not installed").into_response(),
    }
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
