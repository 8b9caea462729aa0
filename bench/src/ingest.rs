//! Scenario `ingest` (DESIGN §8): usage events as JSON over real HTTP, `POST /v1/events` in
//! batches from a few concurrent keep-alive clients, into the engine on the embedded
//! default (`refill::app::start`, as `refill serve` runs it), durable (a 202 means the
//! batch is fsynced in the log). Target: ≥ 1 M events/s end to end on a 2-core box, until
//! every event is applied.
//!
//! Then, in the same run and on the same bodies, each stage alone, for the breakdown:
//! the API's JSON parse (the same code path as `post_events`: `RawValue` split, then
//! `EventBody` and `into_domain`, routed by shard), postcard encoding of the log records,
//! the embedded log's appends of those same records from as many threads as there were
//! clients, their decoding, `Shard::apply_into` of shard 0's batches on a fresh shard
//! with shard 0's accounts (with an `Input::Flush` as often as the engine logged one during
//! the end-to-end run, usage rolled up per account per flush), what the worker does besides
//! (the balance table after each batch, and at each flush the rows of what changed, as its
//! `flush_rows` builds them) and the account store's write of those flushes
//! (`KvAccountStore::flush` over a fresh embedded store), and the HTTP transport alone (the
//! same client and bodies against a server that only reads the body). The CPU of the
//! end-to-end run is split by thread.

// Rates, ratios and latencies for the report are floats; balances stay integer micros.
#![allow(clippy::float_arithmetic)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use axum::body::Bytes;
use refill_ingest::engine::{Balances, EngineConfig, LogBatch, now};
use refill_ingest::http::ApiLimits;
use refill_ingest::rows::{self, BatchOffsets};
use refill_ingest::wire;
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_ledger::effects::{FlushSet, LedgerEntry};
use refill_ledger::{Effects, Input, Shard, ShardConfig, testkit};
use refill_store::embedded::Embedded;
use refill_store::{AccountStore as _, Flush, KvAccountStore, Log as _};
use serde_json::{Value, json};

use crate::cpu;
use crate::harness::{
    self, AccountSetup, CREDIT_TYPE, FEATURE, Http, Server, TempDir, nanos, quantile, round,
};
use crate::report::{Table, thousands};
use crate::zipf::{SplitMix64, Zipf, permutation};

/// DESIGN §8: full ingest path with JSON parsing, embedded default, durable, 2-core box.
pub const TARGET_EVENTS_PER_S: u64 = 1_000_000;

/// Options of the `ingest` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct IngestArgs {
    /// Accounts (customers `c0000000`.. with one grant each), spread over the shards.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Usage events sent, each with a unique id (plus one sync event per shard at the end).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Events per `POST /v1/events` (the API takes at most 10,000).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Concurrent keep-alive client connections.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Shards of the engine (`refill serve --shards`, default 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Zipf exponent of the customer distribution (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Seed of the customer sequence.
    #[arg(long, default_value_t = 0x5EED_2026)]
    pub seed: u64,
    /// Folder for the data folders (default: the system temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[cfg(test)]
impl IngestArgs {
    /// Arguments for a small run (tests).
    pub fn tiny(accounts: u32, events: u64) -> Self {
        Self {
            accounts,
            events,
            batch: 250,
            clients: 2,
            shards: 2,
            zipf: 1.0,
            seed: 7,
            data_dir: None,
        }
    }
}

/// The request bodies, built before any clock starts.
struct Workload {
    /// `events / batch` bodies of `batch` events each (the last may be shorter).
    bodies: Arc<Vec<Bytes>>,
    /// One body per shard with one event of a customer of that shard, sent with
    /// `?sync=true` after everything else: its answer means the shard applied it all.
    tail: Vec<Bytes>,
    /// Bytes of all bodies.
    body_bytes: u64,
}

/// One event as producers send it (80 bytes with the comma).
pub(crate) fn push_event(body: &mut String, index: u64, customer: &str, value: u32) {
    let _ = write!(
        body,
        r#"{{"id":"e{index:010}","customer_id":"{customer}","feature_id":"{FEATURE}","value":{value}}}"#
    );
}

fn workload(args: &IngestArgs, names: &[String], tail_names: &[String]) -> Workload {
    let zipf = Zipf::new(args.accounts, args.zipf);
    let mut rng = SplitMix64::new(args.seed);
    let account_of_rank = permutation(args.accounts, &mut rng);
    let batch = u64::from(args.batch);
    let mut bodies = Vec::new();
    let mut body_bytes = 0_u64;
    let mut index = 0_u64;
    while index < args.events {
        let end = (index + batch).min(args.events);
        let mut body = String::with_capacity(usize::try_from(end - index).unwrap_or(0) * 82 + 2);
        body.push('[');
        for event in index..end {
            if event > index {
                body.push(',');
            }
            let customer = account_of_rank[zipf.sample(&mut rng) as usize] as usize;
            push_event(&mut body, event, &names[customer], 1);
        }
        body.push(']');
        body_bytes += body.len() as u64;
        bodies.push(Bytes::from(body));
        index = end;
    }
    let tail = tail_names
        .iter()
        .zip(args.events..)
        .map(|(name, event)| {
            let mut body = String::from("[");
            push_event(&mut body, event, name, 1);
            body.push(']');
            Bytes::from(body)
        })
        .collect();
    Workload {
        bodies: Arc::new(bodies),
        tail,
        body_bytes,
    }
}

