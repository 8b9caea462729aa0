//! The `refill` binary: a thin layer that parses the command line and hands each command
//! to the crate that does the work.

mod migrate;
mod serve;
mod simulate;

use clap::{Parser, Subcommand};

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
    /// Apply the Kafka topic settings and the CQL schema (idempotent).
    Migrate(migrate::MigrateArgs),
    /// Run the deterministic simulator: random workloads with crashes, duplicate and
    /// late deliveries, declines and timeouts, checking every invariant after every batch.
    ///
    /// A failure prints the seed, the step and the first broken invariant; `--seed S`
    /// replays exactly that run.
    Simulate(simulate::SimulateArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Simulate(args) => simulate::run(&args),
    }
}
