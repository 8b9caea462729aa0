//! The `refill` binary: a thin layer that parses the command line and hands each command
//! to the crate that does the work.

mod ingest;
mod migrate;
mod recharger;
mod serve;
mod simulate;

use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc: the shard threads allocate a flush's rows and the store's
/// threads free them, and glibc then spent ~12 % of `refill-bench ingest`'s CPU on
/// consolidating chunks and on TLB shootdowns from returning memory (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Refill: prepaid usage credits with auto-recharge.
#[derive(Parser)]
#[command(name = "refill", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole engine in one process, with the sandbox payment gateway and the HTTP
    /// API: on the embedded log and store by default (nothing to install), or on Kafka
    /// (`--log kafka://HOST:PORT`) and a CQL store (`--store scylla://HOST:PORT`).
    Serve(serve::ServeArgs),
    /// One ingest worker of a scaled-out deployment: joins the consumer group on
    /// refill.usage, owns the shards of the partitions it is given (journal on Kafka, state
    /// in the CQL store), sends recharge commands to Kafka, serves the API of its accounts.
    Ingest(ingest::IngestArgs),
    /// One recharger of a scaled-out deployment: consumes refill.recharge-commands in the
    /// consumer group refill-recharger, reserves spend and dedups command ids in the CQL
    /// store (LWT), charges the gateway, publishes outcomes on refill.account-commands.
    Recharger(recharger::RechargerArgs),
    /// Apply the Kafka topic settings and the CQL schema (idempotent).
    Migrate(migrate::MigrateArgs),
    /// Run the deterministic simulator: random workloads with crashes, duplicate and
    /// late deliveries, declines and timeouts, checking every invariant after every batch.
    ///
    /// A failure prints the seed, the step and the first broken invariant; `--seed S`
    /// replays exactly that run.
    Simulate(simulate::SimulateArgs),
    /// Rebuild every shard in memory from the log of an embedded data folder (read-only:
    /// nothing is written, no gateway is called) and print what it applied; `--verify`
    /// compares balances, checkpoint state, ledger entries and recharge attempts with the
    /// store and exits 1 listing the differences.
    ///
    /// Exit codes: 0 equal (or no --verify), 1 differences found, 2 cannot run (bad input).
    Replay(refill::replay::ReplayArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::Ingest(args) => ingest::run(&args),
        Command::Recharger(args) => recharger::run(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Replay(args) => std::process::exit(refill::replay::main(&args)),
    }
}