/// What a run of POSTs gave.
#[derive(Clone, Debug, Default)]
pub struct PostRun {
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// Σ `accepted` of the answers (0 against the null server).
    pub accepted: u64,
    /// Wall time of each request, ns.
    pub latencies_ns: Vec<u64>,
}

/// POSTs every body to `path` over `clients` keep-alive connections, each taking the next
/// body when its previous one was answered. With `check`, every answer must be a 202
/// with nothing rejected.
pub(crate) fn post_all(
    http: &Http,
    path: &str,
    bodies: &Arc<Vec<Bytes>>,
    clients: u32,
    check: bool,
) -> anyhow::Result<PostRun> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results = http.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (client, url) = (http.client().clone(), http.url(path));
            let (bodies, next) = (Arc::clone(bodies), Arc::clone(&next));
            tasks.spawn(async move {
                let mut run = PostRun::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(index) else {
                        return Ok::<_, anyhow::Error>(run);
                    };
                    let sent = Instant::now();
                    let request = harness::request(&client, "POST", &url, Some(body.clone()))?;
                    let (status, answer) = harness::send(request).await?;
                    run.latencies_ns.push(nanos(sent.elapsed()));
                    if check {
                        ensure!(status == 202, "POST {url}: {status} {answer}");
                        ensure!(
                            answer["rejected"].as_array().is_some_and(Vec::is_empty),
                            "events rejected: {answer}"
                        );
                        run.accepted += answer["accepted"].as_u64().context("accepted")?;
                    }
                }
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            results.push(joined.context("a client task panicked")??);
        }
        Ok::<_, anyhow::Error>(results)
    })?;
    let mut run = PostRun {
        elapsed: started.elapsed(),
        ..PostRun::default()
    };
    for result in results {
        run.accepted += result.accepted;
        run.latencies_ns.extend(result.latencies_ns);
    }
    run.latencies_ns.sort_unstable();
    Ok(run)
}

/// The parse half of `post_events` (ingest/src/http.rs), step for step: the API's own
/// `wire::parse_events` (the array split into `RawValue`s, each parsed into `EventBody`
/// and checked by `into_domain`), then the feature looked up and the event routed to its
/// shard. Returns the inputs per shard, with their indexes in the body.
fn parse_body(
    body: &[u8],
    features: &HashSet<String>,
    route: &Route,
) -> anyhow::Result<Vec<(Vec<usize>, Vec<Input>)>> {
    let events = wire::parse_events(body, ApiLimits::default().events_per_request_max)
        .map_err(|error| anyhow!("{}: {}", error.code, error.message))?;
    let mut per_shard: Vec<(Vec<usize>, Vec<Input>)> = (0..route.shards)
        .map(|_| (Vec::new(), Vec::new()))
        .collect();
    for (index, event) in events.into_iter().enumerate() {
        let event = event.map_err(|error| anyhow!("{}: {}", error.code, error.message))?;
        ensure!(
            features.contains(event.feature.as_str()),
            "unknown feature {}",
            event.feature
        );
        let shard = route.shard_of(event.customer.as_str()) as usize;
        per_shard[shard].0.push(index);
        per_shard[shard].1.push(Input::Usage(event));
    }
    Ok(per_shard)
}

/// `Engine::shard_of` without an engine, so the stages can run after it stopped; checked
/// against the engine for every customer before it stops.
#[derive(Clone, Copy, Debug)]
struct Route {
    shards: u32,
}

impl Route {
    fn shard_of(self, customer: &str) -> u32 {
        refill_ingest::engine::kafka_partition_of(customer.as_bytes(), self.shards)
    }
}

/// How many threads a stage runs on: its CPU is then the calling thread's alone (so
/// nothing else in the process counts), or the whole process's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Threads {
    One,
    Many,
}

/// One stage measured alone: wall time, CPU of the process, and events it handled.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stage {
    /// Wall time.
    pub elapsed: Duration,
    /// CPU seconds of the whole process meanwhile.
    pub cpu_s: f64,
    /// Events handled.
    pub events: u64,
}

impl Stage {
    /// Events per wall second.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU ns per event.
    pub fn cpu_ns_per_event(&self) -> f64 {
        self.cpu_s * 1e9 / (self.events.max(1)) as f64
    }
}

/// Times `work` as one stage.
fn stage<T>(
    events: u64,
    threads: Threads,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Stage, T)> {
    let process = cpu::snapshot();
    let thread = cpu::this_thread_s();
    let started = Instant::now();
    let out = work()?;
    let elapsed = started.elapsed();
    let cpu_s = match threads {
        Threads::One => cpu::this_thread_s() - thread,
        Threads::Many => cpu::since(&process).process_s,
    };
    Ok((
        Stage {
            elapsed,
            cpu_s,
            events,
        },
        out,
    ))
}

