//! `refill-bench`: Refill's benchmarks as one program (DESIGN §8), one scenario per
//! subcommand, each printing a readable table and, with `--json`, one JSON object of its
//! figures and ratios as its last line. Baselines run in the same process, on the same
//! workload, so ratios compare like with like.
//!
//! A scenario is a module with an `Args` struct (clap) and a `run` returning a report
//! that renders a table and a JSON object; adding one is a variant below.

mod baselines;
mod core;
mod cpu;
mod flush;
mod harness;
mod ingest;
mod kafka;
mod latency;
mod memory;
mod report;
mod restart;
mod zipf;

use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc: the shard threads allocate a flush's rows and the store's
/// threads free them, and glibc then spent ~12 % of `refill-bench ingest`'s CPU on
/// consolidating chunks and on TLB shootdowns from returning memory (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Scenarios that exist now.
const SCENARIOS: &[&str] = &[
    "core",
    "ingest",
    "kafka",
    "baselines",
    "latency",
    "memory",
    "restart",
    "flush",
];

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "refill-bench",
    about = "Refill's benchmarks, side by side with their baselines in one run",
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Also print one JSON object of the figures as the last line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

/// One benchmark scenario.
#[derive(Subcommand, Debug)]
enum Scenario {
    /// Pre-parsed usage events through one shard's `apply_into` on one core, next to a bare
    /// `HashMap<u64, i64>` decrement over the same customers (target ≥ 5 M events/s).
    Core(core::CoreArgs),
    /// Usage events as JSON over real HTTP into the embedded engine, durable, until every
    /// event is applied; each stage alone on the same bodies (target ≥ 1 M events/s).
    Ingest(ingest::IngestArgs),
    /// Usage produced to a real refill.usage, read by a bare rdkafka consumer and by
    /// Refill's ingest worker (group intake → journal on Kafka → balances), same run
    /// (target ≥ 80 % of the bare consumer); skipped without `REFILL_KAFKA`.
    Kafka(kafka::KafkaArgs),
    /// The same event stream through Refill's durable embedded path, a PostgreSQL UPDATE per
    /// event and a Redis Lua script per event (targets ≥ 50× and ≥ 5×); a baseline whose
    /// address (`REFILL_POSTGRES`, `REFILL_REDIS`) is unset is skipped and says so.
    Baselines(baselines::BaselinesArgs),
    /// Balance read in process (p99 ≤ 1 µs), entitlement check over HTTP (p99 ≤ 1 ms),
    /// threshold crossing → recharged balance.
    Latency(latency::LatencyArgs),
    /// Bytes per idle account: resident-set growth while creating them in one shard
    /// (target ≤ 200).
    Memory(memory::MemoryArgs),
    /// 1 M accounts flushed, stop, start again from the rows: time until every shard
    /// ingests (target ≤ 10 s).
    Restart(restart::RestartArgs),
    /// Disk bytes of the incremental flush: idle (target 0 bytes/s) and per dirty account
    /// (target ≤ 2 × one account's rows), with the flush's time.
    Flush(flush::FlushArgs),
    /// Anything else: refused with the list of scenarios.
    #[command(external_subcommand)]
    Unknown(Vec<String>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Core(args) => {
            let report = core::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Ingest(args) => {
            let report = ingest::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Kafka(args) => {
            let report = kafka::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Baselines(args) => {
            let report = baselines::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Latency(args) => {
            let report = latency::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Memory(args) => {
            let report = memory::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Restart(args) => {
            let report = restart::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Flush(args) => {
            let report = flush::run(&args)?;
            show(&report.table(), &report.json(), cli.json);
        }
        Scenario::Unknown(words) => {
            // A usage error, not a failure: no backtrace, exit 2 as clap does.
            let name = words.first().map_or("", String::as_str);
            eprintln!(
                "error: unknown scenario {name:?}\n  scenarios: {}",
                SCENARIOS.join(", ")
            );
            std::process::exit(2);
        }
    }
    Ok(())
}

/// Prints the table and, with `--json`, the JSON object as the last line.
fn show(table: &report::Table, json: &serde_json::Value, with_json: bool) {
    print!("{}", table.render());
    if with_json {
        report::print_json_line(json);
    }
}
