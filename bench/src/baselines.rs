//! Scenario `baselines` (DESIGN §8): one Zipf event stream, in one run, through Refill's
//! durable embedded ingest path and through what a billing system would otherwise be built
//! on: a PostgreSQL `UPDATE … SET balance = balance - $1 WHERE id = $2` per event
//! (autocommit, so one transaction per event; best of several connection counts, with
//! `synchronous_commit` on and off) and a Redis Lua script per event (`EVALSHA`, pipelined;
//! unpipelined for information). Targets: Refill ≥ 50× PostgreSQL and ≥ 5× Redis.
//!
//! Refill's figure is the durable path, never the in-memory core: the events are appended
//! to the engine's embedded log in batches (an append returns once fsynced) and the clock
//! stops when every shard has applied all of them. By default they are pre-parsed `Input`s
//! handed to `Engine::append` from a few threads (no JSON, no HTTP); `--path http` sends
//! them as JSON over HTTP instead, exactly as the `ingest` scenario does. `Shard::apply_into`
//! alone over the same events (as `core`) is printed beside it for scale, not used in a ratio.
//!
//! Every baseline configuration replays the same customer sequence from its start for at
//! most `--run-ms` (they are far slower than Refill). A baseline whose address is not set
//! (`REFILL_POSTGRES`, `REFILL_REDIS`, as `deploy/local/up` writes them to
//! `deploy/local/.env`) is skipped: the table and the JSON line say so and why.

// Rates, ratios and latencies for the report are floats; balances stay integer micros.
#![allow(clippy::float_arithmetic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use axum::body::Bytes;
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_ledger::ids::CustomerId;
use refill_ledger::{Input, testkit};
use serde_json::{Value, json};

use crate::core::CoreArgs;
use crate::cpu;
use crate::harness::{self, AccountSetup, CREDIT_TYPE, Http, Server, TempDir, round};
use crate::ingest;
use crate::report::{Table, thousands};

/// DESIGN §8: Refill's durable events/s over the best PostgreSQL per-event UPDATE.
pub const TARGET_RATIO_VS_POSTGRES: f64 = 50.0;
/// DESIGN §8: Refill's durable events/s over the best pipelined Redis Lua script.
pub const TARGET_RATIO_VS_REDIS: f64 = 5.0;
/// What one event takes from its account in every system: 1 `api-call` = 1 credit.
const EVENT_MICROS: i64 = MICROS_PER_UNIT;
/// Rows or keys per setup statement or command (setup is not timed).
const SETUP_CHUNK: usize = 10_000;
/// Inputs per `apply_into` call of the core figure, as in `core`.
const CORE_BATCH: u32 = 4_096;
/// Balances the Redis script handles exactly: Lua sees Redis integers as doubles.
const LUA_EXACT_MAX_MICROS: i64 = 1 << 53;
/// The statement of the PostgreSQL baseline (the table name is per run).
const PG_STATEMENT: &str = "UPDATE accounts SET balance = balance - $1 WHERE id = $2";

/// One usage event in Redis: take `ARGV[1]` micro-credits from the balance at `KEYS[1]`.
/// Refuses an unknown account (-1) or one without enough credits (-2, balance left as it
/// was); otherwise answers the new balance. The arithmetic stays in Redis's 64-bit integers
/// (`DECRBY`/`INCRBY`); Lua only compares the result with 0 and passes it back.
const REDIS_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left < 0 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  return -2
end
return left
";

/// Which of Refill's durable paths is measured.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefillPath {
    /// Pre-parsed inputs through `Engine::append` (durable when it returns), one append per
    /// shard per batch, from `--clients` threads.
    Append,
    /// JSON bodies over HTTP, `POST /v1/events` (a 202 means durable), from `--clients`
    /// keep-alive connections, as the `ingest` scenario.
    Http,
}

impl RefillPath {
    /// Its name on the command line and in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::Http => "http",
        }
    }

    /// What it measures, for the table.
    fn describe(self) -> &'static str {
        match self {
            Self::Append => {
                "pre-parsed events, Engine::append (fsynced) → applied; no JSON, no HTTP"
            }
            Self::Http => "JSON over HTTP, POST /v1/events (202 = fsynced) → applied",
        }
    }
}

/// Options of the `baselines` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct BaselinesArgs {
    /// Accounts (customers `c0000000`..), in every system.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Events of the stream: Refill takes all of them, each baseline configuration as many as
    /// it gets through in `--run-ms`.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Events per Refill batch (split into one append per shard, or one POST).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Threads (`append`) or keep-alive connections (`http`) feeding Refill.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Shards of the engine (`refill serve --shards`, default 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Refill's durable path to measure.
    #[arg(long, value_enum, default_value_t = RefillPath::Append)]
    pub path: RefillPath,
    /// Zipf exponent of the customer distribution (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Seed of the customer sequence.
    #[arg(long, default_value_t = 0x5EED_2026)]
    pub seed: u64,
    /// Wall time of each baseline configuration in ms (less if the stream ends first).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub run_ms: u64,
    /// PostgreSQL connection counts, each run with synchronous_commit on and off.
    #[arg(long, value_delimiter = ',', default_values_t = [1_u32, 4, 8, 16],
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub pg_connections: Vec<u32>,
    /// Redis connection counts, each run pipelined and unpipelined.
    #[arg(long, value_delimiter = ',', default_values_t = [1_u32, 4],
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub redis_connections: Vec<u32>,
    /// `EVALSHA` commands per Redis pipeline.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub redis_pipeline: u32,
    /// PostgreSQL URL, `postgres://user:password@host:port/db`; unset: that baseline is
    /// skipped.
    #[arg(long, env = "REFILL_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Redis URL, `redis://host:port`; unset: that baseline is skipped.
    #[arg(long, env = "REFILL_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Skip the core figure (`Shard::apply_into` alone on the same events, which sets up
    /// every account once more in one in-memory shard).
    #[arg(long)]
    pub skip_core: bool,
    /// Folder for the engine's data folder (default: the system temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[cfg(test)]