/// Every figure of one `ingest` run.
#[derive(Clone, Debug)]
pub struct IngestReport {
    /// The arguments it ran with.
    pub args: IngestArgs,
    /// Events sent (including the sync tail).
    pub events: u64,
    /// Bytes of the request bodies per event.
    pub body_bytes_per_event: f64,
    /// Account setup (not timed in the figure).
    pub setup: Duration,
    /// The end-to-end run: first request to the tail's sync answers.
    pub e2e: Duration,
    /// The non-sync POSTs alone (until the last 202: everything durable in the log).
    pub posts: PostRun,
    /// CPU of the end-to-end run, by thread.
    pub e2e_cpu: cpu::Usage,
    /// Busy cores of the whole machine during the run (other processes included).
    pub machine_busy_cores: Option<f64>,
    /// Credits that left the balances (read from the balance table), micro-credits.
    pub balance_moved_micros: i128,
    /// What the events sum to.
    pub expected_moved_micros: i128,
    /// The parse of `post_events`, one thread.
    pub parse: Stage,
    /// Encoding the per-shard log records (postcard `LogBatch`), one thread.
    pub encode: Stage,
    /// Appending those records to a fresh embedded log from `clients` threads.
    pub log_append: Stage,
    /// Group commits (syncs) of that log.
    pub log_commits: u64,
    /// Log records appended.
    pub log_records: u64,
    /// Decoding shard 0's records, one thread.
    pub decode: Stage,
    /// `Shard::apply_into` of shard 0's batches on a fresh shard with shard 0's accounts.
    pub apply: Stage,
    /// Accounts of that shard.
    pub apply_accounts: usize,
    /// Updating the balance table after each of those batches and building the rows of each
    /// flush, as the worker does (`publish_balances`, `flush_rows`), one thread.
    pub rows: Stage,
    /// Rows of those flushes (balances, account states, rolled-up entries, dedup chunks,
    /// checkpoints).
    pub row_count: u64,
    /// End of the setup → its flush landed (every account in a checkpoint), before the clock.
    pub setup_flush: Duration,
    /// Sync POSTs of the tail the API answered 503 (applied later than it waits); the run
    /// then waited on the shards themselves.
    pub tail_timeouts: u32,
    /// Flushes in the stages (as many as the engine logged per shard end to end).
    pub flushes: u64,
    /// Writing those flushes to a fresh embedded store (`KvAccountStore::flush`, durable).
    pub store_write: Stage,
    /// The same POSTs against a server that only reads the body.
    pub http_null: Stage,
    /// Draining the engine and its last flush at the end (not timed in the figure).
    pub stop: Duration,
}

