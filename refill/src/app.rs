//! The engine's wiring on the embedded default, shared by `refill serve` and the tests:
//! the embedded log and store, one worker per shard, the recharger with the sandbox
//! gateway, and the HTTP router.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use refill_ingest::engine::{Engine, EngineConfig};
use refill_ingest::http::{Api, ApiLimits, Charger};
use refill_ledger::{Input, Money};
use refill_recharger::gateway::{ChargeRequest, ChargeResult, Gateway};
use refill_recharger::sandbox::SandboxGateway;
use refill_recharger::worker::{Recharger, RechargerConfig};
use refill_store::embedded::Embedded;
use refill_store::{AccountStore, KvAccountStore, Log, Store};

/// A running engine: its router and what must be stopped.
pub struct App {
    /// The HTTP API.
    pub router: axum::Router,
    /// The engine (stop it to drain and snapshot).
    pub engine: Engine,
    /// The sandbox gateway (its charges, for tests).
    pub gateway: Arc<SandboxGateway>,
}

/// The sandbox gateway charging plan prices for subscriptions.
pub struct GatewayCharger(pub Arc<SandboxGateway>);

impl Charger for GatewayCharger {
    fn charge(
        &self,
        idempotency_key: String,
        amount: Money,
        payment_method: String,
        customer: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let gateway = Arc::clone(&self.0);
        Box::pin(async move {
            let request = ChargeRequest {
                idempotency_key,
                amount,
                payment_method,
                customer,
                description: "Refill plan subscription".into(),
            };
            match gateway.charge(&request).await {
                Ok(ChargeResult::Succeeded { .. }) => Ok(()),
                Ok(ChargeResult::Declined { code }) => {
                    Err(format!("the payment was declined: {code}"))
                }
                Err(error) => Err(error.to_string()),
            }
        })
    }
}

