//! Scenario `restart` (DESIGN §8): an engine with N accounts (1 M by default) is stopped
//! as `refill serve` stops on SIGTERM (the workers drain and write their snapshots), then
//! started again on the same data folder with `refill::app::start`; the figure is the time
//! from calling it until the first durable write is answered: one event per shard in one
//! `POST /v1/events?sync=true`, applied. Target ≤ 10 s.
//!
//! Afterwards, on the same data (engine stopped), the pieces alone: opening the embedded
//! store, reading each shard's snapshot, and `Shard::restore`. The page cache is warm (the
//! data was just written); a cold start also reads the snapshot from disk.

// Seconds for the report are floats.
#![allow(clippy::float_arithmetic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use axum::body::Bytes;
use refill_ingest::rows;
use refill_ledger::Shard;
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_store::Store as _;
use refill_store::embedded::Embedded;
use serde_json::{Value, json};

use crate::harness::{self, AccountSetup, CREDIT_TYPE, FEATURE, Http, Server, TempDir, round};
use crate::report::{self, Table, thousands};

/// DESIGN §8: restart with 1 M accounts back to ingesting.
pub const TARGET_RESTART_S: f64 = 10.0;
/// Whole credits of each account.
const GRANT: i64 = 1_000;

/// Options of the `restart` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct RestartArgs {
    /// Accounts (customers `c0000000`.. with one grant each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Shards of the engine.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Folder for the data folder (default: the system temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Every figure of one `restart` run.
#[derive(Clone, Debug)]
pub struct RestartReport {
    /// The arguments it ran with.
    pub args: RestartArgs,
    /// Creating the accounts through the log (first life, untimed).
    pub setup: Duration,
    /// Stopping the first life: drain and write the snapshots.
    pub stop: Duration,
    /// Bytes of the data folder after the stop.
    pub data_bytes: u64,
    /// `refill::app::start` → first sync POST answered: the figure.
    pub restart: Duration,
    /// Of which `refill::app::start`.
    pub app_start: Duration,
    /// Of which the first sync POST (bind included).
    pub first_write: Duration,
    /// Accounts after the restart (all shards).
    pub accounts_after: usize,
    /// Whether an untouched account's balance is in the lock-free table after the restart.
    pub balance_table_has_untouched: bool,
    /// Afterwards, alone: opening the embedded store.
    pub open_store: Duration,
    /// Reading every shard's snapshot from the store.
    pub read_snapshots: Duration,
    /// Bytes of the snapshots (all shards).
    pub snapshot_bytes: u64,
    /// `Shard::restore` of every shard, one after the other.
    pub restore: Duration,
}

impl RestartReport {
    /// Seconds to restart: the figure.
    pub fn restart_s(&self) -> f64 {
        self.restart.as_secs_f64()
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "refill-bench restart: {} accounts, {} shards, snapshot written at stop",
            thousands(u64::from(self.args.accounts)),
            self.args.shards
        ));
        let s = |duration: Duration| format!("{:.3} s", duration.as_secs_f64());
        table
            .row(
                "restart → ingesting",
                s(self.restart),
                &format!(
                    "refill::app::start → first sync POST answered; target ≤ {TARGET_RESTART_S} s (ratio {:.2})",
                    self.restart_s() / TARGET_RESTART_S
                ),
            )
            .row("  refill::app::start", s(self.app_start), "open, restore, replay, recharger")
            .row("  first sync POST", s(self.first_write), "one event per shard, applied")
            .row(
                "alone: open the embedded store",
                s(self.open_store),
                "Embedded::open on the same folder",
            )
            .row(
                "alone: read the snapshots",
                s(self.read_snapshots),
                &format!("{} in all", report::mib(self.snapshot_bytes)),
            )
            .row(
                "alone: Shard::restore",
                s(self.restore),
                "every shard, one after the other (as Engine::start does)",
            )
            .row(
                "stop (drain + snapshot)",
                s(self.stop),
                "first life, untimed",
            )
            .row(
                "data folder after stop",
                report::mib(self.data_bytes),
                "log + store + snapshots",
            )
            .row(
                "accounts after restart",
                thousands(self.accounts_after as u64),
                "",
            )
            .row(
                "untouched balance in the table",
                if self.balance_table_has_untouched { "yes" } else { "no" },
                "Engine::balance of an account no batch touched since the restart",
            )
            .row(
                "setup (untimed)",
                format!("{:.1} s", self.setup.as_secs_f64()),
                "accounts through the log",
            );
        table
    }

    /// The JSON object (DESIGN §8 keys first).
    pub fn json(&self) -> Value {
        let s = |duration: Duration| round(duration.as_secs_f64(), 4);
        json!({
            "scenario": "restart",
            "restart_s": s(self.restart),
            "target_restart_s": TARGET_RESTART_S,
            "app_start_s": s(self.app_start),
            "first_write_s": s(self.first_write),
            "open_store_s": s(self.open_store),
            "read_snapshots_s": s(self.read_snapshots),
            "restore_s": s(self.restore),
            "snapshot_bytes": self.snapshot_bytes,
            "stop_s": s(self.stop),
            "data_bytes": self.data_bytes,
            "accounts": self.args.accounts,
            "accounts_after": self.accounts_after,
            "shards": self.args.shards,
            "balance_table_has_untouched": self.balance_table_has_untouched,
            "setup_s": round(self.setup.as_secs_f64(), 2),
        })
    }
}