impl IngestReport {
    /// Events per second end to end, until every event is applied.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.e2e.as_secs_f64()
    }

    /// Events per second until the last 202 (durable in the log, maybe not applied yet).
    pub fn accepted_events_per_s(&self) -> f64 {
        self.args.events as f64 / self.posts.elapsed.as_secs_f64()
    }

    /// CPU ns per event of the threads whose name starts with `prefix` during the run.
    fn e2e_cpu_ns(&self, prefix: &str) -> f64 {
        self.e2e_cpu.seconds_of(prefix) * 1e9 / self.events as f64
    }

    /// Process CPU ns per event during the run.
    fn e2e_process_ns(&self) -> f64 {
        self.e2e_cpu.process_s * 1e9 / self.events as f64
    }

    /// CPU ns per event the stages measured alone need: parse, encode, log append (its
    /// CPU), decode, apply and the HTTP transport (client included).
    pub fn stages_cpu_ns_per_event(&self) -> f64 {
        [
            self.parse,
            self.encode,
            self.log_append,
            self.decode,
            self.apply,
            self.rows,
            self.store_write,
            self.http_null,
        ]
        .iter()
        .map(Stage::cpu_ns_per_event)
        .sum()
    }

    /// What the cores of this box could do if the stages alone were the whole cost and
    /// ran perfectly in parallel: cores / Σ CPU per event.
    pub fn cpu_bound_events_per_s(&self) -> f64 {
        cores() * 1e9 / self.stages_cpu_ns_per_event()
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let args = &self.args;
        let mut table = Table::new(format!(
            "refill-bench ingest: {} events as JSON over HTTP, {} per POST, {} clients, {} accounts, {} shards, zipf {}",
            thousands(self.events),
            args.batch,
            args.clients,
            thousands(u64::from(args.accounts)),
            args.shards,
            args.zipf
        ));
        let rate = |stage: &Stage| thousands(stage.events_per_s() as u64);
        let ns = |stage: &Stage| format!("{:.0} CPU ns/event", stage.cpu_ns_per_event());
        table
            .row(
                "events/s end to end",
                thousands(self.events_per_s() as u64),
                &format!(
                    "target {}; first POST → every event applied (ratio {:.3})",
                    thousands(TARGET_EVENTS_PER_S),
                    self.events_per_s() / TARGET_EVENTS_PER_S as f64
                ),
            )
            .row(
                "events/s accepted (durable)",
                thousands(self.accepted_events_per_s() as u64),
                "until the last 202 (fsynced in the log)",
            )
            .row(
                "POST p50 / p99 / max",
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    quantile(&self.posts.latencies_ns, 0.5) as f64 / 1e6,
                    quantile(&self.posts.latencies_ns, 0.99) as f64 / 1e6,
                    quantile(&self.posts.latencies_ns, 1.0) as f64 / 1e6
                ),
                &format!("one POST of {} events", args.batch),
            )
            .row(
                "process CPU per event",
                format!("{:.0} ns", self.e2e_process_ns()),
                &format!(
                    "{:.2} CPU-s over {:.2} s wall",
                    self.e2e_cpu.process_s,
                    self.e2e.as_secs_f64()
                ),
            );
        for (name, seconds) in &self.e2e_cpu.by_name {
            table.row(
                &format!("  CPU in {name}"),
                format!("{:.0} ns/event", seconds * 1e9 / self.events as f64),
                &format!("{seconds:.2} s"),
            );
        }
        if self.e2e_cpu.unattributed_s() > 0.0 {
            table.row(
                "  CPU in threads that ended",
                format!(
                    "{:.0} ns/event",
                    self.e2e_cpu.unattributed_s() * 1e9 / self.events as f64
                ),
                "",
            );
        }
        if let Some(busy) = self.machine_busy_cores {
            table.row(
                "machine busy cores",
                format!("{busy:.2}"),
                &format!("of {} during the run, other processes included", cores()),
            );
        }
        table
            .row(
                "stage: JSON parse (post_events)",
                rate(&self.parse),
                &format!("one thread; {}", ns(&self.parse)),
            )
            .row(
                "stage: encode log records",
                rate(&self.encode),
                &format!("one thread, postcard; {}", ns(&self.encode)),
            )
            .row(
                "stage: embedded log append",
                rate(&self.log_append),
                &format!(
                    "{} threads, {} records in {} commits ({:.2} ms each); {}",
                    args.clients,
                    thousands(self.log_records),
                    thousands(self.log_commits),
                    self.log_append.elapsed.as_secs_f64() * 1e3 / self.log_commits.max(1) as f64,
                    ns(&self.log_append)
                ),
            )
            .row(
                "stage: decode log records",
                rate(&self.decode),
                &format!("one thread, shard 0's records; {}", ns(&self.decode)),
            )
            .row(
                "stage: Shard::apply_into",
                rate(&self.apply),
                &format!(
                    "one shard ({} accounts), one thread; {}",
                    thousands(self.apply_accounts as u64),
                    ns(&self.apply)
                ),
            )
            .row(
                "stage: balance table + flush rows",
                rate(&self.rows),
                &format!(
                    "one thread, as the worker; {} flushes, {} rows ({:.3} per event); {}",
                    self.flushes,
                    thousands(self.row_count),
                    self.row_count as f64 / self.apply.events.max(1) as f64,
                    ns(&self.rows)
                ),
            )
            .row(
                "stage: account store write",
                rate(&self.store_write),
                &format!(
                    "KvAccountStore::flush on a fresh embedded store, one per flush; {}",
                    ns(&self.store_write)
                ),
            )
            .row(
                "stage: HTTP transport alone",
                rate(&self.http_null),
                &format!(
                    "same client, server only reads the body; {}",
                    ns(&self.http_null)
                ),
            )
            .row(
                "Σ stage CPU per event",
                format!("{:.0} ns", self.stages_cpu_ns_per_event()),
                &format!(
                    "→ {} events/s on {} cores if that were all, in parallel",
                    thousands(self.cpu_bound_events_per_s() as u64),
                    cores()
                ),
            )
            .row(
                "balances moved",
                format!("{} µcredits", self.balance_moved_micros),
                &format!(
                    "read back from the balance table; Σ events = {}",
                    self.expected_moved_micros
                ),
            )
            .row(
                "body bytes per event",
                format!("{:.1}", self.body_bytes_per_event),
                "",
            )
            .row(
                "sync tail answered 503",
                self.tail_timeouts.to_string(),
                "applied later than the API's 5 s wait; the clock then waited on the shards",
            )
            .row(
                "setup's flush (untimed)",
                format!("{:.1} s", self.setup_flush.as_secs_f64()),
                "every account in a checkpoint before the clock starts",
            )
            .row(
                "setup / stop (untimed)",
                format!(
                    "{:.1} s / {:.1} s",
                    self.setup.as_secs_f64(),
                    self.stop.as_secs_f64()
                ),
                "accounts through the log; drain + last flush",
            );
        table
    }

    /// The JSON object (DESIGN §8 keys first).
    pub fn json(&self) -> Value {
        let cpu_by_thread: serde_json::Map<String, Value> = self
            .e2e_cpu
            .by_name
            .iter()
            .map(|(name, seconds)| {
                (
                    name.clone(),
                    json!(round(seconds * 1e9 / self.events as f64, 1)),
                )
            })
            .collect();
        let stage_ns = |stage: &Stage| round(stage.cpu_ns_per_event(), 1);
        json!({
            "scenario": "ingest",
            "events_per_s": self.events_per_s().round() as u64,
            "target_events_per_s": TARGET_EVENTS_PER_S,
            "ratio_vs_target": round(self.events_per_s() / TARGET_EVENTS_PER_S as f64, 4),
            "accepted_events_per_s": self.accepted_events_per_s().round() as u64,
            "parse_events_per_s": self.parse.events_per_s().round() as u64,
            "encode_events_per_s": self.encode.events_per_s().round() as u64,
            "log_append_events_per_s": self.log_append.events_per_s().round() as u64,
            "decode_events_per_s": self.decode.events_per_s().round() as u64,
            "apply_events_per_s": self.apply.events_per_s().round() as u64,
            "rows_events_per_s": self.rows.events_per_s().round() as u64,
            "store_write_events_per_s": self.store_write.events_per_s().round() as u64,
            "rows_per_event": round(self.row_count as f64 / self.apply.events.max(1) as f64, 3),
            "flushes": self.flushes,
            "http_null_events_per_s": self.http_null.events_per_s().round() as u64,
            "cpu_bound_events_per_s": self.cpu_bound_events_per_s().round() as u64,
            "stage_cpu_ns_per_event": {
                "parse": stage_ns(&self.parse),
                "encode": stage_ns(&self.encode),
                "log_append": stage_ns(&self.log_append),
                "decode": stage_ns(&self.decode),
                "apply": stage_ns(&self.apply),
                "rows": stage_ns(&self.rows),
                "store_write": stage_ns(&self.store_write),
                "http_null": stage_ns(&self.http_null),
            },
            "process_cpu_ns_per_event": round(self.e2e_process_ns(), 1),
            "cpu_ns_per_event_by_thread": cpu_by_thread,
            "shard_worker_cpu_ns_per_event": round(self.e2e_cpu_ns("shard-"), 1),
            "machine_busy_cores": self.machine_busy_cores.map(|busy| round(busy, 2)),
            "post_p50_ms": round(quantile(&self.posts.latencies_ns, 0.5) as f64 / 1e6, 3),
            "post_p99_ms": round(quantile(&self.posts.latencies_ns, 0.99) as f64 / 1e6, 3),
            "log_commits": self.log_commits,
            "log_records": self.log_records,
            "accounts": self.args.accounts,
            "events": self.events,
            "batch": self.args.batch,
            "clients": self.args.clients,
            "shards": self.args.shards,
            "zipf": self.args.zipf,
            "seed": self.args.seed,
            "body_bytes_per_event": round(self.body_bytes_per_event, 1),
            "e2e_s": round(self.e2e.as_secs_f64(), 3),
            "setup_s": round(self.setup.as_secs_f64(), 2),
            "setup_flush_s": round(self.setup_flush.as_secs_f64(), 2),
            "tail_sync_timeouts": self.tail_timeouts,
        })
    }
}

