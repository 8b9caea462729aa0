//! What the engine scenarios (`ingest`, `latency`, `restart`, `flush`) share: the engine started as
//! `refill serve` starts it (`refill::app::start` on the embedded default, a multi-thread
//! tokio runtime, the Prometheus recorder, the HTTP API on a loopback port), a keep-alive
//! HTTP client, and a fast way to create many accounts (batches appended to the engine's
//! log, as the API would, without one HTTP round trip per customer).

// Rates and latencies for the report are floats; balances stay integer micros.
#![allow(clippy::float_arithmetic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use axum::body::Bytes;
use refill_ingest::engine::{Engine, EngineConfig};
use refill_ledger::Input;
use refill_ledger::grant::GrantKind;
use refill_ledger::testkit;
use refill_store::AccountStore;
use refill_store::embedded::Embedded;
use serde_json::Value;

/// The API key of every engine the benchmarks start.
pub const API_KEY: &str = "refill-bench-key-0123456789";
/// The credit type of the example catalog.
pub const CREDIT_TYPE: &str = testkit::example::CREDIT_TYPE;
/// The feature of the example catalog: 1 credit per call.
pub const FEATURE: &str = testkit::example::FEATURE;
/// Customers per `Engine::append` when creating accounts (two inputs each).
const SETUP_CUSTOMERS_PER_APPEND: usize = 8_192;

/// A data folder, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh empty folder `refill-bench-{name}-…` under `base` (default: the system's
    /// temporary folder, which is on the same ext4 disk as everything else on this box).
    pub fn new(base: Option<&Path>, name: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = base.map_or_else(std::env::temp_dir, Path::to_owned);
        let path = base.join(format!(
            "refill-bench-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Bytes of the files under the folder.
    pub fn size_bytes(&self) -> u64 {
        fn walk(path: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(path) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Prometheus recorder `refill serve` installs (same histogram buckets), once per
/// process; `None` if something else installed a recorder first.
fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let seconds = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// The engine's metrics as Prometheus text, when this process's recorder is the benchmarks'.
pub fn metrics_text() -> Option<String> {
    metrics_handle().map(|handle| handle.render())
}

/// The multi-thread runtime `refill serve` uses (one worker per core), its threads named
/// `name` so the CPU accounting can tell them apart.
pub fn server_runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
        .context("cannot start a tokio runtime")
}

/// The engine on the embedded default with its HTTP API on `127.0.0.1:<any port>`.
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    engine: Option<Engine>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    serve: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// How long `refill::app::start` took (open the store, restore and replay every shard,
    /// open the recharger).
    pub start_elapsed: Duration,
}

impl Server {
    /// Starts everything on the data folder `data`, as `refill serve --data data` does.
    pub fn start(data: &Path, shards: u32) -> anyhow::Result<Self> {
        Self::launch(|metrics| refill::app::start(data, shards, API_KEY.to_owned(), metrics))
    }

    /// Like [`Server::start`], with the account store `accounts` makes over the embedded
    /// store (e.g. one that meters its writes) and the engine settings `config`, through
    /// `refill::app::start_with` as `refill::app::start` calls it.
    pub fn start_with(
        data: &Path,
        shards: u32,
        config: EngineConfig,
        accounts: impl FnOnce(Arc<Embedded>) -> Arc<dyn AccountStore>,
    ) -> anyhow::Result<Self> {
        let embedded =
            Arc::new(Embedded::open(&data.join("db"), shards).with_context(|| {
                format!("cannot open the embedded store in {}", data.display())
            })?);
        let accounts = accounts(Arc::clone(&embedded));
        Self::launch(move |metrics| {
            refill::app::start_with(
                embedded.clone(),
                embedded,
                accounts,
                shards,
                API_KEY.to_owned(),
                metrics,
                config,
            )
        })
    }

    /// Runs `start` (one of `refill::app`'s) on a new server runtime, then serves its router.
    fn launch<F: Future<Output = anyhow::Result<refill::app::App>>>(
        start: impl FnOnce(Option<metrics_exporter_prometheus::PrometheusHandle>) -> F,
    ) -> anyhow::Result<Self> {
        let runtime = server_runtime("http-server")?;
        let metrics = metrics_handle();
        let started = Instant::now();
        let app = runtime
            .block_on(start(metrics))
            .context("refill::app::start failed")?;
        let start_elapsed = started.elapsed();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot listen on a loopback port")?;
        let addr = listener.local_addr()?;
        let refill::app::App { router, engine, .. } = app;
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let serve = runtime.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = signal.await;
                })
                .await
        });
        Ok(Self {
            runtime: Some(runtime),
            engine: Some(engine),
            shutdown: Some(shutdown),
            serve: Some(serve),
            addr,
            start_elapsed,
        })
    }

    /// The running engine.
    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("the engine runs until stop")
    }

    /// Runs a future on the server's runtime (e.g. an `Engine::read`).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime runs until stop")
            .block_on(future)
    }

    /// The accounts of every shard, read on the shard workers (each applies what is
    /// durable in its log first, so this also waits until every append so far is applied).
    pub fn account_count(&self) -> anyhow::Result<usize> {
        let engine = self.engine();
        let mut total = 0;
        for shard in 0..engine.shards() {
            total += self
                .block_on(engine.read(shard, |state| state.account_count()))
                .with_context(|| format!("reading shard {shard}"))?;
        }
        Ok(total)
    }

    /// Stops as `refill serve` does on SIGTERM: the HTTP server first, then the workers
    /// apply what is logged and write a last flush of what changed; returns how long that
    /// drain took.
    /// Everything (runtime, engine, database) is closed when this returns.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        self.close()
    }

    fn close(&mut self) -> anyhow::Result<Duration> {
        let Some(runtime) = self.runtime.take() else {
            return Ok(Duration::ZERO);
        };
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(serve) = self.serve.take() {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), serve).await });
        }
        let started = Instant::now();
        if let Some(engine) = self.engine.take() {
            runtime
                .block_on(async { tokio::task::spawn_blocking(move || engine.stop()).await })
                .context("the engine's stop panicked")?;
        }
        let drained = started.elapsed();
        // Dropping the runtime drops its tasks (the recharger) and with them the last
        // handles on the database, whose drop finishes its queued writes and closes it.
        runtime.shutdown_timeout(Duration::from_secs(10));
        Ok(drained)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// A keep-alive HTTP/1.1 client on its own single-thread runtime, driven from the calling
