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
    /// Shards (one writer thread each). Fixed for a data folder once created.
    #[arg(long, env = "REFILL_SHARDS", default_value_t = 2)]
    shards: u32,
    /// The log: `embedded` (in --data) or `kafka://HOST:PORT` (topic `refill.journal`).
    #[arg(long, env = "REFILL_LOG", default_value = "embedded")]
    log: String,
    /// The store: `embedded` (in --data), `scylla://HOST:PORT` or `cassandra://HOST:PORT`.
    #[arg(long, env = "REFILL_STORE", default_value = "embedded")]
    store: String,
    /// The admin API key; when absent, one is made at first start and kept in DATA/api-key.
    #[arg(long, env = "REFILL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
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

fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
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
    let mut embedded = None;
    let log = refill::app::open_log(&args.log, &args.data, args.shards, &mut embedded)?;
    let store = refill::app::open_store(&args.store, &args.data, args.shards, &mut embedded)?;
    let app = refill::app::start_on(log, store, args.shards, key, Some(metrics)).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "refill: serving on http://{} (data in {}, {} shards)",
        args.listen,
        args.data.display(),
        args.shards
    );
    axum::serve(listener, app.router)
        .with_graceful_shutdown(shutdown())
        .await
        .context("the HTTP server failed")?;
    eprintln!("refill: draining");
    let engine = app.engine;
    tokio::task::spawn_blocking(move || engine.stop()).await?;
    eprintln!("refill: stopped");
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