/// Cores of this machine.
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, usize::from) as f64
}

/// Runs the whole scenario and checks its own result: every event accepted once and the
/// balances moved by exactly the events' credits.
pub fn run(args: &IngestArgs) -> anyhow::Result<IngestReport> {
    ensure!(
        args.zipf.is_finite() && args.zipf >= 0.0,
        "--zipf must be a finite number ≥ 0, found {}",
        args.zipf
    );
    let names = harness::names('c', args.accounts);
    let grant_whole = i64::try_from(args.events.saturating_mul(2).max(10))
        .ok()
        .filter(|whole| whole.checked_mul(MICROS_PER_UNIT).is_some())
        .context("--events too large for one account's balance")?;
    let setup_accounts = AccountSetup {
        grant_whole,
        auto_recharge: false,
    };

    let data = TempDir::new(args.data_dir.as_deref(), "ingest")?;
    let server = Server::start(data.path(), args.shards)?;
    let http = Http::new(server.addr)?;
    harness::put_catalog(&http)?;
    let setup = harness::create_accounts(&server, &names, setup_accounts)?;
    let engine = server.engine().clone();
    let route = Route {
        shards: args.shards,
    };
    for name in &names {
        ensure!(
            route.shard_of(name) == engine.shard_of(name),
            "the benchmark's routing disagrees with Engine::shard_of for {name}"
        );
    }
    let tail_names = harness::one_per_shard(&engine, &names)?;
    let workload = workload(args, &names, &tail_names);
    let events = args.events + tail_names.len() as u64;
    // The setup's own flush (every account new) lands before the clock starts.
    let setup_flush =
        harness::wait_flushed(&engine, u64::from(args.accounts), Duration::from_secs(600))?;

    // End to end: every body, then one sync event per shard (applied after all the rest).
    let cpu_before = cpu::snapshot();
    let machine = cpu::Machine::now();
    let started = Instant::now();
    let posts = post_all(&http, "/v1/events", &workload.bodies, args.clients, true)?;
    let mut accepted = posts.accepted;
    let mut tail_timeouts = 0_u32;
    for body in &workload.tail {
        let (status, answer) = http.call("POST", "/v1/events?sync=true", Some(body.clone()))?;
        if status == 503 && answer["error"]["code"] == "timeout" {
            // Durable, applied later than the API waits: wait on the shards instead.
            tail_timeouts += 1;
            accepted += 1;
            continue;
        }
        ensure!(status == 202, "sync POST: {status} {answer}");
        accepted += answer["accepted"].as_u64().context("accepted")?;
    }
    if tail_timeouts > 0 {
        // A read runs on the shard's worker once it applied everything durable.
        server.account_count()?;
    }
    let e2e = started.elapsed();
    let e2e_cpu = cpu::since(&cpu_before);
    let machine_busy_cores = machine.busy_cores_since();
    ensure!(accepted == events, "accepted {accepted} of {events} events");

    // Every event applied exactly once: the balance table moved by Σ events.
    let mut balance_moved_micros = 0_i128;
    for name in &names {
        let balance = engine
            .balance(name, CREDIT_TYPE)
            .with_context(|| format!("no balance for {name}"))?;
        balance_moved_micros += i128::from(grant_whole * MICROS_PER_UNIT - balance.micros());
    }
    let expected_moved_micros = i128::from(events) * i128::from(MICROS_PER_UNIT);
    ensure!(
        balance_moved_micros == expected_moved_micros,
        "balances moved {balance_moved_micros} µcredits, events sum to {expected_moved_micros}"
    );

    // The engine stops before the stages, so its background work (fjall flushes and
    // compactions of what the run wrote) does not count in theirs.
    drop(engine);
    drop(http);
    let stop = server.stop()?;
    drop(data);

    // The stages alone, on the same bodies.
    let features: HashSet<String> = [FEATURE.to_owned()].into_iter().collect();
    let (parse, parsed) = stage(args.events, Threads::One, || {
        workload
            .bodies
            .iter()
            .map(|body| parse_body(body, &features, &route))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let (encode, records) = stage(args.events, Threads::One, || {
        let mut records: Vec<Vec<(u32, Vec<u8>)>> = Vec::with_capacity(parsed.len());
        let mut kept: Vec<Vec<Vec<Input>>> = Vec::with_capacity(parsed.len());
        for per_shard in parsed {
            let mut body_records = Vec::new();
            let mut body_inputs = Vec::new();
            for (shard, (_, inputs)) in (0_u32..).zip(per_shard) {
                if inputs.is_empty() {
                    body_inputs.push(inputs);
                    continue;
                }
                let batch = LogBatch {
                    at: now(),
                    inputs,
                    sources: None,
                };
                body_records.push((shard, postcard::to_stdvec(&batch)?));
                body_inputs.push(batch.inputs);
            }
            records.push(body_records);
            kept.push(body_inputs);
        }
        Ok((records, kept))
    })?;
    let (records, inputs) = records;
    let log_dir = TempDir::new(args.data_dir.as_deref(), "ingest-log")?;
    let log_records = records.iter().map(|body| body.len() as u64).sum();
    let (log_append, log_commits) = stage(args.events, Threads::Many, || {
        append_all(&log_dir, args.shards, &records, args.clients)
    })?;
    drop(log_dir);
    let shard0_events: u64 = inputs.iter().map(|body| body[0].len() as u64).sum();
    let (decode, decoded) = stage(shard0_events, Threads::One, || {
        let mut count = 0_u64;
        for (shard, record) in records.iter().flatten() {
            if *shard == 0 {
                let batch: LogBatch = postcard::from_bytes(record)?;
                count += batch.inputs.len() as u64;
            }
        }
        Ok(count)
    })?;
    ensure!(
        decoded == shard0_events,
        "decoded {decoded} of {shard0_events}"
    );
    drop(records);
    let shard0_names: Vec<&String> = names
        .iter()
        .filter(|name| route.shard_of(name) == 0)
        .collect();
    let mut fresh = shard_with(&shard0_names, setup_accounts)?;
    let apply_accounts = fresh.account_count();

    // Apply, then what the worker does besides, interleaved as in the worker (a flush's rows
    // are built right after the batch that closed it) and timed apart on this thread: the
    // balance table after every batch, the rows at every flush. The engine logged a flush
    // per shard every `flush_interval_ms` of the end-to-end run; so do the stages.
    let flush_interval_ms = EngineConfig::default().flush_interval_ms.max(1);
    let flushes_wanted = u64::try_from(e2e.as_millis())
        .unwrap_or(u64::MAX)
        .div_ceil(flush_interval_ms)
        .max(1);
    let shard0_bodies: Vec<&Vec<Input>> = inputs
        .iter()
        .map(|body| &body[0])
        .filter(|inputs| !inputs.is_empty())
        .collect();
    let flush_every = (shard0_bodies.len() as u64).div_ceil(flushes_wanted).max(1);
    let balances = Balances::new();
    for (handle, account) in fresh.accounts() {
        balances.set(
            fresh.customer_of(handle).id.as_str(),
            fresh.credit_type_of(handle).as_str(),
            0,
            account.balance(),
        );
    }
    let mut worker = FlushRows::new(&fresh);
    let mut apply = Stage {
        events: shard0_events,
        ..Stage::default()
    };
    let mut rows_stage = Stage {
        events: shard0_events,
        ..Stage::default()
    };
    let mut fx = Effects::default();
    let mut applied = 0_u64;
    let mut flushes = Vec::new();
    let flush_input = [Input::Flush];
    for (index, body) in (1_u64..).zip(&shard0_bodies) {
        let close = index % flush_every == 0 || index == shard0_bodies.len() as u64;
        timed(&mut apply, || {
            fresh.apply_into(now(), body, &mut fx);
            applied += fx.events_applied;
        });
        timed(&mut rows_stage, || worker.batch(&fresh, &mut fx, &balances));
        if close {
            timed(&mut apply, || {
                fresh.apply_into(now(), &flush_input, &mut fx)
            });
            timed(&mut rows_stage, || {
                worker.batch(&fresh, &mut fx, &balances);
                let set = fx
                    .flush
                    .take()
                    .expect("a batch with Input::Flush closes a flush");
                flushes.push(worker.flush(&fresh, &set));
            });
        }
    }
    ensure!(
        applied == shard0_events,
        "applied {applied} of {shard0_events} on the fresh shard"
    );
    let rows = rows_stage;
    let row_count: u64 = flushes.iter().map(flush_row_count).sum();
    drop((worker, balances, fresh, inputs));
    let store_dir = TempDir::new(args.data_dir.as_deref(), "ingest-store")?;
    let flush_count = flushes.len() as u64;
    let (store_write, ()) = stage(shard0_events, Threads::Many, || {
        let accounts = KvAccountStore::new(Embedded::open(&store_dir.path().join("db"), 1)?);
        for flush in &flushes {
            accounts.flush(flush)?;
        }
        Ok(())
    })?;
    drop(flushes);
    drop(store_dir);

    let (http_null, ()) = stage(args.events, Threads::Many, || {
        let null = NullServer::start()?;
        let client = Http::new(null.addr)?;
        post_all(&client, "/v1/events", &workload.bodies, args.clients, false)?;
        Ok(())
    })?;

    Ok(IngestReport {
        rows,
        row_count,
        flushes: flush_count,
        setup_flush,
        tail_timeouts,
        store_write,
        args: args.clone(),
        events,
        body_bytes_per_event: workload.body_bytes as f64 / args.events as f64,
        setup,
        e2e,
        posts,
        e2e_cpu,
        machine_busy_cores,
        balance_moved_micros,
        expected_moved_micros,
        parse,
        encode,
        log_append,
        log_commits,
        log_records,
        decode,
        apply,
        apply_accounts,
        http_null,
        stop,
    })
}

/// Times `work` into `stage`: wall time and this thread's CPU.
fn timed(stage: &mut Stage, work: impl FnOnce()) {
    let cpu = cpu::this_thread_s();
    let started = Instant::now();
    work();
    stage.elapsed += started.elapsed();
    stage.cpu_s += cpu::this_thread_s() - cpu;
}

/// What the worker (ingest/src/engine/worker.rs) keeps between flushes to build their rows:
/// the entries made since the last flush and, per account and customer, the slot holding
/// its newest flushed state.
struct FlushRows {
    entries: Vec<LedgerEntry>,
    account_slots: Vec<u8>,
    customer_slots: Vec<u8>,
    offsets: BatchOffsets,
}

impl FlushRows {
    fn new(shard: &Shard) -> Self {
        Self {
            entries: Vec::new(),
            account_slots: vec![0; shard.account_count()],
            customer_slots: vec![0; shard.customer_count()],
            offsets: BatchOffsets {
                partition: 0,
                offset_minus_batch: 0,
            },
        }
    }

    /// After each applied batch, as the worker: the lock-free balances of the accounts it
    /// changed (`publish_balances`), and its entries kept for the next flush.
    fn batch(&mut self, shard: &Shard, fx: &mut Effects, balances: &Balances) {
        for &handle in &fx.changed {
            balances.set(
                shard.customer_of(handle).id.as_str(),
                shard.credit_type_of(handle).as_str(),
                0,
                shard.account(handle).balance(),
            );
        }
        self.entries.append(&mut fx.entries);
    }

    /// The rows of the flush the shard just closed, as the worker's `flush_rows`: the dirty
    /// accounts' balances and states (in the slot not holding their newest state), the
    /// changed customers, the entries since the last flush, the new dedup ids, the
    /// checkpoint.
    fn flush(&mut self, shard: &Shard, set: &FlushSet) -> Flush {
        self.account_slots.resize(shard.account_count(), 0);
        self.customer_slots.resize(shard.customer_count(), 0);
        let flush = rows::flush_rows(&rows::FlushSource {
            shard,
            set,
            partition: 0,
            account_slots: &self.account_slots,
            customer_slots: &self.customer_slots,
            entries: &self.entries,
            attempts: &[],
            offsets: self.offsets,
            log_next: u64::try_from(self.offsets.offset_of(shard.batch()) + 1).unwrap_or(0),
            sources: None,
        });
        self.entries.clear();
        for row in &flush.accounts {
            self.account_slots[row.handle as usize] = row.slot;
        }
        for row in &flush.customers {
            self.customer_slots[row.index as usize] = row.slot;
        }
        flush
    }
}

/// Rows one flush writes, its checkpoint included.
fn flush_row_count(flush: &Flush) -> u64 {
    (flush.balances.len()
        + flush.accounts.len()
        + flush.customers.len()
        + flush.entries.len()
        + flush.attempts.len()
        + flush.dedup.len()
        + usize::from(flush.checkpoint.is_some())) as u64
}

/// Appends every body's records to a fresh embedded log from `threads` threads, each
/// taking the next body and appending its records one shard after the other, as
/// `post_events` does; returns the number of group commits.
fn append_all(
    dir: &TempDir,
    shards: u32,
    records: &[Vec<(u32, Vec<u8>)>],
    threads: u32,
) -> anyhow::Result<u64> {
    let log = Embedded::open(&dir.path().join("db"), shards)?;
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                std::thread::Builder::new()
                    .name("log-appender".into())
                    .spawn_scoped(scope, || {
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(body) = records.get(index) else {
                                return Ok::<(), anyhow::Error>(());
                            };
                            for (shard, record) in body {
                                log.append(*shard, &[record.as_slice()])?;
                            }
                        }
                    })
            })
            .collect::<Result<_, _>>()?;
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow!("a log appender panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(log.commits())
}

