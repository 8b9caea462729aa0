//! `refill-bench`: Refill's benchmarks as one program (DESIGN §8), one scenario per
//! subcommand, each printing a readable table and, with `--json`, one JSON object of its
//! figures and ratios as its last line. Baselines run in the same process, on the same
//! workload, so ratios compare like with like.
//!
//! A scenario is a module with an `Args` struct (clap) and a `run` returning a report
//! that renders a table and a JSON object; adding one is a variant below.

mod core;
mod report;
mod zipf;

use clap::{Parser, Subcommand};

/// Scenarios that exist now.
const SCENARIOS: &[&str] = &["core"];
/// Scenarios DESIGN §8 names that are not written yet.
const PLANNED: &[&str] = &[
    "ingest",
    "kafka",
    "baselines",
    "latency",
    "memory",
    "restart",
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
    /// Anything else: refused with the list of scenarios.
    #[command(external_subcommand)]
    Unknown(Vec<String>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Core(args) => {
            let report = core::run(&args)?;
            print!("{}", report.table().render());
            if cli.json {
                report::print_json_line(&report.json());
            }
        }
        Scenario::Unknown(words) => {
            // A usage error, not a failure: no backtrace, exit 2 as clap does.
            let name = words.first().map_or("", String::as_str);
            eprintln!(
                "error: unknown scenario {name:?}\n  scenarios: {}\n  planned, not written yet: {}",
                SCENARIOS.join(", "),
                PLANNED.join(", ")
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
