//! `refill serve`: the whole engine in one process on the embedded default: the embedded
//! log and store, one worker per shard, the recharger with the sandbox gateway, and the
//! HTTP API. SIGTERM and Ctrl-C drain: the API stops, workers apply what is logged and
//! write a snapshot.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Arguments of `refill serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Folder of the embedded log and store (created if missing).
    #[arg(long, env = "REFILL_DATA", default_value = "./refill-data")]
    data: PathBuf,
    /// HTTP address to listen on.
    #[arg(long, env = "REFILL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Shards (one writer thread each). Fixed for a data folder once created. On the
    /// embedded log 2 unless told; on Kafka the partition count of refill.usage (one shard
    /// per partition), which this must match if given.
    #[arg(long, env = "REFILL_SHARDS")]
    shards: Option<u32>,
    /// The log: `embedded` (in --data) or `kafka://HOST:PORT` (the shards' journal on topic
    /// `refill.journal`; usage produced to `refill.usage` and account commands on
    /// `refill.account-commands` are consumed in the group `refill-ingest`, after `refill
    /// migrate`). A `serve` on Kafka is the only member of that group: scale out with
    /// `refill ingest` and `refill recharger` instead.
    #[arg(long, env = "REFILL_LOG", default_value = "embedded")]
    log: String,
    /// The store: `embedded` (in --data), `scylla://HOST:PORT` or `cassandra://HOST:PORT`.
    #[arg(long, env = "REFILL_STORE", default_value = "embedded")]
    store: String,
    /// The admin API key; when absent, one is made at first start and kept in DATA/api-key.
    #[arg(long, env = "REFILL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How often a shard that changed writes what changed to the store (balances, ledger,
    /// checkpoint), in milliseconds; an idle shard writes nothing.
    #[arg(long, env = "REFILL_FLUSH_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    flush_interval_ms: u64,
    // On Kafka only: the retention check of the topics the shards replay from.
    #[command(flatten)]
    retention: crate::ingest::RetentionArgs,
}

/// Runs the engine until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

fn api_key(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(key) = &args.api_key {
        anyhow::ensure!(
            key.len() >= 16,
            "expected an API key of at least 16 characters, found {}",
            key.len()
        );
        return Ok(key.clone());
    }
    let path = args.data.join("api-key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    // RandomState draws its keys from the OS; two of them give 128 unguessable bits.
    let key = format!(
        "rk_{:016x}{:016x}",
        std::hash::RandomState::new().hash_one(1_u8),
        std::hash::RandomState::new().hash_one(2_u8)
    );
    write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "refill: made an API key and saved it in {} (set REFILL_API_KEY to choose one)",
        path.display()
    );
    Ok(key)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

pub(crate) fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let seconds = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        1.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .context("bad histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data folder {}", args.data.display()))?;
    let key = api_key(args)?;
    let metrics = install_metrics()?;
    refill_ingest::describe_metrics();
    refill_ingest::intake::describe_metrics();
    let kafka = args.log.strip_prefix("kafka://");
    let shards = match (kafka, args.shards) {
        (None, shards) => shards.unwrap_or(2),
        (Some(bootstrap), shards) => {
            let usage = refill_store_kafka::USAGE_TOPIC;
            let partitions =
                refill_store_kafka::partition_count(bootstrap, usage).with_context(|| {
                    format!("cannot read the partitions of {usage} (has `refill migrate` run?)")
                })?;
            args.retention
                .check(bootstrap, &refill_store_kafka::Topics::default())?;
            anyhow::ensure!(
                shards.is_none_or(|shards| shards == partitions),
                "expected --shards to match the {partitions} partitions of {usage} (one shard \
                 per partition), found {}",
                shards.unwrap_or(partitions)
            );
            partitions
        }
    };
    let mut embedded = None;
    let log = refill::app::open_log(&args.log, &args.data, shards, &mut embedded)?;
    let store = refill::app::open_store(&args.store, &args.data, shards, &mut embedded)?;
    let accounts = refill::app::account_store_for(&args.store, refill::app::CQL_KEYSPACE, &store)?;
    let config = refill_ingest::engine::EngineConfig {
        flush_interval_ms: args.flush_interval_ms,
        ..refill_ingest::engine::EngineConfig::default()
    };
    let app =
        refill::app::start_with(log, store, accounts, shards, key, Some(metrics), config).await?;
    // On Kafka, producers' usage and other roles' account commands come in through the
    // group intake; this process owns every shard already, so the group's assignment only
    // tells the intake where each shard's sources continue.
    let intake = match kafka {
        Some(bootstrap) => {
            let engine = app.engine.clone();
            let config = refill_ingest::intake::IntakeConfig::new(
                bootstrap,
                refill_store_kafka::Topics::default(),
                "refill-ingest",
            );
            Some(
                tokio::task::spawn_blocking(move || {
                    refill_ingest::intake::Intake::start(engine, config)
                })
                .await??,
            )
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "refill: serving on http://{} (data in {}, {shards} shards)",
        args.listen,
        args.data.display(),
    );
    axum::serve(listener, app.router)
        .with_graceful_shutdown(shutdown())
        .await
        .context("the HTTP server failed")?;
    eprintln!("refill: draining");
    if let Some(intake) = intake {
        tokio::task::spawn_blocking(move || intake.stop())
            .await?
            .context("the Kafka intake failed")?;
    }
    let engine = app.engine;
    tokio::task::spawn_blocking(move || engine.stop()).await?;
    eprintln!("refill: stopped");
    Ok(())
}

pub(crate) async fn shutdown() {
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
