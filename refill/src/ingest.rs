//! `refill ingest`: one ingest worker of a scaled-out deployment. It joins the consumer
//! group on `refill.usage`, owns the shards of the partitions the group gives it (their
//! journal on Kafka, their state in the CQL store), sends threshold crossings to
//! `refill.recharge-commands`, and serves the HTTP API for the accounts it owns. Start as
//! many as `refill.usage` has partitions; `refill recharger` applies the commands.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use refill_ingest::engine::{Engine, EngineConfig};
use refill_ingest::http::{Api, ApiLimits};
use refill_ingest::intake::{AccountCommandForwarder, Intake, IntakeConfig, spawn_command_sink};
use refill_recharger::sandbox::SandboxGateway;
use refill_store_kafka::{KafkaLog, Topics};

/// Arguments of `refill ingest`.
#[derive(clap::Args)]
pub struct IngestArgs {
    /// Kafka bootstrap address (HOST:PORT).
    #[arg(long, env = "REFILL_KAFKA")]
    kafka: String,
    /// The CQL store: `scylla://HOST:PORT` or `cassandra://HOST:PORT`.
    #[arg(long, env = "REFILL_STORE")]
    store: String,
    /// The CQL keyspace (made by `refill migrate`).
    #[arg(long, env = "REFILL_KEYSPACE", default_value = refill::app::CQL_KEYSPACE)]
    keyspace: String,
    /// How often a shard that changed writes what changed to the store, in milliseconds;
    /// an idle shard writes nothing.
    #[arg(long, env = "REFILL_FLUSH_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    flush_interval_ms: u64,
    /// A prefix before every topic name (a namespace on a shared cluster; tests use one).
    #[arg(long, env = "REFILL_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// The consumer group of the ingest workers [default: {prefix}refill-ingest].
    #[arg(long, env = "REFILL_INGEST_GROUP")]
    group: Option<String>,
    /// HTTP address of the API (for the accounts this worker owns), /metrics and /healthz.
    #[arg(long, env = "REFILL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The admin API key (at least 16 characters).
    #[arg(long, env = "REFILL_API_KEY", hide_env_values = true)]
    api_key: String,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// The retention the topics a shard replays from must have, checked at start by `refill
/// ingest`, `refill serve --log kafka://` and `refill migrate`.
#[derive(clap::Args, Clone, Debug)]
pub struct RetentionArgs {
    /// Shortest retention.ms accepted on refill.usage and the topics a shard replays beside
    /// it (refill.account-commands, refill.journal), in milliseconds [default: 7 days].
    /// Checked at start from the topics' actual configuration: each must keep records for
    /// -1 (unlimited) or at least this, with retention.bytes -1 and cleanup.policy delete,
    /// else the worker refuses to start and says the `kafka-configs.sh` command that fixes
    /// it. A shard replays from its newest checkpoint, so this is the longest outage
    /// (workers or store down) that loses no usage; replay from genesis needs -1.
    #[arg(long, env = "REFILL_USAGE_RETENTION_MIN_MS",
          default_value_t = refill_store_kafka::RETENTION_MIN_MS_DEFAULT,
          hide_default_value = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub usage_retention_min_ms: u64,
}

impl RetentionArgs {
    /// Reads the configuration of the topics a shard replays from and fails, saying what
    /// was found, what is needed and how to fix it, if one could delete records a shard
    /// still needs.
    pub fn check(&self, bootstrap: &str, topics: &Topics) -> anyhow::Result<()> {
        let report = self.report(bootstrap, topics)?;
        anyhow::ensure!(
            report.is_ok(),
            "refusing to start: a topic the shards replay from keeps records too briefly\n{report}"
        );
        Ok(())
    }

    /// The retention of the topics a shard replays from, checked against the rule.
    pub fn report(
        &self,
        bootstrap: &str,
        topics: &Topics,
    ) -> anyhow::Result<refill_store_kafka::RetentionReport> {
        self.report_on(bootstrap, &Self::replayed(topics))
    }