/// thread (the load generator of these benchmarks).
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

/// A status and a JSON answer (`Null` when the body is not JSON).
pub type Answer = (u16, Value);

impl Http {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client runtime")?;
        // The client's connector belongs to the runtime that drives it.
        let _entered = runtime.enter();
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            runtime,
            client,
            base: format!("http://{addr}"),
        })
    }

    /// The reqwest client (cheap to clone; clones share the connection pool).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Runs a future on the client runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// One authorized request; `body` is sent as JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<Bytes>) -> anyhow::Result<Answer> {
        let request = request(&self.client, method, &self.url(path), body)?;
        self.block_on(send(request))
    }

    /// Like [`Http::call`], failing unless the status is 2xx.
    pub fn ok(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method, path, Some(Bytes::from(body.to_string())))?;
        ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        Ok(answer)
    }
}

/// An authorized request with a JSON body.
pub fn request(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Bytes>,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).context("HTTP method")?;
    let builder = client
        .request(method, url)
        .header("authorization", format!("Bearer {API_KEY}"));
    Ok(match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(body),
        None => builder,
    })
}

/// Sends and reads the whole answer.
pub async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
    let response = request.send().await.context("HTTP request failed")?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.context("reading the answer")?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The example catalog through the API (so the API knows the feature): the credit type
/// `api-credits` at $0.10 and the feature `api-call` at 1 credit per call.
pub fn put_catalog(http: &Http) -> anyhow::Result<()> {
    http.ok(
        "PUT",
        &format!("/v1/credit-types/{CREDIT_TYPE}"),
        &serde_json::json!({"name": "API credits", "unit_price": {"amount": "0.10", "currency": "USD"}}),
    )?;
    http.ok(
        "PUT",
        &format!("/v1/features/{FEATURE}"),
        &serde_json::json!({"name": "API call", "unit": {"singular": "call", "plural": "calls"},
                            "credit_type": CREDIT_TYPE, "credits_per_unit": 1}),
    )?;
    Ok(())
}

