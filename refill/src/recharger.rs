//! `refill recharger`: the recharger as its own process, for scale-out. It consumes
//! `refill.recharge-commands` in the consumer group `refill-recharger`, keeps its book in the
//! CQL store (lightweight transactions, so any number of these processes can run), charges
//! the sandbox or Stripe, and publishes each outcome on `refill.account-commands`. The work
//! is in `refill_recharger::kafka`; this file parses flags and wires it.
//!
//! Test-only fault injection: `REFILL_TEST_FAULT=exit-after-charge` makes the process abort
//! right after the gateway answered "succeeded" (before the book or Kafka hear of it), so
//! the failure tests can check that a restart charges nothing twice. Never set it in
//! production; the process says so loudly at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use refill_recharger::kafka::{self, KafkaSettings};
use refill_recharger::{
    ChargeRequest, ChargeResult, CqlBook, Gateway, GatewayError, Recharger, RechargerConfig,
    SandboxGateway, StripeConfig, StripeGateway,
};
use refill_store_cql::CqlStore;

/// The environment variable of the test-only fault injection.
pub const TEST_FAULT_ENV: &str = "REFILL_TEST_FAULT";

/// Arguments of `refill recharger`.
#[derive(clap::Args)]
pub struct RechargerArgs {
    /// Kafka bootstrap address (`HOST:PORT`).
    #[arg(long, env = "REFILL_KAFKA")]
    kafka: String,
    /// The CQL store: `scylla://HOST:PORT` or `cassandra://HOST:PORT` (migrated with
    /// `refill migrate`).
    #[arg(long, env = "REFILL_STORE")]
    store: String,
    /// The CQL keyspace.
    #[arg(long, env = "REFILL_KEYSPACE", default_value = refill::app::CQL_KEYSPACE)]
    keyspace: String,
    /// A prefix before every topic and the consumer group (tests, shared clusters).
    #[arg(long, env = "REFILL_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// The payment gateway: `sandbox` (Stripe's test cards, no network) or `stripe`.
    #[arg(long, env = "REFILL_GATEWAY", default_value = "sandbox", value_parser = ["sandbox", "stripe"])]
    gateway: String,
    /// Stripe's API base URL (stripe-mock: `http://127.0.0.1:12111`); with `--gateway stripe`.
    #[arg(long, env = "REFILL_STRIPE_URL")]
    stripe_url: Option<String>,
    /// Stripe's secret key; required with `--gateway stripe`.
    #[arg(long, env = "REFILL_STRIPE_KEY", hide_env_values = true)]
    stripe_key: Option<String>,
    /// Keep the sandbox's charges in this file (JSON lines, fsynced), so a restarted
    /// process answers a repeated idempotency key with the recorded charge.
    #[arg(long, env = "REFILL_SANDBOX_CHARGES")]
    sandbox_charges: Option<PathBuf>,
    /// Serve Prometheus metrics on `http://ADDR/metrics`.
    #[arg(long, env = "REFILL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// The gateway chosen on the command line.
enum AnyGateway {
    Sandbox(SandboxGateway),
    Stripe(StripeGateway),
}

/// The chosen gateway, with the test-only fault when asked for.
struct ChosenGateway {
    inner: AnyGateway,
    abort_after_charge: bool,
}

impl Gateway for ChosenGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeResult, GatewayError> {
        let answer = match &self.inner {
            AnyGateway::Sandbox(gateway) => gateway.charge(request).await,
            AnyGateway::Stripe(gateway) => gateway.charge(request).await,
        };
        if self.abort_after_charge && matches!(answer, Ok(ChargeResult::Succeeded { .. })) {
            eprintln!(
                "refill recharger: {TEST_FAULT_ENV}=exit-after-charge: aborting after the \
                 charge of {}",
                request.idempotency_key
            );
            std::process::abort();
        }
        answer
    }
}

/// Runs the recharger until SIGTERM or Ctrl-C.
pub fn run(args: &RechargerArgs) -> anyhow::Result<()> {
    let abort_after_charge = match std::env::var(TEST_FAULT_ENV) {
        Ok(fault) if fault == "exit-after-charge" => {
            eprintln!(
                "refill recharger: WARNING: {TEST_FAULT_ENV}=exit-after-charge is set: this \
                 process will abort after its first successful charge. Test-only; never in \
                 production."
            );
            true
        }
        Ok(fault) => anyhow::bail!(
            "expected {TEST_FAULT_ENV} unset or exit-after-charge (test-only), found {fault:?}"
        ),
        Err(_) => false,
    };
    let address = args
        .store
        .strip_prefix("scylla://")
        .or_else(|| args.store.strip_prefix("cassandra://"))
        .with_context(|| {
            format!(
                "expected --store scylla://HOST:PORT or cassandra://HOST:PORT, found {:?}",
                args.store
            )
        })?;
    let inner = match args.gateway.as_str() {
        "stripe" => {
            let key = args
                .stripe_key
                .clone()
                .context("expected --stripe-key (or REFILL_STRIPE_KEY) with --gateway stripe")?;
            let mut config = StripeConfig::new(key);
            if let Some(url) = &args.stripe_url {
                config = config.with_base_url(url.clone());
            }
            AnyGateway::Stripe(StripeGateway::new(config).context("cannot set up Stripe")?)
        }
        _ => AnyGateway::Sandbox(match &args.sandbox_charges {
            Some(path) => SandboxGateway::durable(path)?,
            None => SandboxGateway::new(),
        }),
    };
    let gateway = ChosenGateway {
        inner,
        abort_after_charge,
    };
    let store = CqlStore::connect(address, &args.keyspace)
        .with_context(|| format!("cannot reach the CQL store at {address}"))?;
    let book = Arc::new(CqlBook::new(Arc::new(store)));
    let settings = KafkaSettings::new(&args.kafka, &args.topic_prefix);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        if let Some(listen) = args.metrics_listen {
            serve_metrics(listen).await?;
        }
        let recharger = Recharger::new(gateway, book, RechargerConfig::default());
        kafka::run(recharger, &settings, shutdown())
            .await
            .context("the recharger stopped on an error")
    })
}

/// Installs the Prometheus recorder and serves `/metrics` on `listen` in the background.
async fn serve_metrics(listen: SocketAddr) -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    kafka::describe_metrics();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(handle.render())),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            eprintln!("refill recharger: the metrics server failed: {error}");
        }
    });
    eprintln!("refill recharger: metrics on http://{listen}/metrics");
    Ok(())
}

async fn shutdown() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