/// Runs the scenario; checks the accounts and the first write survive, never a time.
pub fn run(args: &RestartArgs) -> anyhow::Result<RestartReport> {
    let names = harness::names('c', args.accounts);
    let data = TempDir::new(args.data_dir.as_deref(), "restart")?;

    // First life: the accounts, then a stop that writes the snapshots.
    let server = Server::start(data.path(), args.shards)?;
    let http = Http::new(server.addr)?;
    harness::put_catalog(&http)?;
    let setup = harness::create_accounts(
        &server,
        &names,
        AccountSetup {
            grant_whole: GRANT,
            auto_recharge: false,
        },
    )?;
    let writers = harness::one_per_shard(server.engine(), &names)?;
    drop(http);
    let stop = server.stop()?;
    let data_bytes = data.size_bytes();

    // Second life, timed until the first write is applied on every shard.
    let started = Instant::now();
    let server = Server::start(data.path(), args.shards)?;
    let app_start = server.start_elapsed;
    let write_started = Instant::now();
    let http = Http::new(server.addr)?;
    let events: Vec<String> = writers
        .iter()
        .enumerate()
        .map(|(index, name)| {
            format!(r#"{{"id":"after-restart-{index}","customer_id":"{name}","feature_id":"{FEATURE}","value":1}}"#)
        })
        .collect();
    let body = Bytes::from(format!("[{}]", events.join(",")));
    let (status, answer) = http.call("POST", "/v1/events?sync=true", Some(body))?;
    let first_write = write_started.elapsed();
    let restart = started.elapsed();
    ensure!(
        status == 202 && answer["accepted"] == json!(writers.len()),
        "first POST after the restart: {status} {answer}"
    );
    let accounts_after = server.account_count()?;
    ensure!(
        accounts_after == names.len(),
        "expected {} accounts after the restart, found {accounts_after}",
        names.len()
    );
    let engine = server.engine().clone();
    for name in &writers {
        let balance = engine
            .balance(name, CREDIT_TYPE)
            .map(|credits| credits.micros());
        ensure!(
            balance == Some((GRANT - 1) * MICROS_PER_UNIT),
            "{name}: expected {} credits after the first write, found {balance:?} µcredits",
            GRANT - 1
        );
    }
    let untouched = names
        .iter()
        .find(|name| !writers.contains(name))
        .context("an account no write touched")?;
    let balance_table_has_untouched = engine.balance(untouched, CREDIT_TYPE).is_some();
    drop(engine);
    drop(http);
    server.stop()?;

    // The pieces alone, on the same data.
    let started = Instant::now();
    let store = Embedded::open(&data.path().join("db"), args.shards)?;
    let open_store = started.elapsed();
    let started = Instant::now();
    let snapshots = (0..args.shards)
        .map(|shard| {
            store
                .get(rows::SNAPSHOTS, &shard.to_be_bytes())?
                .with_context(|| format!("no snapshot of shard {shard}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let read_snapshots = started.elapsed();
    let snapshot_bytes = snapshots.iter().map(|bytes| bytes.len() as u64).sum();
    let started = Instant::now();
    let mut restored = 0;
    for bytes in &snapshots {
        let row = refill_ingest::engine::snapshot_row::decode(bytes)
            .context("expected a snapshot row, found a truncated one")?;
        restored += Shard::restore(row.shard)?.account_count();
    }
    let restore = started.elapsed();
    ensure!(restored == names.len(), "restored {restored} accounts");
    drop(store);

    Ok(RestartReport {
        args: args.clone(),
        setup,
        stop,
        data_bytes,
        restart,
        app_start,
        first_write,
        accounts_after,
        balance_table_has_untouched,
        open_store,
        read_snapshots,
        snapshot_bytes,
        restore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_restart_keeps_every_account_and_ingests_again() {
        let report = run(&RestartArgs {
            accounts: 2_000,
            shards: 2,
            data_dir: None,
        })
        .expect("restart scenario runs");
        assert_eq!(report.accounts_after, 2_000);
        assert!(report.snapshot_bytes > 2_000);
        assert!(report.table().render().contains("restart"));
        let json = report.json();
        for key in ["scenario", "restart_s", "app_start_s", "restore_s"] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "restart");
    }
}