/// What each new account gets.
#[derive(Clone, Copy, Debug)]
pub struct AccountSetup {
    /// One promotional grant of this many whole credits.
    pub grant_whole: i64,
    /// Also the example's auto-recharge: below 20 credits, back to 50; $500 a month.
    pub auto_recharge: bool,
}

/// The inputs that create one account: the customer (payment method `pm_card_visa`), one
/// grant (idempotency key `g`), and optionally the example auto-recharge.
pub fn account_inputs(name: &str, setup: AccountSetup, out: &mut Vec<Input>) {
    out.push(testkit::put_customer(name, "pm_card_visa"));
    out.push(account_grant(name, setup));
    if setup.auto_recharge {
        out.push(testkit::example_auto_recharge(name));
    }
}

/// The grant that creates a customer's account: promotional, idempotency key `g`.
pub fn account_grant(name: &str, setup: AccountSetup) -> Input {
    testkit::grant(
        name,
        setup.grant_whole,
        GrantKind::Promotional,
        None,
        None,
        "g",
    )
}

/// Creates one account per name by appending batches to each owning shard's log, as the
/// API's writes do but thousands of customers per record; returns once every shard has
/// applied them (and checks the account count grew by `names.len()`).
pub fn create_accounts(
    server: &Server,
    names: &[String],
    setup: AccountSetup,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let before = server.account_count()?;
    let engine = server.engine();
    let shards = engine.shards() as usize;
    for chunk in names.chunks(SETUP_CUSTOMERS_PER_APPEND) {
        let mut per_shard: Vec<Vec<Input>> = vec![Vec::new(); shards];
        for name in chunk {
            account_inputs(name, setup, &mut per_shard[engine.shard_of(name) as usize]);
        }
        for (shard, inputs) in (0_u32..).zip(per_shard) {
            if !inputs.is_empty() {
                engine
                    .append(shard, inputs)
                    .with_context(|| format!("appending accounts to shard {shard}"))?;
            }
        }
    }
    let after = server.account_count()?;
    ensure!(
        after == before + names.len(),
        "expected {} accounts after setup, found {after}",
        before + names.len()
    );
    Ok(started.elapsed())
}

/// Waits until the shards' checkpoints hold `accounts` accounts in all (every account
/// created so far flushed at least once), at most `deadline`; returns how long it took.
pub fn wait_flushed(
    engine: &Engine,
    accounts: u64,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut flushed = 0_u64;
        for shard in 0..engine.shards() {
            flushed += engine
                .accounts()
                .checkpoint(shard)
                .with_context(|| format!("reading the checkpoint of shard {shard}"))?
                .map_or(0, |checkpoint| u64::from(checkpoint.accounts));
        }
        if flushed >= accounts {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < deadline,
            "only {flushed} of {accounts} accounts flushed after {deadline:?} (failures {:?})",
            engine.failures()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Value at quantile `q` (0..=1) of ascending `sorted` (nearest rank); 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Rounds to `places` decimals (for the JSON line).
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10_f64.powi(places);
    (value * scale).round() / scale
}

/// Nanoseconds of a duration, saturating.
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The customer names `prefix0000000`.. for `count` accounts (width ≥ 7).
pub fn names(prefix: char, count: u32) -> Vec<String> {
    let width = (count.saturating_sub(1)).to_string().len().max(7);
    (0..count)
        .map(|number| format!("{prefix}{number:0width$}"))
        .collect()
}

/// The first name of each shard (a customer the shard owns), for per-shard requests.
pub fn one_per_shard(engine: &Engine, names: &[String]) -> anyhow::Result<Vec<String>> {
    (0..engine.shards())
        .map(|shard| {
            names
                .iter()
                .find(|name| engine.shard_of(name) == shard)
                .cloned()
                .with_context(|| format!("no customer lands on shard {shard}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&sorted, 0.0), 1);
        assert_eq!(quantile(&sorted, 0.5), 51);
        assert_eq!(quantile(&sorted, 0.99), 99);
        assert_eq!(quantile(&sorted, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(names('c', 3), ["c0000000", "c0000001", "c0000002"]);
    }
}