impl BaselinesArgs {
    /// Arguments for a small run (tests), with the servers the environment names.
    pub fn tiny(accounts: u32, events: u64, path: RefillPath) -> Self {
        Self {
            accounts,
            events,
            batch: 250,
            clients: 2,
            shards: 2,
            path,
            zipf: 1.0,
            seed: 7,
            run_ms: 100,
            pg_connections: vec![1, 2],
            redis_connections: vec![1, 2],
            redis_pipeline: 50,
            postgres: std::env::var("REFILL_POSTGRES").ok(),
            redis: std::env::var("REFILL_REDIS").ok(),
            skip_core: false,
            data_dir: None,
        }
    }
}

/// A baseline measured, or skipped and why.
#[derive(Clone, Debug)]
pub enum Baseline<T> {
    /// It ran.
    Measured(T),
    /// It did not run; the reason.
    Skipped(String),
}

impl<T> Baseline<T> {
    /// The figures, if it ran.
    pub fn measured(&self) -> Option<&T> {
        match self {
            Self::Measured(report) => Some(report),
            Self::Skipped(_) => None,
        }
    }

    /// Why it was skipped, if it was.
    pub fn skipped(&self) -> Option<&str> {
        match self {
            Self::Measured(_) => None,
            Self::Skipped(reason) => Some(reason),
        }
    }
}

/// The server's address, or why the baseline is skipped: the variable is unset or empty.
fn address<'a>(value: Option<&'a str>, var: &str, service: &str) -> Result<&'a str, String> {
    match value.map(str::trim) {
        Some(url) if !url.is_empty() => Ok(url),
        _ => Err(format!(
            "{var} is not set: start the server with `deploy/local/up {service}`, then load \
             its address (set -a; . deploy/local/.env; set +a)"
        )),
    }
}

/// `scheme://user:password@host/…` without the credentials, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A name no other run uses at the same time (tables, key prefixes).
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Credits every account starts with, whole: twice the events, so nothing is refused.
fn grant_whole(args: &BaselinesArgs) -> anyhow::Result<i64> {
    i64::try_from(args.events.saturating_mul(2).max(10))
        .ok()
        .filter(|whole| {
            whole
                .checked_mul(MICROS_PER_UNIT)
                .is_some_and(|micros| micros < LUA_EXACT_MAX_MICROS)
        })
        .context("--events too large for one account's balance")
}

/// The event stream every system sees.
struct Stream {
    /// Customer ids by customer number (`c0000000`..).
    names: Arc<Vec<String>>,
    /// The customer number of each event, in order.
    sequence: Arc<Vec<u32>>,
    /// The same events as Refill's pre-parsed inputs (ids `e0000000000`..).
    inputs: Vec<Input>,
    /// Share of events that go to the 1 % most frequent customers.
    top_percent_share: f64,
}

/// The `core` arguments that draw the same stream (same generator, seed and sizes).
fn core_args(args: &BaselinesArgs) -> CoreArgs {
    CoreArgs {
        accounts: args.accounts,
        events: args.events,
        batch: CORE_BATCH,
        zipf: args.zipf,
        seed: args.seed,
        auto_recharge: false,
        probe_mib: 0,
    }
}

/// Draws the stream, exactly as `core` and `ingest` draw theirs.
fn stream(args: &BaselinesArgs) -> anyhow::Result<Stream> {
    let names = harness::names('c', args.accounts);
    let customers: Vec<CustomerId> = names.iter().map(|name| testkit::customer(name)).collect();
    let workload = crate::core::workload(&core_args(args), &customers)?;
    Ok(Stream {
        names: Arc::new(names),
        sequence: Arc::new(workload.customers),
        inputs: workload.inputs,
        top_percent_share: workload.top_percent_share,
    })
}

/// Refill's timed run.
#[derive(Clone, Debug)]
pub struct RefillRun {
    /// The path measured.
    pub path: RefillPath,
    /// Events timed (the stream; with `http` also one sync event per shard).
    pub events: u64,
    /// First append or POST → every shard applied every event.
    pub elapsed: Duration,
    /// First append or POST → the last one durable.
    pub accepted: Duration,
    /// CPU seconds of the whole process during the run.
    pub process_cpu_s: f64,
    /// CPU seconds during the run by thread name (`refill-store-sy[nc]`, `shard-N`,
    /// `fjall:worker`, `http-server`, the main thread), of the threads still running at its
    /// end.
    pub cpu_by_thread: Vec<(String, f64)>,
    /// CPU seconds of threads that ended during the run (the `append` path's appenders).
    pub cpu_ended_s: f64,
    /// Busy cores of the machine during the run (other processes included).
    pub busy_cores: Option<f64>,
    /// Credits that left the balances (read back from the balance table), micro-credits.
    pub balance_moved_micros: i128,
    /// Creating the accounts (untimed).
    pub setup: Duration,
    /// Draining and the last flush at the end (untimed).
    pub stop: Duration,
}

impl RefillRun {
    /// Events per second until applied: the figure of the ratios.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Events per second until the last one was durable.
    pub fn accepted_events_per_s(&self) -> f64 {
        self.events as f64 / self.accepted.as_secs_f64().max(1e-9)
    }
}