/// Opens the data folder and starts everything on the embedded log and store; must run
/// inside a tokio runtime.
pub async fn start(
    data: &Path,
    shards: u32,
    api_key: String,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<App> {
    let embedded = Arc::new(
        Embedded::open(&data.join("db"), shards)
            .with_context(|| format!("cannot open the embedded store in {}", data.display()))?,
    );
    start_on(embedded.clone(), embedded, shards, api_key, metrics).await
}

/// Starts everything on the given log and store (embedded, Kafka, CQL), with the account
/// tables kept in that store's key-value tables.
pub async fn start_on(
    log: Arc<dyn Log>,
    store: Arc<dyn Store>,
    shards: u32,
    api_key: String,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<App> {
    let accounts: Arc<dyn AccountStore> = Arc::new(KvAccountStore::new(Arc::clone(&store)));
    start_with(
        log,
        store,
        accounts,
        shards,
        api_key,
        metrics,
        EngineConfig::default(),
    )
    .await
}

/// Starts everything on the given log, key-value store (the recharger's book) and account
/// store (balances, ledger, checkpoints), with `config`'s settings (its shard count is
/// `shards`).
pub async fn start_with(
    log: Arc<dyn Log>,
    store: Arc<dyn Store>,
    accounts: Arc<dyn AccountStore>,
    shards: u32,
    api_key: String,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    config: EngineConfig,
) -> anyhow::Result<App> {
    anyhow::ensure!(
        log.partitions() == shards,
        "expected a log of {shards} partitions (one per shard), found {}",
        log.partitions()
    );
    let (commands_tx, mut commands_rx) = refill_ingest::engine::command_channel();
    let recharger_store = Arc::clone(&store);
    let config = EngineConfig { shards, ..config };
    let engine = tokio::task::spawn_blocking(move || {
        Engine::start(log, store, accounts, config, commands_tx)
    })
    .await??;

    let gateway = Arc::new(SandboxGateway::new());
    let mut recharger = Recharger::open(
        Arc::clone(&gateway),
        Arc::new(recharger_store),
        RechargerConfig::default(),
    )
    .await
    .context("cannot open the recharger")?;
    let recharge_engine = engine.clone();
    tokio::spawn(async move {
        // Commands reserved before a restart are finished first, with their own keys.
        let mut outcomes = recharger.resume().await.unwrap_or_else(|error| {
            eprintln!("recharger: resume failed: {error}");
            Vec::new()
        });
        loop {
            for outcome in outcomes.drain(..) {
                let shard = recharge_engine.shard_of(outcome.command.customer.as_str());
                let engine = recharge_engine.clone();
                metrics::counter!("refill_recharger_outcomes_total", "result" => result_label(&outcome.result)).increment(1);
                if let Err(error) = tokio::task::spawn_blocking(move || {
                    engine.append(shard, vec![Input::RechargeOutcome(outcome)])
                })
                .await
                {
                    eprintln!("recharger: cannot send an outcome: {error}");
                }
            }
            let Some(command) = commands_rx.recv().await else {
                return;
            };
            match recharger.process(&command).await {
                Ok(outcome) => outcomes.push(outcome),
                // The command stays reserved in the store; the shard re-publishes it at restart.
                Err(error) => eprintln!("recharger: {} failed: {error}", command.id),
            }
        }
    });

    let features: HashSet<String> = engine
        .read(0, |shard| {
            shard
                .catalog()
                .feature_ids()
                .into_iter()
                .map(|id| id.to_string())
                .collect()
        })
        .await?;
    let api = Api::new(
        engine.clone(),
        api_key,
        Arc::new(GatewayCharger(Arc::clone(&gateway))),
        ApiLimits::default(),
        Some(features),
        metrics,
    );
    Ok(App {
        router: api.router(),
        engine,
        gateway,
    })
}

fn result_label(result: &refill_ledger::input::RechargeResult) -> &'static str {
    match result {
        refill_ledger::input::RechargeResult::Charged { .. } => "succeeded",
        refill_ledger::input::RechargeResult::Declined { .. } => "declined",
        refill_ledger::input::RechargeResult::SpendLimitReached => "spend_limit_reached",
    }
}

/// Opens the log named by a URL: `embedded` (in `data`) or `kafka://HOST:PORT`.
pub fn open_log(
    url: &str,
    data: &Path,
    shards: u32,
    embedded: &mut Option<Arc<Embedded>>,
) -> anyhow::Result<Arc<dyn Log>> {
    if url == "embedded" {
        return Ok(embedded_in(data, shards, embedded)?);
    }
    let address = url
        .strip_prefix("kafka://")
        .with_context(|| format!("expected --log embedded or kafka://HOST:PORT, found {url:?}"))?;
    let log =
        refill_store_kafka::KafkaLog::connect(address, refill_store_kafka::JOURNAL_TOPIC, shards)
            .with_context(|| format!("cannot use Kafka at {address}"))?;
    Ok(Arc::new(log))
}

/// Opens the store named by a URL: `embedded` (in `data`), `scylla://HOST:PORT` or
/// `cassandra://HOST:PORT` (keyspace `refill`, created by `refill migrate`).
pub fn open_store(
    url: &str,
    data: &Path,
    shards: u32,
    embedded: &mut Option<Arc<Embedded>>,
) -> anyhow::Result<Arc<dyn Store>> {
    if url == "embedded" {
        return Ok(embedded_in(data, shards, embedded)?);
    }
    if !url.starts_with("scylla://") && !url.starts_with("cassandra://") {
        anyhow::bail!(
            "expected --store embedded, scylla://HOST:PORT or cassandra://HOST:PORT, found {url:?}"
        );
    }
    open_cql_store(url, CQL_KEYSPACE)
}

/// The account store that goes with a store opened by [`open_store`] or
/// [`open_cql_store`]: the typed CQL tables beside a CQL store, the key-value tables of any
/// other (the embedded one).
pub fn account_store_for(
    url: &str,
    keyspace: &str,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Arc<dyn AccountStore>> {
    if url.starts_with("scylla://") || url.starts_with("cassandra://") {
        let cql = open_cql(url, keyspace)?;
        return Ok(Arc::new(refill_store_cql::CqlAccountStore::new(cql)));
    }
    Ok(Arc::new(KvAccountStore::new(Arc::clone(store))))
}

/// Connects to the CQL store of a `scylla://HOST:PORT` or `cassandra://HOST:PORT` URL, in
/// `keyspace`.
pub fn open_cql_store(url: &str, keyspace: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_cql(url, keyspace)?)
}

fn open_cql(url: &str, keyspace: &str) -> anyhow::Result<Arc<refill_store_cql::CqlStore>> {
    let address = url
        .strip_prefix("scylla://")
        .or_else(|| url.strip_prefix("cassandra://"))
        .with_context(|| {
            format!("expected scylla://HOST:PORT or cassandra://HOST:PORT, found {url:?}")
        })?;
    let store = refill_store_cql::CqlStore::connect(address, keyspace).with_context(|| {
        format!("cannot use keyspace {keyspace} of the CQL store at {address} (has `refill migrate` run?)")
    })?;
    Ok(Arc::new(store))
}

/// The keyspace `refill migrate` creates and `serve` uses.
pub const CQL_KEYSPACE: &str = "refill";

fn embedded_in(
    data: &Path,
    shards: u32,
    embedded: &mut Option<Arc<Embedded>>,
) -> anyhow::Result<Arc<Embedded>> {
    if let Some(open) = embedded {
        return Ok(Arc::clone(open));
    }
    let open = Arc::new(
        Embedded::open(&data.join("db"), shards)
            .with_context(|| format!("cannot open the embedded store in {}", data.display()))?,
    );
    *embedded = Some(Arc::clone(&open));
    Ok(open)
}