/// A shard with the example catalog and one account per name, set up as the engine's, and
/// flushed (as the engine's first flush after the setup), so the stages start clean.
fn shard_with(names: &[&String], setup: AccountSetup) -> anyhow::Result<Shard> {
    let mut shard = Shard::new(ShardConfig::default(), now());
    let mut fx = Effects::default();
    shard.apply_into(now(), &testkit::example_catalog(), &mut fx);
    let mut inputs = Vec::new();
    for chunk in names.chunks(4_096) {
        inputs.clear();
        for name in chunk {
            harness::account_inputs(name, setup, &mut inputs);
        }
        shard.apply_into(now(), &inputs, &mut fx);
        ensure!(
            fx.inputs_rejected == 0,
            "setup input rejected: {:?}",
            fx.outcomes.first()
        );
    }
    ensure!(shard.account_count() == names.len(), "setup accounts");
    shard.apply_into(now(), &[Input::Flush], &mut fx);
    ensure!(fx.flush.is_some(), "the setup's flush closed");
    Ok(shard)
}

/// The HTTP transport alone: axum on the same kind of runtime, a handler that reads the
/// body and answers 202 with nothing else.
struct NullServer {
    /// Dropping it ends the server.
    _runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

impl NullServer {
    fn start() -> anyhow::Result<Self> {
        let runtime = harness::server_runtime("http-null")?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new().route(
            "/v1/events",
            axum::routing::post(|body: Bytes| async move {
                std::hint::black_box(body.len());
                axum::http::StatusCode::ACCEPTED
            }),
        );
        runtime.spawn(async move { axum::serve(listener, router).await });
        Ok(Self {
            _runtime: runtime,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_ingest_run_applies_every_event_once_over_http() {
        let args = IngestArgs::tiny(300, 3_000);
        let report = run(&args).expect("ingest scenario runs");
        assert_eq!(
            report.events, 3_002,
            "3,000 events and one sync event per shard"
        );
        assert_eq!(report.posts.accepted, 3_000);
        assert_eq!(
            report.posts.latencies_ns.len(),
            12,
            "3,000 events in POSTs of 250"
        );
        assert_eq!(report.balance_moved_micros, 3_002 * 1_000_000);
        assert_eq!(report.balance_moved_micros, report.expected_moved_micros);
        assert_eq!(report.parse.events, 3_000);
        assert!(
            (12..=24).contains(&report.log_records),
            "one record per body and shard"
        );
        assert!(report.log_commits >= 1);
        assert!(report.apply.events > 0 && report.apply.events < 3_000);
        assert!(report.apply_accounts > 0 && report.apply_accounts < 300);
        assert!(report.table().render().contains("events/s end to end"));
        let json = report.json();
        for key in [
            "scenario",
            "events_per_s",
            "accepted_events_per_s",
            "parse_events_per_s",
            "log_append_events_per_s",
            "apply_events_per_s",
            "http_null_events_per_s",
            "cpu_ns_per_event_by_thread",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "ingest");
    }
}