/// Runs the stream through the engine on the embedded default and checks that every event
/// was applied exactly once.
fn run_refill(args: &BaselinesArgs, stream: &Stream) -> anyhow::Result<RefillRun> {
    let grant_whole = grant_whole(args)?;
    let data = TempDir::new(args.data_dir.as_deref(), "baselines")?;
    let server = Server::start(data.path(), args.shards)?;
    let http = Http::new(server.addr)?;
    harness::put_catalog(&http)?;
    let setup = harness::create_accounts(
        &server,
        &stream.names,
        AccountSetup {
            grant_whole,
            auto_recharge: false,
        },
    )?;
    // The setup's own flush (every account new) lands before the clock starts.
    harness::wait_flushed(
        server.engine(),
        stream.names.len() as u64,
        Duration::from_secs(600),
    )?;
    let cpu_before = cpu::snapshot();
    let machine = cpu::Machine::now();
    let (events, accepted, elapsed) = match args.path {
        RefillPath::Append => append_stream(&server, args, stream)?,
        RefillPath::Http => post_stream(&server, &http, args, stream)?,
    };
    let cpu = cpu::since(&cpu_before);
    let busy_cores = machine.busy_cores_since();

    let engine = server.engine().clone();
    let mut balance_moved_micros = 0_i128;
    for name in stream.names.iter() {
        let balance = engine
            .balance(name, CREDIT_TYPE)
            .with_context(|| format!("no balance for {name}"))?;
        balance_moved_micros += i128::from(grant_whole * MICROS_PER_UNIT - balance.micros());
    }
    let expected = i128::from(events) * i128::from(EVENT_MICROS);
    ensure!(
        balance_moved_micros == expected,
        "Refill's balances moved {balance_moved_micros} µcredits, the events sum to {expected}"
    );
    drop(engine);
    drop(http);
    let stop = server.stop()?;
    drop(data);
    Ok(RefillRun {
        path: args.path,
        events,
        elapsed,
        accepted,
        process_cpu_s: cpu.process_s,
        cpu_ended_s: cpu.unattributed_s(),
        cpu_by_thread: cpu.by_name,
        busy_cores,
        balance_moved_micros,
        setup,
        stop,
    })
}

/// `Engine::append` of every batch (one append per shard, as the API's handler does) from
/// `clients` threads, then one read per shard, which the worker answers after applying
/// everything durable. Returns (events, until the last append, until applied).
fn append_stream(
    server: &Server,
    args: &BaselinesArgs,
    stream: &Stream,
) -> anyhow::Result<(u64, Duration, Duration)> {
    let engine = server.engine();
    // Parsed and routed before the clock: per batch, the inputs of each shard.
    let batch = args.batch as usize;
    let bodies: Vec<Vec<Vec<Input>>> = stream
        .inputs
        .chunks(batch)
        .zip(stream.sequence.chunks(batch))
        .map(|(inputs, customers)| {
            let mut per_shard = vec![Vec::new(); args.shards as usize];
            for (input, &customer) in inputs.iter().zip(customers) {
                let shard = engine.shard_of(&stream.names[customer as usize]);
                per_shard[shard as usize].push(input.clone());
            }
            per_shard
        })
        .collect();
    let queue = Mutex::new(bodies.into_iter());
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.clients)
            .map(|_| {
                std::thread::Builder::new()
                    .name("appender".into())
                    .spawn_scoped(scope, || {
                        loop {
                            let Some(body) =
                                queue.lock().unwrap_or_else(PoisonError::into_inner).next()
                            else {
                                return Ok::<(), anyhow::Error>(());
                            };
                            for (shard, inputs) in (0_u32..).zip(body) {
                                if !inputs.is_empty() {
                                    engine
                                        .append(shard, inputs)
                                        .with_context(|| format!("appending to shard {shard}"))?;
                                }
                            }
                        }
                    })
            })
            .collect::<Result<_, _>>()?;
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow!("an appender thread panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let accepted = started.elapsed();
    for shard in 0..engine.shards() {
        server
            .block_on(engine.read(shard, |_| ()))
            .with_context(|| format!("reading shard {shard}"))?;
    }
    Ok((args.events, accepted, started.elapsed()))
}

/// The stream as JSON bodies over HTTP, as `ingest` sends it: every body, then one
/// `?sync=true` event per shard whose answer means that shard applied everything.
fn post_stream(
    server: &Server,
    http: &Http,
    args: &BaselinesArgs,
    stream: &Stream,
) -> anyhow::Result<(u64, Duration, Duration)> {
    let batch = args.batch as usize;
    let bodies: Vec<Bytes> = (0_u64..)
        .step_by(batch)
        .zip(stream.sequence.chunks(batch))
        .map(|(first, customers)| {
            let mut body = String::with_capacity(customers.len() * 82 + 2);
            body.push('[');
            for (index, &customer) in (first..).zip(customers) {
                if index > first {
                    body.push(',');
                }
                ingest::push_event(&mut body, index, &stream.names[customer as usize], 1);
            }
            body.push(']');
            Bytes::from(body)
        })
        .collect();
    let tail: Vec<Bytes> = harness::one_per_shard(server.engine(), &stream.names)?
        .iter()
        .zip(args.events..)
        .map(|(name, index)| {
            let mut body = String::from("[");
            ingest::push_event(&mut body, index, name, 1);
            body.push(']');
            Bytes::from(body)
        })
        .collect();
    let events = args.events + tail.len() as u64;
    let bodies = Arc::new(bodies);
    let started = Instant::now();
    let posts = ingest::post_all(http, "/v1/events", &bodies, args.clients, true)?;
    let accepted = started.elapsed();
    let mut total = posts.accepted;
    for body in tail {
        let (status, answer) = http.call("POST", "/v1/events?sync=true", Some(body))?;
        ensure!(status == 202, "sync POST: {status} {answer}");
        total += answer["accepted"].as_u64().context("accepted")?;
    }
    let elapsed = started.elapsed();
    ensure!(total == events, "accepted {total} of {events} events");
    Ok((events, accepted, elapsed))
}

/// `Shard::apply_into` alone on the same inputs, one shard with every account, as `core`.
#[derive(Clone, Copy, Debug)]
pub struct CoreRun {
    /// Events applied.
    pub events: u64,
    /// Wall time of the `apply_into` calls.
    pub elapsed: Duration,
}

impl CoreRun {
    /// Events per second.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn run_core(args: &BaselinesArgs, stream: &Stream) -> anyhow::Result<CoreRun> {
    let mut fixture = crate::core::setup(&core_args(args))?;
    let run = crate::core::run_shard(&mut fixture, &stream.inputs, CORE_BATCH as usize);
    ensure!(
        run.applied == args.events && run.duplicates == 0 && run.rejected == 0,
        "core: applied {} of {} (duplicates {}, rejected {})",
        run.applied,
        args.events,
        run.duplicates,
        run.rejected
    );
    Ok(CoreRun {
        events: run.applied,
        elapsed: run.elapsed,
    })
}