    /// The topics a shard replays from: usage, account commands, its journal.
    pub fn replayed(topics: &Topics) -> [&str; 3] {
        [
            topics.usage.as_str(),
            topics.account_commands.as_str(),
            topics.journal.as_str(),
        ]
    }

    /// The retention of `names`, checked against the rule.
    pub fn report_on(
        &self,
        bootstrap: &str,
        names: &[&str],
    ) -> anyhow::Result<refill_store_kafka::RetentionReport> {
        refill_store_kafka::check_retention(bootstrap, names, self.usage_retention_min_ms)
            .with_context(|| format!("cannot read the configuration of {names:?}"))
    }
}

/// Runs the worker until SIGTERM or Ctrl-C (leaving the group cleanly), or until the intake
/// fails (exit code 1: the group moves its partitions to the other workers).
pub fn run(args: &IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.api_key.len() >= 16,
        "expected an API key of at least 16 characters, found {}",
        args.api_key.len()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(ingest(args))
}

async fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    let metrics = crate::serve::install_metrics()?;
    refill_ingest::describe_metrics();
    refill_ingest::intake::describe_metrics();
    let topics = Topics::with_prefix(&args.topic_prefix);
    let partitions = refill_store_kafka::partition_count(&args.kafka, &topics.usage)
        .with_context(|| format!("cannot read the partitions of {}", topics.usage))?;
    args.retention.check(&args.kafka, &topics)?;
    let journal = KafkaLog::connect(&args.kafka, &topics.journal, partitions)
        .with_context(|| format!("cannot use the journal topic {}", topics.journal))?;
    // Off the async threads: the CQL driver's own runtime may not be dropped on one, which
    // a connection that fails (an unreachable --store) would otherwise do, as a panic.
    let (store, accounts) = {
        let (url, keyspace) = (args.store.clone(), args.keyspace.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let store = refill::app::open_cql_store(&url, &keyspace)?;
            let accounts = refill::app::account_store_for(&url, &keyspace, &store)?;
            Ok((store, accounts))
        })
        .await
        .context("the task opening the store stopped")??
    };
    let (commands, command_receiver) = refill_ingest::engine::command_channel();
    let engine = Engine::create(
        Arc::new(journal),
        store,
        accounts,
        EngineConfig {
            shards: partitions,
            flush_interval_ms: args.flush_interval_ms,
            ..EngineConfig::default()
        },
        commands,
    );
    let sink = spawn_command_sink(&args.kafka, &topics.recharge_commands, command_receiver)?;
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("{}refill-ingest", args.topic_prefix));
    let intake_engine = engine.clone();
    let intake_config = IntakeConfig::new(&args.kafka, topics.clone(), &group);
    let intake =
        tokio::task::spawn_blocking(move || Intake::start(intake_engine, intake_config)).await??;

    let gateway = Arc::new(SandboxGateway::new());
    let api = Api::new(
        engine.clone(),
        args.api_key.clone(),
        Arc::new(refill::app::GatewayCharger(gateway)),
        ApiLimits::default(),
        None,
        Some(metrics),
    )
    .with_forwarder(Arc::new(AccountCommandForwarder::connect(
        &args.kafka,
        &topics.account_commands,
        &topics.usage,
    )?));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "refill ingest: group {group} on {} ({partitions} partitions), API on http://{}",
        topics.usage, args.listen
    );
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let stopper = intake.stopper();
    let waiter = tokio::task::spawn_blocking(move || {
        let ended = intake.wait();
        let _ = failed_tx.send(());
        ended
    });
    axum::serve(listener, api.router())
        .with_graceful_shutdown(async {
            tokio::select! {
                () = crate::serve::shutdown() => {}
                _ = failed_rx => {}
            }
        })
        .await
        .context("the HTTP server failed")?;
    eprintln!("refill ingest: leaving the group");
    stopper.stop();
    let ended = waiter.await?;
    tokio::task::spawn_blocking(move || engine.stop()).await?;
    sink.abort();
    ended.context("the Kafka intake stopped")?;
    eprintln!("refill ingest: stopped");
    Ok(())
}