/// One configuration of a baseline: how many events it got through in its time.
#[derive(Clone, Debug)]
pub struct BaselineRun {
    /// Connections in parallel.
    pub connections: u32,
    /// PostgreSQL: `synchronous_commit` on; Redis: unused (false).
    pub synchronous_commit: bool,
    /// Redis: commands per pipeline (1 = one round trip per event); PostgreSQL: 1.
    pub pipeline: u32,
    /// Events done (each checked).
    pub events: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Busy cores of the machine meanwhile (server, client and anything else).
    pub busy_cores: Option<f64>,
}

impl BaselineRun {
    /// Events per second.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self, postgres: bool) -> Value {
        let mut value = json!({
            "connections": self.connections,
            "events": self.events,
            "seconds": round(self.elapsed.as_secs_f64(), 3),
            "events_per_s": self.events_per_s().round() as u64,
            "machine_busy_cores": self.busy_cores.map(|busy| round(busy, 2)),
        });
        if postgres {
            value["synchronous_commit"] = json!(on_off(self.synchronous_commit));
        } else {
            value["pipeline"] = json!(self.pipeline);
        }
        value
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// The fastest of `runs` that pass `keep`.
fn best(runs: &[BaselineRun], keep: impl Fn(&BaselineRun) -> bool) -> Option<&BaselineRun> {
    runs.iter()
        .filter(|run| keep(run))
        .max_by(|a, b| a.events_per_s().total_cmp(&b.events_per_s()))
}

/// The PostgreSQL baseline's figures.
#[derive(Clone, Debug)]
pub struct PgReport {
    /// `SHOW server_version`.
    pub server_version: String,
    /// `SHOW fsync` (on: a commit with `synchronous_commit` on waits for its WAL flush).
    pub fsync: String,
    /// Creating and loading the table (untimed).
    pub setup: Duration,
    /// Every configuration, synchronous_commit on first.
    pub runs: Vec<BaselineRun>,
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
    // Drives the socket; an error there surfaces in the client's next call.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Loads every account into a fresh table, runs every configuration, drops the table.
fn run_postgres(url: &str, args: &BaselinesArgs, stream: &Stream) -> anyhow::Result<PgReport> {
    // One thread drives every connection: one statement in flight per connection, so the
    // client needs a few µs per event and leaves the cores to the server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the PostgreSQL client runtime")?;
    runtime.block_on(async {
        let admin = pg_connect(url).await?;
        let server_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
        let fsync: String = admin.query_one("SHOW fsync", &[]).await?.get(0);
        // A table of this run's own, so concurrent runs (tests) do not share rows.
        let table = unique("refill_bench_accounts");
        let result = async {
            let started = Instant::now();
            let initial = grant_whole(args)? * MICROS_PER_UNIT;
            admin
                .batch_execute(&format!(
                    "CREATE TABLE {table} (id text PRIMARY KEY, balance bigint NOT NULL)"
                ))
                .await
                .context("creating the accounts table")?;
            let insert =
                format!("INSERT INTO {table} (id, balance) SELECT unnest($1::text[]), $2::bigint");
            for chunk in stream.names.chunks(SETUP_CHUNK) {
                admin.execute(&insert, &[&chunk, &initial]).await?;
            }
            admin.batch_execute(&format!("ANALYZE {table}")).await?;
            let setup = started.elapsed();
            let target = PgTable {
                url,
                admin: &admin,
                table: &table,
                initial,
            };
            let mut runs = Vec::new();
            for synchronous_commit in [true, false] {
                for &connections in &args.pg_connections {
                    runs.push(
                        pg_run(&target, connections, synchronous_commit, args, stream).await?,
                    );
                }
            }
            Ok::<_, anyhow::Error>((setup, runs))
        }
        .await;
        let dropped = admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await;
        let (setup, runs) = result?;
        dropped.context("dropping the baseline's table")?;
        Ok(PgReport {
            server_version,
            fsync,
            setup,
            runs,
        })
    })
}

/// The loaded table of a PostgreSQL baseline and how to reach it.
struct PgTable<'a> {
    /// The server's URL.
    url: &'a str,
    /// A connection for setup and checks, outside the timed clients.
    admin: &'a tokio_postgres::Client,
    /// This run's table.
    table: &'a str,
    /// Every account's balance after loading, micro-credits.
    initial: i64,
}

/// One configuration: `connections` clients, each `UPDATE`ing one event at a time in
/// autocommit (one transaction each), until the time is up or the stream ends; then the
/// table's balances are checked against the events done.
async fn pg_run(
    target: &PgTable<'_>,
    connections: u32,
    synchronous_commit: bool,
    args: &BaselinesArgs,
    stream: &Stream,
) -> anyhow::Result<BaselineRun> {
    let PgTable {
        url,
        admin,
        table,
        initial,
    } = *target;
    let moved = format!("SELECT coalesce(sum($1::bigint - balance), 0)::bigint FROM {table}");
    let before: i64 = admin.query_one(&moved, &[&initial]).await?.get(0);
    let update = PG_STATEMENT.replace("accounts", table);
    let setting = format!("SET synchronous_commit = {}", on_off(synchronous_commit));
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = pg_connect(url).await?;
        client.batch_execute(&setting).await?;
        let statement = client.prepare(&update).await?;
        clients.push((client, statement));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let machine = cpu::Machine::now();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(args.run_ms);
    let mut tasks = tokio::task::JoinSet::new();
    for (client, statement) in clients {
        let (names, sequence, next) = (
            Arc::clone(&stream.names),
            Arc::clone(&stream.sequence),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                let Some(&customer) = sequence.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                let id = names[customer as usize].as_str();
                let rows = client.execute(&statement, &[&EVENT_MICROS, &id]).await?;
                ensure!(rows == 1, "the UPDATE of {id} changed {rows} rows");
                done += 1;
            }
            Ok::<u64, anyhow::Error>(done)
        });
    }
    let mut events = 0_u64;
    while let Some(joined) = tasks.join_next().await {
        events += joined.context("a PostgreSQL client task panicked")??;
    }
    let elapsed = started.elapsed();
    let busy_cores = machine.busy_cores_since();
    let after: i64 = admin.query_one(&moved, &[&initial]).await?.get(0);
    let expected = i128::from(events) * i128::from(EVENT_MICROS);
    ensure!(
        i128::from(after) - i128::from(before) == expected,
        "PostgreSQL balances moved {} µcredits, {events} events sum to {expected}",
        after - before
    );
    Ok(BaselineRun {
        connections,
        synchronous_commit,
        pipeline: 1,
        events,
        elapsed,
        busy_cores,
    })
}

/// The Redis baseline's figures.
#[derive(Clone, Debug)]
pub struct RedisReport {
    /// `redis_version` of `INFO server`.
    pub server_version: String,
    /// `appendonly` and `save` of the server (`CONFIG GET`): whether it is durable at all.
    pub persistence: String,
    /// Loading the balances (untimed).
    pub setup: Duration,
    /// Every configuration, pipelined first.
    pub runs: Vec<BaselineRun>,
}

/// A `CONFIG GET` value, if the server answers it.
fn redis_config(con: &mut redis::Connection, name: &str) -> Option<String> {
    redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query::<Vec<String>>(con)
        .ok()
        .and_then(|pair| pair.get(1).cloned())
}

/// Loads every balance under a prefix of this run, runs every configuration, checks the
/// balances against the events done, deletes the keys.
fn run_redis(url: &str, args: &BaselinesArgs, stream: &Stream) -> anyhow::Result<RedisReport> {
    let client =
        redis::Client::open(url).with_context(|| format!("bad Redis URL {}", redact(url)))?;
    let mut admin = client
        .get_connection()
        .with_context(|| format!("cannot connect to Redis at {}", redact(url)))?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut admin)?;
    let server_version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let persistence = format!(
        "appendonly {}, save \"{}\"",
        redis_config(&mut admin, "appendonly").unwrap_or_else(|| "?".into()),
        redis_config(&mut admin, "save").unwrap_or_else(|| "?".into())
    );
    let prefix = unique("refill-bench");
    let keys: Vec<String> = stream
        .names
        .iter()
        .map(|name| format!("{prefix}:{name}"))
        .collect();
    let initial = grant_whole(args)? * MICROS_PER_UNIT;
    let result = (|| {
        let started = Instant::now();
        for chunk in keys.chunks(SETUP_CHUNK) {
            let mut mset = redis::cmd("MSET");
            for key in chunk {
                mset.arg(key).arg(initial);
            }
            mset.query::<()>(&mut admin)?;
        }
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(REDIS_SCRIPT)
            .query(&mut admin)?;
        let setup = started.elapsed();
        let mut runs = Vec::new();
        for pipeline in [args.redis_pipeline, 1] {
            for &connections in &args.redis_connections {
                runs.push(redis_run(
                    &client,
                    &sha,
                    &keys,
                    &stream.sequence,
                    connections,
                    pipeline,
                    Duration::from_millis(args.run_ms),
                )?);
            }
        }
        let mut moved = 0_i128;
        for chunk in keys.chunks(SETUP_CHUNK) {
            let balances: Vec<Option<i64>> = redis::cmd("MGET").arg(chunk).query(&mut admin)?;
            for balance in balances {
                moved += i128::from(initial - balance.context("a balance key vanished")?);
            }
        }
        let events: u64 = runs.iter().map(|run| run.events).sum();
        let expected = i128::from(events) * i128::from(EVENT_MICROS);
        ensure!(
            moved == expected,
            "Redis balances moved {moved} µcredits, {events} events sum to {expected}"
        );
        Ok::<_, anyhow::Error>((setup, runs))
    })();
    let mut deleted = Ok(());
    for chunk in keys.chunks(SETUP_CHUNK) {
        deleted = deleted.and(
            redis::cmd("UNLINK")
                .arg(chunk)
                .query::<i64>(&mut admin)
                .map(drop),
        );
    }
    let (setup, runs) = result?;
    deleted.context("deleting the baseline's keys")?;
    Ok(RedisReport {
        server_version,
        persistence,
        setup,
        runs,
    })
}

/// One configuration: `connections` clients, each sending `EVALSHA` of the script per
/// event, `pipeline` at a time (1: one round trip per event), until the time is up or the
/// stream ends. Every answer must be a balance (≥ 0): no refusals.
fn redis_run(
    client: &redis::Client,
    sha: &str,
    keys: &[String],
    sequence: &[u32],
    connections: u32,
    pipeline: u32,
    run: Duration,
) -> anyhow::Result<BaselineRun> {
    let connected = (0..connections)
        .map(|_| client.get_connection())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot connect to Redis")?;
    let next = AtomicUsize::new(0);
    let step = pipeline as usize;
    let machine = cpu::Machine::now();
    let started = Instant::now();
    let deadline = started + run;
    let events = std::thread::scope(|scope| {
        let workers: Vec<_> = connected
            .into_iter()
            .map(|mut con| {
                let next = &next;
                scope.spawn(move || {
                    let mut done = 0_u64;
                    let mut pipe = redis::pipe();
                    while Instant::now() < deadline {
                        let first = next.fetch_add(step, Ordering::Relaxed);
                        let Some(chunk) = sequence.get(first..(first + step).min(sequence.len()))
                        else {
                            break;
                        };
                        if chunk.is_empty() {
                            break;
                        }
                        let answers: Vec<i64> = if step == 1 {
                            vec![
                                redis::cmd("EVALSHA")
                                    .arg(sha)
                                    .arg(1)
                                    .arg(&keys[chunk[0] as usize])
                                    .arg(EVENT_MICROS)
                                    .query(&mut con)?,
                            ]
                        } else {
                            pipe.clear();
                            for &customer in chunk {
                                pipe.cmd("EVALSHA")
                                    .arg(sha)
                                    .arg(1)
                                    .arg(&keys[customer as usize])
                                    .arg(EVENT_MICROS);
                            }
                            pipe.query(&mut con)?
                        };
                        ensure!(
                            answers.len() == chunk.len() && answers.iter().all(|&left| left >= 0),
                            "the Redis script refused an event: {:?}",
                            answers.iter().find(|&&left| left < 0)
                        );
                        done += chunk.len() as u64;
                    }
                    Ok::<u64, anyhow::Error>(done)
                })
            })
            .collect();
        let mut events = 0_u64;
        for worker in workers {
            events += worker
                .join()
                .map_err(|_| anyhow!("a Redis client thread panicked"))??;
        }
        Ok::<u64, anyhow::Error>(events)
    })?;
    Ok(BaselineRun {
        connections,
        synchronous_commit: false,
        pipeline,
        events,
        elapsed: started.elapsed(),
        busy_cores: machine.busy_cores_since(),
    })
}

/// Every figure of one `baselines` run.
#[derive(Clone, Debug)]
pub struct BaselinesReport {
    /// The arguments it ran with.
    pub args: BaselinesArgs,
    /// Share of events to the top 1 % of customers.
    pub top_percent_share: f64,
    /// Refill's durable run: the figure.
    pub refill: RefillRun,
    /// `Shard::apply_into` alone on the same events, unless skipped.
    pub core: Option<CoreRun>,
    /// PostgreSQL, one UPDATE per event.
    pub postgres: Baseline<PgReport>,
    /// Redis, one Lua script per event.
    pub redis: Baseline<RedisReport>,
}

impl BaselinesReport {
    /// Refill's durable events/s: the figure the ratios divide.
    pub fn events_per_s(&self) -> f64 {
        self.refill.events_per_s()
    }

    /// The best PostgreSQL configuration.
    pub fn postgres_best(&self) -> Option<&BaselineRun> {
        best(&self.postgres.measured()?.runs, |_| true)
    }

    /// The best PostgreSQL configuration with `synchronous_commit` as given.
    fn postgres_best_with(&self, synchronous_commit: bool) -> Option<&BaselineRun> {
        best(&self.postgres.measured()?.runs, |run| {
            run.synchronous_commit == synchronous_commit
        })
    }

    /// The best pipelined Redis configuration (DESIGN's baseline).
    pub fn redis_best(&self) -> Option<&BaselineRun> {
        best(&self.redis.measured()?.runs, |run| run.pipeline > 1)
    }

    /// The best unpipelined Redis configuration (for information).
    fn redis_best_unpipelined(&self) -> Option<&BaselineRun> {
        best(&self.redis.measured()?.runs, |run| run.pipeline == 1)
    }

    /// Refill's durable events/s over the best PostgreSQL configuration.
    pub fn ratio_vs_postgres(&self) -> Option<f64> {
        self.postgres_best()
            .map(|run| self.events_per_s() / run.events_per_s().max(1e-9))
    }

    /// Refill's durable events/s over the best pipelined Redis configuration.
    pub fn ratio_vs_redis(&self) -> Option<f64> {
        self.redis_best()
            .map(|run| self.events_per_s() / run.events_per_s().max(1e-9))
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let args = &self.args;
        let refill = &self.refill;
        let mut table = Table::new(format!(
            "refill-bench baselines: one stream of {} events, zipf {} over {} accounts (top 1 % get {:.0} %), seed {}; every baseline ≤ {} ms per configuration",
            thousands(args.events),
            args.zipf,
            thousands(u64::from(args.accounts)),
            self.top_percent_share * 100.0,
            args.seed,
            args.run_ms
        ));
        table
            .row(
                "Refill events/s (durable, the ratios' figure)",
                thousands(self.events_per_s() as u64),
                &format!(
                    "path {}: {}; {} events, batches of {}, {} clients, {} shards, embedded log + store",
                    refill.path.name(),
                    refill.path.describe(),
                    thousands(refill.events),
                    thousands(u64::from(args.batch)),
                    args.clients,
                    args.shards
                ),
            )
            .row(
                "Refill events/s durable (not yet applied)",
                thousands(refill.accepted_events_per_s() as u64),
                "until the last append/202",
            )
            .row(
                "Refill process CPU per event",
                format!(
                    "{:.0} ns",
                    refill.process_cpu_s * 1e9 / refill.events.max(1) as f64
                ),
                &format!(
                    "{:.2} CPU-s over {:.2} s; machine busy cores {}",
                    refill.process_cpu_s,
                    refill.elapsed.as_secs_f64(),
                    busy(refill.busy_cores)
                ),
            );
        for (name, seconds) in &refill.cpu_by_thread {
            table.row(
                &format!("  CPU in {name}"),
                format!("{:.0} ns", seconds * 1e9 / refill.events.max(1) as f64),
                &format!("{seconds:.2} s"),
            );
        }
        if refill.cpu_ended_s > 0.0 {
            table.row(
                "  CPU in threads that ended",
                format!(
                    "{:.0} ns",
                    refill.cpu_ended_s * 1e9 / refill.events.max(1) as f64
                ),
                &format!(
                    "{:.2} s (appenders, blocking-pool threads)",
                    refill.cpu_ended_s
                ),
            );
        }
        match &self.core {
            Some(core) => table.row(
                "Refill core events/s (in memory, not durable)",
                thousands(core.events_per_s() as u64),
                "Shard::apply_into alone, same events, one shard with every account (as `core`); not used in the ratios",
            ),
            None => table.row("Refill core events/s", "skipped", "--skip-core"),
        };
        match &self.postgres {
            Baseline::Skipped(reason) => {
                table.row("PostgreSQL", "skipped", reason);
            }
            Baseline::Measured(pg) => {
                table.row(
                    "PostgreSQL events/s (best)",
                    self.postgres_best()
                        .map_or_else(String::new, |run| thousands(run.events_per_s() as u64)),
                    &format!(
                        "PostgreSQL {}, fsync {}: `{PG_STATEMENT}` per event, prepared, autocommit (one transaction per event); table loaded in {:.1} s",
                        pg.server_version,
                        pg.fsync,
                        pg.setup.as_secs_f64()
                    ),
                );
                for run in &pg.runs {
                    table.row(
                        &format!(
                            "  synchronous_commit {:<3}, {}",
                            on_off(run.synchronous_commit),
                            connections(run.connections)
                        ),
                        thousands(run.events_per_s() as u64),
                        &format!(
                            "{} events in {:.2} s; machine busy cores {}",
                            thousands(run.events),
                            run.elapsed.as_secs_f64(),
                            busy(run.busy_cores)
                        ),
                    );
                }
            }
        }
        match &self.redis {
            Baseline::Skipped(reason) => {
                table.row("Redis", "skipped", reason);
            }
            Baseline::Measured(redis) => {
                table.row(
                    "Redis events/s (best pipelined)",
                    self.redis_best()
                        .map_or_else(String::new, |run| thousands(run.events_per_s() as u64)),
                    &format!(
                        "Redis {} ({}): EVALSHA of a Lua script per event (EXISTS, DECRBY, refuse below 0); keys loaded in {:.1} s",
                        redis.server_version,
                        redis.persistence,
                        redis.setup.as_secs_f64()
                    ),
                );
                for run in &redis.runs {
                    let mode = if run.pipeline > 1 {
                        format!("pipelined by {}", run.pipeline)
                    } else {
                        "unpipelined".to_owned()
                    };
                    table.row(
                        &format!("  {mode}, {}", connections(run.connections)),
                        thousands(run.events_per_s() as u64),
                        &format!(
                            "{} events in {:.2} s; machine busy cores {}",
                            thousands(run.events),
                            run.elapsed.as_secs_f64(),
                            busy(run.busy_cores)
                        ),
                    );
                }
            }
        }
        let ratio_row =
            |table: &mut Table, name: &str, ratio: Option<f64>, target: f64, of: String| {
                match ratio {
                    Some(ratio) => table.row(
                        name,
                        format!("{ratio:.1}×"),
                        &format!(
                            "target ≥ {target:.0}× ({}); Refill durable / {of}",
                            met(ratio, target)
                        ),
                    ),
                    None => table.row(name, "n/a", "baseline skipped"),
                };
            };
        ratio_row(
            &mut table,
            "ratio vs PostgreSQL",
            self.ratio_vs_postgres(),
            TARGET_RATIO_VS_POSTGRES,
            self.postgres_best().map_or_else(String::new, |run| {
                format!(
                    "best PostgreSQL (synchronous_commit {}, {})",
                    on_off(run.synchronous_commit),
                    connections(run.connections)
                )
            }),
        );
        if let Some(run) = self.postgres_best_with(true) {
            table.row(
                "  vs best with synchronous_commit on",
                format!("{:.1}×", self.events_per_s() / run.events_per_s().max(1e-9)),
                "durable against durable",
            );
        }
        ratio_row(
            &mut table,
            "ratio vs Redis",
            self.ratio_vs_redis(),
            TARGET_RATIO_VS_REDIS,
            self.redis_best().map_or_else(String::new, |run| {
                format!("best pipelined Redis ({})", connections(run.connections))
            }),
        );
        table
            .row(
                "balances moved (Refill)",
                format!("{} µcredits", refill.balance_moved_micros),
                "read back from the balance table; every baseline checks its own too",
            )
            .row(
                "setup / stop (untimed)",
                format!(
                    "{:.1} s / {:.1} s",
                    refill.setup.as_secs_f64(),
                    refill.stop.as_secs_f64()
                ),
                "Refill's accounts through the log; drain + last flush",
            );
        table
    }

    /// The JSON object (DESIGN §8 keys first).
    pub fn json(&self) -> Value {
        let per_s = |run: Option<&BaselineRun>| run.map(|run| run.events_per_s().round() as u64);
        let postgres = match &self.postgres {
            Baseline::Skipped(reason) => json!({ "skipped": reason }),
            Baseline::Measured(pg) => json!({
                "statement": PG_STATEMENT,
                "server_version": pg.server_version,
                "fsync": pg.fsync,
                "setup_s": round(pg.setup.as_secs_f64(), 2),
                "runs": pg.runs.iter().map(|run| run.json(true)).collect::<Vec<_>>(),
            }),
        };
        let redis = match &self.redis {
            Baseline::Skipped(reason) => json!({ "skipped": reason }),
            Baseline::Measured(redis) => json!({
                "script": REDIS_SCRIPT.trim(),
                "server_version": redis.server_version,
                "persistence": redis.persistence,
                "setup_s": round(redis.setup.as_secs_f64(), 2),
                "runs": redis.runs.iter().map(|run| run.json(false)).collect::<Vec<_>>(),
            }),
        };
        let refill = &self.refill;
        json!({
            "scenario": "baselines",
            "events_per_s": self.events_per_s().round() as u64,
            "postgres_events_per_s": per_s(self.postgres_best()),
            "redis_events_per_s": per_s(self.redis_best()),
            "ratio_vs_postgres": self.ratio_vs_postgres().map(|ratio| round(ratio, 2)),
            "ratio_vs_redis": self.ratio_vs_redis().map(|ratio| round(ratio, 2)),
            "target_ratio_vs_postgres": TARGET_RATIO_VS_POSTGRES,
            "target_ratio_vs_redis": TARGET_RATIO_VS_REDIS,
            "refill_path": refill.path.name(),
            "refill_accepted_events_per_s": refill.accepted_events_per_s().round() as u64,
            "refill_process_cpu_ns_per_event": round(refill.process_cpu_s * 1e9 / refill.events.max(1) as f64, 1),
            "refill_cpu_ns_per_event_by_thread": refill
                .cpu_by_thread
                .iter()
                .map(|(name, seconds)| {
                    (
                        name.clone(),
                        json!(round(seconds * 1e9 / refill.events.max(1) as f64, 1)),
                    )
                })
                .collect::<serde_json::Map<String, Value>>(),
            "refill_cpu_ns_per_event_threads_ended": round(refill.cpu_ended_s * 1e9 / refill.events.max(1) as f64, 1),
            "refill_machine_busy_cores": refill.busy_cores.map(|busy| round(busy, 2)),
            "core_events_per_s": self.core.map(|core| core.events_per_s().round() as u64),
            "postgres_sync_on_events_per_s": per_s(self.postgres_best_with(true)),
            "postgres_sync_off_events_per_s": per_s(self.postgres_best_with(false)),
            "postgres_best_connections": self.postgres_best().map(|run| run.connections),
            "postgres_best_synchronous_commit": self.postgres_best().map(|run| on_off(run.synchronous_commit)),
            "redis_unpipelined_events_per_s": per_s(self.redis_best_unpipelined()),
            "postgres_skipped": self.postgres.skipped(),
            "redis_skipped": self.redis.skipped(),
            "postgres": postgres,
            "redis": redis,
            "accounts": self.args.accounts,
            "events": refill.events,
            "batch": self.args.batch,
            "clients": self.args.clients,
            "shards": self.args.shards,
            "zipf": self.args.zipf,
            "seed": self.args.seed,
            "run_ms": self.args.run_ms,
            "refill_s": round(refill.elapsed.as_secs_f64(), 3),
            "setup_s": round(refill.setup.as_secs_f64(), 2),
        })
    }
}

/// "1 connection", "4 connections".
fn connections(count: u32) -> String {
    if count == 1 {
        "1 connection".to_owned()
    } else {
        format!("{count} connections")
    }
}

fn busy(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |busy| format!("{busy:.2}"))
}

fn met(ratio: f64, target: f64) -> &'static str {
    if ratio >= target { "met" } else { "missed" }
}

/// Runs the whole scenario: Refill, then each baseline whose address is set, then the core
/// figure. A baseline that is configured but fails fails the run; one that is not
/// configured is skipped and reported as such.
pub fn run(args: &BaselinesArgs) -> anyhow::Result<BaselinesReport> {
    ensure!(
        args.zipf.is_finite() && args.zipf >= 0.0,
        "--zipf must be a finite number ≥ 0, found {}",
        args.zipf
    );
    ensure!(
        !args.pg_connections.is_empty() && !args.redis_connections.is_empty(),
        "--pg-connections and --redis-connections need at least one count each"
    );
    let stream = stream(args)?;
    let refill = run_refill(args, &stream)?;
    let postgres = match address(args.postgres.as_deref(), "REFILL_POSTGRES", "postgres") {
        Ok(url) => Baseline::Measured(run_postgres(url, args, &stream)?),
        Err(reason) => {
            eprintln!("baselines: PostgreSQL skipped: {reason}");
            Baseline::Skipped(reason)
        }
    };
    let redis = match address(args.redis.as_deref(), "REFILL_REDIS", "redis") {
        Ok(url) => Baseline::Measured(run_redis(url, args, &stream)?),
        Err(reason) => {
            eprintln!("baselines: Redis skipped: {reason}");
            Baseline::Skipped(reason)
        }
    };
    let core = if args.skip_core {
        None
    } else {
        Some(run_core(args, &stream)?)
    };
    Ok(BaselinesReport {
        args: args.clone(),
        top_percent_share: stream.top_percent_share,
        refill,
        core,
        postgres,
        redis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_baselines_run_applies_every_event_and_runs_the_configured_baselines() {
        let args = BaselinesArgs::tiny(300, 3_000, RefillPath::Append);
        let report = run(&args).expect("baselines scenario runs");
        assert_eq!(report.refill.events, 3_000);
        assert_eq!(report.refill.balance_moved_micros, 3_000 * 1_000_000);
        assert_eq!(report.core.map(|core| core.events), Some(3_000));
        let json = report.json();
        for key in [
            "scenario",
            "events_per_s",
            "postgres_events_per_s",
            "redis_events_per_s",
            "ratio_vs_postgres",
            "ratio_vs_redis",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "baselines");
        assert_eq!(json["refill_path"], "append");
        let table = report.table().render();
        match &report.postgres {
            Baseline::Measured(pg) => {
                assert_eq!(pg.runs.len(), 4, "1 and 2 connections, sync on and off");
                assert!(pg.runs.iter().all(|run| run.events > 0));
                assert!(json["ratio_vs_postgres"].is_number());
            }
            Baseline::Skipped(reason) => {
                eprintln!("PostgreSQL baseline skipped in this test: {reason}");
                assert!(json["postgres_events_per_s"].is_null());
                assert!(table.contains("REFILL_POSTGRES is not set"));
            }
        }
        match &report.redis {
            Baseline::Measured(redis) => {
                assert_eq!(redis.runs.len(), 4, "1 and 2 connections, pipelined or not");
                assert!(redis.runs.iter().all(|run| run.events > 0));
                assert!(json["ratio_vs_redis"].is_number());
            }
            Baseline::Skipped(reason) => {
                eprintln!("Redis baseline skipped in this test: {reason}");
                assert!(json["redis_events_per_s"].is_null());
                assert!(table.contains("REFILL_REDIS is not set"));
            }
        }
    }

    #[test]
    fn tiny_http_run_without_servers_says_the_baselines_were_skipped() {
        let mut args = BaselinesArgs::tiny(200, 1_000, RefillPath::Http);
        args.postgres = None;
        args.redis = Some("  ".into());
        args.skip_core = true;
        let report = run(&args).expect("baselines scenario runs");
        assert_eq!(report.refill.events, 1_002, "one sync event per shard");
        assert_eq!(report.refill.balance_moved_micros, 1_002 * 1_000_000);
        let json = report.json();
        assert_eq!(json["refill_path"], "http");
        for key in [
            "postgres_events_per_s",
            "redis_events_per_s",
            "ratio_vs_postgres",
            "ratio_vs_redis",
            "core_events_per_s",
        ] {
            assert!(json[key].is_null(), "{key} should be null in {json}");
        }
        assert!(
            json["postgres_skipped"]
                .as_str()
                .is_some_and(|reason| reason.contains("REFILL_POSTGRES is not set"))
        );
        assert!(
            json["redis_skipped"]
                .as_str()
                .is_some_and(|reason| reason.contains("REFILL_REDIS is not set"))
        );
        let table = report.table().render();
        assert!(table.contains("skipped"), "{table}");
    }

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        assert_eq!(
            redact("postgres://refill:secret@127.0.0.1:5432/refill"),
            "postgres://…@127.0.0.1:5432/refill"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
